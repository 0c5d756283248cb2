// 1,000 clients resuming: every connection cut at once (`cut`), the hub restarted
// (`restart`), or (`failover`, with REDIS_URL) their node of a two-node cluster shut
// down while a load balancer sends them to the other; the time until every onResume
// has fired. Run from the repository root:
// SWITCHBOARD_BIN=target/release/switchboard node --experimental-websocket bench/scripts/resume-1000.mjs 1000 cut
// REDIS_URL=redis://127.0.0.1:16399 SWITCHBOARD_BIN=... node ... resume-1000.mjs 1000 failover
import { Client } from "../../clients/js/switchboard.js";
import { startHub, startProxy } from "../../clients/js/test/hub.mjs";
const N = Number(process.argv[2] || 1000);
const mode = process.argv[3] || "cut";
const cluster = mode === "failover" ? ["--redis", process.env.REDIS_URL] : [];
const hubArgs = ["--rate-limit", "0", "--max-connections", "100000", ...cluster];
let hub = await startHub({ args: hubArgs });
const other = mode === "failover" ? await startHub({ args: hubArgs }) : null;
const proxy = await startProxy(hub.port);
const clients = [];
for (let i = 0; i < N; i++) {
  const c = await Client.connect(proxy.url, { reconnect: { initialDelay: 50, maxDelay: 2000, jitter: 0.5 } });
  await c.join(`room${i % 10}`);
  clients.push(c);
}
const sender = await Client.connect((other ?? hub).url);
let recovered = 0, lost = 0, done;
const all = new Promise((r) => (done = r));
for (const c of clients) c.onResume((o) => {
  const ok = o.resumed && Object.values(o.rooms).every((r) => r.recovered);
  ok ? recovered++ : lost++;
  if (recovered + lost === N) done();
});
const t0 = performance.now();
if (mode === "cut") {
  proxy.cut();
  for (let i = 0; i < 10; i++) sender.sendTo(`room${i}`, "m", { i });
} else if (mode === "failover") {
  proxy.retarget(other.port);
  await hub.stop();
  for (let i = 0; i < 10; i++) sender.sendTo(`room${i}`, "m", { i });
  hub = other;
} else {
  await hub.stop();
  hub = await startHub({ port: hub.port, args: hubArgs });
}
await all;
console.log(JSON.stringify({ clients: N, mode, ms_until_all_resumed: Math.round(performance.now() - t0), recovered, lost }));
for (const c of clients) c.close();
await sender.close().catch(() => {});
await hub.stop();
process.exit(0);
