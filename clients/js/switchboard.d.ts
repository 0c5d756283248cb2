// Types for switchboard.js, the browser and Node client (kept by hand beside it).

export declare const ConnectionState: Readonly<{
  CONNECTING: "connecting";
  OPEN: "open";
  RECONNECTING: "reconnecting";
  CLOSING: "closing";
  CLOSED: "closed";
}>;
export type ConnectionStateValue = (typeof ConnectionState)[keyof typeof ConnectionState];

export type Reconnect = "never" | "backoff" | "now";
export declare function reconnectHint(code: number): Reconnect;

export interface ReconnectOptions {
  /** Reconnect at all. Default true. */
  enabled?: boolean;
  /** ms before the first attempt. Default 250. */
  initialDelay?: number;
  /** The longest delay, ms. Default 30000. */
  maxDelay?: number;
  /** Growth per failed attempt. Default 2. */
  multiplier?: number;
  /** Random spread as a fraction of the delay. Default 0.3. */
  jitter?: number;
  /** Give up after this many failed attempts in a row. Default null (never). */
  maxAttempts?: number | null;
}

export declare function backoffDelay(
  reconnect: Required<ReconnectOptions>,
  attempt: number,
  hint?: Reconnect,
  random?: number,
): number;

export interface ClientOptions {
  /** The `auth` payload sent on every connection: `{password}` or `{token}`. */
  auth?: Record<string, unknown>;
  /**
   * Fetches a token from your backend: called before every connection (so a reconnect
   * never presents an expired token) and again `refreshBefore` ms before the current
   * token's `exp`, sent on the open connection (docs/auth.md).
   */
  getToken?: () => string | Promise<string>;
  /** With `getToken`: how long before `exp` to refresh, in ms (default 30,000; at most half the token's life). */
  refreshBefore?: number;
  reconnect?: ReconnectOptions;
  /** Resume the session after a reconnect (same id and rooms, missed messages). Default true. */
  resume?: boolean;
  /** Send again the requests in flight at a drop (else ConnectionLostError). Default true. */
  retryInFlight?: boolean;
  /** Metafor's name: a fixed delay between attempts, ms (no growth, no jitter). */
  reconnectDelay?: number;
  /** Metafor's name for `reconnect.maxAttempts`. */
  maxReconnectAttempts?: number | null;
  /** Metafor's name for `reconnect.enabled`. */
  autoReconnect?: boolean;
  /** ms to wait for `connected`. Default 10000. */
  connectTimeout?: number;
  /** Default timeout of requests, ms. Default 10000. */
  requestTimeout?: number;
  /** Messages queued while reconnecting. Default 1024. */
  offlineQueue?: number;
  /** Bytes queued while reconnecting. Default 1 MiB. */
  offlineQueueBytes?: number;
  /** Subprotocols to offer (e.g. "switchboard.v1"). */
  protocols?: string | string[];
  /**
   * Offer MessagePack envelopes (subprotocol "switchboard.v1.msgpack"): binary frames,
   * smaller than JSON. Needs `msgpack.js` beside `switchboard.js` (the hub serves both).
   * A server that does not accept it leaves the connection in JSON. Default false.
   */
  msgpack?: boolean;
  /** A WebSocket implementation (Node 20 without --experimental-websocket). */
  WebSocket?: unknown;
}

/** Where a client is in a stream: its epoch and the offset of the last message seen. */
export interface Position {
  epoch: string;
  offset: number;
}

export type RecoveryGap =
  | "history_gap"
  | "epoch_changed"
  | "session_expired"
  | "no_position"
  | "offset_ahead"
  | "no_history"
  /** Said by the client: the resumed session lacked this room; it joined it again. */
  | "not_restored";

/** One stream's outcome of a resume: all or nothing. */
export interface Recovery {
  recovered: boolean;
  missed: number;
  reason?: RecoveryGap;
  position: Position;
}

/** What a reconnect recovered (`onResume`, `session.resumed`). */
export interface ResumeOutcome {
  resumed: boolean;
  reason?: RecoveryGap;
  session?: Recovery;
  all?: Recovery;
  rooms: Record<string, Recovery>;
}

export interface Session {
  client_id: string;
  /** The authenticated user's id, or the client id. */
  user_id?: string;
  session_id: string;
  server: string;
  identity?: { id: string; claims?: unknown };
  resume_token?: string;
  streams?: { session?: Position; all?: Position; rooms?: Record<string, Position> };
  resumed?: ResumeOutcome;
}

export interface Envelope<P = Record<string, unknown>> {
  type: string;
  payload: P;
  ref?: string;
  room?: string;
  to?: string;
  from?: string;
  v?: number;
  /** The message's position in its stream (room, broadcasts, or this session). */
  offset?: number;
  /** The W3C traceparent its sender gave it, if any. */
  trace?: string;
}

export interface CloseInfo {
  code: number;
  reason: string;
  reconnect: Reconnect;
}

export type ClientErrorEvent =
  | { kind: "connection"; attempt: number; code?: string; message: string }
  | { kind: "gave_up"; attempts: number; message: string }
  | { kind: "message"; code: string; message: string; details?: unknown }
  | { kind: "token"; code: "TOKEN"; message: string };

export interface Handle {
  /** Removes the handler; false if it was already gone. */
  remove(): boolean;
}

export interface SendOptions {
  room?: string;
  to?: string;
  /** A W3C traceparent (`00-<trace id>-<span id>-<flags>`): the server's span for the message joins that trace; relayed messages keep it. */
  trace?: string;
}

export interface RequestOptions extends SendOptions {
  /** ms. Default: the client's requestTimeout. */
  timeout?: number;
}

export interface MethodInfo {
  name: string;
  description?: string;
  params: Record<string, unknown>;
  result: Record<string, unknown>;
  requires_auth: boolean;
}

export declare class SwitchboardError extends Error {
  code: string;
}
export declare class NotConnectedError extends SwitchboardError {}
export declare class TimeoutError extends SwitchboardError {
  timeout: number;
}
export declare class RemoteError extends SwitchboardError {
  serverMessage: string;
  details?: unknown;
}
export declare class ConnectionLostError extends SwitchboardError {}
export declare class QueueFullError extends SwitchboardError {
  size: number;
}
export declare class ClosedError extends SwitchboardError {}
export declare class ConnectError extends SwitchboardError {
  reconnect: Reconnect;
}

/** Stream positions and the session to resume (used by Client). */
export declare class StreamPositions {
  connected(payload: Session): void;
  accept(env: Envelope): boolean;
  joined(room: string, position: Position): void;
  forgetRoom(room: string): void;
  resumeRequest(resend?: string[]): Record<string, unknown> | null;
}

/** A client's handlers: by type, catch-all, by room, binary, and its events (used by Client). */
export declare class Handlers {
  add(kind: "any" | "room" | "binary" | "open" | "close" | "error" | "state" | "attempt" | "resume", fn: (value: any) => void, extra?: { room?: string; type?: string }): Handle;
  addType(type: string, fn: (msg: Envelope) => void): Handle;
  remove(handle: object): boolean;
  emit(kind: string, value: unknown): void;
  dispatch(env: Envelope): void;
  clearMessages(): void;
  clearRoom(room?: string): void;
}

/** A client's requests waiting for their acks, and its offline queue (used by Client). */
export declare class Requests {
  constructor(limits: { maxFrames: number; maxBytes: number });
  newRef(): string;
  start(ref: string, data: string | ArrayBuffer, timeout: number, resolve: (v: unknown) => void, reject: (e: Error) => void): void;
  cancel(ref: string): boolean;
  settle(ref: string, ack: { ok: true; result: unknown } | { ok: false; error: Error }): boolean;
  written(ref?: string): void;
  inFlight(): Array<[string, { data: string | ArrayBuffer; seq: number }]>;
  rejectWritten(error: () => Error): void;
  rejectAll(error: () => Error): void;
  enqueue(data: string | ArrayBuffer, ref?: string): void;
  dequeue(): { data: string | ArrayBuffer; ref?: string; bytes: number } | undefined;
  unqueue(ref: string): void;
}

export declare class Client {
  constructor(url: string, options?: ClientOptions);
  static connect(url: string, options?: ClientOptions): Promise<Client>;
  readonly url: string;
  readonly state: ConnectionStateValue;
  readonly isConnected: boolean;
  /** True while connecting or reconnecting. */
  readonly isConnecting: boolean;
  /** 0 connecting (or reconnecting), 1 open, 2 closing, 3 closed. */
  readonly readyState: 0 | 1 | 2 | 3;
  readonly id: string | null;
  readonly session: Session | null;
  /** True if envelopes travel in MessagePack on the current connection. */
  readonly msgpack: boolean;
  readonly closeInfo: CloseInfo | null;
  connect(): Promise<Session>;
  send(type: string, payload?: Record<string, unknown>, opts?: SendOptions): void;
  sendTo(room: string, type: string, payload?: Record<string, unknown>): void;
  sendDirect(to: string, type: string, payload?: Record<string, unknown>): void;
  sendRaw(text: string): void;
  sendBinary(data: ArrayBuffer | ArrayBufferView): void;
  request<R = unknown>(type: string, payload?: Record<string, unknown>, opts?: RequestOptions): Promise<R>;
  call<R = unknown>(method: string, params?: Record<string, unknown> | unknown[], opts?: RequestOptions): Promise<R>;
  methods(opts?: RequestOptions): Promise<MethodInfo[]>;
  /** `durable: false`: in a cluster, answered before the change was kept where a resume on another node reads it (the client sets it again after its next resume). */
  join(room: string): Promise<{ room_id: string; members: number; position?: Position; durable?: false }>;
  leave(room: string): Promise<{ room_id: string; members: number; durable?: false }>;
  rooms(): string[];
  isInRoom(room: string): boolean;
  on(type: string, fn: (msg: Envelope) => void): Handle;
  onMessage(fn: (msg: Envelope) => void): Handle;
  onRoom(room: string, fn: (msg: Envelope) => void, type?: string): Handle;
  onBinary(fn: (data: Uint8Array) => void): Handle;
  onOpen(fn: (session: Session) => void): Handle;
  onClose(fn: (info: CloseInfo) => void): Handle;
  onError(fn: (error: ClientErrorEvent) => void): Handle;
  onState(fn: (state: ConnectionStateValue) => void): Handle;
  onReconnectAttempt(fn: (attempt: { attempt: number; delay: number }) => void): Handle;
  onResume(fn: (outcome: ResumeOutcome) => void): Handle;
  off(handle: Handle): boolean;
  clearHandlers(): void;
  clearRoomHandlers(room?: string): void;
  close(code?: number, reason?: string): Promise<CloseInfo | null>;
  closed(): Promise<CloseInfo>;
}

export default Client;

/** A JWT's `exp` (seconds since the epoch), or null. */
export declare function tokenExpiry(token: string): number | null;
