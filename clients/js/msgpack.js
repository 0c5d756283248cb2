// MessagePack for the switchboard envelope (docs/protocol.md, "MessagePack"): the
// subset JSON values need, plus bin for raw bytes. No dependencies: it runs in browsers
// and Node as it is.

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

/** The subprotocol that selects MessagePack envelopes. */
export const SUBPROTOCOL = "switchboard.v1.msgpack";

/** A MessagePack value that this codec cannot read (or a value it cannot write). */
export class MessagePackError extends Error {}

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.len = 0;
  }

  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  byte(b) {
    this.reserve(1);
    this.buf[this.len++] = b;
  }

  // A marker and a big-endian length or number of `size` bytes.
  head(marker, size, n) {
    this.reserve(1 + size);
    this.buf[this.len++] = marker;
    if (size === 1) this.view.setUint8(this.len, n);
    else if (size === 2) this.view.setUint16(this.len, n);
    else if (size === 4) this.view.setUint32(this.len, n);
    this.len += size;
  }

  bytes(b) {
    this.reserve(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
  }

  length(n, fix, fixMax, m16, m32) {
    if (n <= fixMax) this.byte(fix | n);
    else if (n < 0x10000) this.head(m16, 2, n);
    else this.head(m32, 4, n);
  }

  number(n) {
    if (Number.isInteger(n) && Math.abs(n) <= Number.MAX_SAFE_INTEGER) {
      if (n >= 0) {
        if (n < 0x80) this.byte(n);
        else if (n < 0x100) this.head(0xcc, 1, n);
        else if (n < 0x10000) this.head(0xcd, 2, n);
        else if (n < 0x100000000) this.head(0xce, 4, n);
        else {
          this.reserve(9);
          this.buf[this.len++] = 0xcf;
          this.view.setBigUint64(this.len, BigInt(n));
          this.len += 8;
        }
      } else if (n >= -32) this.byte(n & 0xff);
      else if (n >= -0x80) {
        this.reserve(2);
        this.buf[this.len++] = 0xd0;
        this.view.setInt8(this.len++, n);
      } else if (n >= -0x8000) {
        this.reserve(3);
        this.buf[this.len++] = 0xd1;
        this.view.setInt16(this.len, n);
        this.len += 2;
      } else if (n >= -0x80000000) {
        this.reserve(5);
        this.buf[this.len++] = 0xd2;
        this.view.setInt32(this.len, n);
        this.len += 4;
      } else {
        this.reserve(9);
        this.buf[this.len++] = 0xd3;
        this.view.setBigInt64(this.len, BigInt(n));
        this.len += 8;
      }
    } else if (Number.isFinite(n)) {
      this.reserve(9);
      this.buf[this.len++] = 0xcb;
      this.view.setFloat64(this.len, n);
      this.len += 8;
    } else {
      this.byte(0xc0); // as JSON.stringify: NaN and infinities are null
    }
  }

  value(v, depth) {
    if (depth > 200) throw new MessagePackError("nested too deep");
    if (v === null || v === undefined) return this.byte(0xc0);
    switch (typeof v) {
      case "boolean":
        return this.byte(v ? 0xc3 : 0xc2);
      case "number":
        return this.number(v);
      case "bigint":
        return this.number(Number(v));
      case "string": {
        const b = textEncoder.encode(v);
        if (b.length < 32) this.byte(0xa0 | b.length);
        else if (b.length < 0x100) this.head(0xd9, 1, b.length);
        else this.length(b.length, 0, -1, 0xda, 0xdb);
        return this.bytes(b);
      }
      case "object":
        break;
      default:
        return this.byte(0xc0);
    }
    if (v instanceof Uint8Array || v instanceof ArrayBuffer) {
      const b = v instanceof ArrayBuffer ? new Uint8Array(v) : v;
      if (b.length < 0x100) this.head(0xc4, 1, b.length);
      else if (b.length < 0x10000) this.head(0xc5, 2, b.length);
      else this.head(0xc6, 4, b.length);
      return this.bytes(b);
    }
    if (typeof v.toJSON === "function") return this.value(v.toJSON(), depth);
    if (Array.isArray(v)) {
      this.length(v.length, 0x90, 15, 0xdc, 0xdd);
      for (const item of v) this.value(item, depth + 1);
      return;
    }
    // As JSON.stringify: keys whose values are undefined or functions are left out.
    const keys = Object.keys(v).filter((k) => v[k] !== undefined && typeof v[k] !== "function");
    this.length(keys.length, 0x80, 15, 0xde, 0xdf);
    for (const k of keys) {
      this.value(k, depth + 1);
      this.value(v[k], depth + 1);
    }
  }
}

/** `value` (what JSON can hold, and Uint8Array as bin) in MessagePack. */
export function encode(value) {
  const w = new Writer();
  w.value(value, 0);
  return w.buf.subarray(0, w.len);
}

class Reader {
  constructor(bytes) {
    this.buf = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }

  need(n) {
    if (this.pos + n > this.buf.length) throw new MessagePackError("truncated");
  }

  u8() {
    this.need(1);
    return this.buf[this.pos++];
  }

  num(size, read) {
    this.need(size);
    const n = read.call(this.view, this.pos);
    this.pos += size;
    return n;
  }

  str(n) {
    this.need(n);
    const s = textDecoder.decode(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return s;
  }

  bin(n) {
    this.need(n);
    const b = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  array(n, depth) {
    const out = [];
    for (let i = 0; i < n; i++) out.push(this.value(depth + 1));
    return out;
  }

  map(n, depth) {
    const out = {};
    for (let i = 0; i < n; i++) {
      const k = this.value(depth + 1);
      if (typeof k === "object" && k !== null) throw new MessagePackError("a map key must be a string or number");
      const key = String(k);
      const v = this.value(depth + 1);
      // Never a prototype: keys are plain data.
      Object.defineProperty(out, key, { value: v, enumerable: true, writable: true, configurable: true });
    }
    return out;
  }

  value(depth) {
    if (depth > 200) throw new MessagePackError("nested too deep");
    const m = this.u8();
    if (m < 0x80) return m;
    if (m < 0x90) return this.map(m & 0x0f, depth);
    if (m < 0xa0) return this.array(m & 0x0f, depth);
    if (m < 0xc0) return this.str(m & 0x1f);
    if (m >= 0xe0) return m - 0x100;
    const v = this.view;
    switch (m) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xc4:
        return this.bin(this.u8());
      case 0xc5:
        return this.bin(this.num(2, v.getUint16));
      case 0xc6:
        return this.bin(this.num(4, v.getUint32));
      case 0xca:
        return this.num(4, v.getFloat32);
      case 0xcb:
        return this.num(8, v.getFloat64);
      case 0xcc:
        return this.u8();
      case 0xcd:
        return this.num(2, v.getUint16);
      case 0xce:
        return this.num(4, v.getUint32);
      case 0xcf:
        return Number(this.num(8, v.getBigUint64));
      case 0xd0:
        return this.num(1, v.getInt8);
      case 0xd1:
        return this.num(2, v.getInt16);
      case 0xd2:
        return this.num(4, v.getInt32);
      case 0xd3:
        return Number(this.num(8, v.getBigInt64));
      case 0xd9:
        return this.str(this.u8());
      case 0xda:
        return this.str(this.num(2, v.getUint16));
      case 0xdb:
        return this.str(this.num(4, v.getUint32));
      case 0xdc:
        return this.array(this.num(2, v.getUint16), depth);
      case 0xdd:
        return this.array(this.num(4, v.getUint32), depth);
      case 0xde:
        return this.map(this.num(2, v.getUint16), depth);
      case 0xdf:
        return this.map(this.num(4, v.getUint32), depth);
      default:
        throw new MessagePackError(`unsupported MessagePack marker 0x${m.toString(16)}`);
    }
  }
}

/** One MessagePack value (bin as Uint8Array); trailing bytes are an error. */
export function decode(bytes) {
  const r = new Reader(bytes instanceof ArrayBuffer ? new Uint8Array(bytes) : bytes);
  const v = r.value(0);
  if (r.pos !== r.buf.length) throw new MessagePackError(`${r.buf.length - r.pos} bytes after the value`);
  return v;
}

/** Raw bytes as a MessagePack connection carries them: `{type: "binary", payload: {data}}`. */
export function binaryEnvelope(data) {
  return encode({ type: "binary", payload: { data } });
}

/** The bytes of a `binaryEnvelope` frame, or `null` for any other value. */
export function binaryData(value) {
  if (!value || value.type !== "binary" || !value.payload || !(value.payload.data instanceof Uint8Array)) return null;
  const keys = Object.keys(value);
  const inner = Object.keys(value.payload);
  if (keys.length !== 2 || inner.length !== 1) return null;
  return value.payload.data;
}
