// @ts-check
// Times ObjectCache's decoding and applying of one recorded version 2 frame,
// in Node or in a page (the browser test serves this file to its page). The
// recording is the fixture format of test/v2-fixtures.test.js: {hello, frames}
// as base64. It imports nothing, so a page can load it beside the library.

/** @param {string} b64 */
function bytesOf(b64) {
  const text = atob(b64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

/** @param {number[]} xs sorted @param {number} q */
const quantile = (xs, q) => xs[Math.min(xs.length - 1, Math.floor(q * xs.length))];

/**
 * What a frame holds, read from its first bytes: kind and size.
 * @param {Uint8Array} f
 */
const describe = (f) => ({ kind: f[0] === 1 ? "tick" : f[0] === 2 ? "resync" : "message", bytes: f.length });

/**
 * Times the decoding and applying of frames[target], per frame, in two ways:
 *
 * - first: the frame's real first application. Caches are brought to the state
 *   before it (hello and frames[0..target-1], untimed); each sample applies it
 *   to `batch` of them in a row.
 * - repeat: the frame applied again and again to one cache (motion adds again,
 *   stale mods are skipped: near the same work), `batch * 5` per sample.
 *
 * Samples time batches because a page's clock is coarse (100 µs in Chromium
 * without cross-origin isolation); each is divided by its batch size.
 * @param {typeof import("../synkworld.js").ObjectCache} ObjectCache
 * @param {{hello: string, frames: string[]}} recording
 * @param {{target?: number, samples?: number, batch?: number, now?: () => number}} [options]
 *   target: the frame's index (default the last; negative counts from the end)
 */
export function timeDecode(ObjectCache, recording, options = {}) {
  const now = options.now ?? (() => performance.now());
  const hello = bytesOf(recording.hello);
  const frames = recording.frames.map(bytesOf);
  let target = options.target ?? frames.length - 1;
  if (target < 0) target += frames.length;
  const frame = frames[target];
  const samples = options.samples ?? 15;
  const batch = options.batch ?? 10;
  /** @type {string[]} */
  const errors = [];
  const prepared = () => {
    const cache = new ObjectCache();
    cache.on("error", (err) => errors.push(String(err)));
    cache.apply(hello);
    for (let j = 0; j < target; j++) cache.apply(frames[j]);
    return cache;
  };

  /** @type {number[]} */
  const first = [];
  let cache = prepared();
  for (let i = 0; i < samples; i++) {
    const caches = Array.from({ length: batch }, prepared);
    const t0 = now();
    for (const c of caches) c.apply(frame);
    first.push((now() - t0) / batch);
    cache = caches[0];
  }
  /** @type {Record<string, unknown[]>} */
  const live = {};
  for (const o of cache.objects()) live[o.id] = [o.type, o.version, o.state, o.key];
  // A copy: the repeats below change the states in place.
  const view = JSON.parse(JSON.stringify(live));
  const objects = cache.size;
  const held = cache.held.size;

  /** @type {number[]} */
  const again = [];
  for (let i = 0; i < samples * 2; i++) {
    const t0 = now();
    for (let k = 0; k < batch * 5; k++) cache.apply(frame);
    again.push((now() - t0) / (batch * 5));
  }
  first.sort((a, b) => a - b);
  again.sort((a, b) => a - b);
  return {
    frame: { index: target, ...describe(frame) },
    objects,
    held,
    firstMs: { median: quantile(first, 0.5), p90: quantile(first, 0.9), samples: first.length, batch },
    repeatMs: { median: quantile(again, 0.5), p90: quantile(again, 0.9), samples: again.length, batch: batch * 5 },
    /** The cache right after its first application of the frame, to check the decoding. */
    view,
    errors,
  };
}
