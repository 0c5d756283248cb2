// 1,000 clients resuming: every connection cut at once (`cut`), or the hub restarted
// (`restart`); the time until every onResume has fired. Run from the repository root:
// SWITCHBOARD_BIN=target/release/switchboard node --experimental-websocket bench/scripts/resume-1000.mjs 1000 cut
import { Client } from "../../clients/js/switchboard.js";
import { startHub, startProxy } from "../../clients/js/test/hub.mjs";
const N = Number(process.argv[2] || 1000);
const mode = process.argv[3] || "cut";
let hub = await startHub({ args: ["--rate-limit", "0", "--max-connections", "100000"] });
const proxy = await startProxy(hub.port);
const clients = [];
for (let i = 0; i < N; i++) {
  const c = await Client.connect(proxy.url, { reconnect: { initialDelay: 50, maxDelay: 2000, jitter: 0.5 } });
  await c.join(`room${i % 10}`);
  clients.push(c);
}
const sender = await Client.connect(hub.url);
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
} else {
  await hub.stop();
  hub = await startHub({ port: hub.port, args: ["--rate-limit", "0", "--max-connections", "100000"] });
}
await all;
console.log(JSON.stringify({ clients: N, mode, ms_until_all_resumed: Math.round(performance.now() - t0), recovered, lost }));
for (const c of clients) c.close();
await sender.close().catch(() => {});
await hub.stop();
process.exit(0);
