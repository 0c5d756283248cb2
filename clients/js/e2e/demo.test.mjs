// The demo page in headless Chromium (Debian's package), driven by playwright-core:
// two pages chat in a room, one leaves and stops receiving, an RPC is called from the
// page, the server restarts and the page reconnects and rejoins by itself.
// Run: node --experimental-websocket --test e2e/   (scripts/test does)
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { launchChromium } from "./browser.mjs";
import { Client } from "../switchboard.js";
import { startHub } from "../test/hub.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const SCREENSHOT = process.env.DEMO_SCREENSHOT || path.resolve(here, "../../../target/demo.png");
const T = 10_000;

let browser;
let hub;
before(async () => {
  browser = await launchChromium();
  hub = await startHub();
});
after(async () => {
  await browser?.close();
  await hub?.stop();
});

async function openDemo(name) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e));
  await page.goto(hub.http + "/");
  await page.waitForSelector("body[data-ready=true]", { timeout: T });
  await page.fill("#name", name);
  await page.click("#name-form button");
  return page;
}

async function join(page, room) {
  await page.fill("#join-room", room);
  await page.click("#join-btn");
  await page.waitForSelector(`#rooms li[data-room="${room}"]`, { timeout: T });
}

async function say(page, text) {
  await page.fill("#message-input", text);
  await page.click("#send-btn");
}

const messageText = (page, text) =>
  page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages li")].some((li) => !li.hidden && li.textContent.includes(t)),
    text,
    { timeout: T },
  );

test("two pages chat in a room; one leaves and stops receiving", async () => {
  const alice = await openDemo("alice");
  const bob = await openDemo("bob");
  await join(alice, "lobby");
  await join(bob, "lobby");
  // Each sees the other online, by name.
  await alice.waitForFunction(() => document.querySelector("#online").textContent.includes("bob"), null, { timeout: T });

  await say(alice, "hello bob");
  await messageText(bob, "hello bob");
  const line = await bob.locator("#messages li", { hasText: "hello bob" }).textContent();
  assert.match(line, /^alice/);

  await say(bob, "hi alice");
  await messageText(alice, "hi alice");

  // Bob leaves; Alice's next room message does not reach him. To know it would have
  // arrived by now, Alice then sends Bob a direct message: same sender, so in order.
  await bob.click(`#rooms li[data-room="lobby"] .leave-btn`);
  await bob.waitForSelector(`#rooms li[data-room="lobby"]`, { state: "detached", timeout: T });
  await say(alice, "after bob left");
  await alice.click(`#online li:has-text("bob")`);
  await say(alice, "a direct one");
  await messageText(bob, "a direct one");
  const bobSaw = await bob.locator("#messages").textContent();
  assert.ok(!bobSaw.includes("after bob left"), bobSaw);
  await alice.close();
  await bob.close();
});

test("an RPC is called from the page's console", async () => {
  const page = await openDemo("carol");
  const methods = await page.locator("#rpc-method option").allTextContents();
  for (const m of ["listall", "sum", "status", "echo"]) assert.ok(methods.includes(m), methods.join(","));
  await page.selectOption("#rpc-method", "sum");
  await page.fill("#rpc-params", '{"numbers": [391, 29]}');
  await page.click("#rpc-call");
  await page.waitForFunction(() => document.querySelector("#rpc-result").textContent.trim() === "420", null, { timeout: T });
  // A typed error, shown with its code and the offending field.
  await page.fill("#rpc-params", '{"numbers": "many"}');
  await page.click("#rpc-call");
  await page.waitForFunction(() => document.querySelector("#rpc-result").textContent.includes("INVALID_PARAMS"), null, { timeout: T });
  assert.match(await page.locator("#rpc-result").textContent(), /"path": "numbers"/);
  await page.close();
});

test("the page survives a server restart: state shown, rooms rejoined", async () => {
  const page = await openDemo("dora");
  await join(page, "lobby");
  await page.waitForSelector("#state.open", { timeout: T });

  const port = hub.port;
  await hub.stop();
  await page.waitForSelector("#state.reconnecting", { timeout: T });
  hub = await startHub({ port });
  await page.waitForSelector("#state.open", { timeout: 30_000 });
  await messageText(page, "rooms rejoined: lobby");

  // A client of the new server in lobby reaches the page: it is back in the room.
  const other = await Client.connect(hub.url);
  await other.join("lobby");
  other.sendTo("lobby", "message", { text: "welcome back" });
  await messageText(page, "welcome back");
  await other.close();

  // Keep a picture of the demo for the docs.
  await say(page, "the demo, after a restart");
  await page.fill("#rpc-params", '{"numbers": [391, 29]}');
  await page.selectOption("#rpc-method", "sum");
  await page.fill("#rpc-params", '{"numbers": [391, 29]}');
  await page.click("#rpc-call");
  await page.waitForFunction(() => document.querySelector("#rpc-result").textContent.trim() === "420", null, { timeout: T });
  mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT });
  await page.close();
});

test("in Chromium, a MessagePack client from the hub's /client.js talks with a JSON client", async () => {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("[msgpack] page error:", e));
  await page.goto(hub.http + "/");
  const plain = await Client.connect(hub.url);
  await plain.join("mp-room");
  const heard = new Promise((resolve) => plain.on("chat", (m) => resolve(m)));
  const opened = await page.evaluate(async (url) => {
    const { Client } = await import("/client.js");
    const c = await Client.connect(url, { msgpack: true });
    window.mp = c;
    window.mpReply = new Promise((resolve) => c.on("reply", (m) => resolve(m.payload)));
    await c.join("mp-room");
    const sum = await c.call("sum", { numbers: [391, 29] });
    c.sendTo("mp-room", "chat", { text: "héllo ✓", n: 1.5 });
    return { msgpack: c.msgpack, sum, id: c.id };
  }, hub.url);
  assert.deepEqual([opened.msgpack, opened.sum], [true, 420], "MessagePack accepted, the call answered");
  const m = await heard;
  assert.deepEqual(m.payload, { text: "héllo ✓", n: 1.5 });
  assert.equal(m.from, opened.id);
  plain.sendTo("mp-room", "reply", { big: 2 ** 40, list: [null, true, {}] });
  const reply = await page.evaluate(() => window.mpReply);
  assert.deepEqual(reply, { big: 2 ** 40, list: [null, true, {}] });
  await page.evaluate(() => window.mp.close());
  await plain.close();
  await page.close();
});
