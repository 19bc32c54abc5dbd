// The qd dashboard in a real browser: Debian's chromium driven by playwright-core.
//
// Starts the built `qd serve --http 127.0.0.1:0` on a fresh data dir (ports learned from its
// JSON log lines, like the e2e tests do), fills it through the real client (`qd add`, and the
// client crate's `signup` example, whose worker sends two jobs to the dead set), then:
// checks the counts the dashboard shows against `qd stats --json`, retries a dead job and
// sees it leave the dead list, pauses a queue and sees the flag, sees flow limits set with
// `qd limits`, and lists and removes a schedule. Screenshots go to
// target/screenshots/. Waits poll a condition with a deadline; nothing sleeps blindly.
//
// Run from the repository root after `cargo build -p qd --bin qd` and
// `cargo build -p qd-client --example signup`: `node tests/browser/dashboard.mjs`.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const target = process.env.CARGO_TARGET_DIR || path.join(root, 'target');
const qd = path.join(target, 'debug', 'qd');
const signup = path.join(target, 'debug', 'examples', 'signup');
const shots = path.join(target, 'screenshots');
mkdirSync(shots, { recursive: true });

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

/** Polls `fn` until it returns a truthy value, or throws after `ms`. */
async function eventually(what, fn, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Starts `qd serve` and resolves once both listeners logged their addresses. */
function startServer(data) {
  const child = spawn(qd, ['serve', '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0',
    '--data', data, '--log-format', 'json'], { stdio: ['ignore', 'ignore', 'pipe'] });
  const log = [];
  return new Promise((resolve, reject) => {
    const found = {};
    createInterface({ input: child.stderr }).on('line', (line) => {
      log.push(line);
      let v;
      try { v = JSON.parse(line); } catch { return; }
      const msg = v.fields?.message;
      if (msg === 'qd dashboard is listening') found.http = v.fields.addr;
      if (msg === 'qd is listening') found.addr = v.fields.addr;
      if (found.http && found.addr) resolve({ child, ...found, log });
    });
    child.on('exit', (code) => reject(new Error(`qd serve exited (${code}):\n${log.join('\n')}`)));
  });
}

const qdCli = (addr, ...args) => execFileSync(qd, [...args, '--addr', addr], { encoding: 'utf8' });

const data = mkdtempSync(path.join(tmpdir(), 'qd-browser-'));
const server = await startServer(path.join(data, 'data'));
const base = `http://${server.http}`;
let browser;
try {
  // Jobs in several states: emails (the example: completed and dead), reports (ready and
  // delayed, added with the CLI).
  execFileSync(signup, { env: { ...process.env, QD_ADDR: server.addr }, stdio: 'ignore' });
  for (let i = 0; i < 3; i++) qdCli(server.addr, 'add', 'reports', 'daily', '--payload', `{"day":${i}}`);
  qdCli(server.addr, 'add', 'reports', 'weekly', '--payload', '{"week":1}', '--delay', '1h');

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await browser.newPage({ viewport: { width: 1366, height: 800 } });

  // 1. The overview shows what `qd stats --json` says.
  await page.goto(`${base}/`);
  const stats = JSON.parse(qdCli(server.addr, 'stats', '--json'));
  for (const [queue, counts] of Object.entries(stats)) {
    for (const state of ['ready', 'delayed', 'active', 'dead', 'completed']) {
      const shown = await page.textContent(`tr[data-queue="${queue}"] td[data-state="${state}"]`);
      check(Number(shown) === counts[state], `${queue} ${state}: shown ${shown}, qd stats says ${counts[state]}`);
    }
  }
  check(stats.emails.dead >= 1, 'the example left dead jobs');
  await page.screenshot({ path: path.join(shots, 'queues.png'), fullPage: true });

  // 2. The dead list; a job's detail; retry one and see it leave the list.
  await page.click('tr[data-queue="emails"] a');
  await page.click('#tab-dead');
  const deadRows = () => page.locator('#jobs tbody tr').count();
  const before = await deadRows();
  check(before === stats.emails.dead, `dead list has ${before} rows`);
  await page.screenshot({ path: path.join(shots, 'dead.png'), fullPage: true });
  const first = page.locator('#jobs tbody tr').first();
  const id = await first.getAttribute('data-job');
  await first.locator('a').first().click();
  await page.waitForSelector('#payload');
  check((await page.textContent('#payload')).includes('"user_id"'), 'payload shown as JSON');
  await page.screenshot({ path: path.join(shots, 'job.png'), fullPage: true });
  await page.goBack();
  await page.click(`tr[data-job="${id}"] button:has-text("Retry")`);
  await eventually('the retried job to leave the dead list', async () =>
    (await page.locator(`tr[data-job="${id}"]`).count()) === 0);
  check((await page.textContent('.notice')).includes('1 job'), 'the outcome is shown');
  await page.screenshot({ path: path.join(shots, 'retried.png'), fullPage: true });

  // 3. Pause a queue and see the flag, on its page and in the overview.
  await page.goto(`${base}/queues/reports`);
  await page.click('button:has-text("Pause")');
  await page.waitForSelector('#paused');
  await page.goto(`${base}/`);
  check((await page.textContent('tr[data-queue="reports"]')).includes('paused'), 'paused flag in the overview');
  await page.screenshot({ path: path.join(shots, 'paused.png'), fullPage: true });

  // 4. A destructive action asks first.
  await page.goto(`${base}/queues/reports?state=delayed`);
  await page.screenshot({ path: path.join(shots, 'delayed.png'), fullPage: true });
  await page.click('button:has-text("Delete")');
  await page.waitForSelector('text=This cannot be undone');
  await page.screenshot({ path: path.join(shots, 'confirm.png'), fullPage: true });

  // 5. Flow limits set with `qd limits` show in the overview and on the queue's page.
  qdCli(server.addr, 'limits', 'reports', '--rate', '50/1s', '--group-concurrency', '1');
  await page.goto(`${base}/`);
  const limits = await page.textContent('tr[data-queue="reports"] td.limits');
  check(limits.includes('rate 50/1s') && limits.includes('per group: 1 at once'), `limits shown: ${limits}`);
  await page.goto(`${base}/queues/reports`);
  check((await page.textContent('#limit-rate')) === '50/1s', 'the queue page shows the rate');
  await page.screenshot({ path: path.join(shots, 'limits.png'), fullPage: true });

  // 6. A schedule set with `qd schedule` is on the schedules page (the header links it), and
  // removing it asks first.
  qdCli(server.addr, 'schedule', 'set', 'nightly', 'reports', 'build', '--cron', '0 30 2 * * *',
    '--tz', 'Europe/Berlin');
  await page.click('header a.side');
  const row = page.locator('tr[data-schedule="nightly"]');
  const text = await row.textContent();
  check(text.includes('0 30 2 * * *') && text.includes('Europe/Berlin') && text.includes('UTC'), `schedule row: ${text}`);
  await page.screenshot({ path: path.join(shots, 'schedules.png'), fullPage: true });
  await row.locator('button:has-text("Remove")').click();
  await page.waitForSelector('text=This cannot be undone');
  await page.click('button:has-text("Yes, do it")');
  await eventually('the schedule to leave the page', async () =>
    (await page.locator('tr[data-schedule="nightly"]').count()) === 0);
  check((await page.textContent('.notice')).includes('removed schedule nightly'), 'the outcome is shown');
  console.log(`ok: dashboard checks passed; screenshots in ${shots}`);
} finally {
  if (browser) await browser.close();
  server.child.kill('SIGTERM');
  rmSync(data, { recursive: true, force: true });
}
