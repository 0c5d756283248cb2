// Where the switchboard client stands in each of its streams, for dropping duplicates
// and asking for a resume (docs/protocol.md, "Streams and resume"). Re-exported by
// switchboard.js.

/**
 * Where the client is in each of its streams (its session's, the broadcasts', each
 * room's), and the session to resume: what drops duplicates and builds `resume`.
 * docs/protocol.md, "Streams and resume".
 */
export class StreamPositions {
  constructor() {
    this.sessionId = null;
    this.token = null;
    this.session = null;
    this.all = null;
    this.rooms = new Map();
    // The resumes of this session attempted so far (each `resume` counts one more).
    this.resumeAttempts = 0;
  }

  /** A `connected` payload: a fresh session, or a resumed one. */
  connected(payload) {
    this.sessionId = payload.session_id ?? null;
    this.token = payload.resume_token ?? null;
    const streams = payload.streams || {};
    const outcome = payload.resumed;
    const at = (p) => (p ? { epoch: p.epoch, offset: p.offset } : null);
    if (!outcome || !outcome.resumed) {
      this.resumeAttempts = 0;
      this.session = at(streams.session);
      this.all = at(streams.all);
      this.rooms.clear();
      return;
    }
    // Recovered streams keep the client's position (the missed messages follow);
    // the others jump to the server's.
    const settle = (mine, r) => (r && (!r.recovered || !mine || mine.epoch == null) ? at(r.position) : mine);
    this.session = settle(this.session, outcome.session);
    this.all = settle(this.all, outcome.all);
    const rooms = outcome.rooms || {};
    for (const room of [...this.rooms.keys()]) if (!(room in rooms)) this.rooms.delete(room);
    for (const [room, r] of Object.entries(rooms)) this.rooms.set(room, settle(this.rooms.get(room), r));
  }

  /** Whether `env` is new (false: a duplicate, to drop); moves its stream on. */
  accept(env) {
    if (typeof env.offset !== "number") return true;
    let pos;
    if (typeof env.room === "string") {
      pos = this.rooms.get(env.room);
      if (!pos) this.rooms.set(env.room, (pos = { epoch: null, offset: 0 }));
    } else if (env.to === "all") {
      pos = this.all || (this.all = { epoch: null, offset: 0 });
    } else {
      pos = this.session || (this.session = { epoch: null, offset: 0 });
    }
    if (env.offset <= pos.offset) return false;
    pos.offset = env.offset;
    return true;
  }

  /** A join's answer: where the room's stream is. */
  joined(room, position) {
    const pos = this.rooms.get(room);
    if (!pos || (pos.epoch != null && pos.epoch !== position.epoch)) {
      this.rooms.set(room, { epoch: position.epoch, offset: position.offset });
    } else {
      pos.epoch = position.epoch;
      pos.offset = Math.max(pos.offset, position.offset);
    }
  }

  forgetRoom(room) {
    this.rooms.delete(room);
  }

  /** The `resume` payload, or null when there is no session to resume. */
  resumeRequest(resend = []) {
    if (!this.sessionId || !this.token) return null;
    const out = (p) => (p ? { epoch: p.epoch ?? "", offset: p.offset } : undefined);
    const streams = { rooms: {} };
    if (this.session) streams.session = out(this.session);
    if (this.all) streams.all = out(this.all);
    for (const [room, p] of this.rooms) streams.rooms[room] = out(p);
    this.resumeAttempts += 1;
    return { session_id: this.sessionId, token: this.token, streams, resend, attempt: this.resumeAttempts };
  }
}
