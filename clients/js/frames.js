// switchboard's JS client: one frame on a socket, in the socket's encoding. The rest of
// the client works in JSON text; a socket whose subprotocol is MessagePack's
// (./msgpack.js) carries envelopes as MessagePack and raw bytes as a `binary` envelope.

import { SUBPROTOCOL as MSGPACK, binaryData, binaryEnvelope, decode as decodeMsgpack, encode as encodeMsgpack } from "./msgpack.js";

/** `data` (JSON text, or raw bytes) as `ws` sends it. */
export function encodeFrame(ws, data) {
  if (ws.protocol !== MSGPACK) return data;
  if (typeof data !== "string") return binaryEnvelope(new Uint8Array(data));
  try {
    return encodeMsgpack(JSON.parse(data));
  } catch (_) {
    // Not JSON (sendRaw): sent as text, and the server answers it as such.
    return data;
  }
}

/**
 * A frame from `ws`: `{ env }` for an envelope, `{ binary }` for raw bytes, `{}` for a
 * frame that is neither.
 */
export function decodeFrame(ws, data) {
  try {
    if (typeof data === "string") return { env: JSON.parse(data) };
    if (ws.protocol !== MSGPACK) return { binary: new Uint8Array(data) };
    const value = decodeMsgpack(new Uint8Array(data));
    const raw = binaryData(value);
    return raw ? { binary: raw } : { env: value };
  } catch (_) {
    return {};
  }
}
