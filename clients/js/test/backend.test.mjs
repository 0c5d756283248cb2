// docs/auth.md's walkthrough, run: a backend (examples/node-backend) signs a browser's
// token and publishes through the server API; the client gets its rooms and no others.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Client, RemoteError } from "../switchboard.js";
import { startHub, waitFor } from "./hub.mjs";
import { api, tokenFor } from "../../../examples/node-backend/backend.mjs";

const SECRET = "the backend and the hub share this, 32+ bytes";
const KEY = "the backend's api key";

test("a backend signs a token and publishes; the client hears it, and only joins what its token allows", async () => {
  const hub = await startHub({
    env: { SWITCHBOARD_JWT_SECRET: SECRET, SWITCHBOARD_API_KEY: KEY },
    args: ["--public-rooms", "lobby"],
  });
  try {
    const token = tokenFor(SECRET, "alice", { rooms: ["team:*"], publish: ["team:*"] });
    const client = await Client.connect(hub.url, { auth: { token } });
    assert.equal(client.session.user_id, "alice");
    await client.join("team:red");
    await client.join("lobby"); // public
    await assert.rejects(client.join("team-blue"), (e) => e instanceof RemoteError && e.code === "FORBIDDEN");

    const heard = waitFor((resolve) => client.on("score", (m) => resolve(m)));
    const published = await api(hub.http, KEY, "/publish", { room: "team:red", type: "score", payload: { red: 3 } });
    assert.equal(published.status, 200);
    assert.equal(published.body.delivered, 1);
    const m = await heard;
    assert.deepEqual(m.payload, { red: 3 });

    const members = await api(hub.http, KEY, "/rooms/team:red/members");
    assert.deepEqual(members.body.members, [client.id]);
    const refused = await api(hub.http, "not the key", "/info");
    assert.equal(refused.status, 401);
    assert.equal(refused.body.error.code, "AUTH_FAILED");
    await client.close();
  } finally {
    await hub.stop();
  }
});

test("refresh under load: tokens that expire every 3 s are refreshed on the open connections; no reconnect, nothing lost", async () => {
  const hub = await startHub({
    env: { SWITCHBOARD_JWT_SECRET: SECRET, SWITCHBOARD_API_KEY: KEY },
    args: ["--heartbeat-interval", "250ms", "--rate-limit", "0"],
  });
  const N = 100;
  const MESSAGES = 200;
  try {
    let fetched = 0;
    const getToken = () => {
      fetched++;
      return tokenFor(SECRET, "viewer", { rooms: ["feed"], seconds: 3 });
    };
    const clients = [];
    const got = [];
    let reconnects = 0;
    let done;
    const all = new Promise((r) => (done = r));
    let complete = 0;
    for (let i = 0; i < N; i++) {
      const c = await Client.connect(hub.url, { getToken, refreshBefore: 1500 });
      await c.join("feed");
      const mine = [];
      got.push(mine);
      c.on("tick", (m) => {
        mine.push(m.payload.i);
        if (mine.length === MESSAGES && ++complete === N) done();
      });
      c.onReconnectAttempt(() => reconnects++);
      clients.push(c);
    }
    // About 6 s of ticks: every token is refreshed at least twice meanwhile.
    for (let i = 0; i < MESSAGES; i++) {
      const r = await api(hub.http, KEY, "/publish", { room: "feed", type: "tick", payload: { i } });
      assert.equal(r.status, 200);
      await new Promise((r) => setTimeout(r, 30));
    }
    await all;
    const expected = Array.from({ length: MESSAGES }, (_, i) => i);
    for (const mine of got) assert.deepEqual(mine, expected);
    assert.equal(reconnects, 0, "no client reconnected");
    assert.ok(fetched >= N * 3, `tokens fetched: ${fetched}`);
    for (const c of clients) await c.close();
  } finally {
    await hub.stop();
  }
});
