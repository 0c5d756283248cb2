// The handlers a switchboard client calls: by message type, for every message, by room,
// for binary frames, and for the connection's events. Re-exported by switchboard.js.

/** The connection's events, each with its own list of handlers. */
const EVENTS = ["open", "close", "error", "state", "attempt", "resume"];

/**
 * The handlers of one client. Each `add` returns a handle with `remove()`; a handler
 * that throws is reported on the console and the others still run.
 */
export class Handlers {
  constructor() {
    this.byType = new Map();
    this.lists = { any: [], room: [], binary: [] };
    for (const event of EVENTS) this.lists[event] = [];
  }

  /** Adds `fn` to a list (`any`, `room`, `binary`, or an event), with `extra` fields. */
  add(kind, fn, extra = {}) {
    const h = { fn, ...extra };
    this.lists[kind].push(h);
    return { remove: () => this.remove(h) };
  }

  /** Adds `fn` for the messages of `type`. */
  addType(type, fn) {
    const h = { fn };
    if (!this.byType.has(type)) this.byType.set(type, []);
    this.byType.get(type).push(h);
    return { remove: () => this.remove(h) };
  }

  /** Takes a handler out wherever it is; false if it was not there. */
  remove(h) {
    let removed = false;
    for (const [type, list] of this.byType) {
      removed = take(list, h) || removed;
      if (!list.length) this.byType.delete(type);
    }
    for (const list of Object.values(this.lists)) removed = take(list, h) || removed;
    return removed;
  }

  /** Calls the handlers of an event (or of binary frames) with `value`. */
  emit(kind, value) {
    callAll(this.lists[kind], value, `a ${kind} handler`);
  }

  /** Calls the handlers of a message: by its type, by its room, then the catch-alls. */
  dispatch(env) {
    const label = `a handler for ${env.type}`;
    callAll(this.byType.get(env.type) || [], env, label);
    if (env.room) {
      const inRoom = this.lists.room.filter((h) => h.room === env.room && (!h.type || h.type === env.type));
      callAll(inRoom, env, label);
    }
    callAll(this.lists.any, env, label);
  }

  /** Removes every message handler (by type, catch-all, room, binary). */
  clearMessages() {
    this.byType.clear();
    this.lists.any = [];
    this.lists.room = [];
    this.lists.binary = [];
  }

  /** Removes the room handlers of `room`, or of every room. */
  clearRoom(room) {
    this.lists.room = room === undefined ? [] : this.lists.room.filter((h) => h.room !== room);
  }
}

function take(list, h) {
  const i = list.indexOf(h);
  if (i < 0) return false;
  list.splice(i, 1);
  return true;
}

// On a copy: a handler may add or remove handlers.
function callAll(list, value, label) {
  for (const h of [...list]) {
    try {
      h.fn(value);
    } catch (e) {
      console.error(`switchboard: ${label} threw`, e);
    }
  }
}
