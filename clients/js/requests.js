// A switchboard client's requests and its offline queue: the `ref`s waiting for their
// acks, with their timeouts, and the frames written while the client is offline, sent
// in order when it is back. Re-exported by switchboard.js.

import { QueueFullError, TimeoutError } from "./errors.js";

const textEncoder = new TextEncoder();

/** `bytes` random bytes as hex (Web Crypto: browsers and Node 20+). */
function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  globalThis.crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The requests of one client, waiting for their acks, and the frames queued while it
 * is offline (bounded by `maxFrames` and `maxBytes`).
 */
export class Requests {
  constructor({ maxFrames, maxBytes }) {
    this.pending = new Map();
    this.queue = [];
    this.queueBytes = 0;
    this.maxFrames = maxFrames;
    this.maxBytes = maxBytes;
    this.nextSeq = 1;
    // The order requests started in: what a reconnect resends first.
    this.started = 0;
    // Every request's `ref` starts with 64 random bits: no other client can guess one
    // and answer it with a forged ack.
    this.refPrefix = randomHex(8);
  }

  /** A new request's `ref`. */
  newRef() {
    return `r${this.refPrefix}.${this.nextSeq++}`;
  }

  /**
   * Waits for the ack of `ref` for `timeout` ms (then rejects with `TimeoutError`, and
   * takes the frame out of the offline queue if it is still there). `data` is its
   * frame, kept to send again after a reconnect.
   */
  start(ref, data, timeout, resolve, reject) {
    const timer = setTimeout(() => {
      this.pending.delete(ref);
      this.unqueue(ref);
      reject(new TimeoutError(timeout));
    }, timeout);
    this.pending.set(ref, { resolve, reject, timer, written: false, data, seq: this.started++ });
  }

  /** Forgets a request that could not be sent; false if it was not waiting. */
  cancel(ref) {
    const p = this.pending.get(ref);
    if (!p) return false;
    this.pending.delete(ref);
    clearTimeout(p.timer);
    return true;
  }

  /** Settles a request with its ack; false if no request has this `ref`. */
  settle(ref, ack) {
    const p = this.pending.get(ref);
    if (!p) return false;
    this.pending.delete(ref);
    clearTimeout(p.timer);
    if (ack.ok) p.resolve(ack.result);
    else p.reject(ack.error);
    return true;
  }

  /** Notes that a request's frame went to the socket. */
  written(ref) {
    const p = ref && this.pending.get(ref);
    if (p) p.written = true;
  }

  /** The requests written and not answered, oldest first: `[ref, request]` pairs. */
  inFlight() {
    return [...this.pending].filter(([, p]) => p.written).sort((a, b) => a[1].seq - b[1].seq);
  }

  /** Rejects the requests already written with `error()` (the connection dropped). */
  rejectWritten(error) {
    for (const [ref, p] of this.pending) {
      if (p.written) {
        this.pending.delete(ref);
        clearTimeout(p.timer);
        p.reject(error());
      }
    }
  }

  /** Rejects every request with `error()` and empties the queue (the client closed). */
  rejectAll(error) {
    this.queue = [];
    this.queueBytes = 0;
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(error());
    }
    this.pending.clear();
  }

  /** Queues a frame while offline; throws `QueueFullError` past the bounds. */
  enqueue(data, ref) {
    const bytes = typeof data === "string" ? textEncoder.encode(data).length : data.byteLength;
    if (this.queue.length >= this.maxFrames || this.queueBytes + bytes > this.maxBytes) {
      throw new QueueFullError(this.queue.length);
    }
    this.queue.push({ data, ref, bytes });
    this.queueBytes += bytes;
  }

  /** The oldest queued frame, taken out of the queue (`undefined` when empty). */
  dequeue() {
    const item = this.queue.shift();
    if (item) this.queueBytes -= item.bytes;
    return item;
  }

  /** Takes a request's frame out of the queue, if it is there. */
  unqueue(ref) {
    const i = this.queue.findIndex((q) => q.ref === ref);
    if (i >= 0) {
      this.queueBytes -= this.queue[i].bytes;
      this.queue.splice(i, 1);
    }
  }
}
