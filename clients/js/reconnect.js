// When and how soon the switchboard client connects again after a close: the hint a
// close code gives (docs/protocol.md, "Closing") and the backoff with jitter.
// Re-exported by switchboard.js.

/** What to do after a close with `code` (docs/protocol.md, "Closing"). */
export function reconnectHint(code) {
  switch (code) {
    case 1000: // normal closure: the server is done with us
    case 4001: // AUTH_FAILED
    case 4003: // FORBIDDEN
    case 4004: // KICKED
    case 4009: // SESSION_TAKEN
      return "never";
    case 4007: // SLOW_CONSUMER
    case 4008: // HEARTBEAT_TIMEOUT
    case 4010: // STREAM_RESET
      return "now";
    case 4012: // RESUME_UNAVAILABLE: resume again later, the session is kept
    default:
      return "backoff";
  }
}

/** The delay (ms) before reconnect attempt `attempt` (from 1), with jitter `random` in [0, 1). */
export function backoffDelay(reconnect, attempt, hint = "backoff", random = Math.random()) {
  const jitter = Math.min(Math.max(reconnect.jitter, 0), 1);
  let base;
  if (attempt === 1 && hint === "now") {
    base = reconnect.initialDelay * jitter;
  } else {
    base = Math.min(
      reconnect.maxDelay,
      reconnect.initialDelay * Math.pow(Math.max(reconnect.multiplier, 1), attempt - 1),
    );
  }
  return base * (1 - jitter + 2 * jitter * random);
}
