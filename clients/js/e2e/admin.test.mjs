// The hub's admin page (/admin) in headless Chromium: behind the API key, it shows a
// client connecting as a number that changes, its room, and kicks it and publishes to
// a room through the server API.
// Run: node --experimental-websocket --test e2e/   (scripts/test does)
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { launchChromium } from "./browser.mjs";
import { Client } from "../switchboard.js";
import { startHub, waitFor } from "../test/hub.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const SCREENSHOT = process.env.ADMIN_SCREENSHOT || path.resolve(here, "../../../target/admin.png");
const T = 10_000;
const KEY = "admin-test-key-0123456789";

let browser;
let hub;
before(async () => {
  browser = await launchChromium();
  hub = await startHub({ env: { SWITCHBOARD_API_KEY: KEY } });
});
after(async () => {
  await browser?.close();
  await hub?.stop();
});

const number = (page, id) => page.$eval(id, (el) => Number(el.textContent));

test("the admin page: a wrong key is refused; a client connecting changes the count; kick and publish", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (e) => console.error("[admin] page error:", e));
  await page.goto(hub.http + "/admin");

  // A wrong key: back to the form, told why.
  await page.fill("#key", "not-the-key");
  await page.click("#login-form button");
  await page.waitForFunction(() => document.querySelector("#login-error").textContent === "wrong key", null, { timeout: T });

  await page.fill("#key", KEY);
  await page.click("#login-form button");
  await page.waitForFunction(() => document.querySelector("#status").textContent === "live", null, { timeout: T });
  const before = await number(page, "#connections");

  // A client connects and joins a room: the page's number changes, the room appears.
  const client = await Client.connect(hub.url, { autoReconnect: false });
  await client.join("ops");
  await page.waitForFunction((n) => Number(document.querySelector("#connections").textContent) === n + 1, before, { timeout: T });
  await page.waitForFunction(() => [...document.querySelectorAll("#rooms td")].some((td) => td.textContent === "ops"), null, { timeout: T });

  // Publish to the room from the page; the client hears it.
  const heard = waitFor((resolve) => client.on("announcement", (m) => resolve(m)), T, "the published message");
  await page.fill("#pub-room", "ops");
  await page.fill("#pub-type", "announcement");
  await page.fill("#pub-payload", '{"text": "maintenance at noon"}');
  await page.click("#publish-form button");
  const m = await heard;
  assert.equal(m.payload.text, "maintenance at noon");
  assert.equal(m.room, "ops");
  await page.waitForFunction(() => document.querySelector("#publish-result").textContent === "delivered to 1 here", null, { timeout: T });

  // The chart has moved; keep a picture for the docs.
  await page.waitForFunction(() => Number(document.querySelector("#rate-in").textContent) >= 0, null, { timeout: T });
  await page.screenshot({ path: SCREENSHOT });

  // Kick it from the page: the client is closed with KICKED (4004).
  const closed = client.closed();
  page.on("dialog", (d) => d.dismiss());
  await page.click(`#clients button[data-client="${client.id}"]`);
  const info = await closed;
  assert.equal(info.code, 4004);
  await page.waitForFunction((n) => Number(document.querySelector("#connections").textContent) === n, before, { timeout: T });
  await page.close();
});
