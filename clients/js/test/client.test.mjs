// The JS client under Node's test runner, against a real `switchboard serve`.
// Run: node --experimental-websocket --test test/   (scripts/test does)
import { test, after } from "node:test";
import assert from "node:assert/strict";

import {
  Client,
  ConnectionState,
  ConnectError,
  NotConnectedError,
  QueueFullError,
  RemoteError,
  TimeoutError,
  StreamPositions,
  backoffDelay,
  reconnectHint,
} from "../switchboard.js";
import { recorder, startHub, startProxy, waitFor } from "./hub.mjs";

const hubs = [];
async function hub(opts) {
  const h = await startHub(opts);
  hubs.push(h);
  return h;
}
after(async () => {
  for (const h of hubs) await h.stop();
});

/** Fast, deterministic reconnects for tests. */
const quick = { initialDelay: 20, maxDelay: 200, jitter: 0 };


test("connects, sends to a room, and receives in order", async () => {
  const h = await hub();
  const a = await Client.connect(h.url);
  const b = await Client.connect(h.url);
  assert.equal(a.state, ConnectionState.OPEN);
  assert.match(a.id, /^[0-9a-f]{16}$/);
  assert.equal(a.session.server, "js-test");
  await a.join("general");
  await b.join("general");
  assert.deepEqual(a.rooms(), ["general"]);
  assert.ok(b.isInRoom("general"));
  const got = recorder();
  b.on("chat", (m) => got.push(m));
  for (let i = 0; i < 50; i++) a.sendTo("general", "chat", { i });
  for (let i = 0; i < 50; i++) {
    const m = await got.next();
    assert.equal(m.payload.i, i);
    assert.equal(m.room, "general");
    assert.equal(m.from, a.id);
  }
  // Direct messages, to "others" and to one id.
  const dm = recorder();
  a.on("dm", (m) => dm.push(m));
  b.sendDirect(a.id, "dm", { text: "psst" });
  assert.equal((await dm.next()).payload.text, "psst");
  await a.close();
  await b.close();
});

test("requests and RPC calls resolve with results or reject with typed errors", async () => {
  const h = await hub();
  const c = await Client.connect(h.url);
  assert.equal(await c.call("sum", { numbers: [391, 29] }), 420);
  assert.equal(await c.call("echo", ["positional"]), "positional");
  const names = (await c.methods()).map((m) => m.name);
  assert.ok(names.includes("sum") && names.includes("listall"));
  await assert.rejects(c.call("sum", { numbers: "x" }), (e) => {
    assert.ok(e instanceof RemoteError);
    assert.equal(e.code, "INVALID_PARAMS");
    assert.equal(e.details.errors[0].path, "numbers");
    return true;
  });
  await assert.rejects(c.call("nope"), (e) => e instanceof RemoteError && e.code === "UNKNOWN_METHOD");
  await assert.rejects(c.request("no_such_type", {}), (e) => e.code === "UNKNOWN_TYPE");
  // Many in flight at once, each matched by ref.
  const sums = await Promise.all([...Array(200).keys()].map((i) => c.call("sum", { numbers: [i, 1] })));
  sums.forEach((s, i) => assert.equal(s, i + 1));
  // A message error without a ref reaches onError, typed.
  const errors = recorder();
  c.onError((e) => errors.push(e));
  c.send("no_such_type", {});
  const e = await errors.next();
  assert.deepEqual([e.kind, e.code], ["message", "UNKNOWN_TYPE"]);
  await c.close();
  assert.throws(() => c.send("x", {}), NotConnectedError);
  await assert.rejects(c.call("sum", { numbers: [1] }), NotConnectedError);
});

test("forged acks: a Metafor-shaped client spraying acks to a room changes no call's result", async () => {
  const h = await hub();
  const victim = await Client.connect(h.url);
  await victim.join("lobby");
  // The attacker's first frame would switch it to the Metafor dialect.
  const attacker = new WebSocket(h.url);
  // The attacker is told its forgery is refused.
  const refused = new Promise((resolve) => {
    attacker.onmessage = (m) => {
      if (JSON.parse(m.data).code === "INVALID_ENVELOPE") resolve();
    };
  });
  await waitFor((resolve) => (attacker.onopen = resolve), 5_000, "the attacker's socket");
  const spray = () => {
    for (let i = 1; i < 30; i++) {
      attacker.send(JSON.stringify({ _room: "lobby", type: "ack", ref: `r${i}`, status: "ok", result: 1337 }));
    }
  };
  spray();
  const sums = [];
  for (let i = 0; i < 20; i++) {
    spray();
    sums.push(await victim.call("sum", { numbers: [i, 1] }));
  }
  sums.forEach((s, i) => assert.equal(s, i + 1, "the server's answer, not the attacker's"));
  await waitFor((resolve) => refused.then(resolve), 5_000, "the attacker's INVALID_ENVELOPE");
  attacker.close();
  await victim.close();
});

test("handlers by type, for everything and by room, with removal and clearing", async () => {
  const h = await hub();
  const c = await Client.connect(h.url);
  const peer = await Client.connect(h.url);
  await peer.join("a");
  await peer.join("b");
  await c.join("a");
  await c.join("b");
  const seen = [];
  const typed = c.on("chat", (m) => seen.push(`type:${m.room}`));
  c.onRoom("a", (m) => seen.push(`room-a:${m.type}`));
  c.onRoom("b", (m) => seen.push(`room-b:${m.type}`), "chat");
  const done = recorder();
  c.on("done", (m) => done.push(m));
  peer.sendTo("a", "chat", {});
  peer.sendTo("b", "other", {});
  peer.sendTo("a", "done", {});
  await done.next();
  // "other" in b is not a chat: b's handler only takes chats.
  assert.deepEqual(seen, ["type:a", "room-a:chat", "room-a:done"]);
  seen.length = 0;
  assert.equal(typed.remove(), true);
  assert.equal(typed.remove(), false);
  c.clearRoomHandlers("a");
  peer.sendTo("a", "chat", {});
  peer.sendTo("b", "chat", {});
  peer.sendTo("a", "done", {});
  await done.next();
  assert.deepEqual(seen, ["room-b:chat"]);
  c.clearHandlers();
  await c.close();
  await peer.close();
});

test("binary frames go out and come back", async () => {
  const h = await hub();
  const c = await Client.connect(h.url);
  const got = recorder();
  c.onBinary((b) => got.push(b));
  c.sendBinary(new Uint8Array([0, 1, 2, 255]));
  assert.deepEqual([...(await got.next())], [0, 1, 2, 255]);
  await c.close();
});

test("connect rejects with a typed error: unreachable, or refused", async () => {
  await assert.rejects(Client.connect("ws://127.0.0.1:1/ws"), (e) => e instanceof ConnectError && e.code === "UNREACHABLE");
  const h = await hub({ env: { SWITCHBOARD_PASSWORD: "s3cret-pw" } });
  await assert.rejects(Client.connect(h.url, { auth: { password: "wrong" } }), (e) => {
    assert.ok(e instanceof ConnectError);
    assert.equal(e.code, "AUTH_FAILED");
    assert.equal(e.reconnect, "never");
    return true;
  });
  const ok = await Client.connect(h.url, { auth: { password: "s3cret-pw", username: "ada" } });
  assert.equal(ok.session.identity.id, "ada");
  await ok.close();
});

test("a server restart: reconnects, rejoins its rooms, sends what was queued, in order", async () => {
  const first = await hub();
  const c = await Client.connect(first.url, { reconnect: quick });
  const states = recorder();
  c.onState((s) => states.push(s));
  const closes = recorder();
  c.onClose((i) => closes.push(i));
  const opens = recorder();
  c.onOpen((s) => opens.push(s));
  const outcomes = recorder();
  c.onResume((o) => outcomes.push(o));
  await c.join("lobby");
  const oldId = c.id;

  await first.stop();
  assert.equal((await closes.next()).code, 1001);
  assert.equal(await states.next(), ConnectionState.RECONNECTING);
  // Offline: queued, in order.
  for (let i = 0; i < 20; i++) c.sendTo("lobby", "n", { i });
  const pendingCall = c.call("sum", { numbers: [2, 2] });

  const second = await hub({ port: first.port });
  const watcher = await Client.connect(second.url);
  const got = recorder();
  watcher.on("n", (m) => got.push(m.payload.i));
  const joined = recorder();
  watcher.on("user_joined", (m) => joined.push(m));
  await watcher.join("lobby");
  // The client may have come back before or after the watcher joined; either way it
  // rejoined, and the queued call is answered.
  assert.equal(await states.until((s) => s === ConnectionState.OPEN), ConnectionState.OPEN);
  const session = await opens.next();
  assert.notEqual(session.client_id, oldId);
  // The restarted hub kept nothing: told, not silent.
  const outcome = await outcomes.next();
  assert.equal(outcome.resumed, false);
  assert.equal(outcome.reason, "session_expired");
  assert.equal(await pendingCall, 4);
  const members = await watcher.request("join_room", { room_id: "lobby" });
  assert.equal(members.members, 2, "the client is back in lobby");
  c.sendTo("lobby", "n", { i: 99 });
  // Whatever the watcher saw of the queue is in order; the last is 99.
  const seen = [];
  for (;;) {
    const i = await got.next();
    seen.push(i);
    if (i === 99) break;
  }
  assert.deepEqual(seen, [...seen].sort((x, y) => x - y));
  await c.close();
  await watcher.close();
});

test("a cut network: the queue is delivered exactly once, in order, after the rooms are rejoined", async () => {
  const h = await hub();
  const proxy = await startProxy(h.port);
  const c = await Client.connect(proxy.url, { reconnect: quick });
  await c.join("room");
  const watcher = await Client.connect(h.url);
  await watcher.join("room");
  const got = recorder();
  watcher.on("n", (m) => got.push(m));
  const joins = recorder();
  watcher.on("user_joined", (m) => joins.push(m.payload.user_id));
  const states = recorder();
  c.onState((s) => states.push(s));

  proxy.block();
  assert.equal(await states.next(), ConnectionState.RECONNECTING);
  for (let i = 0; i < 100; i++) c.sendTo("room", "n", { i });
  proxy.unblock();
  assert.equal(await states.until((s) => s === ConnectionState.OPEN), ConnectionState.OPEN);
  assert.equal(await joins.next(), c.id, "rejoined first");
  for (let i = 0; i < 100; i++) {
    const m = await got.next();
    assert.equal(m.payload.i, i);
    assert.equal(m.from, c.id);
  }
  // Nothing twice: a marker sent after arrives next.
  c.sendTo("room", "n", { i: "end" });
  assert.equal((await got.next()).payload.i, "end");
  await c.close();
  await watcher.close();
  await proxy.close();
});

for (const msgpack of [false, true]) {
  const encoding = msgpack ? "MessagePack" : "JSON";
  test(`a cut network resumes the session (${encoding}): the same id, every missed message once, in order`, async () => {
    const h = await hub();
    const proxy = await startProxy(h.port);
    const c = await Client.connect(proxy.url, { msgpack, reconnect: quick });
    const id = c.id;
    await c.join("room");
    const got = recorder();
    c.onMessage((m) => (m.type === "r" || m.type === "d") && got.push(m));
    const outcomes = recorder();
    c.onResume((o) => outcomes.push(o));
    const states = recorder();
    c.onState((s) => states.push(s));
    const joined = recorder();
    c.on("user_joined", (m) => joined.push(m.payload.user_id));
    const sender = await Client.connect(h.url);
    const left = recorder();
    sender.on("user_left", (m) => left.push(m.payload.user_id));
    await sender.join("room");
    assert.equal(await joined.next(), sender.id);

    proxy.block();
    assert.equal(await states.next(), ConnectionState.RECONNECTING);
    // The server notices the drop (the room hears it), then traffic goes on without c.
    assert.equal(await left.next(), id);
    for (let i = 0; i < 100; i++) sender.sendTo("room", "r", { i });
    for (let i = 0; i < 20; i++) await sender.request("d", { i }, { to: id });
    proxy.unblock();

    const outcome = await outcomes.next();
    assert.equal(outcome.resumed, true);
    assert.equal(outcome.rooms.room.recovered, true);
    assert.equal(outcome.rooms.room.missed, 100);
    assert.equal(outcome.session.missed, 20);
    assert.equal(c.id, id, "the same client id");
    assert.equal(c.msgpack, msgpack, "the same encoding after the reconnect");
    const room = [];
    const direct = [];
    while (room.length < 100 || direct.length < 20) {
      const m = await got.next();
      (m.type === "r" ? room : direct).push(m.payload.i);
    }
    assert.deepEqual(room, [...Array(100).keys()]);
    assert.deepEqual(direct, [...Array(20).keys()]);
    sender.sendTo("room", "r", { i: "live" });
    assert.equal((await got.next()).payload.i, "live", "nothing twice, then live traffic");
    await c.close();
    await sender.close();
    await proxy.close();
  });
}

test("a request whose answer was lost to a cut is sent again and takes effect once", async () => {
  const h = await hub();
  const proxy = await startProxy(h.port);
  const c = await Client.connect(proxy.url, { reconnect: quick });
  const watcher = await Client.connect(h.url);
  await watcher.join("room");
  const got = recorder();
  watcher.on("n", (m) => got.push(m.payload.i));
  const states = recorder();
  c.onState((s) => states.push(s));

  // The relay delivers it and acks; the ack is lost on the way back.
  proxy.mute();
  const delivered = c.request("n", { i: 1 }, { room: "room" });
  assert.equal(await got.next(), 1);
  proxy.cut();
  proxy.unmute();
  assert.equal(await states.next(), ConnectionState.RECONNECTING);
  assert.deepEqual(await delivered, { delivered: 1 }, "the first answer");
  c.sendTo("room", "n", { i: 2 });
  assert.equal(await got.next(), 2, "relayed once: 1 did not come twice");
  await c.close();
  await watcher.close();
  await proxy.close();
});

test("chaos: 100 cuts at random moments under load lose and duplicate nothing", async () => {
  // The sender sends faster than the default per-connection rate.
  const h = await hub({ args: ["--rate-limit", "0"] });
  const proxy = await startProxy(h.port);
  const c = await Client.connect(proxy.url, { reconnect: { initialDelay: 5, maxDelay: 50, jitter: 0.5 } });
  await c.join("chaos");
  const id = c.id;
  const room = [];
  const direct = [];
  const ROOM = 2000;
  const DIRECT = 500;
  const done = recorder();
  c.onMessage((m) => {
    if (m.type === "r") room.push(m.payload.i);
    else if (m.type === "d") direct.push(m.payload.i);
    else return;
    if (room.length === ROOM && direct.length === DIRECT) done.push(true);
  });
  const unrecovered = [];
  c.onResume((o) => {
    const all = [o.session, o.all, ...Object.values(o.rooms)].filter(Boolean);
    if (!o.resumed || all.some((r) => !r.recovered)) unrecovered.push(o);
  });
  const sender = await Client.connect(h.url);
  const sending = (async () => {
    let r = 0;
    let d = 0;
    while (r < ROOM || d < DIRECT) {
      if (d < DIRECT && (r >= ROOM || Math.random() < 0.2)) sender.sendDirect(id, "d", { i: d++ });
      else sender.sendTo("chaos", "r", { i: r++ });
      // A steady stream, not one burst: the cuts land all along it.
      if ((r + d) % 10 === 0) await new Promise((res) => setTimeout(res, 1));
    }
  })();
  const states = recorder();
  c.onState((s) => states.push(s));
  for (let i = 0; i < 100; i++) {
    await new Promise((res) => setTimeout(res, 5 + Math.random() * 20));
    proxy.cut();
    // The next cut lands on the new connection, once it is up.
    await states.until((s) => s === ConnectionState.OPEN);
  }
  await sending;
  await done.next(30_000);
  assert.deepEqual(room, [...Array(ROOM).keys()], "room messages exactly once, in order");
  assert.deepEqual(direct, [...Array(DIRECT).keys()], "direct messages exactly once, in order");
  assert.equal(c.id, id);
  assert.deepEqual(unrecovered, []);
  await c.close();
  await sender.close();
  await proxy.close();
});

test("max attempts, growing backoff, and the queue bound", async () => {
  const h = await hub();
  const c = await Client.connect(h.url, {
    reconnect: { initialDelay: 10, multiplier: 2, maxDelay: 1000, jitter: 0, maxAttempts: 3 },
    offlineQueue: 2,
  });
  const attempts = [];
  c.onReconnectAttempt((a) => attempts.push([a.attempt, a.delay]));
  const errors = [];
  c.onError((e) => errors.push(e.kind));
  const reconnecting = waitFor((r) => c.onState((s) => s === ConnectionState.RECONNECTING && r()));
  await h.stop();
  await reconnecting;
  // A request queued while offline times out, and leaves the queue.
  await assert.rejects(c.request("x", {}, { timeout: 5 }), TimeoutError);
  c.send("a", {});
  c.send("b", {});
  assert.throws(() => c.send("c", {}), QueueFullError);
  const info = await c.closed();
  assert.equal(info.code, 1001);
  assert.deepEqual(attempts, [
    [1, 10],
    [2, 20],
    [3, 40],
  ]);
  // (the first is the server's SHUTTING_DOWN error before its close)
  assert.deepEqual(errors.filter((k) => k !== "message"), ["connection", "connection", "connection", "gave_up"]);
  assert.equal(c.state, ConnectionState.CLOSED);
  assert.throws(() => c.send("x", {}), NotConnectedError);
});

test("without auto-reconnect a drop ends the client", async () => {
  const h = await hub();
  const c = await Client.connect(h.url, { reconnect: { enabled: false } });
  await c.join("r");
  const closed = c.closed();
  await h.stop();
  assert.equal((await closed).code, 1001);
  assert.throws(() => c.send("x", {}), NotConnectedError);
  assert.equal(c.state, ConnectionState.CLOSED);
});

test("pure helpers: close codes and backoff", () => {
  assert.equal(reconnectHint(4001), "never");
  assert.equal(reconnectHint(4004), "never");
  assert.equal(reconnectHint(4008), "now");
  assert.equal(reconnectHint(4009), "never");
  assert.equal(reconnectHint(4010), "now");
  assert.equal(reconnectHint(1001), "backoff");
  assert.equal(reconnectHint(1006), "backoff");
  const r = { initialDelay: 100, maxDelay: 1000, multiplier: 2, jitter: 0.25 };
  for (let i = 0; i < 50; i++) {
    const d = backoffDelay(r, 1, "backoff", i / 50);
    assert.ok(d >= 75 && d < 125, String(d));
  }
  assert.equal(backoffDelay({ ...r, jitter: 0 }, 10), 1000);
  assert.equal(backoffDelay({ ...r, jitter: 0 }, 1, "now"), 0);
});

test("stream positions: duplicates dropped per stream, resume keeps recovered positions", () => {
  const s = new StreamPositions();
  s.connected({
    session_id: "s",
    resume_token: "t",
    streams: { session: { epoch: "e1", offset: 0 }, all: { epoch: "e2", offset: 5 } },
  });
  assert.equal(s.accept({ type: "dm", offset: 1 }), true);
  assert.equal(s.accept({ type: "dm", offset: 1 }), false, "seen");
  assert.equal(s.accept({ type: "news", to: "all", offset: 5 }), false, "before the start");
  assert.equal(s.accept({ type: "news", to: "all", offset: 6 }), true);
  assert.equal(s.accept({ type: "chat", room: "a", offset: 9 }), true);
  assert.equal(s.accept({ type: "chat", room: "b", offset: 9 }), true, "another stream");
  assert.equal(s.accept({ type: "pong" }), true, "no offset: no stream");
  // The join's answer after a first message: the epoch is learnt, the offset kept.
  s.joined("a", { epoch: "ea", offset: 8 });
  let r = s.resumeRequest(["r1"]);
  assert.deepEqual(r.streams.rooms.a, { epoch: "ea", offset: 9 });
  assert.deepEqual(r.streams.session, { epoch: "e1", offset: 1 });
  assert.deepEqual(r.resend, ["r1"]);
  assert.equal(r.attempt, 1, "each attempt to resume is counted");
  // A resume: recovered streams keep their position (the replay follows), others jump.
  s.connected({
    session_id: "s",
    resume_token: "t2",
    resumed: {
      resumed: true,
      session: { recovered: true, missed: 2, position: { epoch: "e1", offset: 3 } },
      all: { recovered: false, reason: "history_gap", position: { epoch: "e2", offset: 50 } },
      rooms: { a: { recovered: true, missed: 1, position: { epoch: "ea", offset: 10 } } },
    },
  });
  assert.equal(s.accept({ type: "dm", offset: 2 }), true, "replayed");
  assert.equal(s.accept({ type: "news", to: "all", offset: 50 }), false, "jumped");
  r = s.resumeRequest([]);
  assert.equal(r.attempt, 2, "counted on across a resumed session");
  assert.equal(r.token, "t2");
  assert.ok(!("b" in r.streams.rooms), "not restored: forgotten");
  // A fresh session starts over.
  s.connected({ session_id: "s2", resume_token: "t3", resumed: { resumed: false, reason: "session_expired", rooms: {} } });
  r = s.resumeRequest([]);
  assert.equal(r.session_id, "s2");
  assert.equal(r.attempt, 1, "a fresh session counts from 1");
  assert.deepEqual(r.streams.rooms, {});
});

test("Metafor's names: readyState, isConnecting, a fixed reconnectDelay, maxReconnectAttempts", async () => {
  const h = await hub();
  const c = new Client(h.url, { reconnectDelay: 30, maxReconnectAttempts: 2 });
  assert.deepEqual(
    [c.options.reconnect.initialDelay, c.options.reconnect.maxDelay, c.options.reconnect.multiplier, c.options.reconnect.jitter],
    [30, 30, 1, 0],
  );
  assert.equal(c.options.reconnect.maxAttempts, 2);
  assert.equal(c.readyState, 3);
  const connecting = c.connect();
  assert.equal(c.readyState, 0);
  assert.equal(c.isConnecting, true);
  await connecting;
  assert.equal(c.readyState, 1);
  assert.equal(c.isConnecting, false);
  const attempts = [];
  c.onReconnectAttempt((a) => attempts.push(a.delay));
  await h.stop();
  await c.closed();
  assert.deepEqual(attempts, [30, 30], "a fixed delay, two attempts");
  assert.equal(c.readyState, 3);
  assert.equal(new Client(h.url, { autoReconnect: false }).options.reconnect.enabled, false);
});

test("Metafor's lifecycle: onOpen on the first connect, and a closed client connects again afresh", async () => {
  const h = await hub();
  const c = new Client(h.url, { reconnect: quick });
  const opens = recorder();
  c.onOpen((s) => opens.push(s.client_id));
  const first = await c.connect();
  assert.equal(await opens.next(), first.client_id, "onOpen fires for the first connection");
  assert.equal(await c.connect(), first, "connecting an open client changes nothing");
  await c.join("lobby");
  await c.close();
  const second = await c.connect();
  assert.notEqual(second.client_id, first.client_id);
  assert.equal(await opens.next(), second.client_id);
  assert.deepEqual(c.rooms(), [], "a client connected again starts without rooms");
  assert.equal(await c.call("sum", { numbers: [1, 2] }), 3);
  assert.equal(opens.items.length, 0);
  await c.close();
});

test("a message's trace reaches the room's other members", async () => {
  const h = await hub();
  const a = await Client.connect(h.url);
  const b = await Client.connect(h.url);
  await a.join("traced");
  await b.join("traced");
  const got = recorder();
  b.on("chat", (m) => got.push(m));
  const trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  a.send("chat", { text: "hi" }, { room: "traced", trace });
  const m = await got.next();
  assert.equal(m.trace, trace);
  assert.equal(m.payload.text, "hi");
  await a.close();
  await b.close();
});

/** A socket the test scripts, passed as `{ WebSocket }`: it records what the client sends. */
class ScriptedSocket {
  static opened = recorder();
  constructor(url) {
    this.url = url;
    this.protocol = "";
    this.sent = recorder();
    queueMicrotask(() => {
      this.onopen?.();
      ScriptedSocket.opened.push(this);
    });
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code = 1000, reason = "") {
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }
  deliver(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
}

/** A position in the scripted server's streams, and its `connected` frame. */
const position = (offset) => ({ epoch: "00000000000000aa", offset });
const connected = (resumed) => ({
  type: "connected",
  payload: { client_id: "c1", session_id: "c1.s", resume_token: "t", server: "script", streams: { session: position(0) }, resumed },
});

/** A client opened on a scripted socket, its resume outcomes recorded. */
async function scriptedClient() {
  const c = new Client("ws://scripted/ws", { WebSocket: ScriptedSocket, reconnect: quick });
  const connecting = c.connect();
  const ws = await ScriptedSocket.opened.next();
  ws.deliver(connected(undefined));
  await connecting;
  const outcomes = recorder();
  c.onResume((o) => outcomes.push(o));
  return { c, ws, outcomes };
}

test("a room the resumed session lacks is joined again and reported as not recovered", async () => {
  const opened = await scriptedClient();
  const { c, outcomes } = opened;
  let ws = opened.ws;
  const joining = c.join("kept");
  const join = await ws.sent.next();
  assert.equal(join.type, "join_room");
  ws.deliver({ type: "ack", payload: { ref: join.ref, status: "ok", result: { room_id: "kept", position: position(4) } } });
  await joining;

  ws.onclose({ code: 1006, reason: "" }); // cut
  ws = await ScriptedSocket.opened.next();
  const resume = await ws.sent.next();
  assert.equal(resume.type, "resume");
  assert.deepEqual(resume.payload.streams.rooms.kept, position(4), "the client asks for the room");
  // The session comes back without the room (no server of ours does that since the
  // closing connection's leaves stopped reaching the session).
  ws.deliver(connected({ resumed: true, session: { recovered: true, missed: 0, position: position(0) }, rooms: {} }));
  const rejoin = await ws.sent.next();
  assert.equal(rejoin.type, "join_room");
  assert.equal(rejoin.payload.room_id, "kept");
  const outcome = await outcomes.next();
  assert.equal(outcome.resumed, true);
  assert.equal(outcome.rooms.kept.recovered, false);
  assert.equal(outcome.rooms.kept.reason, "not_restored");
  assert.deepEqual(c.rooms(), ["kept"]);
  ws.deliver({ type: "ack", payload: { ref: rejoin.ref, status: "ok", result: { room_id: "kept", position: position(9) } } });
  await c.close();
});

test("a room left in a leave the cluster had not kept is left again when the resumed session has it", async () => {
  const opened = await scriptedClient();
  const { c, outcomes } = opened;
  let ws = opened.ws;
  for (const room of ["stay", "flip"]) {
    const joining = c.join(room);
    const join = await ws.sent.next();
    ws.deliver({ type: "ack", payload: { ref: join.ref, status: "ok", result: { room_id: room, members: 1, position: position(1) } } });
    await joining;
  }
  // The leave is answered after the node's wait, before the cluster kept it.
  const leaving = c.leave("flip");
  const leave = await ws.sent.next();
  assert.equal(leave.type, "leave_room");
  ws.deliver({ type: "ack", payload: { ref: leave.ref, status: "ok", result: { room_id: "flip", members: 0, durable: false } } });
  await leaving;

  ws.onclose({ code: 1006, reason: "" }); // cut
  ws = await ScriptedSocket.opened.next();
  const resume = await ws.sent.next();
  assert.equal(resume.type, "resume");
  // Another node resumes the session from the cluster's record: from before the leave.
  const restored = { recovered: true, missed: 0, position: position(1) };
  ws.deliver(connected({ resumed: true, session: restored, rooms: { stay: restored, flip: restored } }));
  const again = await ws.sent.next();
  assert.equal(again.type, "leave_room");
  assert.equal(again.payload.room_id, "flip");
  const outcome = await outcomes.next();
  assert.deepEqual(Object.keys(outcome.rooms), ["stay"], "the outcome lists the rooms the client is in");
  assert.deepEqual(c.rooms(), ["stay"]);
  ws.deliver({ type: "ack", payload: { ref: again.ref, status: "ok", result: { room_id: "flip", members: 0 } } });
  await c.close();
});

test("a room being joined again is not left after a resume, whatever its last leave said", async () => {
  const opened = await scriptedClient();
  const { c } = opened;
  let ws = opened.ws;
  const joining = c.join("flip");
  const join = await ws.sent.next();
  ws.deliver({ type: "ack", payload: { ref: join.ref, status: "ok", result: { room_id: "flip", members: 1 } } });
  await joining;
  const leaving = c.leave("flip");
  const leave = await ws.sent.next();
  ws.deliver({ type: "ack", payload: { ref: leave.ref, status: "ok", result: { room_id: "flip", members: 0, durable: false } } });
  await leaving;
  // Joined again; the connection drops before the answer.
  const rejoining = c.join("flip");
  const again = await ws.sent.next();
  assert.equal(again.type, "join_room");
  ws.onclose({ code: 1006, reason: "" });
  ws = await ScriptedSocket.opened.next();
  const resume = await ws.sent.next();
  assert.deepEqual(resume.payload.resend, [again.ref]);
  const restored = { recovered: true, missed: 0, position: position(1) };
  ws.deliver(connected({ resumed: true, session: restored, rooms: { flip: restored } }));
  // The join is sent again, and no leave before it.
  const next = await ws.sent.next();
  assert.equal(next.type, "join_room");
  assert.equal(next.ref, again.ref);
  ws.deliver({ type: "ack", payload: { ref: again.ref, status: "ok", result: { room_id: "flip", members: 1 } } });
  await rejoining;
  assert.deepEqual(c.rooms(), ["flip"]);
  await c.close();
});
