// switchboard's JS client: its options and their defaults, its connection states, and
// reading a token's expiry (for refreshing it). Imported by switchboard.js, which
// re-exports `ConnectionState` and `tokenExpiry`.

/** The connection states. */
export const ConnectionState = Object.freeze({
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSING: "closing",
  CLOSED: "closed",
});

const DEFAULTS = {
  // After a reconnect, resume the session: same client id and rooms, and the messages
  // missed meanwhile, without duplicates (see `onResume`).
  resume: true,
  // A request already written when the connection dropped is sent again after the
  // reconnect (taking effect once when the session resumes); false: it fails with
  // ConnectionLostError.
  retryInFlight: true,
  connectTimeout: 10_000,
  // With `getToken`: how long before a token's `exp` a fresh one is fetched and sent.
  refreshBefore: 30_000,
  requestTimeout: 10_000,
  offlineQueue: 1024,
  offlineQueueBytes: 1024 * 1024,
  reconnect: {
    enabled: true,
    initialDelay: 250,
    maxDelay: 30_000,
    multiplier: 2,
    jitter: 0.3,
    maxAttempts: null,
  },
};

/** A JWT's `exp` (seconds since the epoch), or null when it has none or is not a JWT. */
export function tokenExpiry(token) {
  try {
    const part = token.split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4));
    const exp = JSON.parse(json).exp;
    return typeof exp === "number" ? exp : null;
  } catch (_) {
    return null;
  }
}

/** A client's options: the defaults, then `options`, then the seeds' own names. */
export function clientOptions(options = {}) {
  // Metafor's names: a fixed `reconnectDelay` (ms; no growth, no jitter),
  // `maxReconnectAttempts` and `autoReconnect`, over `reconnect`.
  const seedNames = {};
  if (options.reconnectDelay != null) {
    Object.assign(seedNames, {
      initialDelay: options.reconnectDelay,
      maxDelay: options.reconnectDelay,
      multiplier: 1,
      jitter: 0,
    });
  }
  if (options.maxReconnectAttempts !== undefined) seedNames.maxAttempts = options.maxReconnectAttempts;
  if (options.autoReconnect !== undefined) seedNames.enabled = Boolean(options.autoReconnect);
  return {
    ...DEFAULTS,
    ...options,
    reconnect: { ...DEFAULTS.reconnect, ...(options.reconnect || {}), ...seedNames },
  };
}
