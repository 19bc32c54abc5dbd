// The real Node Faktory client (npm faktory-worker, pinned in package.json) against
// `qd serve --faktory`, unchanged. Run by run.sh with FAKTORY_URL (password included).
//
// The seed flow: a signup enqueues a welcome email (3 attempts: retry 2), a worker with
// concurrency 5 sends them. Then: a job that fails lands in the retries set, one with
// retry -1 in the dead set, and the worker stops gracefully when BEAT says terminate.
import assert from "node:assert/strict";
import net from "node:net";
import faktory from "faktory-worker";

const url = process.env.FAKTORY_URL;
const deadline = (ms) => Date.now() + ms;

async function until(what, check, ms = 15000) {
  const end = deadline(ms);
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

// --- the seed flow ---------------------------------------------------------------
const client = await faktory.connect({ url });

async function signup(email) {
  // ...the user row would be written here...
  const job = client.job("welcome_email", { email });
  job.queue = "emails";
  job.retry = 2; // attempts 3
  return job.push();
}

const sent = [];
faktory.register("welcome_email", async ({ email }) => {
  sent.push(email);
});
faktory.register("always_fails", async () => {
  throw new Error("this job always fails");
});

for (let i = 0; i < 20; i++) await signup(`user${i}@example.com`);

const failing = client.job("always_fails", 1);
failing.queue = "emails";
failing.retry = 1;
await failing.push();
const doomed = client.job("always_fails", 2);
doomed.queue = "emails";
doomed.retry = -1;
await doomed.push();

const worker = await faktory.work({
  url,
  queues: ["emails"],
  concurrency: 5,
  beatInterval: 0.2,
  wid: "node-worker-1",
});

await until("20 welcome emails", () => sent.length === 20);
await until("the failing jobs in retries and dead", async () => {
  const info = await client.info();
  return info.faktory.tasks.Retries.size === 1 && info.faktory.tasks.Dead.size === 1;
});
const info = await client.info();
assert.equal(info.server.description, "Faktory");
assert.equal(info.faktory.queues.emails, 0);
assert.ok(info.faktory.total_processed >= 20);

// --- graceful stop on BEAT terminate ---------------------------------------------
// qd's own QD-SIGNAL command stands in for Faktory's web UI button.
async function signalTerminate() {
  const password = new URL(url).password;
  const { host, port } = new URL(url);
  const sock = net.connect({ host: host.split(":")[0], port: Number(port) });
  const lines = [];
  sock.on("data", (d) => lines.push(...d.toString().split("\r\n").filter(Boolean)));
  await until("the greeting", () => lines.length >= 1, 5000);
  const hi = JSON.parse(lines[0].slice("+HI ".length));
  const hello = { v: 2 };
  if (hi.s) {
    const { createHash } = await import("node:crypto");
    let d = createHash("sha256").update(password + hi.s).digest();
    for (let i = 1; i < hi.i; i++) d = createHash("sha256").update(d).digest();
    hello.pwdhash = d.toString("hex");
  }
  sock.write(`HELLO ${JSON.stringify(hello)}\r\n`);
  await until("+OK", () => lines.length >= 2, 5000);
  sock.write(`QD-SIGNAL {"wid":"node-worker-1","state":"terminate"}\r\n`);
  await until("the signal's answer", () => lines.length >= 3, 5000);
  assert.equal(lines[2], "+OK");
  sock.end();
}
await signalTerminate();
await until("the worker to stop on terminate", () => worker.quieted === true, 5000);

await client.close();
console.log(`node: ok (${sent.length} welcome emails, retries 1, dead 1, stopped on terminate)`);
process.exit(0);
