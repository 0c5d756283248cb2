// Requests and the offline queue on their own: settling, timeouts, bounds, resends.
import { test } from "node:test";
import assert from "node:assert/strict";

import { QueueFullError, RemoteError, Requests, TimeoutError } from "../switchboard.js";

function waiting(requests, timeout = 10_000) {
  const ref = requests.newRef();
  const data = JSON.stringify({ type: "rpc", ref, payload: {} });
  const outcome = new Promise((resolve, reject) => requests.start(ref, data, timeout, resolve, reject));
  return { ref, data, outcome };
}

test("refs are unguessable and distinct; an ack settles its request once", async () => {
  const r = new Requests({ maxFrames: 10, maxBytes: 1000 });
  const a = waiting(r);
  const b = waiting(r);
  assert.match(a.ref, /^r[0-9a-f]{16}\.1$/);
  assert.notEqual(a.ref, b.ref);
  assert.notEqual(new Requests({ maxFrames: 1, maxBytes: 1 }).newRef(), a.ref);
  assert.equal(r.settle(a.ref, { ok: true, result: 42 }), true);
  assert.equal(r.settle(a.ref, { ok: true, result: 43 }), false);
  assert.equal(await a.outcome, 42);
  r.settle(b.ref, { ok: false, error: new RemoteError("INVALID_PARAMS", "no") });
  await assert.rejects(b.outcome, (e) => e instanceof RemoteError && e.code === "INVALID_PARAMS");
});

test("a request that times out leaves the offline queue too", async () => {
  const r = new Requests({ maxFrames: 10, maxBytes: 1000 });
  const a = waiting(r, 10);
  r.enqueue(a.data, a.ref);
  r.enqueue("{\"type\":\"chat\",\"payload\":{}}");
  await assert.rejects(a.outcome, TimeoutError);
  assert.equal(r.queue.length, 1);
  assert.equal(r.queueBytes, 28);
  assert.equal(r.dequeue().ref, undefined);
  assert.equal(r.queueBytes, 0);
  assert.equal(r.dequeue(), undefined);
});

test("the offline queue is bounded in frames and bytes", () => {
  const r = new Requests({ maxFrames: 2, maxBytes: 10 });
  r.enqueue("12345");
  assert.throws(() => r.enqueue("1234567"), QueueFullError);
  r.enqueue("12345");
  assert.throws(() => r.enqueue("1"), QueueFullError);
});

test("only written requests are resent or lost, oldest first; closing rejects them all", async () => {
  const r = new Requests({ maxFrames: 10, maxBytes: 1000 });
  const first = waiting(r);
  const unsent = waiting(r);
  const second = waiting(r);
  r.written(second.ref);
  r.written(first.ref);
  assert.deepEqual(r.inFlight().map(([ref]) => ref), [first.ref, second.ref]);
  r.rejectWritten(() => new Error("lost"));
  await assert.rejects(first.outcome, /lost/);
  await assert.rejects(second.outcome, /lost/);
  assert.deepEqual(r.inFlight(), []);
  r.rejectAll(() => new Error("closed"));
  await assert.rejects(unsent.outcome, /closed/);
  assert.equal(r.pending.size, 0);
});
