// @ts-check
// Builds protocol version 2 frames (docs/protocol-v2.md) byte by byte, for the
// cache's unit tests. Written from the document, not from the decoder, so that
// the tests check the decoder against the text. Kept outside test/ because
// Node's test runner runs every .js file under a test/ folder as a test file.
import { encode } from "@msgpack/msgpack";

/** @typedef {number[] | Uint8Array} Bytes */

/**
 * An unsigned LEB128 varint (exact up to 2^53, like the server's).
 * @param {number} n
 * @returns {number[]}
 */
export function varint(n) {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`varint of ${n}`);
  const out = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return out;
}

/**
 * The varint of a signed integer's zigzag form: 0, -1, 1, -2 ... -> 0, 1, 2, 3 ...
 * @param {number} n
 * @returns {number[]}
 */
export const zigzag = (n) => varint(n >= 0 ? 2 * n : -2 * n - 1);

/**
 * A length header of MessagePack: the fix form below 16, else the 16-bit one.
 * @param {number} n
 * @param {number} fix 0x90 (array) or 0x80 (map)
 * @param {number} wide 0xdc (array 16) or 0xde (map 16)
 */
const header = (n, fix, wide) => (n < 16 ? [fix | n] : [wide, n >> 8, n & 0xff]);

/**
 * MessagePack, with Maps written as maps of their own keys: field diffs have
 * integer keys, which @msgpack/msgpack's encode cannot write (it writes a Map as {}).
 * @param {unknown} value
 * @returns {number[]}
 */
export function pack(value) {
  if (value instanceof Map) {
    return [...header(value.size, 0x80, 0xde), ...[...value].flatMap(([k, v]) => [...pack(k), ...pack(v)])];
  }
  if (Array.isArray(value)) return [...header(value.length, 0x90, 0xdc), ...value.flatMap(pack)];
  return [...encode(value)];
}

/**
 * A MessagePack value behind its varint length, as it sits inside binary layouts.
 * Field diffs need integer keys: pass a Map (`new Map([[2, 5]])`).
 * @param {unknown} value
 * @returns {number[]}
 */
export function mp(value) {
  const data = pack(value);
  return [...varint(data.length), ...data];
}

/** Keys in binary: `grid(map number, cx, cy)` or `channel(name)`. */
export const key = {
  /** @param {number} map @param {number} cx @param {number} cy */
  grid: (map, cx, cy) => [...varint(map + 1), ...zigzag(cx), ...zigzag(cy)],
  /** @param {string} name */
  channel: (name) => {
    const raw = new TextEncoder().encode(name);
    return [0, ...varint(raw.length), ...raw];
  },
};

/** @param {Bytes[]} parts */
const cat = (parts) => parts.flatMap((p) => [...p]);

/**
 * A list part: the varint count, then each item's bytes.
 * @param {Bytes[]} items
 */
const list = (items) => [...varint(items.length), ...cat(items)];

/**
 * A message frame (`03`): hello, reply, error or pong.
 * @param {Record<string, unknown>} msg
 */
export const message = (msg) => new Uint8Array([0x03, ...encode(msg)]);

/**
 * One cell's batch: the key, the head (motion count x 16 + bits), the parts.
 * @param {Bytes} cell the key, from `key`
 * @param {{rem?: number[], leave?: [number, Bytes][], adds?: unknown[][], mods?: unknown[][],
 *   motion?: [number, number, number][], dense?: [number, number][], entries?: boolean}} parts
 *   `motion` entries are [slot, dx, dy]; `dense` ones [dx, dy] (bit 0x08, no slots).
 *   `entries: true` writes the entries part even when adds and mods are empty.
 * @returns {number[]}
 */
export function batch(cell, parts) {
  let bits = 0;
  /** @type {Bytes[]} */
  const out = [];
  if (parts.rem) {
    bits |= 0x01;
    out.push(list(parts.rem.map(varint)));
  }
  if (parts.leave) {
    bits |= 0x02;
    out.push(list(parts.leave.map(([slot, to]) => [...varint(slot), ...to])));
  }
  if (parts.adds || parts.mods || parts.entries) {
    bits |= 0x04;
    out.push(mp([parts.adds ?? [], parts.mods ?? []]));
  }
  let count = 0;
  if (parts.motion) {
    count = parts.motion.length;
    out.push(cat(parts.motion.map(([slot, dx, dy]) => [...varint(slot), ...zigzag(dx), ...zigzag(dy)])));
  } else if (parts.dense) {
    bits |= 0x08;
    count = parts.dense.length;
    out.push(cat(parts.dense.map(([dx, dy]) => [...zigzag(dx), ...zigzag(dy)])));
  }
  return [...cell, ...varint(count * 16 + bits), ...cat(out)];
}

/**
 * A snapshot: the key, then its objects `[slot, id, type number, version, state]`.
 * @param {Bytes} cell
 * @param {unknown[][]} adds
 */
export const snapshot = (cell, adds) => [...cell, ...mp(adds)];

/**
 * A tick frame (`01`).
 * @param {number} n
 * @param {{types?: unknown[][], subRem?: Bytes[], subAdd?: Bytes[], batches?: Bytes[], snaps?: Bytes[]}} parts
 */
export function tick(n, parts) {
  let bits = 0;
  /** @type {Bytes[]} */
  const out = [];
  if (parts.types) {
    bits |= 0x01;
    out.push(mp(parts.types));
  }
  if (parts.subRem) {
    bits |= 0x02;
    out.push(list(parts.subRem));
  }
  if (parts.subAdd) {
    bits |= 0x04;
    out.push(list(parts.subAdd));
  }
  if (parts.batches) {
    bits |= 0x08;
    out.push(list(parts.batches));
  }
  if (parts.snaps) {
    bits |= 0x10;
    out.push(list(parts.snaps));
  }
  return new Uint8Array([0x01, ...varint(n), bits, ...cat(out)]);
}

/**
 * A resync frame (`02`).
 * @param {number} n
 * @param {{types?: unknown[][], snaps: Bytes[]}} parts
 */
export function resync(n, parts) {
  const head = parts.types ? [0x01, ...mp(parts.types)] : [0x00];
  return new Uint8Array([0x02, ...varint(n), ...head, ...list(parts.snaps)]);
}
