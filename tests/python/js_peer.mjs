// The JS client (clients/js/switchboard.js, what the browser loads) as a peer for the
// Python suites: it connects, joins a room, prints every `chat` it receives as a JSON
// line, and sends each JSON line of its stdin (`{"room", "payload"}`) as a `chat`.
// Run: node --experimental-websocket tests/python/js_peer.mjs URL [PASSWORD] ROOM
import * as readline from "node:readline";

import { Client } from "../../clients/js/switchboard.js";

const [url, password, room] = process.argv.slice(2);
const client = await Client.connect(url, password ? { auth: { password } } : {});
client.on("chat", (msg) => {
  console.log(JSON.stringify({ from: msg.from, room: msg.room, payload: msg.payload }));
});
await client.join(room);
console.log(JSON.stringify({ ready: client.id }));
for await (const line of readline.createInterface({ input: process.stdin })) {
  const command = JSON.parse(line);
  await client.send("chat", command.payload, { room: command.room });
}
await client.close();
