// Starts the real `switchboard serve` for the JS tests, on a free port (or a given one).
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.SWITCHBOARD_BIN || path.resolve(here, "../../../target/debug/switchboard");

/** Starts a hub; resolves once it listens. `port` 0 picks a free one. */
export function startHub({ port = 0, env = {}, args = [] } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(BIN, ["serve", "--port", String(port), "--name", "js-test", ...args], {
      env: { ...process.env, RUST_LOG: "warn", ...env },
      stdio: ["ignore", "pipe", "inherit"],
    });
    proc.on("error", reject);
    const lines = createInterface({ input: proc.stdout });
    lines.once("line", (line) => {
      const addr = line.split("://")[1].split("/")[0];
      resolve({
        proc,
        addr,
        port: Number(addr.split(":").pop()),
        url: `ws://${addr}/ws`,
        http: `http://${addr}`,
        /** SIGTERM (a graceful restart: clients get 1001) and wait for the exit. */
        stop() {
          return new Promise((done) => {
            if (proc.exitCode !== null) return done();
            proc.once("exit", () => done());
            proc.kill("SIGTERM");
          });
        },
      });
    });
  });
}

/** Resolves with the first value `register(resolve)` produces, or rejects after `ms`. */
export function waitFor(register, ms = 10_000, what = "an event") {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

import net from "node:net";

/**
 * A TCP proxy to break the network on purpose: `block()` drops every connection through
 * it and refuses new ones (what a client sees when the network fails), `unblock()` lets
 * them through again.
 */
export function startProxy(targetPort) {
  return new Promise((resolve) => {
    let target = targetPort;
    const sockets = new Set();
    let blocked = false;
    let muted = false;
    const server = net.createServer((inbound) => {
      if (blocked) {
        inbound.destroy();
        return;
      }
      const outbound = net.connect(target, "127.0.0.1");
      sockets.add(inbound).add(outbound);
      const drop = () => {
        inbound.destroy();
        outbound.destroy();
        sockets.delete(inbound);
        sockets.delete(outbound);
      };
      inbound.on("error", drop).on("close", drop);
      outbound.on("error", drop).on("close", drop);
      inbound.pipe(outbound);
      // Server to client, unless muted (what the client would have read is lost).
      outbound.on("data", (data) => {
        if (!muted) inbound.write(data);
      });
    });
    server.listen(0, "127.0.0.1", () => {
      const port = server.address().port;
      resolve({
        url: `ws://127.0.0.1:${port}/ws`,
        /** New connections go to `port` from now on (a load balancer's failover). */
        retarget(port) {
          target = port;
        },
        block() {
          blocked = true;
          for (const s of sockets) s.destroy();
          sockets.clear();
        },
        unblock() {
          blocked = false;
        },
        /** Drops every connection now; new ones go through. */
        cut() {
          for (const s of sockets) s.destroy();
          sockets.clear();
        },
        /** Stops forwarding what the server sends (until the next connection). */
        mute() {
          muted = true;
        },
        unmute() {
          muted = false;
        },
        close() {
          this.block();
          return new Promise((done) => server.close(() => done()));
        },
      });
    });
  });
}

/** A queue of events from a handler registration. */
export function recorder() {
  const items = [];
  const waiters = [];
  return {
    push(v) {
      const w = waiters.shift();
      if (w) w(v);
      else items.push(v);
    },
    next(ms = 10_000) {
      if (items.length) return Promise.resolve(items.shift());
      return waitFor((resolve) => waiters.push(resolve), ms, "a recorded event");
    },
    async until(pred, ms) {
      for (;;) {
        const v = await this.next(ms);
        if (pred(v)) return v;
      }
    },
    items,
  };
}
