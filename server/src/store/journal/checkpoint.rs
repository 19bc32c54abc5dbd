//! The checkpoint thread (`qd-checkpoint`): it owns the [`PageDb`], merges each frozen
//! pending map into the pages, syncs them, deletes the journal segments the map covered,
//! and only then lets readers stop seeing the map. It also starts a checkpoint itself when
//! the writer is idle but something was journaled long enough ago. When to freeze and what
//! a map holds are `mod.rs`'s and `pending.rs`'s business; page bytes are the pages'.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qd_protocol::JobId;

use super::pending::PendingMap;
use super::segment::remove_segments_before;
use super::{lock, write, Shared};
use crate::store::pages::{PageDb, PagesWritten};
use crate::store::StoreError;

/// One checkpoint's work.
#[derive(Debug)]
pub(super) struct Checkpoint {
    pub map: Arc<PendingMap>,
    /// Every segment below this seq is covered by `map` (and earlier checkpoints).
    pub before_seq: u64,
    pub max_id: JobId,
}

#[derive(Debug)]
pub(super) enum ToCheckpointer {
    Run(Checkpoint),
    Stop,
}

/// The thread's body: runs the checkpoints the writer hands over, and starts one itself
/// when one is due and the writer has not (it is idle).
pub(super) fn run_loop(shared: &Shared, db: &Mutex<PageDb>, rx: &Receiver<ToCheckpointer>) {
    let interval = shared.config.checkpoint_interval;
    let tick = (interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let job = match rx.recv_timeout(tick) {
            Ok(ToCheckpointer::Run(job)) => job,
            Ok(ToCheckpointer::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                let mut ctl = lock(&shared.ctl);
                if !shared.checkpoint_due(&ctl) {
                    continue;
                }
                match shared.freeze(&mut ctl) {
                    Ok(job) => job,
                    Err(_) => continue, // recorded in `failed` for the next commit
                }
            }
        };
        run(shared, db, job);
    }
}

fn run(shared: &Shared, db: &Mutex<PageDb>, job: Checkpoint) {
    #[cfg(test)]
    if let Some(gate) = lock(&shared.gate).as_ref() {
        let _ = gate.recv();
    }
    let started = Instant::now();
    let entries = job.map.jobs.len();
    let result = catch_unwind(AssertUnwindSafe(|| apply(db, &job, &shared.journal_dir)))
        .unwrap_or_else(|panic| {
            Err(StoreError::WriterStopped {
                reason: format!(
                    "the checkpoint panicked: {}",
                    crate::store::writer::panic_message(&*panic)
                ),
            })
        });
    let mut ctl = lock(&shared.ctl);
    ctl.running = false;
    match result {
        Ok((pages, removed)) => {
            write(&shared.views).frozen = None;
            ctl.last_checkpoint = Instant::now();
            ctl.checkpoints += 1;
            tracing::debug!(
                entries,
                pages_written = pages.written,
                pages_removed = pages.removed,
                segments_removed = removed,
                ms = started.elapsed().as_millis() as u64,
                "checkpoint done"
            );
        }
        Err(e) => {
            // The journal still holds everything, and readers still see the frozen map;
            // but the pages can no longer take the journal's content, so stop accepting
            // more.
            tracing::error!("checkpoint failed; the store refuses further writes: {e}");
            ctl.failed = Some(Arc::new(e));
        }
    }
    shared.checkpoint_ended.notify_all();
}

/// Merges a frozen map into the pages in id order (each touched page read and written
/// once), syncs them, then deletes the segments the map covered. Holds the page db's mutex
/// only meanwhile.
fn apply(
    db: &Mutex<PageDb>,
    job: &Checkpoint,
    journal_dir: &Path,
) -> Result<(PagesWritten, usize), StoreError> {
    let jobs = job.map.sorted_jobs();
    let queues = job.map.sorted_queues();
    let pages = {
        let mut db = lock(db);
        let pages = db.apply_checkpoint(&jobs, &queues, job.max_id)?;
        db.apply_schedules(&job.map.sorted_schedules())?;
        db.sync()?;
        pages
    };
    Ok((pages, remove_segments_before(journal_dir, job.before_seq)?))
}
