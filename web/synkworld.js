// @ts-check
/**
 * synkworld client: a connection to a synkworld server (Client) and the object
 * cache that applies its frames (ObjectCache), for browsers and Node, with no
 * build step. It speaks the wire protocol of docs/protocol.md (version 1, JSON
 * text frames) and docs/protocol-v2.md (version 2, binary frames); the public
 * types are in synkworld.d.ts, which the end of this file checks the code against.
 *
 * Layering: constants and helpers, then the version 2 frame reader, then
 * SynkObject, then ObjectCache (frames in, objects and add/mod/rem events out,
 * no I/O), then Client (socket, reconnects, subscription, calls, ping), which
 * owns one ObjectCache.
 *
 * The one import is MessagePack, for the parts of version 2 frames that are not
 * hand-laid binary. A server serves this file at /synkworld/client.js with the
 * bare specifier below rewritten to the copy of the library it serves beside it
 * (synkworld/_client_files.py), so a page without a bundler can import it too.
 */

import { Decoder } from "@msgpack/msgpack";

/** @typedef {import("./synkworld.js").JsonValue} JsonValue */
/** @typedef {import("./synkworld.js").State} State */
/** @typedef {import("./synkworld.js").MapInfo} MapInfo */
/** @typedef {import("./synkworld.js").HelloMsg} HelloMsg */
/** @typedef {import("./synkworld.js").AddEntry} AddEntry */
/** @typedef {import("./synkworld.js").ModEntry} ModEntry */
/** @typedef {import("./synkworld.js").RemEntry} RemEntry */
/** @typedef {import("./synkworld.js").MvArrays} MvArrays */
/** @typedef {import("./synkworld.js").Batch} Batch */
/** @typedef {import("./synkworld.js").SnapshotEntry} SnapshotEntry */
/** @typedef {import("./synkworld.js").Snapshot} Snapshot */
/** @typedef {import("./synkworld.js").TickMsg} TickMsg */
/** @typedef {import("./synkworld.js").ResyncMsg} ResyncMsg */
/** @typedef {import("./synkworld.js").ClientMsg} ClientMsg */
/** @typedef {import("./synkworld.js").Rect} Rect */
/** @typedef {import("./synkworld.js").RemoveReason} RemoveReason */
/** @typedef {import("./synkworld.js").ObjectInit} ObjectInit */
/** @typedef {import("./synkworld.js").SynkObjectClass} SynkObjectClass */
/** @typedef {import("./synkworld.js").CacheEvents} CacheEvents */
/** @typedef {import("./synkworld.js").CacheOptions} CacheOptions */
/** @typedef {import("./synkworld.js").ClientEvents} ClientEvents */
/** @typedef {import("./synkworld.js").ClientOptions} ClientOptions */
/** @typedef {import("./synkworld.js").ClientState} ClientState */
/** @typedef {import("./synkworld.js").CallOptions} CallOptions */
/** @typedef {import("./synkworld.js").ViewRequest} ViewRequest */
/** @typedef {import("./synkworld.js").WebSocketLike} WebSocketLike */
/** @typedef {import("./synkworld.js").WebSocketClass} WebSocketClass */
/** @typedef {import("./synkworld.js").TypeDef} TypeDef */
/** @typedef {import("./synkworld.js").ServerMsg} ServerMsg */
/** @typedef {import("./synkworld.js").ProtocolVersion} ProtocolVersion */

// ---------------------------------------------------------------------------
// Constants

export const PROTOCOL_VERSION = 1;

export const PROTOCOL = Object.freeze(
  /** @type {const} */ ({
    VERSION: 1,
    PATH: "/ws",
    MAX_CLIENT_FRAME_BYTES: 65536,
    DEFAULT_MAP: "main",
    DEFAULT_MARGIN: 1,
    SERVER_KINDS: ["hello", "tick", "resync", "reply", "error", "pong"],
    CLIENT_KINDS: ["view", "sub", "call", "ping"],
    ERROR_CODES: [
      "bad_json",
      "bad_message",
      "unknown_message",
      "too_many_keys",
      "rate_limited",
      "forbidden",
      "no_handler",
      "bad_args",
      "handler_failed",
    ],
    CLOSE_CODES: Object.freeze({ POLICY_VIOLATION: 1008, MESSAGE_TOO_BIG: 1009, TRY_AGAIN_LATER: 1013 }),
    VERSIONS: Object.freeze(/** @type {const} */ ([1, 2])),
    SUBPROTOCOLS: Object.freeze({ 1: "synkworld.v1", 2: "synkworld.v2" }),
  }),
);

export const CLIENT_ERROR_CODES = Object.freeze(
  /** @type {const} */ ({
    TIMEOUT: "timeout",
    CLOSED: "closed",
    TOO_LARGE: "too_large",
    BAD_FRAME: "bad_frame",
    PROTO_MISMATCH: "proto_mismatch",
    CALLBACK_FAILED: "callback_failed",
    SOCKET: "socket",
  }),
);

// ---------------------------------------------------------------------------
// Errors

/** Base of every error this library reports; `code` is a protocol or client error code. */
export class SynkError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{cause?: unknown}} [options]
   */
  constructor(code, message, options) {
    super(message, options);
    this.name = "SynkError";
    /** @readonly */
    this.code = code;
  }
}

/** Rejection of `Client.call`: a server `error` frame, or "timeout" / "closed" / "too_large". */
export class SynkCallError extends SynkError {
  /**
   * @param {string} code
   * @param {string} message
   * @param {string} callName
   */
  constructor(code, message, callName) {
    super(code, message);
    this.name = "SynkCallError";
    /** @readonly */
    this.callName = callName;
  }
}

// ---------------------------------------------------------------------------
// Helpers

/**
 * @param {string} map
 * @param {number} cx
 * @param {number} cy
 * @returns {string}
 */
export function gridKey(map, cx, cy) {
  return `${map}:${cx}:${cy}`;
}

const INT = /^-?\d+$/;

/**
 * Splits `"<map>:<cx>:<cy>"` at its last two colons, so a map name may contain ':'.
 * @param {string} key
 * @returns {{map: string, cx: number, cy: number} | null}
 */
export function parseGridKey(key) {
  const j = key.lastIndexOf(":");
  const i = j > 0 ? key.lastIndexOf(":", j - 1) : -1;
  if (i <= 0) return null;
  const sx = key.slice(i + 1, j);
  const sy = key.slice(j + 1);
  if (!INT.test(sx) || !INT.test(sy)) return null;
  return { map: key.slice(0, i), cx: Number(sx), cy: Number(sy) };
}

/**
 * @param {string} map
 * @param {MapInfo} info
 * @param {number} x
 * @param {number} y
 * @returns {string}
 */
export function cellKey(map, info, x, y) {
  return gridKey(map, Math.floor((x - info.origin[0]) / info.cell), Math.floor((y - info.origin[1]) / info.cell));
}

/** @param {unknown} x @returns {x is Record<string, any>} */
const isObj = (x) => typeof x === "object" && x !== null && !Array.isArray(x);
/** @param {unknown} x @returns {x is string} */
const isStr = (x) => typeof x === "string";
/** @param {unknown} x @returns {x is number} */
const isNum = (x) => typeof x === "number" && Number.isFinite(x);
/** @param {unknown} x */
const absent = (x) => x === undefined || x === null;

/** @returns {number} */
const defaultNow = () => (typeof performance !== "undefined" ? performance.now() : Date.now());

/** @param {string} text @returns {number} */
function utf8Length(text) {
  if (text.length * 3 <= PROTOCOL.MAX_CLIENT_FRAME_BYTES) return text.length; // cannot be over
  return new TextEncoder().encode(text).length;
}

// ---------------------------------------------------------------------------
// Frame validation: the cache checks a whole frame before it changes anything,
// so a malformed frame is reported and never half-applied.

/**
 * @param {unknown} cond
 * @param {string} what
 * @returns {asserts cond}
 */
function need(cond, what) {
  if (!cond) throw new SynkError(CLIENT_ERROR_CODES.BAD_FRAME, `malformed frame: ${what}`);
}

/** @param {unknown} list @param {(x: any) => boolean} ok */
const optList = (list, ok) => absent(list) || (Array.isArray(list) && list.every(ok));

/** @param {any} e */
const okEntry = (e) => isObj(e) && isStr(e.id) && isStr(e.t) && isNum(e.v) && isObj(e.s);
/** @param {any} e */
const okAdd = (e) => okEntry(e) && (absent(e.from) || isStr(e.from));
/** @param {any} e */
const okMod = (e) => isObj(e) && isStr(e.id) && isNum(e.v) && isObj(e.d) && (absent(e.to) || isStr(e.to));
/** @param {any} e */
const okRem = (e) => isObj(e) && isStr(e.id);
/** @param {any} mv */
const okMv = (mv) =>
  Array.isArray(mv) &&
  mv.length === 3 &&
  mv.every((a) => Array.isArray(a) && a.length === mv[0].length) &&
  mv[0].every(isStr) &&
  mv[1].every(isNum) &&
  mv[2].every(isNum);
/** @param {any} s */
const okSnapshot = (s) => isObj(s) && isStr(s.k) && Array.isArray(s.objs) && s.objs.every(okEntry);

/** @param {any} b */
function checkBatch(b) {
  need(isObj(b) && isStr(b.k), "batch without key");
  need(optList(b.add, okAdd), `bad add in batch ${b.k}`);
  need(optList(b.mod, okMod), `bad mod in batch ${b.k}`);
  need(absent(b.mv) || okMv(b.mv), `bad mv in batch ${b.k}`);
  need(optList(b.rem, okRem), `bad rem in batch ${b.k}`);
}

/** @param {any} msg @returns {asserts msg is TickMsg} */
function checkTick(msg) {
  need(isObj(msg) && msg.m === "tick" && isNum(msg.n), "tick without n");
  need(absent(msg.b) || Array.isArray(msg.b), "tick b is not a list");
  for (const b of msg.b ?? []) checkBatch(b);
  need(absent(msg.sub) || isObj(msg.sub), "tick sub is not an object");
  need(optList(msg.sub?.add, isStr) && optList(msg.sub?.rem, isStr), "tick sub keys are not strings");
  need(optList(msg.snap, okSnapshot), "bad snapshot in tick");
}

/** @param {any} msg @returns {asserts msg is ResyncMsg} */
function checkResync(msg) {
  need(isObj(msg) && msg.m === "resync" && isNum(msg.n), "resync without n");
  need(Array.isArray(msg.snap) && msg.snap.every(okSnapshot), "bad snapshot in resync");
}

/** @param {any} msg @returns {asserts msg is HelloMsg} */
function checkHello(msg) {
  need(isObj(msg) && msg.m === "hello" && isNum(msg.proto) && isStr(msg.sid), "bad hello");
  need(isNum(msg.tick) && isNum(msg.rate) && isObj(msg.maps), "bad hello");
  for (const info of Object.values(msg.maps)) {
    need(isObj(info) && Array.isArray(info.pos) && info.pos.length === 2 && info.pos.every(isStr), "bad map in hello");
  }
}

// ---------------------------------------------------------------------------
// Protocol version 2 (docs/protocol-v2.md): binary frames. Reading them is the
// hot path of a busy client (a frame of a few hundred objects, mostly 3-byte
// motion entries, every tick), so the hand-laid parts are read with plain loops
// over the bytes, and MessagePack only decodes the parts that are MessagePack.

const V2_TICK = 0x01;
const V2_RESYNC = 0x02;
const V2_MESSAGE = 0x03;

// Tick frame parts, then batch parts, in the order they follow each other.
const TICK_TYPES = 0x01;
const TICK_SUB_REM = 0x02;
const TICK_SUB_ADD = 0x04;
const TICK_BATCHES = 0x08;
const TICK_SNAPS = 0x10;
const BATCH_REM = 0x01;
const BATCH_LEAVE = 0x02;
const BATCH_ENTRIES = 0x04;
/** Motion entries without slots: every object the entries did not name, in slot order. */
const BATCH_DENSE = 0x08;
/** A batch's head is its motion count times 16, plus its bits. */
const BATCH_HEAD = 16;

/** One decoder for every frame: building one per frame would cost more than most frames. */
const msgpack = new Decoder();
/** Channel keys must be valid UTF-8: a key that is not is a broken frame, not a new key. */
const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * What the cache knows of one type of this session: its field names, and the
 * names of its two position fields (null for a type without a position).
 * @typedef {{num: number, key: string, fields: string[], fx: string | null, fy: string | null,
 *   ix: number, iy: number}} TypeInfo
 */

/** A map as version 2 numbers it: its name and the factor of its position integers. @typedef {{name: string, scale: number}} MapNum */

/**
 * An object's place in a version 2 session: its slot in the table of its key,
 * and its position integers (NaN when it has none).
 * @typedef {{obj: SynkObject, type: TypeInfo, key: string, slot: number, x: number, y: number, scale: number}} SlotRecord
 */

/**
 * Where one batch's parts are in its frame (byte offsets and counts), and its
 * decoded entries (null when absent or not held).
 * @typedef {{key: string, scale: number, held: boolean, rem: number, remN: number, leave: number, leaveN: number,
 *   adds: any[][] | null, mods: any[][] | null, motion: number, motionN: number, dense: boolean}} BatchPlan
 */

/**
 * A cursor over one frame. Every read checks the end, so that a truncated or
 * garbled frame fails as `bad_frame` instead of reading past it.
 */
class Reader {
  /** @param {Uint8Array} buf */
  constructor(buf) {
    this.buf = buf;
    this.pos = 0;
    this.end = buf.length;
    /** The factor of the position integers under the last key read: 10^prec of its map, 1 for a channel key. */
    this.scale = 1;
  }

  u8() {
    if (this.pos >= this.end) need(false, "truncated frame");
    return this.buf[this.pos++];
  }

  /** An unsigned LEB128 varint, exact up to 2^53. */
  varint() {
    const buf = this.buf;
    let pos = this.pos;
    if (pos >= this.end) need(false, "truncated frame");
    let b = buf[pos++];
    if (b < 0x80) {
      this.pos = pos;
      return b;
    }
    // Multiplies instead of shifting: JavaScript shifts are 32-bit, varints reach 53 bits.
    let n = b & 0x7f;
    let mul = 0x80;
    for (let i = 1; ; i++) {
      need(i < 10 && pos < this.end, "bad varint");
      b = buf[pos++];
      n += (b & 0x7f) * mul;
      if (b < 0x80) break;
      mul *= 0x80;
    }
    this.pos = pos;
    return n;
  }

  /** A zigzag-coded signed integer. */
  zigzag() {
    const n = this.varint();
    if (n < 0x80000000) return (n >>> 1) ^ -(n & 1);
    return n % 2 === 0 ? n / 2 : -(n + 1) / 2;
  }

  /**
   * A MessagePack value behind its varint length.
   * @returns {unknown}
   */
  mp() {
    const len = this.varint();
    const start = this.pos;
    need(len <= this.end - start, "truncated frame");
    this.pos = start + len;
    try {
      return msgpack.decode(this.buf.subarray(start, start + len));
    } catch (err) {
      need(false, `bad MessagePack: ${err instanceof Error ? err.message : err}`);
    }
  }

  /** Skips a MessagePack value behind its varint length. */
  skipMp() {
    const len = this.varint();
    need(len <= this.end - this.pos, "truncated frame");
    this.pos += len;
  }

  /**
   * A subscription key, as its version 1 string.
   * @param {readonly (MapNum | undefined)[]} maps
   * @returns {string}
   */
  key(maps) {
    const tag = this.varint();
    if (tag === 0) {
      this.scale = 1;
      const len = this.varint();
      const start = this.pos;
      need(len <= this.end - start, "truncated frame");
      this.pos = start + len;
      try {
        return utf8.decode(this.buf.subarray(start, start + len));
      } catch {
        need(false, "channel key is not UTF-8");
      }
    }
    const map = maps[tag - 1];
    need(map !== undefined, `key of map number ${tag - 1}, which the hello did not name`);
    const cx = this.zigzag();
    const cy = this.zigzag();
    this.scale = map.scale;
    return `${map.name}:${cx}:${cy}`;
  }

  done() {
    need(this.pos === this.end, "bytes after the end of the frame");
  }
}

/** @param {unknown} x @returns {x is number} */
const isSlot = (x) => typeof x === "number" && Number.isInteger(x) && x >= 0;

/**
 * Reads type definitions (`[number, type key, field names, position]`).
 * @param {unknown} defs
 * @returns {TypeInfo[]}
 */
function readTypes(defs) {
  need(Array.isArray(defs), "types is not a list");
  return defs.map((d) => {
    need(Array.isArray(d) && d.length === 4 && isSlot(d[0]) && isStr(d[1]), "bad type definition");
    const [num, key, fields, pos] = d;
    need(Array.isArray(fields) && fields.every(isStr), `bad field names of type ${key}`);
    need(
      absent(pos) || (Array.isArray(pos) && pos.length === 2 && pos.every((i) => isSlot(i) && i < fields.length)),
      `bad position of type ${key}`,
    );
    const [ix, iy] = absent(pos) ? [-1, -1] : pos;
    return { num, key, fields, fx: ix < 0 ? null : fields[ix], fy: iy < 0 ? null : fields[iy], ix, iy };
  });
}

/**
 * Checks a list of adds or snapshot entries, `[slot, id, type number, version, state]`.
 * @param {unknown} adds
 * @param {(num: number) => TypeInfo | undefined} typeOf
 * @returns {any[][]}
 */
function checkAdds(adds, typeOf) {
  need(Array.isArray(adds), "adds is not a list");
  for (const a of adds) {
    need(Array.isArray(a) && a.length === 5 && isSlot(a[0]) && isStr(a[1]) && isSlot(a[2]) && isNum(a[3]), "bad add");
    const type = typeOf(a[2]);
    need(type !== undefined, `add of type number ${a[2]}, which no definition named`);
    need(Array.isArray(a[4]) && a[4].length === type.fields.length, `bad state of object ${a[1]}`);
  }
  return adds;
}

/**
 * Checks a list of mods, `[slot, version, {field index: value}]`.
 * @param {unknown} mods
 * @returns {any[][]}
 */
function checkMods(mods) {
  need(Array.isArray(mods), "mods is not a list");
  for (const m of mods) need(Array.isArray(m) && m.length === 3 && isSlot(m[0]) && isNum(m[1]) && isObj(m[2]), "bad mod");
  return mods;
}

/**
 * The bytes of a binary WebSocket message, or null for what is not binary.
 * @param {unknown} data
 * @returns {Uint8Array | null}
 */
function bytesOf(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null;
}

/**
 * The MessagePack map of a message frame (`03`): hello, reply, error or pong.
 * @param {Uint8Array} bytes
 * @returns {Record<string, any>}
 */
function decodeMessage(bytes) {
  /** @type {unknown} */
  let msg;
  try {
    msg = msgpack.decode(bytes.subarray(1));
  } catch (err) {
    need(false, `bad MessagePack: ${err instanceof Error ? err.message : err}`);
  }
  need(isObj(msg) && isStr(msg.m), "message frame is not a map with m");
  return msg;
}

// ---------------------------------------------------------------------------
// Events

/**
 * A minimal event emitter. A listener that throws is reported as an `error`
 * event and never stops the others (or the frame being applied).
 * @template {Record<keyof E, (...args: any[]) => void>} E
 */
class Emitter {
  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();

  /**
   * Adds a listener; returns a function that removes it.
   * @template {keyof E & string} K
   * @param {K} name
   * @param {E[K]} fn
   * @returns {() => void}
   */
  on(name, fn) {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    set.add(fn);
    return () => this.off(name, fn);
  }

  /**
   * @template {keyof E & string} K
   * @param {K} name
   * @param {E[K]} fn
   */
  off(name, fn) {
    this.#listeners.get(name)?.delete(fn);
  }

  /**
   * @protected
   * @template {keyof E & string} K
   * @param {K} name
   * @param {Parameters<E[K]>} args
   */
  emit(name, ...args) {
    const set = this.#listeners.get(name);
    if (!set || set.size === 0) {
      if (name === "error") console.error(args[0]);
      return;
    }
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        if (name === "error") console.error(err);
        else this.fail(`an "${name}" listener`, err);
      }
    }
  }

  /**
   * Reports a throwing user callback as a "callback_failed" error event.
   * @protected
   * @param {string} what
   * @param {unknown} err
   */
  fail(what, err) {
    const error = new SynkError(CLIENT_ERROR_CODES.CALLBACK_FAILED, `${what} threw: ${err}`, { cause: err });
    /** @type {Emitter<{error: (err: SynkError) => void}>} */ (/** @type {unknown} */ (this)).emit("error", error);
  }
}

// ---------------------------------------------------------------------------
// Objects

/**
 * Interpolation state per object, kept out of the object so subclasses see no
 * internals: for each field, the segment being shown.
 * @typedef {{from: number, to: number, t0: number, dur: number}} Segment
 * @type {WeakMap<SynkObject, {now: () => number, segs: Map<string, Segment>}>}
 */
const motion = new WeakMap();

/** @param {Segment} seg @param {number} t */
function segmentAt(seg, t) {
  if (seg.dur <= 0 || t >= seg.t0 + seg.dur) return seg.to;
  if (t <= seg.t0) return seg.from;
  return seg.from + ((seg.to - seg.from) * (t - seg.t0)) / seg.dur;
}

/** @param {SynkObject} obj @returns {readonly string[]} */
function interpolatedFields(obj) {
  const fields = /** @type {SynkObjectClass} */ (/** @type {unknown} */ (obj.constructor)).interpolate;
  return Array.isArray(fields) ? fields : [];
}

/**
 * Base class of every cached object. Subclass it, register the subclass for a
 * type, and override the hooks: `init(state)` once after creation, `update(diff,
 * msg)` after every change, `teardown(reason)` once when it leaves. Do not
 * override the constructor (if you must, pass its argument to super unchanged).
 */
export class SynkObject {
  /** Numeric state fields that `lerp` interpolates between ticks; none by default. */
  static interpolate = /** @type {readonly string[]} */ ([]);

  /** @param {ObjectInit} init */
  constructor(init) {
    /** @readonly */
    this.id = init.id;
    /** @readonly */
    this.type = init.t;
    /** The key the object is held under; maintained by the cache. */
    this.key = init.key;
    this.version = init.v;
    /** @type {State} @readonly */
    this.state = { ...init.s };
  }

  /**
   * Hook: called once with the initial state, after construction and before the `add` event.
   * @param {State} state
   */
  // eslint-disable-next-line no-unused-vars
  init(state) {}

  /**
   * Hook: called after a change was applied to `state`.
   * @param {State} diff
   * @param {ModEntry | AddEntry | SnapshotEntry} msg
   */
  // eslint-disable-next-line no-unused-vars
  update(diff, msg) {}

  /**
   * Hook: called once when the object leaves the cache, after the `rem` event.
   * @param {RemoveReason} reason
   */
  // eslint-disable-next-line no-unused-vars
  teardown(reason) {}

  /**
   * The static `interpolate` fields, each between the value shown before its last
   * change and the new value, over one server tick from when the change arrived.
   * @param {number} [nowMs] on the cache's clock (default: that clock's now)
   * @returns {Record<string, number>}
   */
  lerp(nowMs) {
    const rec = motion.get(this);
    const t = nowMs ?? (rec ? rec.now() : defaultNow());
    /** @type {Record<string, number>} */
    const out = {};
    for (const f of interpolatedFields(this)) {
      const seg = rec?.segs.get(f);
      const v = seg ? segmentAt(seg, t) : this.state[f];
      if (typeof v === "number") out[f] = v;
    }
    return out;
  }
}

// ---------------------------------------------------------------------------
// Cache

/**
 * Applies server frames to a set of objects held by id and by key, in the order
 * docs/protocol.md fixes; knows nothing of sockets, so any test can feed it frames.
 *
 * The keys it holds come only from the frames (`sub.add`, `sub.rem`, `resync`),
 * never from what the client asked for.
 * @extends {Emitter<CacheEvents>}
 */
export class ObjectCache extends Emitter {
  /** @type {Map<string, SynkObjectClass>} */
  #classes = new Map();
  /** @type {Map<string, SynkObject>} */
  #byId = new Map();
  /** @type {Map<string, Set<SynkObject>>} */
  #byKey = new Map();
  /** @type {Set<string>} */
  #held = new Set();
  /** Ids kept from a previous session that no snapshot of this one has named yet. @type {Set<string>} */
  #stale = new Set();
  /** @type {Record<string, MapInfo>} */
  #maps = Object.create(null);
  #tickMs = 0;
  /** @type {() => number} */
  #now;

  // Version 2 only. Batches name objects by their slot in a cell, so each held
  // key has a slot table; an object's record keeps its slot and its position
  // integers, to which motion deltas add exactly (the shown values are these
  // divided by 10^prec, which float arithmetic could not carry tick after tick).
  /** The version of the last hello: tick and resync bytes are read only after a version 2 one. */
  #helloProto = 0;
  /** Maps by their hello number. @type {(MapNum | undefined)[]} */
  #mapNums = [];
  /** Types by their number. @type {(TypeInfo | undefined)[]} */
  #types = [];
  /** Held key -> slot -> record. @type {Map<string, (SlotRecord | undefined)[]>} */
  #slots = new Map();
  /** @type {Map<SynkObject, SlotRecord>} */
  #records = new Map();
  /** Objects that left a cell in this frame for a key that should carry them on. @type {Set<SlotRecord>} */
  #leaving = new Set();

  /** @param {CacheOptions} [options] */
  constructor(options = {}) {
    super();
    this.#now = options.now ?? defaultNow;
    for (const [type, cls] of Object.entries(options.classes ?? {})) this.register(type, cls);
  }

  /**
   * Sets the class built for objects of `type` from now on.
   * @param {string} type
   * @param {SynkObjectClass} cls
   */
  register(type, cls) {
    if (typeof cls !== "function") throw new TypeError(`register(${JSON.stringify(type)}): not a class`);
    this.#classes.set(type, cls);
  }

  get maps() {
    return /** @type {Readonly<Record<string, MapInfo>>} */ (this.#maps);
  }

  get tickMs() {
    return this.#tickMs;
  }

  /** @returns {ReadonlySet<string>} */
  get held() {
    return this.#held;
  }

  get size() {
    return this.#byId.size;
  }

  get staleCount() {
    return this.#stale.size;
  }

  /** @param {string} id */
  get(id) {
    return this.#byId.get(id);
  }

  /**
   * @param {string} key
   * @returns {SynkObject[]}
   */
  inKey(key) {
    return [...(this.#byKey.get(key) ?? [])];
  }

  objects() {
    return this.#byId.values();
  }

  /**
   * Applies one server frame: a parsed version 1 frame (hello, tick or resync), or
   * the bytes of a version 2 frame; other kinds return false.
   * @param {unknown} frame
   * @returns {boolean}
   */
  apply(frame) {
    if (bytesOf(frame)) {
      const m = this.applyBinary(/** @type {Uint8Array} */ (frame)).m;
      return m === "hello" || m === "tick" || m === "resync";
    }
    need(isObj(frame), "not an object");
    switch (frame.m) {
      case "hello":
        this.applyHello(/** @type {HelloMsg} */ (frame));
        return true;
      case "tick":
        this.applyTick(/** @type {TickMsg} */ (frame));
        return true;
      case "resync":
        this.applyResync(/** @type {ResyncMsg} */ (frame));
        return true;
      default:
        return false;
    }
  }

  /** @param {HelloMsg} msg */
  applyHello(msg) {
    checkHello(msg);
    /** @type {(MapNum | undefined)[]} */
    const nums = [];
    /** @type {(TypeInfo | undefined)[]} */
    const types = [];
    if (msg.proto === 2) {
      for (const [name, info] of Object.entries(msg.maps)) {
        need(isSlot(info.num) && nums[info.num] === undefined, `bad map number in hello: ${name}`);
        need(isSlot(info.prec), `bad prec of map ${name}`);
        nums[info.num] = { name, scale: 10 ** info.prec };
      }
      for (const t of readTypes(msg.types)) types[t.num] = t;
    }
    this.#maps = Object.assign(Object.create(null), msg.maps);
    this.#tickMs = msg.rate > 0 ? 1000 / msg.rate : 0;
    this.#mapNums = nums;
    this.#types = types;
    this.#helloProto = msg.proto;
  }

  /**
   * Applies the bytes of one version 2 frame (docs/protocol-v2.md). A tick or
   * resync is applied and returned as a summary (`n`, `sub`, and the snapshots
   * in version 1 shape; not the batches); a message frame is decoded and
   * returned, and applied when it is the hello. Throws SynkError("bad_frame")
   * before changing anything if the frame is malformed.
   * @param {Uint8Array | ArrayBuffer} data
   * @returns {ServerMsg}
   */
  applyBinary(data) {
    const bytes = bytesOf(data);
    need(bytes && bytes.length > 0, "empty frame");
    const kind = bytes[0];
    if (kind === V2_MESSAGE) {
      const msg = decodeMessage(bytes);
      if (msg.m === "hello") this.applyHello(/** @type {HelloMsg} */ (msg));
      return /** @type {ServerMsg} */ (msg);
    }
    need(kind === V2_TICK || kind === V2_RESYNC, `unknown frame kind ${kind}`);
    need(this.#helloProto === 2, "a version 2 tick or resync before a version 2 hello");
    const r = new Reader(bytes);
    r.pos = 1;
    return kind === V2_TICK ? this.#applyTick2(r) : this.#applyResync2(r);
  }

  /**
   * Batches (against the keys held before this frame), then `sub.rem`, then
   * `sub.add`, then snapshots.
   * @param {TickMsg} msg
   */
  applyTick(msg) {
    checkTick(msg);
    const subAdd = new Set(msg.sub?.add ?? []);
    for (const batch of msg.b ?? []) this.#applyBatch(batch, subAdd);
    for (const key of msg.sub?.rem ?? []) this.#dropKey(key);
    for (const key of subAdd) this.#held.add(key);
    for (const snap of msg.snap ?? []) {
      // A snapshot is of a newly held key; one for a key not held would leave
      // objects nothing will ever remove, so it is ignored like a stray batch.
      if (this.#held.has(snap.k)) this.#applySnapshot(snap);
    }
  }

  /**
   * The cache then holds exactly the snapshots' keys and objects.
   * @param {ResyncMsg} msg
   */
  applyResync(msg) {
    checkResync(msg);
    const keep = new Set(msg.snap.flatMap((s) => s.objs.map((o) => o.id)));
    for (const obj of [...this.#byId.values()]) {
      if (!keep.has(obj.id)) this.#remove(obj, null, "resync");
    }
    // Frames dropped before a resync may have changed the subscription, so the
    // held keys are taken from the snapshots too.
    this.#held.clear();
    for (const snap of msg.snap) this.#held.add(snap.k);
    for (const snap of msg.snap) for (const entry of snap.objs) this.#upsert(entry, snap.k);
    this.#stale.clear();
  }

  /** Starts a new server session: no key held; every object stale until a snapshot names it. */
  beginSession() {
    this.#held.clear();
    this.#slots.clear();
    this.#records.clear();
    this.#stale = new Set(this.#byId.keys());
  }

  /** Tears down every object still stale. */
  settle() {
    for (const id of [...this.#stale]) {
      const obj = this.#byId.get(id);
      if (obj) this.#remove(obj, null, "session");
    }
    this.#stale.clear();
  }

  /**
   * Tears down every object and forgets every key.
   * @param {RemoveReason} [reason]
   */
  clear(reason = "closed") {
    for (const obj of [...this.#byId.values()]) this.#remove(obj, null, reason);
    this.#held.clear();
    this.#slots.clear();
    this.#stale.clear();
  }

  // -- version 2 ------------------------------------------------------------
  // Each frame is read twice: once whole, to check it and to note where its
  // parts are, so that a broken frame changes nothing, then again to apply it.
  // Only the hand-laid parts are read twice (a few hundred bytes); MessagePack once.

  /**
   * @param {number} num
   * @returns {TypeInfo | undefined}
   */
  #typeOf = (num) => this.#types[num];

  /**
   * @param {Reader} r
   * @returns {TickMsg}
   */
  #applyTick2(r) {
    const n = r.varint();
    const parts = r.u8();
    need((parts & ~0x1f) === 0, `unknown tick parts ${parts}`);
    const added = this.#frameTypes(r, parts);
    const typeOf = this.#typesWith(added);
    const subRem = parts & TICK_SUB_REM ? this.#readKeys(r) : [];
    const subAdd = parts & TICK_SUB_ADD ? this.#readKeys(r) : [];
    /** @type {BatchPlan[]} */
    const batches = [];
    if (parts & TICK_BATCHES) {
      for (let i = r.varint(); i > 0; i--) batches.push(this.#readBatch(r, typeOf));
    }
    /** @type {{key: string, scale: number, adds: any[][]}[]} */
    const snaps = [];
    if (parts & TICK_SNAPS) {
      for (let i = r.varint(); i > 0; i--) {
        const key = r.key(this.#mapNums);
        snaps.push({ key, scale: r.scale, adds: checkAdds(r.mp(), typeOf) });
      }
    }
    r.done();

    // The frame is sound: apply it, in the order of docs/protocol-v2.md.
    for (const t of added) this.#types[t.num] = t;
    const subAddSet = new Set(subAdd);
    this.#leaving.clear();
    for (const b of batches) if (b.held) this.#applyBatch2(r, b, subAddSet);
    for (const key of subRem) this.#dropKey(key);
    for (const key of subAdd) {
      this.#held.add(key);
      if (!this.#slots.has(key)) this.#slots.set(key, []);
    }
    /** @type {Snapshot[]} */
    const snap = [];
    for (const s of snaps) {
      // As in version 1: a snapshot of a key not held would leave objects that
      // nothing removes, so it is ignored like a stray batch.
      if (this.#held.has(s.key)) snap.push(this.#applySnapshot2(s.key, s.scale, s.adds));
    }
    this.#dropLeavers();
    /** @type {TickMsg} */
    const msg = { m: "tick", n };
    if (subAdd.length > 0 || subRem.length > 0) msg.sub = { add: subAdd, rem: subRem };
    if (snap.length > 0) msg.snap = snap;
    return msg;
  }

  /**
   * @param {Reader} r
   * @returns {ResyncMsg}
   */
  #applyResync2(r) {
    const n = r.varint();
    const parts = r.u8();
    need((parts & ~TICK_TYPES) === 0, `unknown resync parts ${parts}`);
    const added = this.#frameTypes(r, parts);
    const typeOf = this.#typesWith(added);
    /** @type {{key: string, scale: number, adds: any[][]}[]} */
    const snaps = [];
    for (let i = r.varint(); i > 0; i--) {
      const key = r.key(this.#mapNums);
      snaps.push({ key, scale: r.scale, adds: checkAdds(r.mp(), typeOf) });
    }
    r.done();

    for (const t of added) this.#types[t.num] = t;
    const keep = new Set(snaps.flatMap((s) => s.adds.map((a) => a[1])));
    for (const obj of [...this.#byId.values()]) {
      if (!keep.has(obj.id)) this.#remove(obj, null, "resync");
    }
    this.#held.clear();
    this.#slots.clear();
    /** @type {(SlotRecord | undefined)[][]} */
    const tables = snaps.map((s) => {
      this.#held.add(s.key);
      /** @type {(SlotRecord | undefined)[]} */
      const table = [];
      this.#slots.set(s.key, table);
      return table;
    });
    this.#leaving.clear();
    // Not #applySnapshot2: an object may have moved from one held key to another
    // while frames were dropped, so a snapshot not naming it is no reason to drop it.
    const snap = snaps.map((s, i) => ({ k: s.key, objs: s.adds.map((a) => this.#place(a, s.key, s.scale, tables[i])) }));
    this.#stale.clear();
    return { m: "resync", n, snap };
  }

  /**
   * Reads a frame's `types` part, if it has one (`parts & TICK_TYPES`).
   * @param {Reader} r
   * @param {number} parts
   * @returns {TypeInfo[]}
   */
  #frameTypes(r, parts) {
    return parts & TICK_TYPES ? readTypes(r.mp()) : [];
  }

  /**
   * The types as they will be once a frame's new definitions are applied: the
   * entries of a frame may use the types it defines.
   * @param {TypeInfo[]} added
   * @returns {(num: number) => TypeInfo | undefined}
   */
  #typesWith(added) {
    if (added.length === 0) return this.#typeOf;
    const byNum = new Map(added.map((t) => [t.num, t]));
    return (num) => byNum.get(num) ?? this.#types[num];
  }

  /**
   * @param {Reader} r
   * @returns {string[]}
   */
  #readKeys(r) {
    const keys = [];
    for (let i = r.varint(); i > 0; i--) keys.push(r.key(this.#mapNums));
    return keys;
  }

  /**
   * Reads one batch: checks it, and notes where its parts are. The entries of
   * a batch the client does not hold are skipped, not decoded.
   * @param {Reader} r
   * @param {(num: number) => TypeInfo | undefined} typeOf
   * @returns {BatchPlan}
   */
  #readBatch(r, typeOf) {
    const maps = this.#mapNums;
    const key = r.key(maps);
    const scale = r.scale;
    const held = this.#held.has(key);
    const head = r.varint();
    const parts = head % BATCH_HEAD;
    const dense = (parts & BATCH_DENSE) !== 0;
    /** @type {BatchPlan} */
    const b = { key, scale, held, rem: 0, remN: 0, leave: 0, leaveN: 0, adds: null, mods: null, motion: 0, motionN: 0, dense };
    if (parts & BATCH_REM) {
      b.remN = r.varint();
      b.rem = r.pos;
      for (let i = b.remN; i > 0; i--) r.varint();
    }
    if (parts & BATCH_LEAVE) {
      b.leaveN = r.varint();
      b.leave = r.pos;
      for (let i = b.leaveN; i > 0; i--) {
        r.varint();
        r.key(maps);
      }
    }
    if (parts & BATCH_ENTRIES) {
      if (held) {
        const entries = r.mp();
        need(Array.isArray(entries) && entries.length === 2, `bad entries in ${key}`);
        b.adds = checkAdds(entries[0], typeOf);
        b.mods = checkMods(entries[1]);
      } else {
        r.skipMp();
      }
    }
    b.motionN = (head - parts) / BATCH_HEAD;
    b.motion = r.pos;
    for (let i = b.motionN * (dense ? 2 : 3); i > 0; i--) r.varint();
    return b;
  }

  /**
   * One cell's batch, in the order of docs/protocol-v2.md: rem, leave, adds, mods, motion.
   * @param {Reader} r
   * @param {BatchPlan} b
   * @param {ReadonlySet<string>} subAdd
   */
  #applyBatch2(r, b, subAdd) {
    const key = b.key;
    let table = this.#slots.get(key);
    if (!table) this.#slots.set(key, (table = []));
    r.pos = b.rem;
    for (let i = b.remN; i > 0; i--) {
      const rec = table[r.varint()];
      if (rec) this.#remove(rec.obj, { id: rec.obj.id }, "deleted");
    }
    r.pos = b.leave;
    for (let i = b.leaveN; i > 0; i--) {
      const slot = r.varint();
      const to = r.key(this.#mapNums);
      const rec = table[slot];
      // Empty, or the new cell's batch came first and moved the object already.
      if (!rec || rec.key !== key) continue;
      table[slot] = undefined;
      rec.slot = -1;
      const obj = rec.obj;
      if (this.#held.has(to) || subAdd.has(to)) {
        // The add in the new key's batch, or its snapshot, carries the object on.
        // Held under the new key from now, so a sub.rem of this one spares it.
        this.#move(obj, to);
        rec.key = to;
        this.#leaving.add(rec);
      } else {
        this.#remove(obj, { id: obj.id, v: obj.version, d: {}, to }, "moved_out");
      }
    }
    for (const a of b.adds ?? []) this.#place(a, key, b.scale, table);
    for (const m of b.mods ?? []) {
      const rec = table[m[0]];
      if (rec && m[1] > rec.obj.version) this.#applyMod2(rec, m[1], m[2]);
    }
    if (b.motionN === 0) return;
    r.pos = b.motion;
    if (!b.dense) {
      for (let i = b.motionN; i > 0; i--) {
        const rec = table[r.varint()];
        const dx = r.zigzag();
        const dy = r.zigzag();
        if (rec !== undefined) this.#move2(rec, dx, dy);
      }
      return;
    }
    // Dense: the entries are, in slot order, every object of the cell now
    // that the adds and mods did not name.
    const named = b.adds?.length || b.mods?.length ? new Set([...(b.adds ?? []), ...(b.mods ?? [])].map((e) => e[0])) : null;
    let others = 0;
    for (let s = 0; s < table.length; s++) if (table[s] !== undefined && !named?.has(s)) others++;
    if (others !== b.motionN) {
      // Found while applying, when a throw would leave the frame half-applied: reported, skipped.
      const what = `dense motion of ${b.motionN} objects in ${key}, which holds ${others} others`;
      this.emit("error", new SynkError(CLIENT_ERROR_CODES.BAD_FRAME, `malformed frame: ${what}`));
      return;
    }
    let s = 0;
    for (let i = b.motionN; i > 0; i--) {
      while (table[s] === undefined || (named !== null && named.has(s))) s++;
      const rec = /** @type {SlotRecord} */ (table[s++]);
      const dx = r.zigzag();
      const dy = r.zigzag();
      this.#move2(rec, dx, dy);
    }
  }

  /**
   * A motion entry: the deltas added to the position integers, the version up by one.
   * @param {SlotRecord} rec
   * @param {number} dx
   * @param {number} dy
   */
  #move2(rec, dx, dy) {
    const fx = rec.type.fx;
    const fy = rec.type.fy;
    if (fx === null || fy === null) return;
    rec.x += dx;
    rec.y += dy;
    const obj = rec.obj;
    /** @type {State} */
    const d = {};
    d[fx] = rec.x / rec.scale;
    d[fy] = rec.y / rec.scale;
    const v = obj.version + 1;
    this.#change(obj, d, v, { id: obj.id, v, d });
  }

  /**
   * @param {SlotRecord} rec
   * @param {number} v
   * @param {Record<string, unknown>} diff field index -> value
   */
  #applyMod2(rec, v, diff) {
    const type = rec.type;
    /** @type {State} */
    const d = {};
    for (const k in diff) {
      const i = Number(k);
      const name = type.fields[i];
      if (name === undefined) continue; // no field of this type: nothing to name it by
      let value = /** @type {JsonValue} */ (diff[k]);
      if (typeof value === "number" && (i === type.ix || i === type.iy)) {
        if (i === type.ix) rec.x = value;
        else rec.y = value;
        value = value / rec.scale;
      }
      d[name] = value;
    }
    this.#change(rec.obj, d, v, { id: rec.obj.id, v, d });
  }

  /**
   * A version 2 snapshot: the key's slots become the snapshot's; objects under
   * the key that it does not name are torn down.
   * @param {string} key
   * @param {number} scale
   * @param {any[][]} adds
   * @returns {Snapshot}
   */
  #applySnapshot2(key, scale, adds) {
    const ids = new Set(adds.map((a) => a[1]));
    for (const obj of this.inKey(key)) {
      if (!ids.has(obj.id)) this.#remove(obj, null, this.#stale.has(obj.id) ? "session" : "snapshot");
    }
    /** @type {(SlotRecord | undefined)[]} */
    const table = [];
    this.#slots.set(key, table);
    return { k: key, objs: adds.map((a) => this.#place(a, key, scale, table)) };
  }

  /**
   * An add or snapshot entry `[slot, id, type number, version, state]`: creates
   * the object, or replaces the state of the one with that id (same instance,
   * wherever it was held), and gives it the slot.
   * @param {any[]} a
   * @param {string} key
   * @param {number} scale
   * @param {(SlotRecord | undefined)[]} table
   * @returns {SnapshotEntry}
   */
  #place(a, key, scale, table) {
    const slot = /** @type {number} */ (a[0]);
    const id = /** @type {string} */ (a[1]);
    const type = /** @type {TypeInfo} */ (this.#types[a[2]]);
    const values = /** @type {JsonValue[]} */ (a[4]);
    const fields = type.fields;
    /** @type {State} */
    const s = {};
    for (let i = 0; i < fields.length; i++) s[fields[i]] = values[i];
    let x = NaN;
    let y = NaN;
    if (type.fx !== null && type.fy !== null) {
      const vx = values[type.ix];
      const vy = values[type.iy];
      if (typeof vx === "number") s[type.fx] = (x = vx) / scale;
      if (typeof vy === "number") s[type.fy] = (y = vy) / scale;
    }
    const entry = { id, t: type.key, v: /** @type {number} */ (a[3]), s };
    this.#upsert(entry, key);
    const obj = this.#byId.get(id);
    if (!obj) return entry; // a listener of the add removed it again
    let rec = this.#records.get(obj);
    if (rec) {
      this.#freeSlot(rec);
      this.#leaving.delete(rec);
    } else {
      this.#records.set(obj, (rec = { obj, type, key, slot, x, y, scale }));
    }
    rec.type = type;
    rec.key = key;
    rec.slot = slot;
    rec.x = x;
    rec.y = y;
    rec.scale = scale;
    const prev = table[slot];
    if (prev && prev !== rec) prev.slot = -1; // the server gave a slot still taken
    table[slot] = rec;
    return entry;
  }

  /** @param {SlotRecord} rec */
  #freeSlot(rec) {
    if (rec.slot < 0) return;
    const table = this.#slots.get(rec.key);
    if (table && table[rec.slot] === rec) table[rec.slot] = undefined;
    rec.slot = -1;
  }

  /** Objects that left a cell for a key that then carried nothing of them: gone. */
  #dropLeavers() {
    if (this.#leaving.size === 0) return;
    const left = [...this.#leaving];
    this.#leaving.clear();
    for (const rec of left) {
      if (this.#byId.get(rec.obj.id) === rec.obj) this.#remove(rec.obj, null, "moved_out");
    }
  }

  /**
   * @param {Batch} batch
   * @param {ReadonlySet<string>} subAdd this frame's sub.add
   */
  #applyBatch(batch, subAdd) {
    // The server sends batches only for keys this session held before the frame.
    if (!this.#held.has(batch.k)) return;
    for (const entry of batch.add ?? []) {
      // A holder of `from` gets the move from the old cell's mod. If it does not
      // have the object at all (nothing else could bring it), the add builds it.
      if (!absent(entry.from) && this.#held.has(/** @type {string} */ (entry.from)) && this.#byId.has(entry.id)) {
        continue;
      }
      this.#upsert(entry, batch.k);
    }
    for (const entry of batch.mod ?? []) this.#applyMod(entry, subAdd);
    if (batch.mv) this.#applyMv(batch.mv, batch.k);
    for (const entry of batch.rem ?? []) {
      const obj = this.#byId.get(entry.id);
      if (obj) this.#remove(obj, entry, "deleted");
    }
  }

  /**
   * @param {ModEntry} entry
   * @param {ReadonlySet<string>} subAdd
   */
  #applyMod(entry, subAdd) {
    const obj = this.#byId.get(entry.id);
    if (!obj || entry.v <= obj.version) return;
    const to = entry.to;
    if (!absent(to) && to !== obj.key) {
      // This frame's sub.add counts as held here only: its snapshot follows and
      // names the object, which so keeps its identity.
      if (!this.#held.has(to) && !subAdd.has(to)) {
        this.#remove(obj, entry, "moved_out");
        return;
      }
      this.#move(obj, to);
    }
    this.#change(obj, entry.d, entry.v, entry);
  }

  /**
   * @param {MvArrays} mv
   * @param {string} key
   */
  #applyMv(mv, key) {
    const [fx, fy] = this.#posFields(key);
    const [ids, xs, ys] = mv;
    for (let i = 0; i < ids.length; i++) {
      const obj = this.#byId.get(ids[i]);
      if (!obj) continue;
      const d = { [fx]: xs[i], [fy]: ys[i] };
      const v = obj.version + 1;
      this.#change(obj, d, v, { id: obj.id, v, d });
    }
  }

  /**
   * The map's two position fields; ["x", "y"] when the key names no known map.
   * @param {string} key
   * @returns {readonly [string, string]}
   */
  #posFields(key) {
    const map = parseGridKey(key)?.map;
    const info = map !== undefined && Object.hasOwn(this.#maps, map) ? this.#maps[map] : undefined;
    return info ? info.pos : ["x", "y"];
  }

  /**
   * Objects under the key that the snapshot does not name are torn down.
   * @param {Snapshot} snap
   */
  #applySnapshot(snap) {
    const ids = new Set(snap.objs.map((o) => o.id));
    for (const obj of this.inKey(snap.k)) {
      if (!ids.has(obj.id)) this.#remove(obj, null, this.#stale.has(obj.id) ? "session" : "snapshot");
    }
    for (const entry of snap.objs) this.#upsert(entry, snap.k);
  }

  /** @param {string} key */
  #dropKey(key) {
    this.#held.delete(key);
    for (const obj of this.inKey(key)) this.#remove(obj, null, "unsubscribed");
    this.#slots.delete(key);
  }

  /**
   * Replaces the state of the object with that id, keeping the instance, or creates it.
   * @param {AddEntry | SnapshotEntry} entry
   * @param {string} key
   */
  #upsert(entry, key) {
    const old = this.#byId.get(entry.id);
    this.#stale.delete(entry.id);
    if (old && old.type === entry.t) {
      this.#move(old, key);
      motion.delete(old);
      const state = /** @type {State} */ (old.state);
      for (const f of Object.keys(state)) if (!Object.hasOwn(entry.s, f)) delete state[f];
      Object.assign(state, entry.s);
      old.version = entry.v;
      this.#hook(old, "update", () => old.update(entry.s, entry));
      this.emit("mod", old, entry);
      return;
    }
    if (old) this.#remove(old, null, "snapshot"); // same id, another type: another object
    const cls = this.#classes.get(entry.t) ?? SynkObject;
    const init = { id: entry.id, t: entry.t, v: entry.v, s: entry.s, key };
    /** @type {SynkObject} */
    let obj;
    try {
      obj = new cls(init);
    } catch (err) {
      this.fail(`the constructor of type ${JSON.stringify(entry.t)}`, err);
      obj = new SynkObject(init);
    }
    this.#byId.set(obj.id, obj);
    this.#index(obj, key);
    this.#hook(obj, "init", () => obj.init(obj.state));
    this.emit("add", obj, entry);
  }

  /**
   * @param {SynkObject} obj
   * @param {State} diff
   * @param {number} version
   * @param {ModEntry} msg
   */
  #change(obj, diff, version, msg) {
    this.#noteMotion(obj, diff);
    Object.assign(obj.state, diff);
    obj.version = version;
    this.#hook(obj, "update", () => obj.update(diff, msg));
    this.emit("mod", obj, msg);
  }

  /**
   * Starts a new interpolation segment, from what is shown now, for each
   * interpolated field in the diff. Runs before the diff is applied.
   * @param {SynkObject} obj
   * @param {State} diff
   */
  #noteMotion(obj, diff) {
    const fields = interpolatedFields(obj);
    if (fields.length === 0) return;
    const now = this.#now();
    let rec = motion.get(obj);
    if (!rec) motion.set(obj, (rec = { now: this.#now, segs: new Map() }));
    for (const f of fields) {
      const to = diff[f];
      if (typeof to !== "number") continue;
      const seg = rec.segs.get(f);
      const shown = seg ? segmentAt(seg, now) : obj.state[f];
      rec.segs.set(f, { from: typeof shown === "number" ? shown : to, to, t0: now, dur: this.#tickMs });
    }
  }

  /**
   * @param {SynkObject} obj
   * @param {RemEntry | ModEntry | null} msg
   * @param {RemoveReason} reason
   */
  #remove(obj, msg, reason) {
    this.#byId.delete(obj.id);
    this.#unindex(obj);
    this.#stale.delete(obj.id);
    motion.delete(obj);
    const rec = this.#records.get(obj);
    if (rec) {
      this.#records.delete(obj);
      this.#freeSlot(rec);
      this.#leaving.delete(rec);
    }
    this.emit("rem", obj, msg, reason);
    this.#hook(obj, "teardown", () => obj.teardown(reason));
  }

  /**
   * @param {SynkObject} obj
   * @param {string} key
   */
  #index(obj, key) {
    obj.key = key;
    let set = this.#byKey.get(key);
    if (!set) this.#byKey.set(key, (set = new Set()));
    set.add(obj);
  }

  /** @param {SynkObject} obj */
  #unindex(obj) {
    const set = this.#byKey.get(obj.key);
    if (!set) return;
    set.delete(obj);
    if (set.size === 0) this.#byKey.delete(obj.key);
  }

  /**
   * @param {SynkObject} obj
   * @param {string} key
   */
  #move(obj, key) {
    if (obj.key === key) return;
    this.#unindex(obj);
    this.#index(obj, key);
  }

  /**
   * Runs a user hook so that a throw is reported and the frame goes on.
   * @param {SynkObject} obj
   * @param {string} name
   * @param {() => void} fn
   */
  #hook(obj, name, fn) {
    try {
      fn();
    } catch (err) {
      this.fail(`${obj.constructor.name}.${name} (object ${obj.id})`, err);
    }
  }
}

// ---------------------------------------------------------------------------
// Client

const WS_OPEN = 1;

/**
 * @typedef {{name: string, text: string, sent: boolean,
 *   resolve: (v: JsonValue) => void, reject: (e: SynkCallError) => void,
 *   timer: ReturnType<typeof setTimeout> | null}} PendingCall
 */

/**
 * @param {string | undefined} base
 * @param {string | undefined} token
 * @returns {string}
 */
function socketUrl(base, token) {
  const loc = /** @type {{href: string, origin: string} | undefined} */ (globalThis.location);
  if (base === undefined && !loc) throw new TypeError("Client: a url is needed outside a browser page");
  const url = new URL(base ?? /** @type {{origin: string}} */ (loc).origin, loc?.href);
  if (url.protocol === "http:") url.protocol = "ws:";
  else if (url.protocol === "https:") url.protocol = "wss:";
  if (!url.pathname.endsWith(PROTOCOL.PATH)) url.pathname = url.pathname.replace(/\/+$/, "") + PROTOCOL.PATH;
  if (token !== undefined) url.searchParams.set("token", token);
  return url.toString();
}

/**
 * @param {string | Iterable<string>} keys
 * @returns {string[]}
 */
function keyList(keys) {
  const list = typeof keys === "string" ? [keys] : [...keys];
  for (const k of list) if (typeof k !== "string") throw new TypeError(`subscription key is not a string: ${k}`);
  return list;
}

/**
 * A connection to a synkworld server with its object cache. It reconnects after
 * a drop with exponential back-off and jitter; every new session re-sends the
 * view and the explicit keys, and objects the new session's snapshots name keep
 * their identity.
 * @extends {Emitter<ClientEvents>}
 */
export class Client extends Emitter {
  /** @readonly */
  cache;
  #url;
  /** @type {WebSocketClass} */
  #WebSocket;
  #reconnect;
  #reconnectBaseMs;
  #reconnectMaxMs;
  /** @type {number | undefined} */
  #viewIntervalMs;
  #pingIntervalMs;
  #callTimeoutMs;
  #settleTimeoutMs;
  #now;
  #random;
  /** The version asked for. @type {ProtocolVersion} */
  #protocol;
  /** False once a server refused the handshake for offering subprotocols (see #open). */
  #offerSubprotocols = true;
  /** What the current socket speaks: 0 until its hello says. @type {0 | ProtocolVersion} */
  #wire = 0;
  /** @type {ProtocolVersion | null} */
  #sessionProtocol = null;

  /** @type {WebSocketLike | null} */
  #ws = null;
  /** @type {ClientState} */
  #state = "idle";
  /** @type {HelloMsg | null} */
  #hello = null;
  #tick = 0;
  /** @type {number | null} */
  #latencyMs = null;
  #attempt = 0;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #reconnectTimer = null;
  /** @type {ReturnType<typeof setInterval> | null} */
  #pingTimer = null;

  /** @type {ViewRequest | null} */
  #view = null;
  /** The view frame last sent in this session, to skip repeats. @type {string | null} */
  #sentView = null;
  /** Cancels the wait that spaces view frames; null when a view may go out at once. @type {(() => void) | null} */
  #viewCooldown = null;
  #viewDirty = false;
  /** @type {Set<string>} */
  #keys = new Set();

  /** @type {Map<number, PendingCall>} */
  #calls = new Map();
  #callId = 0;

  #settling = false;
  #keysRefused = false;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #settleTimer = null;

  /**
   * @param {string} [url] the server's base URL (http(s) or ws(s)); `/ws` is appended
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    const WS = options.WebSocket ?? /** @type {WebSocketClass | undefined} */ (globalThis.WebSocket);
    if (!WS) throw new TypeError("Client: no global WebSocket; pass options.WebSocket (e.g. the ws package's)");
    this.#WebSocket = WS;
    this.#url = socketUrl(url, options.token);
    this.#reconnect = options.reconnect ?? true;
    this.#reconnectBaseMs = options.reconnectBaseMs ?? 500;
    this.#reconnectMaxMs = options.reconnectMaxMs ?? 30000;
    this.#viewIntervalMs = options.viewIntervalMs;
    this.#pingIntervalMs = options.pingIntervalMs ?? 5000;
    this.#callTimeoutMs = options.callTimeoutMs ?? 10000;
    this.#settleTimeoutMs = options.settleTimeoutMs ?? 3000;
    this.#now = options.now ?? defaultNow;
    this.#random = options.random ?? Math.random;
    const protocol = options.protocol ?? 2;
    if (protocol !== 1 && protocol !== 2) throw new TypeError(`Client: protocol must be 1 or 2, not ${protocol}`);
    this.#protocol = protocol;
    this.cache = new ObjectCache({ classes: options.classes, now: this.#now });
    this.cache.on("add", (obj, msg) => this.emit("add", obj, msg));
    this.cache.on("mod", (obj, msg) => this.emit("mod", obj, msg));
    this.cache.on("rem", (obj, msg, reason) => this.emit("rem", obj, msg, reason));
    this.cache.on("error", (err) => this.emit("error", err));
  }

  /** The socket URL, with `/ws` and the token. */
  get url() {
    return this.#url;
  }

  get state() {
    return this.#state;
  }

  get hello() {
    return this.#hello;
  }

  /** The protocol version of the current session (1 or 2), null before its hello. */
  get protocol() {
    return this.#sessionProtocol;
  }

  get tick() {
    return this.#tick;
  }

  get latencyMs() {
    return this.#latencyMs;
  }

  get view() {
    return this.#view;
  }

  /** @returns {ReadonlySet<string>} */
  get keys() {
    return this.#keys;
  }

  /** @returns {ReadonlySet<string>} */
  get held() {
    return this.cache.held;
  }

  /**
   * @param {string} type
   * @param {SynkObjectClass} cls
   */
  register(type, cls) {
    this.cache.register(type, cls);
  }

  /** @param {string} id */
  get(id) {
    return this.cache.get(id);
  }

  /** Opens the connection, and keeps reopening it after drops until `close`. */
  connect() {
    if (this.#ws || this.#reconnectTimer) return;
    this.#open();
  }

  /** Closes for good: no reconnect, pending calls rejected, every object torn down. */
  close() {
    const wasActive = this.#state !== "idle" && this.#state !== "closed";
    const ws = this.#ws;
    this.#ws = null;
    this.#endSession();
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#viewCooldown?.();
    this.#viewCooldown = null;
    this.#viewDirty = false;
    this.#state = "closed";
    if (ws) {
      try {
        ws.close(1000, "client closed");
      } catch {
        // Already closing: nothing left to do.
      }
    }
    for (const id of [...this.#calls.keys()]) this.#settleCall(id, null, "closed", "the client was closed");
    this.cache.clear("closed");
    if (wasActive) this.emit("close", { code: 1000, reason: "client closed", reconnectInMs: null });
  }

  /**
   * Sets the grid part of the subscription. Frames are coalesced: at most one
   * per animation frame in a browser, or per `viewIntervalMs`.
   * @param {string} map
   * @param {Rect} rect [x0, y0, x1, y1]
   * @param {number} [margin] extra cells around the rectangle (default 1)
   */
  setView(map, rect, margin = PROTOCOL.DEFAULT_MARGIN) {
    if (typeof map !== "string") throw new TypeError("setView: map must be a string");
    if (!Array.isArray(rect) || rect.length !== 4 || !rect.every(isNum)) {
      throw new TypeError("setView: rect must be [x0, y0, x1, y1] of finite numbers");
    }
    if (!isNum(margin) || margin < 0) throw new TypeError("setView: margin must be a number >= 0");
    this.#view = { map, rect: [rect[0], rect[1], rect[2], rect[3]], margin };
    if (this.#viewCooldown) this.#viewDirty = true;
    else this.#flushView();
  }

  /**
   * Adds explicit keys (grid or channel keys) to the subscription.
   * @param {string | Iterable<string>} keys
   */
  subscribe(keys) {
    const add = keyList(keys).filter((k) => !this.#keys.has(k));
    for (const k of add) this.#keys.add(k);
    if (add.length > 0 && this.#state === "ready") this.#send({ m: "sub", add, rem: [] });
  }

  /**
   * Removes explicit keys from the subscription.
   * @param {string | Iterable<string>} keys
   */
  unsubscribe(keys) {
    const rem = keyList(keys).filter((k) => this.#keys.has(k));
    for (const k of rem) this.#keys.delete(k);
    if (rem.length > 0 && this.#state === "ready") this.#send({ m: "sub", add: [], rem });
  }

  /**
   * Calls a server handler. A call made while (re)connecting waits for the
   * session; one sent on a connection that drops is rejected with "closed",
   * since it may or may not have run.
   * @param {string} name
   * @param {Record<string, unknown>} [args]
   * @param {CallOptions} [options]
   * @returns {Promise<JsonValue>}
   */
  call(name, args = {}, options = {}) {
    return new Promise((resolve, reject) => {
      if (this.#state === "idle" || this.#state === "closed") {
        reject(new SynkCallError(CLIENT_ERROR_CODES.CLOSED, `call ${name}: the client is not connected`, name));
        return;
      }
      const id = ++this.#callId;
      let text;
      try {
        text = JSON.stringify({ m: "call", id, name, args });
      } catch (err) {
        reject(new SynkCallError("bad_args", `call ${name}: arguments are not JSON: ${err}`, name));
        return;
      }
      if (utf8Length(text) > PROTOCOL.MAX_CLIENT_FRAME_BYTES) {
        reject(new SynkCallError(CLIENT_ERROR_CODES.TOO_LARGE, `call ${name}: frame over 64 KiB`, name));
        return;
      }
      const timeoutMs = options.timeoutMs ?? this.#callTimeoutMs;
      const timer =
        timeoutMs > 0 && Number.isFinite(timeoutMs)
          ? setTimeout(() => this.#settleCall(id, null, CLIENT_ERROR_CODES.TIMEOUT, `no answer in ${timeoutMs} ms`), timeoutMs)
          : null;
      /** @type {PendingCall} */
      const call = { name, text, sent: false, resolve, reject, timer };
      this.#calls.set(id, call);
      if (this.#state === "ready") this.#sendCall(call);
    });
  }

  /** Sends one ping now (when connected); the pong updates `latencyMs`. */
  ping() {
    if (this.#state === "ready") this.#send({ m: "ping", t: this.#now() });
  }

  #open() {
    this.#state = "connecting";
    this.#wire = 0;
    // Version 1 offers no subprotocol at all: docs/protocol.md's servers know none,
    // and the ws package fails a handshake whose offer the server ignored.
    const protocols =
      this.#protocol === 2 && this.#offerSubprotocols ? [PROTOCOL.SUBPROTOCOLS[2], PROTOCOL.SUBPROTOCOLS[1]] : null;
    /** @type {WebSocketLike} */
    let ws;
    try {
      ws = protocols ? new this.#WebSocket(this.#url, protocols) : new this.#WebSocket(this.#url);
    } catch (err) {
      this.emit("error", new SynkError(CLIENT_ERROR_CODES.SOCKET, `cannot open ${this.#url}: ${err}`, { cause: err }));
      this.#dropped(1006, String(err));
      return;
    }
    this.#ws = ws;
    // Binary frames as ArrayBuffer, read at once: a browser's default is Blob, which
    // reads asynchronously (frames would be applied out of order), the ws package's Buffer.
    try {
      ws.binaryType = "arraybuffer";
    } catch {
      // A WebSocket without binaryType (a test double): its frames are read as they come.
    }
    /** Set when the handshake failed only for the offered subprotocols. */
    let retryWithout = false;
    // Handlers check `this.#ws === ws` so a late event of a replaced socket is ignored.
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      this.#state = "open";
      this.emit("open");
    };
    ws.onmessage = (/** @type {{data: unknown}} */ ev) => {
      if (this.#ws === ws) this.#receive(ev.data);
    };
    ws.onerror = (/** @type {{message?: unknown}} */ ev) => {
      if (this.#ws !== ws) return;
      // A server that knows no subprotocols selects none, which is version 1 (docs/
      // protocol-v2.md); browsers take that, but the ws package fails the handshake
      // ("Server sent no subprotocol"). Then this client asks again offering none.
      if (protocols && this.#state === "connecting" && /no subprotocol/i.test(String(ev?.message ?? ""))) {
        retryWithout = true;
        return;
      }
      this.emit("error", new SynkError(CLIENT_ERROR_CODES.SOCKET, "WebSocket error"));
    };
    ws.onclose = (/** @type {{code?: number, reason?: string}} */ ev) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      if (retryWithout) {
        this.#offerSubprotocols = false;
        this.#open();
        return;
      }
      this.#dropped(ev?.code ?? 1006, ev?.reason ?? "");
    };
  }

  /**
   * @param {number} code
   * @param {string} reason
   */
  #dropped(code, reason) {
    this.#endSession();
    for (const [id, call] of [...this.#calls]) {
      if (call.sent) this.#settleCall(id, null, CLIENT_ERROR_CODES.CLOSED, `connection closed (${code})`);
    }
    if (!this.#reconnect) {
      this.#state = "closed";
      this.emit("close", { code, reason, reconnectInMs: null });
      return;
    }
    const ceiling = Math.min(this.#reconnectMaxMs, this.#reconnectBaseMs * 2 ** this.#attempt);
    this.#attempt++;
    // Half fixed, half random: spreads a crowd of clients without ever retrying at once.
    const delay = Math.round(ceiling / 2 + (this.#random() * ceiling) / 2);
    this.#state = "backoff";
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = null;
      this.#open();
    }, delay);
    this.emit("close", { code, reason, reconnectInMs: delay });
  }

  /** Stops what belongs to one server session. */
  #endSession() {
    if (this.#pingTimer) clearInterval(this.#pingTimer);
    this.#pingTimer = null;
    if (this.#settleTimer) clearTimeout(this.#settleTimer);
    this.#settleTimer = null;
    this.#settling = false;
    this.#sentView = null;
    this.#hello = null;
    this.#sessionProtocol = null;
  }

  /**
   * A frame from the socket. The first one, the hello, fixes the connection's
   * version: text frames are version 1 (JSON), binary frames version 2.
   * @param {unknown} data
   */
  #receive(data) {
    if (typeof data === "string") {
      if (this.#wire === 2) {
        this.emit("error", new SynkError(CLIENT_ERROR_CODES.BAD_FRAME, "text frame on a version 2 connection"));
        return;
      }
      /** @type {unknown} */
      let msg;
      try {
        msg = JSON.parse(data);
      } catch (err) {
        this.emit("error", new SynkError(CLIENT_ERROR_CODES.BAD_FRAME, `frame is not JSON: ${data.slice(0, 80)}`, { cause: err }));
        return;
      }
      this.#guarded(() => this.#handle(msg, 1));
      return;
    }
    const bytes = bytesOf(data);
    if (!bytes || this.#wire === 1 || this.#protocol === 1) {
      const why = bytes ? "the protocol is JSON text" : "not an ArrayBuffer: is binaryType settable?";
      this.emit("error", new SynkError(CLIENT_ERROR_CODES.BAD_FRAME, `binary frame (${why})`));
      return;
    }
    this.#guarded(() => this.#receiveBinary(bytes));
  }

  /**
   * Runs `fn`, reporting what it throws as an error event.
   * @param {() => void} fn
   */
  #guarded(fn) {
    try {
      fn();
    } catch (err) {
      const error =
        err instanceof SynkError ? err : new SynkError(CLIENT_ERROR_CODES.BAD_FRAME, `cannot handle frame: ${err}`, { cause: err });
      this.emit("error", error);
    }
  }

  /** @param {Uint8Array} bytes a version 2 frame */
  #receiveBinary(bytes) {
    need(bytes.length > 0, "empty frame");
    if (bytes[0] === V2_MESSAGE) {
      this.#handle(decodeMessage(bytes), 2);
      return;
    }
    need(this.#wire === 2, "a version 2 tick or resync before the hello");
    const msg = this.cache.applyBinary(bytes);
    if (msg.m === "tick") this.#ticked(msg);
    else if (msg.m === "resync") this.#resynced(msg);
  }

  /** @param {TickMsg} msg applied */
  #ticked(msg) {
    this.#tick = msg.n;
    this.emit("tick", msg);
    this.#checkSettled();
  }

  /** @param {ResyncMsg} msg applied */
  #resynced(msg) {
    this.#tick = msg.n;
    this.#finishSettling(); // the resync left nothing stale
    this.emit("resync", msg);
  }

  /**
   * @param {unknown} msg
   * @param {ProtocolVersion} version of the frame it came in
   */
  #handle(msg, version) {
    need(isObj(msg), "not an object");
    switch (msg.m) {
      case "hello":
        this.#onHello(msg, version);
        break;
      case "tick":
        if (version !== 1) break; // version 2 ticks are binary frames of their own
        this.cache.applyTick(/** @type {TickMsg} */ (msg));
        this.#ticked(/** @type {TickMsg} */ (msg));
        break;
      case "resync":
        if (version !== 1) break;
        this.cache.applyResync(/** @type {ResyncMsg} */ (msg));
        this.#resynced(/** @type {ResyncMsg} */ (msg));
        break;
      case "reply":
        need(isNum(msg.id), "reply without id");
        this.#settleCall(msg.id, { ok: msg.ok ?? null }, "", "");
        break;
      case "error":
        need(isStr(msg.code), "error without code");
        if (isNum(msg.id) && this.#calls.has(msg.id)) {
          this.#settleCall(msg.id, null, msg.code, isStr(msg.msg) ? msg.msg : msg.code);
        } else {
          // An error without a call id answers a view or sub; while settling it
          // may be the resent keys being refused, which must not stall settling.
          if (this.#settling) this.#keysRefused = true;
          this.emit("error", new SynkError(msg.code, isStr(msg.msg) ? msg.msg : msg.code));
        }
        break;
      case "pong":
        if (isNum(msg.n)) this.#tick = msg.n;
        if (isNum(msg.t)) {
          const rtt = this.#now() - msg.t;
          if (rtt >= 0) this.#latencyMs = this.#latencyMs === null ? rtt : 0.8 * this.#latencyMs + 0.2 * rtt;
        }
        break;
      default:
      // Unknown kinds are ignored so that a newer server can add some.
    }
  }

  /**
   * @param {Record<string, any>} msg
   * @param {ProtocolVersion} version of the frame it came in
   */
  #onHello(msg, version) {
    // A JSON hello must say 1 and a binary one 2; a client asked for version 1
    // offered no subprotocol, so a binary hello is a server that ignored that.
    if (msg.proto !== version || version > this.#protocol) {
      const speaks = this.#protocol === 2 ? "1 or 2" : "1";
      const how = version === 1 ? "in JSON text frames" : "in binary frames";
      this.emit(
        "error",
        new SynkError(CLIENT_ERROR_CODES.PROTO_MISMATCH, `server speaks protocol ${msg.proto} ${how}, this client ${speaks}`),
      );
      this.close();
      return;
    }
    const hello = /** @type {HelloMsg} */ (msg);
    this.cache.applyHello(hello);
    this.#endSession();
    this.#wire = version;
    this.#sessionProtocol = version;
    this.#hello = hello;
    this.#tick = hello.tick;
    this.#attempt = 0;
    this.#state = "ready";
    // A new session holds nothing; objects of the last one stay (stale) until
    // the resent subscription's snapshots confirm or drop them.
    this.cache.beginSession();
    this.emit("hello", hello);
    if (this.#state !== "ready") return; // a hello listener closed the client
    this.#flushView();
    if (this.#keys.size > 0) this.#send({ m: "sub", add: [...this.#keys], rem: [] });
    for (const call of this.#calls.values()) if (!call.sent) this.#sendCall(call);
    if (this.#pingIntervalMs > 0) {
      this.ping();
      this.#pingTimer = setInterval(() => this.ping(), this.#pingIntervalMs);
    }
    if (this.cache.staleCount > 0) {
      this.#settling = true;
      this.#keysRefused = false;
      this.#settleTimer = setTimeout(() => this.#finishSettling(), this.#settleTimeoutMs);
      this.#checkSettled();
    }
  }

  /**
   * After a reconnect, the session is settled once the server has answered the
   * resent subscription: every explicit key held (or refused), and the view
   * answered with some cell of its map. Whatever is still stale then is gone.
   */
  #checkSettled() {
    if (!this.#settling) return;
    const held = this.cache.held;
    const keysDone = this.#keysRefused || [...this.#keys].every((k) => held.has(k));
    const view = this.#view;
    const viewDone = !view || [...held].some((k) => !this.#keys.has(k) && parseGridKey(k)?.map === view.map);
    if (keysDone && viewDone) this.#finishSettling();
  }

  #finishSettling() {
    if (this.#settleTimer) clearTimeout(this.#settleTimer);
    this.#settleTimer = null;
    this.#settling = false;
    this.cache.settle();
  }

  #flushView() {
    this.#viewCooldown?.();
    this.#viewCooldown = null;
    this.#viewDirty = false;
    const view = this.#view;
    if (this.#state !== "ready" || !view) return;
    /** @type {ClientMsg} */
    const msg = { m: "view", map: view.map, rect: view.rect, margin: view.margin };
    const text = JSON.stringify(msg);
    if (text === this.#sentView) return;
    this.#sentView = text;
    this.#sendText(text);
    this.#viewCooldown = this.#waitFrame(() => {
      this.#viewCooldown = null;
      if (this.#viewDirty) this.#flushView();
    });
  }

  /**
   * Calls `fn` after one animation frame (browser) or `viewIntervalMs`; returns a canceller.
   * @param {() => void} fn
   * @returns {() => void}
   */
  #waitFrame(fn) {
    if (this.#viewIntervalMs === undefined && typeof requestAnimationFrame === "function") {
      const handle = requestAnimationFrame(() => fn());
      return () => cancelAnimationFrame(handle);
    }
    const timer = setTimeout(fn, this.#viewIntervalMs ?? 50);
    return () => clearTimeout(timer);
  }

  /** @param {PendingCall} call */
  #sendCall(call) {
    call.sent = true;
    this.#sendText(call.text);
  }

  /** @param {ClientMsg} msg */
  #send(msg) {
    this.#sendText(JSON.stringify(msg));
  }

  /** @param {string} text */
  #sendText(text) {
    const ws = this.#ws;
    if (!ws || ws.readyState !== WS_OPEN) return;
    if (utf8Length(text) > PROTOCOL.MAX_CLIENT_FRAME_BYTES) {
      // The server would close with 1009, and the reconnect would resend it.
      this.emit("error", new SynkError(CLIENT_ERROR_CODES.TOO_LARGE, `not sent: frame over 64 KiB (${text.slice(0, 40)}...)`));
      return;
    }
    ws.send(text);
  }

  /**
   * Resolves (`result` given) or rejects one pending call.
   * @param {number} id
   * @param {{ok: JsonValue} | null} result
   * @param {string} code
   * @param {string} message
   */
  #settleCall(id, result, code, message) {
    const call = this.#calls.get(id);
    if (!call) return; // answered after its timeout: dropped
    this.#calls.delete(id);
    if (call.timer) clearTimeout(call.timer);
    if (result) call.resolve(result.ok);
    else call.reject(new SynkCallError(code, `call ${call.name}: ${message}`, call.name));
  }
}

// ---------------------------------------------------------------------------
// Type-level check that this module matches synkworld.d.ts: inside this file tsc
// resolves "./synkworld.js" to the .d.ts beside it. An export missing from
// either side, or a signature that differs, fails `npm run typecheck`.

/** @type {typeof import("./synkworld.js")} */
const _declared = {
  PROTOCOL,
  PROTOCOL_VERSION,
  CLIENT_ERROR_CODES,
  SynkError,
  SynkCallError,
  SynkObject,
  ObjectCache,
  Client,
  gridKey,
  parseGridKey,
  cellKey,
};
void _declared;
