// MessagePack envelopes (subprotocol "switchboard.v1.msgpack"): the codec byte for byte,
// and a MessagePack client against a real `switchboard serve`, beside JSON clients.
// Run: node --experimental-websocket --test test/   (scripts/test does)
import { test, after } from "node:test";
import assert from "node:assert/strict";

import { Client, RemoteError } from "../switchboard.js";
import { MessagePackError, binaryData, binaryEnvelope, decode, encode } from "../msgpack.js";
import { recorder, startHub } from "./hub.mjs";

const hubs = [];
async function hub(opts) {
  const h = await startHub(opts);
  hubs.push(h);
  return h;
}
after(async () => {
  for (const h of hubs) await h.stop();
});


test("the codec writes what the Rust side writes and reads every length form back", () => {
  // The same bytes as switchboard-proto's msgpack tests.
  assert.deepEqual([...encode({ a: 1 })], [0x81, 0xa1, 0x61, 0x01]);
  assert.deepEqual([...encode(300)], [0xcd, 0x01, 0x2c]);
  assert.deepEqual([...encode(-1)], [0xff]);
  const values = [
    null, true, false, 0, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, Number.MAX_SAFE_INTEGER,
    -32, -33, -128, -129, -32768, -32769, -(2 ** 31), -(2 ** 31) - 1, Number.MIN_SAFE_INTEGER,
    0.5, -1.25, 1e300, "", "é ✓", "x".repeat(31), "x".repeat(32), "x".repeat(255), "x".repeat(256), "x".repeat(70_000),
    [], [...Array(15).keys()], [...Array(16).keys()], [...Array(70_000).keys()].map((i) => i % 3),
    {}, Object.fromEntries([...Array(16).keys()].map((i) => [`k${i}`, i])), { nested: { list: [true, null, [], {}] } },
  ];
  for (const v of values) assert.deepEqual(decode(encode(v)), v, JSON.stringify(v).slice(0, 60));
  // As JSON.stringify: undefined members are left out, NaN is null.
  assert.deepEqual(decode(encode({ a: undefined, b: NaN })), { b: null });
  // Raw bytes: bin8, bin16, bin32.
  for (const n of [0, 255, 256, 65_536]) {
    const data = new Uint8Array(n).map((_, i) => i % 251);
    assert.deepEqual(binaryData(decode(binaryEnvelope(data))), data);
  }
  assert.equal(binaryData(decode(encode({ type: "binary", payload: { data: [1] } }))), null);
});

test("bad MessagePack is an error, never a crash or a prototype", () => {
  for (const bytes of [[0xc1], [0x82, 0xa1, 0x61], [0x80, 0x80], [0xd4, 0x01, 0x02], [0x81, 0x80, 0x01], [0xa2, 0xff, 0xfe]]) {
    assert.throws(() => decode(new Uint8Array(bytes)), MessagePackError.prototype.constructor === MessagePackError ? Error : Error, String(bytes));
  }
  const deep = new Uint8Array(1000).fill(0x91);
  assert.throws(() => decode(deep), /deep/);
  const proto = decode(encode(JSON.parse('{"__proto__": {"polluted": 1}}')));
  assert.equal({}.polluted, undefined);
  assert.equal(Object.getPrototypeOf(proto), Object.prototype);
  assert.deepEqual(Object.keys(proto), ["__proto__"]);
});

test("a MessagePack client calls, gets typed errors and shares a room with a JSON client", async () => {
  const h = await hub();
  const packed = await Client.connect(h.url, { msgpack: true });
  const plain = await Client.connect(h.url);
  assert.equal(packed.msgpack, true, "the hub accepted MessagePack");
  assert.equal(plain.msgpack, false);
  assert.equal(await packed.call("sum", { numbers: [391, 29] }), 420);
  await assert.rejects(packed.call("sum", { numbers: "x" }), (e) => {
    assert.ok(e instanceof RemoteError);
    assert.equal(e.code, "INVALID_PARAMS");
    assert.equal(e.details.errors[0].path, "numbers");
    return true;
  });
  await packed.join("room");
  await plain.join("room");
  const atPlain = recorder();
  plain.on("chat", (m) => atPlain.push(m));
  const atPacked = recorder();
  packed.on("chat", (m) => atPacked.push(m));
  const payload = { text: 'héllo "q" \n ✓', n: -7, f: 0.1, big: 2 ** 40, nested: { list: [true, null, [], {}] } };
  packed.sendTo("room", "chat", payload);
  const m = await atPlain.next();
  assert.deepEqual(m.payload, payload);
  assert.equal(m.from, packed.id);
  plain.sendTo("room", "chat", payload);
  assert.deepEqual((await atPacked.next()).payload, payload);
  const bin = recorder();
  packed.onBinary((b) => bin.push(b));
  packed.sendBinary(new Uint8Array([0, 1, 2, 255]));
  assert.deepEqual([...(await bin.next())], [0, 1, 2, 255], "raw bytes come back as raw bytes");
  await packed.close();
  await plain.close();
});
