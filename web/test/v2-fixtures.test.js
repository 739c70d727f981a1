// ObjectCache against protocol version 2 frames a real server encoded: the
// Python side records them (tests/web/v2_frames.py) with what a client must
// hold after each, and its pytest runs this file on them. Skipped when the
// file is absent (a plain `node --test test/`).
//
// The file: {"hello": base64, "frames": [base64, ...], "views": [view, ...]},
// a view being what is held after that frame: {id: [type, version, state, key]}.
// SYNK_V2_FRAMES names it (a path, or several separated by the path delimiter);
// by default test/fixtures/v2-frames.json.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { delimiter } from "node:path";
import { fileURLToPath } from "node:url";

import { ObjectCache } from "../synkworld.js";

const DEFAULT = fileURLToPath(new URL("./fixtures/v2-frames.json", import.meta.url));
const paths = (process.env.SYNK_V2_FRAMES ?? DEFAULT).split(delimiter).filter(Boolean);

/** @param {string} b64 */
const bytes = (b64) => new Uint8Array(Buffer.from(b64, "base64"));

/**
 * What the cache holds, as the fixture's views say it. JSON both sides: a
 * position version 1 writes as -0.0 is 0 in version 2 (an integer has no sign),
 * and JSON writes both as 0.
 * @param {ObjectCache} cache
 */
function view(cache) {
  /** @type {Record<string, unknown[]>} */
  const out = {};
  for (const o of cache.objects()) out[o.id] = [o.type, o.version, o.state, o.key];
  return JSON.parse(JSON.stringify(out));
}

for (const path of paths) {
  const present = existsSync(path);
  test(`recorded v2 frames: ${path}`, { skip: present ? false : "no recorded frames (the Python side writes them)" }, () => {
    const data = JSON.parse(readFileSync(path, "utf8"));
    assert.equal(data.frames.length, data.views.length, "a view for each frame");
    const cache = new ObjectCache();
    /** @type {unknown[]} */
    const errors = [];
    cache.on("error", (err) => errors.push(err));
    assert.equal(cache.apply(bytes(data.hello)), true, "the hello");
    /** @type {Set<string>} */
    const seen = new Set();
    data.frames.forEach((/** @type {string} */ frame, /** @type {number} */ i) => {
      const b = bytes(frame);
      seen.add(b[0] === 1 ? "tick" : b[0] === 2 ? "resync" : "message");
      cache.apply(b);
      assert.deepEqual(view(cache), JSON.parse(JSON.stringify(data.views[i])), `after frame ${i}`);
    });
    assert.deepEqual(errors, [], "no hook or listener failed");
    assert.ok(seen.has("tick"));
  });
}
