// The errors the switchboard client throws or reports: each a SwitchboardError with a
// `code` (docs/protocol.md's codes for the server's answers, the client's own for the
// rest). Re-exported by switchboard.js.

/** The base of every error this client throws or reports. */
export class SwitchboardError extends Error {
  constructor(message, code) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Not connected, and not going to be (closed, or auto-reconnect is off). */
export class NotConnectedError extends SwitchboardError {
  constructor() {
    super("not connected", "NOT_CONNECTED");
  }
}

/** No answer within the timeout. */
export class TimeoutError extends SwitchboardError {
  constructor(ms) {
    super(`no answer within ${ms} ms`, "TIMEOUT");
    this.timeout = ms;
  }
}

/** The server answered with an error: `code`, `message`, `details`. */
export class RemoteError extends SwitchboardError {
  constructor(code, message, details) {
    super(`${code}: ${message}`, code);
    this.serverMessage = message;
    this.details = details;
  }
}

/** The connection dropped after the request was sent: it may or may not have run. */
export class ConnectionLostError extends SwitchboardError {
  constructor() {
    super("connection lost before the answer arrived; the request may have been processed", "CONNECTION_LOST");
  }
}

/** The offline queue is full; the message was not queued. */
export class QueueFullError extends SwitchboardError {
  constructor(size) {
    super(`offline queue full (${size} messages)`, "QUEUE_FULL");
    this.size = size;
  }
}

/** The client was closed before the answer arrived. */
export class ClosedError extends SwitchboardError {
  constructor() {
    super("client closed", "CLOSED");
  }
}

/** Connecting failed: unreachable, timed out, or refused (`code`, `reconnect`). */
export class ConnectError extends SwitchboardError {
  constructor(message, code, reconnect = "backoff") {
    super(message, code);
    this.reconnect = reconnect;
  }
}
