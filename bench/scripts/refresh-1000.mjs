// 1,000 clients whose tokens expire every few seconds keep a room's stream without a
// reconnect: each client's getToken gives 5-second tokens, refreshed 2.5 s ahead, on
// the open connection, while the backend publishes through the server API. Counts
// reconnects, lost and duplicated messages, and the tokens fetched. From the root:
// SWITCHBOARD_BIN=target/release/switchboard node --experimental-websocket bench/scripts/refresh-1000.mjs 1000
import { Client } from "../../clients/js/switchboard.js";
import { startHub } from "../../clients/js/test/hub.mjs";
import { api, tokenFor } from "../../examples/node-backend/backend.mjs";

const N = Number(process.argv[2] || 1000);
const MESSAGES = Number(process.argv[3] || 300);
const SECRET = "a secret for the refresh benchmark, 32+ bytes";
const KEY = "a key for the refresh benchmark";
const hub = await startHub({
  env: { SWITCHBOARD_JWT_SECRET: SECRET, SWITCHBOARD_API_KEY: KEY },
  args: ["--rate-limit", "0", "--heartbeat-interval", "500ms", "--max-connections", "100000"],
});
let fetched = 0;
// Each client is one user, and asks for that user's token again and again.
const tokensOf = (user) => () => {
  fetched++;
  return tokenFor(SECRET, user, { rooms: ["feed"], seconds: 5 });
};
let reconnects = 0;
const got = [];
const clients = [];
for (let i = 0; i < N; i++) {
  const c = await Client.connect(hub.url, { getToken: tokensOf(`viewer-${i % 50}`), refreshBefore: 2500 });
  await c.join("feed");
  const mine = [];
  got.push(mine);
  c.on("tick", (m) => mine.push(m.payload.i));
  c.onReconnectAttempt(() => reconnects++);
  clients.push(c);
}
const t0 = performance.now();
for (let i = 0; i < MESSAGES; i++) {
  await api(hub.http, KEY, "/publish", { room: "feed", type: "tick", payload: { i } });
  await new Promise((r) => setTimeout(r, 40));
}
const settle = performance.now() + 5000;
while (got.some((m) => m.length < MESSAGES) && performance.now() < settle) {
  await new Promise((r) => setTimeout(r, 50));
}
let lost = 0, duplicated = 0, disordered = 0;
for (const mine of got) {
  const seen = new Set(mine);
  lost += MESSAGES - seen.size;
  duplicated += mine.length - seen.size;
  for (let k = 1; k < mine.length; k++) if (mine[k] < mine[k - 1]) disordered++;
}
console.log(JSON.stringify({ clients: N, messages: MESSAGES, seconds: Math.round((performance.now() - t0) / 1000), tokens_fetched: fetched, reconnects, lost, duplicated, disordered }));
for (const c of clients) c.close();
await hub.stop();
process.exit(0);
