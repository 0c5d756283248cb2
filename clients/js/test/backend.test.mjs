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
