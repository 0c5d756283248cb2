// switchboard: the browser and Node client.
//
// A dependency-free ES module. It speaks the wire protocol of docs/protocol.md and
// behaves like the Rust client (crates/switchboard-client): connection state and
// events, handlers by type with removal, rooms and room handlers, requests and RPC
// calls with timeouts and typed errors, authentication, and a connection that survives
// the network (reconnect with backoff and jitter, re-authenticate, rejoin rooms, send
// what was queued while offline).
//
// Browsers have WebSocket; so does Node 22. On Node 20 run with
// `--experimental-websocket`, or pass an implementation: `{ WebSocket }`.
//
// `{ msgpack: true }` offers MessagePack envelopes (./msgpack.js, served beside this
// file); the rest of the client always works in JSON text and the socket edge
// (frames.js) converts.
//
// Its other modules, imported from beside it (the hub serves them all): errors.js (the
// error classes), reconnect.js (close hints and backoff), positions.js (stream
// positions for resume), handlers.js (handlers by type), requests.js (requests waiting
// for their answers), options.js (options and defaults, connection states), frames.js
// (a frame in the socket's encoding). This file re-exports what the first four export,
// and `ConnectionState` and `tokenExpiry`.

import { SUBPROTOCOL as MSGPACK } from "./msgpack.js";
import { decodeFrame, encodeFrame } from "./frames.js";
import { ConnectionState, clientOptions, tokenExpiry } from "./options.js";
import {
  ClosedError,
  ConnectError,
  ConnectionLostError,
  NotConnectedError,
  RemoteError,
  SwitchboardError,
} from "./errors.js";
import { backoffDelay, reconnectHint } from "./reconnect.js";
import { StreamPositions } from "./positions.js";
import { Handlers } from "./handlers.js";
import { Requests } from "./requests.js";

export * from "./errors.js";
export * from "./reconnect.js";
export * from "./positions.js";
export * from "./handlers.js";
export * from "./requests.js";
export { ConnectionState, tokenExpiry } from "./options.js";

// The rooms the requests in flight (`[ref, {data}]`, oldest first) join.
function roomsBeingJoined(inFlight) {
  const rooms = new Set();
  for (const [, p] of inFlight) {
    if (typeof p.data !== "string") continue;
    let env;
    try {
      env = JSON.parse(p.data);
    } catch {
      continue;
    }
    if (!env || (env.type !== "join_room" && env.type !== "subscribe")) continue;
    const room = env.payload && (env.payload.room_id ?? env.payload.topic);
    if (typeof room === "string") rooms.add(room);
  }
  return rooms;
}

/**
 * A connection to a switchboard server.
 *
 *   const client = await Client.connect("ws://localhost:8080/ws");
 *   client.on("chat", (msg) => console.log(msg.from, msg.payload));
 *   await client.join("general");
 *   client.sendTo("general", "chat", { text: "hello" });
 *   const sum = await client.call("sum", { numbers: [1, 2] });
 */
export class Client {
  /** Creates a client without connecting; call `connect()`. */
  constructor(url, options = {}) {
    this.url = url;
    this.options = clientOptions(options);
    const WS = this.options.WebSocket || globalThis.WebSocket;
    if (!WS) {
      throw new SwitchboardError(
        "no WebSocket implementation: use a browser, Node 22+, Node 20 with --experimental-websocket, or pass { WebSocket }",
        "NO_WEBSOCKET",
      );
    }
    this._WS = WS;
    this._state = ConnectionState.CLOSED;
    this._ws = null;
    this._session = null;
    this._closeInfo = null;
    this._requests = new Requests({ maxFrames: this.options.offlineQueue, maxBytes: this.options.offlineQueueBytes });
    this._rooms = new Set();
    // Rooms whose last join or leave the server answered before the cluster had kept it
    // (`durable: false`): after a resume, each is set as this client has it again.
    this._unsettled = new Set();
    this._streams = new StreamPositions();
    this._userClosed = false;
    this._everOpen = false;
    this._reconnectTimer = null;
    this._closedWaiters = [];
    this._handlers = new Handlers();
  }

  /** Creates a client and connects it. */
  static async connect(url, options = {}) {
    const client = new Client(url, options);
    await client.connect();
    return client;
  }

  /** The connection state: one of `ConnectionState`. */
  get state() {
    return this._state;
  }

  /** True while connected. */
  get isConnected() {
    return this._state === ConnectionState.OPEN;
  }

  /** True while connecting or reconnecting. */
  get isConnecting() {
    return this._state === ConnectionState.CONNECTING || this._state === ConnectionState.RECONNECTING;
  }

  /** The WebSocket `readyState` number: 0 connecting (or reconnecting), 1 open, 2 closing, 3 closed. */
  get readyState() {
    switch (this._state) {
      case ConnectionState.OPEN:
        return 1;
      case ConnectionState.CLOSING:
        return 2;
      case ConnectionState.CLOSED:
        return 3;
      default:
        return 0;
    }
  }

  /** This client's id on the server (kept when a reconnect resumes the session). */
  get id() {
    return this._session ? this._session.client_id : null;
  }

  /** True if envelopes travel in MessagePack on the current connection (`{ msgpack: true }`, accepted). */
  get msgpack() {
    return Boolean(this._ws && this._ws.protocol === MSGPACK);
  }

  /** What the server said when the current connection opened: `{client_id, session_id, server, identity?}`. */
  get session() {
    return this._session;
  }

  /** How the last connection ended: `{code, reason, reconnect}`. */
  get closeInfo() {
    return this._closeInfo;
  }

  /**
   * Connects and resolves with the session once the server has confirmed (`connected`).
   * Rejects with a `ConnectError` when the server is unreachable, too slow, or refuses
   * (`code` is the server's, e.g. `AUTH_FAILED`). The first connection is not retried.
   * `onOpen` handlers run for this connection too, before any of its messages.
   *
   * A closed client may connect again (Metafor's manual reconnection): it starts afresh,
   * with a new session and no rooms. On an open client this resolves with its session.
   */
  connect() {
    if (this._state === ConnectionState.OPEN) return Promise.resolve(this._session);
    if (this._state === ConnectionState.CLOSED && this._everOpen) {
      this._rooms.clear();
      this._unsettled.clear();
      this._streams = new StreamPositions();
    }
    this._userClosed = false;
    this._setState(ConnectionState.CONNECTING);
    return this._open(null).then(
      (session) => {
        this._onOpened(session, false);
        return session;
      },
      (err) => {
        this._setState(ConnectionState.CLOSED);
        throw err;
      },
    );
  }

  // One connection attempt (resuming when `resume` is a `resume` payload): resolves with
  // the session, or rejects with a ConnectError.
  // Asks `getToken` for a token first, when the client has one: before every
  // connection, so a reconnect never presents an expired token.
  _open(resume) {
    if (!this.options.getToken) {
      this._auth = this.options.auth;
      return this._connectSocket(resume);
    }
    return Promise.resolve()
      .then(() => this.options.getToken())
      .then(
        (token) => {
          this._auth = { ...(this.options.auth || {}), token };
          return this._connectSocket(resume);
        },
        (e) => {
          throw new ConnectError(`getToken failed: ${e && e.message ? e.message : e}`, "TOKEN");
        },
      );
  }

  _connectSocket(resume) {
    return new Promise((resolve, reject) => {
      let ws;
      const url = resume ? `${this.url}${this.url.includes("?") ? "&" : "?"}resume=1` : this.url;
      try {
        const protocols = [...(this.options.msgpack ? [MSGPACK] : []), ...[].concat(this.options.protocols || [])];
        ws = protocols.length ? new this._WS(url, protocols) : new this._WS(url);
      } catch (e) {
        reject(new ConnectError(`cannot connect: ${e.message}`, "UNREACHABLE"));
        return;
      }
      ws.binaryType = "arraybuffer";
      let settled = false;
      let refusal = null;
      const timer = setTimeout(() => {
        fail(new ConnectError("timed out waiting for the server", "TIMEOUT"));
        try {
          ws.close();
        } catch (_) {}
      }, this.options.connectTimeout);
      const fail = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(err);
      };
      ws.onopen = () => {
        if (this._auth) {
          this._sendOn(ws, JSON.stringify({ type: "auth", ref: "auth", payload: this._auth }));
        }
        if (resume) this._sendOn(ws, JSON.stringify({ type: "resume", payload: resume }));
      };
      // Browsers follow an error with a close; Node 20's experimental WebSocket may not.
      ws.onerror = () => fail(new ConnectError(`cannot connect to ${this.url}`, "UNREACHABLE"));
      ws.onclose = (ev) => {
        if (settled) return;
        if (refusal) {
          fail(new ConnectError(`refused by the server: ${refusal.code}: ${refusal.message}`, refusal.code, reconnectHint(ev.code)));
        } else if (ev.code === 1006) {
          fail(new ConnectError(`cannot connect to ${this.url}`, "UNREACHABLE"));
        } else {
          fail(new ConnectError(`refused by the server: ${ev.code} ${ev.reason}`, String(ev.code), reconnectHint(ev.code)));
        }
      };
      ws.onmessage = (ev) => {
        if (settled) return;
        const { env } = this._parse(ws, ev.data);
        if (!env) return;
        if (env.type === "connected") {
          settled = true;
          clearTimeout(timer);
          this._attach(ws);
          resolve(env.payload);
        } else if (env.type === "error") {
          refusal = env.payload;
        } else if (env.type === "ack" && env.payload && env.payload.status === "error") {
          refusal = env.payload;
        }
      };
    });
  }

  _attach(ws) {
    this._ws = ws;
    ws.onmessage = (ev) => this._receive(this._parse(ws, ev.data));
    ws.onclose = (ev) => this._dropped(ws, ev.code, ev.reason);
    // An error ends the connection; some implementations send no close event after it.
    ws.onerror = () => this._dropped(ws, 1006, "connection error");
  }

  _onOpened(session, reconnected) {
    this._session = session;
    this._everOpen = true;
    this._streams.connected(session);
    if (reconnected) {
      // Rooms first (unless the resumed session has them), then what was in flight,
      // then the queue: the server handles a connection's messages in order, so the
      // rooms are joined before anything queued for them arrives.
      const inFlight = this._inFlight();
      const outcome = session.resumed && session.resumed.resumed ? session.resumed : null;
      for (const room of this._rooms) {
        if (outcome) {
          // A resumed session has its rooms back; one it lacks (no server of ours
          // does that, but the client must not stay out of a room without a word) is
          // joined again and reported as not recovered.
          outcome.rooms = outcome.rooms || {};
          if (room in outcome.rooms) continue;
          outcome.rooms[room] = { recovered: false, missed: 0, reason: "not_restored", position: { epoch: "", offset: 0 } };
        }
        this._streams.forgetRoom(room);
        this._sendOn(this._ws, JSON.stringify({ type: "join_room", ref: `rejoin:${room}`, payload: { room_id: room } }));
      }
      if (outcome) {
        // A room this client left in a leave the cluster had not kept when it was
        // answered, which the resumed session has (it came back from before the leave):
        // left again, and not reported (the client is not in it). Not a room being
        // joined: its join, sent again below, may be answered from the server's record
        // of answers without being made again.
        const joining = roomsBeingJoined(inFlight);
        for (const room of this._unsettled) {
          if (this._rooms.has(room) || joining.has(room) || !outcome.rooms || !(room in outcome.rooms)) continue;
          delete outcome.rooms[room];
          this._sendOn(this._ws, JSON.stringify({ type: "leave_room", ref: `releave:${room}`, payload: { room_id: room } }));
        }
      }
      // Set as this client has them; the answers to what was just sent say again.
      this._unsettled.clear();
      for (const [, p] of inFlight) this._sendOn(this._ws, p.data);
    }
    this._setState(ConnectionState.OPEN);
    this._scheduleRefresh();
    this._flush();
    if (reconnected && session.resumed) this._emit("resume", session.resumed);
    this._emit("open", session);
  }

  // The requests written to the socket that dropped and not answered, oldest first.
  _inFlight() {
    return this.options.retryInFlight ? this._requests.inFlight() : [];
  }

  _flush() {
    while (this._state === ConnectionState.OPEN) {
      const item = this._requests.dequeue();
      if (!item) break;
      this._write(item);
    }
  }

  // One frame on `ws`, in its encoding (frames.js).
  _sendOn(ws, data) {
    ws.send(encodeFrame(ws, data));
  }

  // A frame from `ws` (frames.js): `{ env }`, `{ binary }` or `{}`.
  _parse(ws, data) {
    return decodeFrame(ws, data);
  }

  _write(item) {
    this._sendOn(this._ws, item.data);
    this._requests.written(item.ref);
  }

  // With `getToken`: a fresh token, sent on the open connection, before the current
  // one expires (`refreshBefore` ms ahead, at most half its life).
  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    const exp = this._auth && typeof this._auth.token === "string" ? tokenExpiry(this._auth.token) : null;
    if (!this.options.getToken || exp === null) return;
    const left = exp * 1000 - Date.now();
    const ahead = Math.min(this.options.refreshBefore, left / 2);
    this._refreshTimer = setTimeout(() => this._refresh(), Math.max(0, left - ahead));
  }

  _refresh() {
    Promise.resolve()
      .then(() => this.options.getToken())
      .then((token) => {
        if (this._state !== ConnectionState.OPEN || !this._ws) return;
        this._auth = { ...(this.options.auth || {}), token };
        this._refreshes = (this._refreshes || 0) + 1;
        this._sendOn(this._ws, JSON.stringify({ type: "auth", ref: `refresh:${this._refreshes}`, payload: this._auth }));
        this._scheduleRefresh();
      })
      .catch((e) => this._emit("error", { kind: "token", code: "TOKEN", message: `getToken failed: ${e && e.message ? e.message : e}` }));
  }

  _dropped(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearTimeout(this._refreshTimer);
    const info = { code: code || 1006, reason: reason || "", reconnect: reconnectHint(code || 1006) };
    this._closeInfo = info;
    // Requests already sent go again after the reconnect; without `retryInFlight` they
    // may or may not have run: tell their callers.
    if (!(this.options.retryInFlight && this.options.reconnect.enabled)) {
      this._requests.rejectWritten(() => new ConnectionLostError());
    }
    this._emit("close", info);
    const r = this.options.reconnect;
    if (this._userClosed || !r.enabled || info.reconnect === "never") {
      this._finish();
      return;
    }
    this._setState(ConnectionState.RECONNECTING);
    this._reconnect(1, info.reconnect);
  }

  _reconnect(attempt, hint) {
    const r = this.options.reconnect;
    if (r.maxAttempts != null && attempt > r.maxAttempts) {
      this._emit("error", { kind: "gave_up", attempts: attempt - 1, message: `gave up after ${attempt - 1} attempts` });
      this._finish();
      return;
    }
    const delay = backoffDelay(r, attempt, hint);
    this._emit("attempt", { attempt, delay });
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (this._userClosed) return;
      const resend = this._inFlight().map(([ref]) => ref);
      const resume = this.options.resume ? this._streams.resumeRequest(resend) : null;
      this._open(resume).then(
        (session) => {
          if (this._userClosed) {
            this._ws && this._ws.close(1000, "client closed");
            return;
          }
          this._onOpened(session, true);
        },
        (err) => {
          this._emit("error", { kind: "connection", attempt, code: err.code, message: err.message });
          if (err.reconnect === "never") {
            this._closeInfo = { code: 1000, reason: err.message, reconnect: "never" };
            this._finish();
          } else if (!this._userClosed) {
            this._reconnect(attempt + 1, "backoff");
          }
        },
      );
    }, delay);
  }

  _finish() {
    clearTimeout(this._refreshTimer);
    this._requests.rejectAll(() => new ClosedError());
    this._setState(ConnectionState.CLOSED);
    const info = this._closeInfo || { code: 1000, reason: "", reconnect: "never" };
    for (const w of this._closedWaiters.splice(0)) w(info);
  }

  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._emit("state", state);
  }

  _emit(kind, value) {
    this._handlers.emit(kind, value);
  }

  // One frame, as `_parse` read it.
  _receive({ env, binary }) {
    if (binary) {
      this._emit("binary", binary);
      return;
    }
    if (!env || typeof env !== "object" || typeof env.type !== "string") return;
    env.payload = env.payload || {};
    // A message seen before (replayed after a resume): dropped.
    if (!this._streams.accept(env)) return;
    if (env.type === "ack" && (env.from !== undefined || env.room !== undefined)) {
      // An ack comes from the server itself, never relayed from another client.
      return;
    }
    if (env.type === "ack") {
      const ref = env.payload.ref;
      const result = env.payload.result;
      if (result && typeof result.room_id === "string" && result.position) {
        this._streams.joined(result.room_id, result.position);
      }
      if (result && typeof result.room_id === "string" && typeof result.members === "number") {
        // A join or leave's answer: was the change kept by the cluster before it?
        if (result.durable === false) this._unsettled.add(result.room_id);
        else this._unsettled.delete(result.room_id);
      }
      const ack =
        env.payload.status === "ok"
          ? { ok: true, result: env.payload.result === undefined ? null : env.payload.result }
          : { ok: false, error: new RemoteError(env.payload.code, env.payload.message, env.payload.details) };
      if (this._requests.settle(ref, ack)) {
        // Answered.
      } else if (typeof ref === "string" && (ref.startsWith("rejoin:") || ref.startsWith("releave:") || ref.startsWith("refresh:") || ref === "auth") && env.payload.status === "error") {
        this._emit("error", { kind: "message", code: env.payload.code, message: env.payload.message, details: env.payload.details });
      }
    } else if (env.type === "error") {
      this._emit("error", { kind: "message", code: env.payload.code, message: env.payload.message, details: env.payload.details });
    }
    this._handlers.dispatch(env);
  }

  // Queues or writes one frame. Throws NotConnectedError / QueueFullError.
  _enqueue(data, ref) {
    if (this._state === ConnectionState.OPEN && this._ws) {
      this._write({ data, ref });
      return;
    }
    const offline =
      this._state === ConnectionState.RECONNECTING ||
      (this._state === ConnectionState.CONNECTING && this._everOpen);
    if (!offline || !this.options.reconnect.enabled) throw new NotConnectedError();
    this._requests.enqueue(data, ref);
  }

  _envelope(type, payload, opts = {}, ref) {
    const env = { type, payload: payload == null ? {} : payload };
    if (ref) env.ref = ref;
    if (opts.room) env.room = opts.room;
    if (opts.to) env.to = opts.to;
    if (opts.trace) env.trace = opts.trace;
    return JSON.stringify(env);
  }

  /**
   * Sends `{type, payload}` (`payload` a plain object), optionally `{room}` or `{to}`,
   * and `{trace}`: a W3C traceparent tying the message to a distributed trace (relayed
   * messages keep it).
   * While reconnecting it is queued and sent, in order, after the reconnect.
   * Throws `NotConnectedError` or `QueueFullError`.
   */
  send(type, payload = {}, opts = {}) {
    this._enqueue(this._envelope(type, payload, opts));
  }

  /** Sends to a room's other members. */
  sendTo(room, type, payload = {}) {
    this.send(type, payload, { room });
  }

  /** Sends to one client by id, or to "all" / "others". */
  sendDirect(to, type, payload = {}) {
    this.send(type, payload, { to });
  }

  /** Sends text exactly as given (the server parses it as an envelope). */
  sendRaw(text) {
    this._enqueue(String(text));
  }

  /** Sends a binary frame (ArrayBuffer, a typed array or a DataView). */
  sendBinary(data) {
    const buf = data instanceof ArrayBuffer ? data : data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength);
    this._enqueue(buf);
  }

  /**
   * Sends a message with a `ref` and resolves with its ack's result; rejects with
   * `RemoteError`, `TimeoutError`, `NotConnectedError`, `QueueFullError`, `ClosedError`,
   * or (with `retryInFlight: false`) `ConnectionLostError`. A request written when the
   * connection drops is sent again after the reconnect, and takes effect once when the
   * session resumes.
   */
  request(type, payload = {}, opts = {}) {
    const timeout = opts.timeout ?? this.options.requestTimeout;
    const ref = this._requests.newRef();
    const data = this._envelope(type, payload, opts, ref);
    return new Promise((resolve, reject) => {
      this._requests.start(ref, data, timeout, resolve, reject);
      try {
        this._enqueue(data, ref);
      } catch (e) {
        this._requests.cancel(ref);
        reject(e);
      }
    });
  }

  /** Calls an RPC method: `params` named (an object) or positional (an array). */
  call(method, params = {}, opts = {}) {
    return this.request("rpc", { method, params }, opts);
  }

  /** The server's RPC methods (`listall`). */
  methods(opts = {}) {
    return this.call("listall", {}, opts);
  }

  /** Joins a room (acknowledged by the server); it is rejoined after every reconnect. */
  async join(room) {
    const result = await this.request("join_room", { room_id: room });
    this._rooms.add(room);
    return result;
  }

  /** Leaves a room. */
  async leave(room) {
    this._rooms.delete(room);
    this._streams.forgetRoom(room);
    return this.request("leave_room", { room_id: room });
  }

  /** The rooms this client has joined. */
  rooms() {
    return [...this._rooms].sort();
  }

  /** True if this client has joined `room`. */
  isInRoom(room) {
    return this._rooms.has(room);
  }

  _add(kind, fn, extra = {}) {
    return this._handlers.add(kind, fn, extra);
  }

  /** Calls `fn(envelope)` for every message of `type`. Returns a handle with `remove()`. */
  on(type, fn) {
    return this._handlers.addType(type, fn);
  }

  /** Calls `fn(envelope)` for every message. */
  onMessage(fn) {
    return this._add("any", fn);
  }

  /** Calls `fn(envelope)` for messages in `room` (of `type`, if given). */
  onRoom(room, fn, type) {
    return this._add("room", fn, { room, type });
  }

  /** Calls `fn(Uint8Array)` for every binary frame. */
  onBinary(fn) {
    return this._add("binary", fn);
  }

  /** Calls `fn(session)` each time a connection opens: the first (`connect()`) and every reconnect. */
  onOpen(fn) {
    return this._add("open", fn);
  }

  /** Calls `fn({code, reason, reconnect})` each time a connection closes. */
  onClose(fn) {
    return this._add("close", fn);
  }

  /**
   * Calls `fn(error)` for connection errors (`{kind: "connection", attempt, code, message}`,
   * `{kind: "gave_up", attempts}`) and message errors (`{kind: "message", code, message, details}`).
   */
  onError(fn) {
    return this._add("error", fn);
  }

  /** Calls `fn(state)` on every state transition. */
  onState(fn) {
    return this._add("state", fn);
  }

  /** Calls `fn({attempt, delay})` before each reconnect attempt. */
  onReconnectAttempt(fn) {
    return this._add("attempt", fn);
  }

  /**
   * Calls `fn(outcome)` after each reconnect: `{resumed, reason?, session?, all?, rooms}`,
   * each stream `{recovered, missed, reason?, position}`. `recovered: true`: the `missed`
   * messages follow, in order, before anything new; `false`: reload that state.
   */
  onResume(fn) {
    return this._add("resume", fn);
  }

  /** Removes a handler (the same as `handle.remove()`). */
  off(handle) {
    return handle.remove();
  }

  /** Removes every message handler (by type, catch-all, room, binary). */
  clearHandlers() {
    this._handlers.clearMessages();
  }

  /** Removes the room handlers of `room`, or of every room. */
  clearRoomHandlers(room) {
    this._handlers.clearRoom(room);
  }

  /** Closes for good (code 1000), stops reconnecting; resolves once closed. */
  close(code = 1000, reason = "client closed") {
    this._userClosed = true;
    if (this._reconnectTimer) {
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
    }
    if (this._state === ConnectionState.CLOSED) return Promise.resolve(this._closeInfo);
    const done = this.closed();
    if (this._ws) {
      this._setState(ConnectionState.CLOSING);
      this._ws.close(code, reason);
    } else {
      this._finish();
    }
    return done;
  }

  /** Resolves with `{code, reason, reconnect}` once the client has closed for good. */
  closed() {
    if (this._state === ConnectionState.CLOSED && this._everOpen) return Promise.resolve(this._closeInfo);
    return new Promise((resolve) => this._closedWaiters.push(resolve));
  }
}

export default Client;
