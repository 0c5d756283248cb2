// The handler registry on its own: order, rooms, removal, and a handler that throws.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Handlers } from "../switchboard.js";

test("a message goes to its type's handlers, then its room's, then the catch-alls", () => {
  const h = new Handlers();
  const seen = [];
  h.add("any", (env) => seen.push(`any:${env.type}`));
  h.add("room", (env) => seen.push(`room:${env.type}`), { room: "lobby" });
  h.add("room", (env) => seen.push(`chat-only:${env.type}`), { room: "lobby", type: "chat" });
  h.add("room", () => seen.push("other room"), { room: "games" });
  h.addType("chat", (env) => seen.push(`type:${env.type}`));
  h.dispatch({ type: "chat", room: "lobby", payload: {} });
  h.dispatch({ type: "poke", room: "lobby", payload: {} });
  assert.deepEqual(seen, ["type:chat", "room:chat", "chat-only:chat", "any:chat", "room:poke", "any:poke"]);
});

test("removing a handler takes it out once; clearing keeps the event handlers", () => {
  const h = new Handlers();
  const seen = [];
  const chat = h.addType("chat", () => seen.push("chat"));
  h.add("open", (v) => seen.push(`open:${v}`));
  assert.equal(chat.remove(), true);
  assert.equal(chat.remove(), false);
  h.dispatch({ type: "chat", payload: {} });
  assert.equal(h.byType.size, 0, "an emptied type list is dropped");
  h.add("any", () => seen.push("any"));
  h.add("room", () => seen.push("room"), { room: "lobby" });
  h.clearMessages();
  h.dispatch({ type: "chat", room: "lobby", payload: {} });
  h.emit("open", 1);
  assert.deepEqual(seen, ["open:1"]);
});

test("a handler that throws is reported and the others still run", () => {
  const h = new Handlers();
  const seen = [];
  const errors = [];
  const original = console.error;
  console.error = (...args) => errors.push(args[0]);
  try {
    h.addType("chat", () => {
      throw new Error("boom");
    });
    h.addType("chat", () => seen.push("second"));
    h.dispatch({ type: "chat", payload: {} });
  } finally {
    console.error = original;
  }
  assert.deepEqual(seen, ["second"]);
  assert.deepEqual(errors, ["switchboard: a handler for chat threw"]);
});

test("a handler may remove itself while its list is being called", () => {
  const h = new Handlers();
  const seen = [];
  const once = h.add("state", (s) => {
    seen.push(`once:${s}`);
    once.remove();
  });
  h.add("state", (s) => seen.push(`always:${s}`));
  h.emit("state", "open");
  h.emit("state", "closed");
  assert.deepEqual(seen, ["once:open", "always:open", "always:closed"]);
});
