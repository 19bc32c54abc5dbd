//! W7, the scaling workload, and the scaling report: N jobs of 200 bytes added in bulk, the
//! server killed with SIGKILL and restarted, then drained; the peak RSS of each phase, the
//! data dir per payload byte, the time to the first reserve after the kill, the rates and the
//! jobs lost. Run at several job counts (`--scale-jobs 100000,1000000,...`), the points make a
//! markdown table and an SVG plot (drawn with `plotters`), so docs/PERFORMANCE.md shows how
//! cost grows with the queue rather than one size.
//!
//! Each phase gets its own peak: VmHWM is reset between phases (see
//! [`QdProcess::reset_peak_rss`]) rather than sampled, so a short spike between two samples
//! cannot hide. Recovery ends before the restarted server listens, so the restarted
//! process's peak at its first reserve is the recovery peak.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use plotters::prelude::*;
use qd_client::Client;

use super::workloads::{self, fig, Figure};
use super::{dir_size, queue_counts};
use crate::child::QdProcess;

/// Size of every W7 job's payload, bytes.
pub const PAYLOAD: usize = 200;

/// The W7 targets of issue 10, drawn as lines on the plot.
const RSS_TARGET_MIB: f64 = 1024.0;
const DRAIN_TARGET_JOBS_PER_S: f64 = 100_000.0;
const FIRST_RESERVE_TARGET_S: f64 = 5.0;
const DATA_DIR_TARGET: f64 = 2.0;

const TARGET: RGBColor = RGBColor(230, 120, 0);
const DARK_GREEN: RGBColor = RGBColor(0, 150, 0);

/// What one W7 run measured.
#[derive(Debug, Clone)]
pub struct ScalePoint {
    pub jobs: u64,
    pub enqueue_jobs_per_s: f64,
    /// Peak RSS from the server's start to the end of the fill.
    pub queued_rss_mib: f64,
    pub data_dir_mib: f64,
    pub data_dir_per_payload_byte: f64,
    /// From the SIGKILL to the first successful reserve on the restarted server.
    pub first_reserve_s: f64,
    /// Peak RSS of the restarted server up to its first reserve (recovery included).
    pub recovering_rss_mib: f64,
    pub drain_jobs_per_s: f64,
    /// Peak RSS of the restarted server during the drain.
    pub draining_rss_mib: f64,
    pub lost: u64,
    /// Jobs present after the restart beyond those added (a job recovered twice).
    pub duplicated: u64,
    /// Why the drain failed, if it did: the figures before it still count.
    pub drain_error: Option<String>,
    /// Both server processes, start to end (fill, recovery, drain).
    pub server_cpu_s: f64,
}

impl ScalePoint {
    /// Whether the point passed W7's checks (nothing lost was checked before the drain).
    pub fn verdict(&self) -> anyhow::Result<()> {
        if let Some(e) = &self.drain_error {
            anyhow::bail!("the drain after the restart failed: {e}");
        }
        ensure!(
            self.duplicated == 0,
            "{} jobs were recovered twice after kill -9",
            self.duplicated
        );
        Ok(())
    }

    pub fn figures(&self) -> Vec<Figure> {
        vec![
            fig("jobs", self.jobs as f64),
            fig("enqueue_jobs_per_s", self.enqueue_jobs_per_s),
            fig("queued_peak_rss_mib", self.queued_rss_mib),
            fig("data_dir_mib", self.data_dir_mib),
            fig("data_dir_per_payload_byte", self.data_dir_per_payload_byte),
            fig("first_reserve_s", self.first_reserve_s),
            fig("recovering_peak_rss_mib", self.recovering_rss_mib),
            fig("drain_jobs_per_s", self.drain_jobs_per_s),
            fig("draining_peak_rss_mib", self.draining_rss_mib),
            fig("lost", self.lost as f64),
            fig("duplicated", self.duplicated as f64),
            fig("server_cpu_s", self.server_cpu_s),
        ]
    }
}

/// W7 at `n` jobs on the spawned server `victim`, which it kills. A failed drain still
/// returns the point (drain figures NaN, `drain_error` set): the fill and recovery figures
/// are what the scaling table is for.
pub async fn w7_scale(
    client: Client,
    queue: &str,
    n: u64,
    mut victim: QdProcess,
) -> anyhow::Result<ScalePoint> {
    let enqueue_jobs_per_s =
        workloads::bulk_fill(std::slice::from_ref(&client), queue, n, PAYLOAD, "W7 enqueue")
            .await?;
    drop(client);
    let queued_rss_mib = victim.peak_rss_mib().context("cannot read the server's RSS")?;
    let bytes = dir_size(&victim.data);
    let first_cpu = victim.cpu_seconds().unwrap_or(0.0);

    victim.kill9();
    eprintln!("  W7: killed the server with SIGKILL; restarting");
    let killed = Instant::now();
    let restarted = victim.restart()?;
    let client = Client::connect(&restarted.addr).await?;
    let first = loop {
        let jobs = client.reserve(&[queue], 1, Duration::from_secs(5)).await?;
        if let Some(job) = jobs.into_iter().next() {
            let first = killed.elapsed().as_secs_f64();
            // Acked at once, so it counts toward the drain's `completed_total` target.
            client.ack(&job).await?;
            break first;
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(600),
            "no job could be reserved within 10 minutes of the restart"
        );
    };
    let recovering_rss_mib = restarted.peak_rss_mib().context("cannot read the server's RSS")?;
    // Where the restart's time went (sled open, journal replay, the scan), as the server
    // logged it: the first-reserve figure alone does not say which part grows.
    for line in restarted.log().lines() {
        if line.contains("opened the store") || line.contains("recovered the store") {
            eprintln!("  W7 restart: {line}");
        }
    }
    let (present, _) = queue_counts(&client, queue).await?;
    // The acked job is no longer present.
    let lost = n.saturating_sub(present + 1);
    let duplicated = (present + 1).saturating_sub(n);
    ensure!(lost == 0, "{lost} of {n} acknowledged jobs lost after kill -9");

    restarted.reset_peak_rss()?;
    let drained = async {
        let rate = workloads::drain(std::slice::from_ref(&client), queue, n, "W7 drain").await?;
        let (left, _) = queue_counts(&client, queue).await?;
        ensure!(left == 0, "{left} jobs still queued or active after draining all {n}");
        Ok(rate)
    };
    let (drain_jobs_per_s, drain_error) = match drained.await {
        Ok(rate) => (rate, None),
        Err(e) => (f64::NAN, Some(format!("{e:#}"))),
    };
    let draining_rss_mib = restarted.peak_rss_mib().context("cannot read the server's RSS")?;
    let server_cpu_s = first_cpu + restarted.cpu_seconds().unwrap_or(0.0);
    // A 10M point leaves ~3 GiB: remove it now rather than with the bench's temporary dir,
    // so a run over several counts holds one point's data at a time.
    let data = restarted.data.clone();
    drop(restarted); // SIGKILL and reap: nothing writes into the dir after this
    if let Err(e) = std::fs::remove_dir_all(&data) {
        eprintln!("  W7: could not remove {}: {e}", data.display());
    }
    Ok(ScalePoint {
        jobs: n,
        enqueue_jobs_per_s,
        queued_rss_mib,
        data_dir_mib: bytes as f64 / (1 << 20) as f64,
        data_dir_per_payload_byte: bytes as f64 / (n * PAYLOAD as u64) as f64,
        first_reserve_s: first,
        recovering_rss_mib,
        drain_jobs_per_s,
        draining_rss_mib,
        lost,
        duplicated,
        drain_error,
        server_cpu_s,
    })
}

/// Job counts as people say them: 100k, 1M, 10M.
fn jobs_label(n: f64) -> String {
    if n >= 1e6 {
        format!("{}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{}k", n / 1e3)
    } else {
        format!("{n}")
    }
}

/// The scaling table, markdown, one row per job count.
pub fn table(points: &[ScalePoint]) -> String {
    let mut t = String::from(
        "| jobs (200 B) | enqueue jobs/s | RSS queued | RSS recovering | RSS draining \
         | data dir | data dir / payload | first reserve after kill -9 | drain jobs/s \
         | server CPU | lost |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        t.push_str(&format!(
            "| {} | {:.0} | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.2}x | {:.2} s | {} | {:.1} s | {} |\n",
            jobs_label(p.jobs as f64),
            p.enqueue_jobs_per_s,
            p.queued_rss_mib,
            p.recovering_rss_mib,
            p.draining_rss_mib,
            p.data_dir_mib,
            p.data_dir_per_payload_byte,
            p.first_reserve_s,
            match &p.drain_error {
                None => format!("{:.0}", p.drain_jobs_per_s),
                Some(_) => "failed (see below)".into(),
            },
            p.server_cpu_s,
            p.lost,
        ));
    }
    for p in points {
        if let Some(e) = &p.drain_error {
            t.push_str(&format!("\n{}: the drain failed: {e}\n", jobs_label(p.jobs as f64)));
        }
    }
    t
}

/// One series of a panel: its name, colour and value at each point.
type Series<'a> = (&'a str, RGBColor, Box<dyn Fn(&ScalePoint) -> f64 + 'a>);

/// Writes the scaling plot: four panels (RSS peaks, rates, first reserve, data dir) against
/// the job count on a log axis, each with its issue-10 target as a grey line.
pub fn plot(points: &[ScalePoint], title: &str, path: &Path) -> anyhow::Result<()> {
    ensure!(!points.is_empty(), "no W7 points to plot");
    let root = SVGBackend::new(path, (1200, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let panels = root.split_evenly((2, 2));
    let panel_specs: [(&str, &str, f64, Vec<Series>); 4] = [
        (
            "Server RSS, peak of each phase",
            "MiB",
            RSS_TARGET_MIB,
            vec![
                ("queued", BLUE, Box::new(|p: &ScalePoint| p.queued_rss_mib)),
                ("recovering", RED, Box::new(|p: &ScalePoint| p.recovering_rss_mib)),
                ("draining", DARK_GREEN, Box::new(|p: &ScalePoint| p.draining_rss_mib)),
            ],
        ),
        (
            "Rates",
            "thousand jobs/s",
            DRAIN_TARGET_JOBS_PER_S / 1e3,
            vec![
                ("enqueue (bulk)", BLUE, Box::new(|p: &ScalePoint| p.enqueue_jobs_per_s / 1e3)),
                ("drain", DARK_GREEN, Box::new(|p: &ScalePoint| p.drain_jobs_per_s / 1e3)),
            ],
        ),
        (
            "First reserve after kill -9",
            "seconds",
            FIRST_RESERVE_TARGET_S,
            vec![("first reserve", RED, Box::new(|p: &ScalePoint| p.first_reserve_s))],
        ),
        (
            "Data dir / payload bytes",
            "ratio",
            DATA_DIR_TARGET,
            vec![("data dir", BLUE, Box::new(|p: &ScalePoint| p.data_dir_per_payload_byte))],
        ),
    ];
    let xs = points.iter().map(|p| p.jobs as f64);
    let x_lo = xs.clone().fold(f64::INFINITY, f64::min) / 1.5;
    let x_hi = xs.fold(0.0, f64::max) * 1.5;
    for (area, (caption, unit, target, series)) in panels.iter().zip(panel_specs) {
        let top = points
            .iter()
            .flat_map(|p| series.iter().map(move |(_, _, f)| f(p)))
            .filter(|v| v.is_finite())
            .fold(target, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("jobs queued")
            .y_desc(unit)
            .x_label_formatter(&|x| jobs_label(*x))
            .y_label_formatter(&|y| format!("{y}"))
            .draw()?;
        chart
            .draw_series(DashedLineSeries::new(
                [(x_lo, target), (x_hi, target)],
                6,
                4,
                TARGET.stroke_width(2),
            ))?
            .label("target (issue 10)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], TARGET.stroke_width(2)));
        for (name, colour, value) in &series {
            let colour = *colour;
            // A failed drain has no rate: its point is left out, not drawn at zero.
            let line = points
                .iter()
                .map(|p| (p.jobs as f64, value(p)))
                .filter(|(_, v)| v.is_finite())
                .collect::<Vec<_>>();
            chart
                .draw_series(LineSeries::new(line.iter().copied(), colour.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour));
            chart.draw_series(line.iter().map(|&c| Circle::new(c, 3, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present().with_context(|| format!("cannot write the plot to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(jobs: u64, drain_error: Option<&str>) -> ScalePoint {
        ScalePoint {
            jobs,
            enqueue_jobs_per_s: 200_000.0,
            queued_rss_mib: 80.0,
            data_dir_mib: 43.0,
            data_dir_per_payload_byte: 2.26,
            first_reserve_s: 0.42,
            recovering_rss_mib: 84.0,
            drain_jobs_per_s: if drain_error.is_some() { f64::NAN } else { 37_581.0 },
            draining_rss_mib: 97.0,
            lost: 0,
            duplicated: 0,
            drain_error: drain_error.map(str::to_owned),
            server_cpu_s: 1.2,
        }
    }

    #[test]
    fn a_failed_drain_is_a_failed_point_and_says_why_in_the_table() {
        let points = [point(100_000, None), point(10_000_000, Some("stalled"))];
        assert!(points[0].verdict().is_ok());
        assert!(points[1].verdict().is_err());
        let t = table(&points);
        assert!(t.contains("| 100k | 200000 | 80 MiB |"), "{t}");
        assert!(t.contains("| 10M |") && t.contains("failed (see below)"), "{t}");
        assert!(t.contains("10M: the drain failed: stalled"), "{t}");
    }

    #[test]
    fn the_plot_is_an_svg_without_the_missing_drain_rate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scaling.svg");
        plot(&[point(100_000, None), point(1_000_000, Some("stalled"))], "test", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("target (issue 10)") && svg.contains("1M"));
        assert!(!svg.contains("NaN"), "a NaN rate was drawn");
    }

    #[test]
    fn job_counts_read_as_people_say_them() {
        assert_eq!(jobs_label(100_000.0), "100k");
        assert_eq!(jobs_label(10_000_000.0), "10M");
        assert_eq!(jobs_label(2_500_000.0), "2.5M");
    }
}
