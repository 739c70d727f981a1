// The public surface: exports against synkworld.d.ts, protocol constants,
// key helpers.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import * as synkworld from "../synkworld.js";
import { CLIENT_ERROR_CODES, PROTOCOL, PROTOCOL_VERSION, cellKey, gridKey, parseGridKey } from "../synkworld.js";

test("the module exports exactly the values synkworld.d.ts declares", () => {
  const dts = readFileSync(new URL("../synkworld.d.ts", import.meta.url), "utf8");
  const declared = [...dts.matchAll(/^export declare (?:const|class|function) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(Object.keys(synkworld).sort(), [...new Set(declared)].sort());
});

test("protocol constants are those of docs/protocol.md, version 1", () => {
  assert.equal(PROTOCOL_VERSION, 1);
  assert.equal(PROTOCOL.VERSION, 1);
  assert.equal(PROTOCOL.PATH, "/ws");
  assert.equal(PROTOCOL.MAX_CLIENT_FRAME_BYTES, 64 * 1024);
  assert.deepEqual(PROTOCOL.CLOSE_CODES, { POLICY_VIOLATION: 1008, MESSAGE_TOO_BIG: 1009, TRY_AGAIN_LATER: 1013 });
  assert.deepEqual([...PROTOCOL.SERVER_KINDS].sort(), ["error", "hello", "pong", "reply", "resync", "tick"]);
  assert.deepEqual([...PROTOCOL.CLIENT_KINDS].sort(), ["call", "ping", "sub", "view"]);
  assert.deepEqual([...PROTOCOL.ERROR_CODES].sort(), [
    "bad_args",
    "bad_json",
    "bad_message",
    "forbidden",
    "handler_failed",
    "no_handler",
    "rate_limited",
    "too_many_keys",
    "unknown_message",
  ]);
  assert.ok(Object.isFrozen(PROTOCOL) && Object.isFrozen(PROTOCOL.CLOSE_CODES));
  // The library's own codes never collide with the server's.
  for (const code of Object.values(CLIENT_ERROR_CODES)) {
    assert.ok(!(/** @type {readonly string[]} */ (PROTOCOL.ERROR_CODES).includes(code)), code);
  }
});

test("grid keys: build, parse (map names may contain ':'), and locate points", () => {
  assert.equal(gridKey("main", 3, -2), "main:3:-2");
  assert.deepEqual(parseGridKey("main:3:-2"), { map: "main", cx: 3, cy: -2 });
  assert.deepEqual(parseGridKey("sea:north:0:12"), { map: "sea:north", cx: 0, cy: 12 });
  for (const channel of ["chat:lobby", "lobby", ":1:2", "main:1:2.5", "main:x:1", "main:1:"]) {
    assert.equal(parseGridKey(channel), null, channel);
  }
  const info = { cell: 250, origin: /** @type {[number, number]} */ ([-500, 0]), bounds: /** @type {[number, number, number, number]} */ ([0, 0, 1, 1]), pos: /** @type {[string, string]} */ (["x", "y"]), prec: 1 };
  assert.equal(cellKey("main", info, 0, 0), "main:2:0");
  assert.equal(cellKey("main", info, -500.1, 249.9), "main:-1:0");
  assert.equal(cellKey("main", info, -500, -0.5), "main:0:-1");
});
