// Memory per history message: a hub keeping N room messages, its RSS before and after,
// and what its history budget counts. Run: node --experimental-websocket bench/scripts/history-memory.mjs 100000
// (from the repository root, after cargo build --release -p switchboard).
import { Client } from "../../clients/js/switchboard.js";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
const rss = (pid) => Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]) * 1024;
const N = Number(process.argv[2] || 100000);
const proc = spawn(process.env.SWITCHBOARD_BIN || "target/release/switchboard", ["serve", "--port", "0", "--rate-limit", "0", "--history-size", String(N)], { stdio: ["ignore", "pipe", "inherit"] });
const line = await new Promise((r) => createInterface({ input: proc.stdout }).once("line", r));
const url = "ws://" + line.split("://")[1].split("/")[0] + "/ws";
const c = await Client.connect(url);
await c.request("ping");
const before = rss(proc.pid);
const pad = "x".repeat(60);
for (let i = 0; i < N; i++) {
  c.sendTo("history", "msg", { i, pad });
  if (i % 1000 === 999) await c.request("ping");
}
await c.request("ping");
await new Promise((r) => setTimeout(r, 300));
const after = rss(proc.pid);
const health = await (await fetch(url.replace("ws://", "http://").replace("/ws", "/health"))).json();
console.log(JSON.stringify({ messages: N, rss_delta: after - before, per_1000: Math.round((after - before) / (N / 1000)), accounted_bytes: health.history.bytes, accounted_per_1000: Math.round(health.history.bytes / (N / 1000)) }));
await c.close();
proc.kill("SIGTERM");
