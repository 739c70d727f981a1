// Unit tests of ObjectCache with protocol version 2 frames (docs/protocol-v2.md),
// built byte by byte in testing/v2-frames.js and applied with no socket.
import { test } from "node:test";
import assert from "node:assert/strict";

import { ObjectCache, SynkError, SynkObject } from "../synkworld.js";
import { recordEvents } from "../testing/fakes.js";
import { batch, key, message, mp, resync, snapshot, tick, varint, zigzag } from "../testing/v2-frames.js";

const TYPES = [
  [0, "boat", ["x", "y", "hp", "name"], [0, 1]],
  [1, "msg", ["text"], null],
  // Position fields need not come first, nor be named like the map's.
  [2, "buoy", ["name", "lon", "lat"], [1, 2]],
];
const HELLO = {
  m: "hello",
  proto: 2,
  sid: "s1",
  tick: 0,
  rate: 10,
  maps: {
    main: { num: 0, cell: 250, origin: [0, 0], bounds: [0, 0, 10000, 10000], pos: ["x", "y"], prec: 1 },
    "sea:north": { num: 1, cell: 100, origin: [0, 0], bounds: [0, 0, 1000, 1000], pos: ["lon", "lat"], prec: 2 },
  },
  types: TYPES,
};

// Keys in binary, and as the cache names them (version 1 strings).
const A = key.grid(0, 0, 0);
const B = key.grid(0, 1, 0);
const C = key.grid(0, 2, 0);
const SEA = key.grid(1, 0, -1);
const CHAT = key.channel("chat:lobby");
const KA = "main:0:0";
const KB = "main:1:0";
const KC = "main:2:0";

/** Records every hook call, to check identity and lifecycle. */
class Boat extends SynkObject {
  static interpolate = ["x", "y"];
  /** @type {any[]} */
  calls = [];
  /** @param {any} state */
  init(state) {
    this.calls.push(["init", { ...state }]);
  }
  /** @param {any} diff */
  update(diff) {
    this.calls.push(["update", { ...diff }]);
  }
  /** @param {string} reason */
  teardown(reason) {
    this.calls.push(["teardown", reason]);
  }
}

/** A boat entry `[slot, id, 0, version, [x, y, hp, name]]`, positions as integers (prec 1). */
const boat = (/** @type {number} */ slot, /** @type {string} */ id, x = 100, y = 100, v = 1, hp = 5) => [
  slot,
  id,
  0,
  v,
  [x, y, hp, "b"],
];

/**
 * A cache that has seen HELLO and holds `snaps` ([binary key, entries] pairs) through one tick frame.
 * @param {[number[], any[][]][]} [snaps]
 */
function setup(snaps = []) {
  const clock = { t: 0 };
  const cache = new ObjectCache({ classes: { boat: Boat }, now: () => clock.t });
  const { log, errors } = recordEvents(cache);
  assert.equal(cache.apply(message(HELLO)), true);
  if (snaps.length > 0) {
    cache.apply(tick(1, { subAdd: snaps.map(([k]) => k), snaps: snaps.map(([k, objs]) => snapshot(k, objs)) }));
  }
  log.length = 0;
  return { cache, log, errors, clock };
}

/** @param {ObjectCache} cache @param {string} k */
const idsIn = (cache, k) => cache.inKey(k).map((o) => o.id).sort();

test("the frame builder writes the document's examples", () => {
  assert.deepEqual(varint(0), [0x00]);
  assert.deepEqual(varint(127), [0x7f]);
  assert.deepEqual(varint(128), [0x80, 0x01]);
  assert.deepEqual(varint(300), [0xac, 0x02]);
  assert.deepEqual([0, -1, 1, -2, 25].map((n) => zigzag(n)[0]), [0, 1, 2, 3, 50]);
  assert.deepEqual(key.grid(0, 3, -2), [0x01, 0x06, 0x03]);
});

test("the worked example of docs/protocol-v2.md, byte for byte", () => {
  /** @param {string} text hex bytes, spaces between */
  const hex = (text) => new Uint8Array(text.trim().split(/\s+/).map((b) => parseInt(b, 16)));
  const cache = new ObjectCache({ classes: { boat: Boat } });
  const { log } = recordEvents(cache);
  const mainMap = { num: 0, cell: 100, origin: [0, 0], bounds: [0, 0, 1000, 1000], pos: ["x", "y"], prec: 1 };
  cache.apply(message({ ...HELLO, maps: { main: mainMap }, types: [[0, "boat", ["x", "y", "hp", "name"], [0, 1]]] }));
  // What the client holds before tick 5 (not in the document's bytes): main:1:1, three boats.
  const C11 = key.grid(0, 1, 1);
  cache.apply(tick(4, { subAdd: [C11], snaps: [snapshot(C11, [boat(0, "b1", 1100, 1200, 1, 3), boat(1, "b2", 1500, 1500, 1, 3), boat(2, "b3", 1800, 1300, 1, 3)])] }));
  const b3 = cache.get("b3");
  log.length = 0;
  const tick5 = hex(`
    01 05 1c
    01 01 04 02
    01
      01 02 02
      2a
      01 02 01 04 02
      1e 09
      06 00
    01
      01 04 02
      13
      91 95 00 a2 62 33 00 02 94 cd 08 02 cd 05 14 03 a2 63 79`);
  const tick6 = hex(`
    01 06 08 02
      01 04 02 18 14 00
      01 02 02 1c
      1c
      92 91 95 02 a2 62 34 00 01 94 cd 04 b0 cd 07 08 03 a3 64 65 65 91 93 00 03 81 02 01
      00 04`);
  assert.equal(tick5.length, 45);
  assert.equal(tick6.length, 45);
  cache.apply(tick5);
  cache.apply(tick6);
  const got = Object.fromEntries([...cache.objects()].map((o) => [o.id, [o.state, o.version, o.key]]));
  assert.deepEqual(got, {
    b1: [{ x: 111.5, y: 119.5, hp: 1, name: "b" }, 3, "main:1:1"],
    b2: [{ x: 150.3, y: 150.2, hp: 3, name: "b" }, 3, "main:1:1"],
    b3: [{ x: 206, y: 130, hp: 3, name: "cy" }, 3, "main:2:1"],
    b4: [{ x: 120, y: 180, hp: 3, name: "dee" }, 1, "main:1:1"],
  });
  assert.equal(cache.get("b3"), b3, "the same b3: no teardown");
  assert.deepEqual(
    log.filter((e) => e[0] !== "mod"),
    [["add", "b4", "main:1:1"]],
  );
});

test("hello, sub.add and snapshots: objects with positions shown as integer / 10^prec", () => {
  const { cache, log } = setup();
  const msg = cache.applyBinary(
    tick(1, {
      subAdd: [CHAT, A, SEA],
      snaps: [
        snapshot(CHAT, [[0, "m1", 1, 1, ["hi"]]]),
        snapshot(A, [boat(0, "b1", 123, -7), boat(1, "b2", 0, 1, 3)]),
        snapshot(SEA, [[0, "s1", 2, 2, ["n", 12345, -5]]]),
      ],
    }),
  );
  assert.deepEqual([...cache.held].sort(), ["chat:lobby", KA, "sea:north:0:-1"]);
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  assert.ok(b1 instanceof Boat);
  assert.deepEqual(b1.state, { x: 12.3, y: -0.7, hp: 5, name: "b" });
  assert.deepEqual(b1.calls, [["init", { x: 12.3, y: -0.7, hp: 5, name: "b" }]]);
  assert.equal(cache.get("b2")?.version, 3);
  assert.deepEqual(cache.get("m1")?.state, { text: "hi" });
  assert.equal(cache.get("m1")?.key, "chat:lobby");
  assert.ok(!(cache.get("m1") instanceof Boat));
  assert.deepEqual(cache.get("s1")?.state, { name: "n", lon: 123.45, lat: -0.05 });
  assert.equal(cache.get("s1")?.key, "sea:north:0:-1");
  assert.deepEqual(log, [
    ["add", "m1", "chat:lobby"],
    ["add", "b1", KA],
    ["add", "b2", KA],
    ["add", "s1", "sea:north:0:-1"],
  ]);
  // The tick event's summary: n, sub and the snapshots in version 1 shape.
  assert.equal(msg.m, "tick");
  assert.deepEqual(/** @type {any} */ (msg).sub, { add: ["chat:lobby", KA, "sea:north:0:-1"], rem: [] });
  assert.deepEqual(/** @type {any} */ (msg).snap[0], { k: "chat:lobby", objs: [{ id: "m1", t: "msg", v: 1, s: { text: "hi" } }] });
});

test("varints and zigzags past one byte and past 32 bits read exactly", () => {
  const far = key.grid(0, -70000, 2 ** 40);
  const { cache } = setup();
  const msg = cache.applyBinary(
    tick(2 ** 45 + 3, { subAdd: [far], snaps: [snapshot(far, [boat(300, "b1", 2 ** 40, -(2 ** 40))])] }),
  );
  assert.equal(msg.m === "tick" && msg.n, 2 ** 45 + 3);
  assert.deepEqual([...cache.held], [`main:-70000:${2 ** 40}`]);
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  cache.apply(tick(2 ** 45 + 4, { batches: [batch(far, { motion: [[300, 2 ** 31 - 1, -(2 ** 31 - 1)]] })] }));
  assert.equal(b1.state.x, (2 ** 40 + 2 ** 31 - 1) / 10);
  assert.equal(b1.state.y, -(2 ** 40 + 2 ** 31 - 1) / 10);
  assert.equal(b1.version, 2);
});

test("motion adds to the position integers: the shown value is exact after many ticks", () => {
  const { cache, log } = setup([[A, [boat(0, "b1", 1, 0), boat(1, "b2", 10, 10, 4)]]]);
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  for (let n = 2; n < 12; n++) {
    cache.apply(tick(n, { batches: [batch(A, { motion: [[0, 1, -1]] })] }));
  }
  // 0.1 + 1.0 in steps of 0.1 in floats would be 1.0999999999999999.
  assert.equal(b1.state.x, 1.1);
  assert.equal(b1.state.y, -1);
  assert.equal(b1.version, 11);
  assert.deepEqual(b1.calls.at(-1), ["update", { x: 1.1, y: -1 }]);
  log.length = 0;
  /** @type {any[]} */
  const msgs = [];
  cache.on("mod", (_obj, msg) => msgs.push(msg));
  // A slot nobody holds is skipped; the others still apply.
  cache.apply(tick(12, { batches: [batch(A, { motion: [[7, 5, 5], [1, -25, 0]] })] }));
  assert.deepEqual(cache.get("b2")?.state, { x: -1.5, y: 1, hp: 5, name: "b" });
  assert.deepEqual(msgs, [{ id: "b2", v: 5, d: { x: -1.5, y: 1 } }]);
  assert.deepEqual(log, [["mod", "b2", KA, 5]]);
});

test("the batch head carries the motion count: past 7 entries it takes two bytes", () => {
  const objs = Array.from({ length: 20 }, (_, i) => boat(i, `b${i}`, i * 10, 0));
  const { cache } = setup([[A, objs]]);
  const frame = tick(2, { batches: [batch(A, { motion: objs.map((o) => [/** @type {number} */ (o[0]), 1, 2]) })] });
  assert.deepEqual([...frame.subarray(4, 9)], [...A, 0xc0, 0x02], "key, then head 20 x 16 = 320");
  cache.apply(frame);
  assert.deepEqual(cache.get("b19")?.state, { x: 19.1, y: 0.2, hp: 5, name: "b" });
  assert.equal(cache.get("b0")?.version, 2);
});

test("dense motion: every object of the cell but those the entries name, in slot order, without slots", () => {
  const { cache, log, errors } = setup([[A, [boat(0, "b0"), boat(2, "b2"), boat(3, "b3"), boat(5, "b5")]]]);
  cache.apply(
    tick(2, {
      batches: [
        batch(A, {
          rem: [3],
          adds: [boat(4, "n4", 0, 0)], // named: not in the dense entries
          mods: [[2, 1, new Map([[2, 1]])]], // named, though stale and ignored
          dense: [
            [1, 0],
            [0, 2],
          ], // b0, then b5
        }),
      ],
    }),
  );
  assert.deepEqual(errors, []);
  assert.equal(cache.get("b0")?.state.x, 10.1);
  assert.equal(cache.get("b5")?.state.y, 10.2);
  assert.equal(cache.get("b2")?.version, 1);
  assert.deepEqual(cache.get("n4")?.state, { x: 0, y: 0, hp: 5, name: "b" });
  assert.deepEqual(log, [
    ["rem", "b3", "deleted"],
    ["add", "n4", KA],
    ["mod", "b0", KA, 2],
    ["mod", "b5", KA, 2],
  ]);
  // Everything moved: the plain dense case.
  log.length = 0;
  cache.apply(tick(3, { batches: [batch(A, { dense: [[1, 1], [2, 2], [3, 3], [4, 4]] })] }));
  assert.deepEqual(
    log.map((e) => e[1]),
    ["b0", "b2", "n4", "b5"],
  );
  assert.equal(cache.get("n4")?.state.x, 0.3, "slot 4, third in slot order");
});

test("dense motion of another count than the cell holds is reported and skipped, the rest applied", () => {
  const { cache, log, errors } = setup([[A, [boat(0, "b0"), boat(1, "b1")]]]);
  cache.apply(tick(2, { batches: [batch(A, { mods: [[1, 2, new Map([[2, 7]])]], dense: [[1, 1], [2, 2]] })] }));
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof SynkError && errors[0].code === "bad_frame", String(errors[0]));
  assert.deepEqual(log, [["mod", "b1", KA, 2]]);
  assert.equal(cache.get("b0")?.version, 1);
});

test("mods: a map of field indices, positions as integers; stale versions ignored", () => {
  const { cache, log } = setup([[A, [boat(0, "b1", 100, 100, 3)]], [SEA, [[0, "s1", 2, 1, ["n", 100, 100]]]]]);
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  cache.apply(
    tick(2, {
      batches: [
        batch(A, { mods: [[0, 3, new Map([[2, 99]])]] }), // not newer: ignored
        batch(SEA, { mods: [[0, 2, new Map([[2, 250], [0, "m"]])]] }),
      ],
    }),
  );
  assert.equal(b1.state.hp, 5);
  assert.deepEqual(cache.get("s1")?.state, { name: "m", lon: 1, lat: 2.5 });
  cache.apply(tick(3, { batches: [batch(A, { mods: [[0, 4, new Map([[0, 105], [2, 4], [9, "no such field"]])]] })] }));
  assert.deepEqual(b1.state, { x: 10.5, y: 10, hp: 4, name: "b" });
  assert.equal(b1.version, 4);
  assert.deepEqual(b1.calls.at(-1), ["update", { x: 10.5, hp: 4 }]);
  // Motion goes on from the integer the mod set.
  cache.apply(tick(4, { batches: [batch(A, { motion: [[0, 1, 0]] })] }));
  assert.equal(b1.state.x, 10.6);
  assert.deepEqual(log, [
    ["mod", "s1", "sea:north:0:-1", 2],
    ["mod", "b1", KA, 4],
    ["mod", "b1", KA, 5],
  ]);
});

test("rem tears down the object in the slot and frees it; an empty slot is nothing", () => {
  const { cache, log } = setup([[A, [boat(0, "b1"), boat(1, "b2")]]]);
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  /** @type {any[]} */
  const msgs = [];
  cache.on("rem", (_obj, msg) => msgs.push(msg));
  cache.apply(tick(2, { batches: [batch(A, { rem: [0, 5] })] }));
  assert.equal(cache.get("b1"), undefined);
  assert.deepEqual(b1.calls.at(-1), ["teardown", "deleted"]);
  assert.deepEqual(msgs, [{ id: "b1" }]);
  assert.deepEqual(log, [["rem", "b1", "deleted"]]);
  // The slot is free: motion for it reaches nobody.
  cache.apply(tick(3, { batches: [batch(A, { motion: [[0, 1, 1]] })] }));
  assert.deepEqual(log, [["rem", "b1", "deleted"]]);
});

test("a slot freed in a batch is given again in the same batch: rem and leave free before adds give", () => {
  const { cache, log } = setup([[A, [boat(0, "b1"), boat(1, "b2"), boat(2, "b3")]]]);
  const b3 = cache.get("b3");
  cache.apply(
    tick(2, {
      batches: [
        batch(A, {
          rem: [0],
          leave: [[1, C]], // C is not held: b2 goes
          adds: [boat(0, "n1", 50, 50), boat(1, "n2", 60, 60)],
          motion: [
            [0, 1, 0],
            [1, 0, 1],
            [2, 2, 2],
          ],
        }),
      ],
    }),
  );
  assert.deepEqual(idsIn(cache, KA), ["b3", "n1", "n2"]);
  assert.deepEqual(cache.get("n1")?.state, { x: 5.1, y: 5, hp: 5, name: "b" });
  assert.deepEqual(cache.get("n2")?.state, { x: 6, y: 6.1, hp: 5, name: "b" });
  assert.equal(cache.get("n1")?.version, 2);
  assert.equal(cache.get("b3"), b3);
  assert.deepEqual(b3?.state, { x: 10.2, y: 10.2, hp: 5, name: "b" });
  assert.deepEqual(log, [
    ["rem", "b1", "deleted"],
    ["rem", "b2", "moved_out"],
    ["add", "n1", KA],
    ["add", "n2", KA],
    ["mod", "n1", KA, 2],
    ["mod", "n2", KA, 2],
    ["mod", "b3", KA, 2],
  ]);
  // Later frames address the new objects by the reused slots.
  cache.apply(tick(3, { batches: [batch(A, { rem: [1] })] }));
  assert.equal(cache.get("n2"), undefined);
});

test("leave to a held key: the add there carries the same instance on, in either batch order", () => {
  const leave = batch(A, { leave: [[0, B]] });
  const add = batch(B, { adds: [[1, "b1", 0, 2, [2600, 100, 5, "b"]]] });
  for (const batches of [
    [leave, add],
    [add, leave],
  ]) {
    const { cache, log } = setup([
      [A, [boat(0, "b1")]],
      [B, [boat(0, "other", 2700)]],
    ]);
    const b1 = /** @type {Boat} */ (cache.get("b1"));
    cache.apply(tick(2, { batches }));
    assert.equal(cache.get("b1"), b1, "same instance");
    assert.equal(b1.key, KB);
    assert.equal(b1.version, 2);
    assert.deepEqual(b1.state, { x: 260, y: 10, hp: 5, name: "b" });
    assert.deepEqual(idsIn(cache, KA), []);
    assert.deepEqual(idsIn(cache, KB), ["b1", "other"]);
    assert.deepEqual(log, [["mod", "b1", KB, 2]]);
    assert.deepEqual(b1.calls.at(-1), ["update", { x: 260, y: 10, hp: 5, name: "b" }]);
    // Its slot in B is 1 now, and slot 0 of A is free.
    cache.apply(tick(3, { batches: [batch(B, { motion: [[1, 1, 0]] }), batch(A, { motion: [[0, 1, 0]] })] }));
    assert.equal(b1.state.x, 260.1);
    assert.equal(cache.get("other")?.state.x, 270);
  }
});

test("leave to a key not held: torn down, and the leave carries no state", () => {
  const { cache, log } = setup([[A, [boat(0, "b1")]]]);
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  /** @type {any[]} */
  const msgs = [];
  cache.on("rem", (_obj, msg) => msgs.push(msg));
  cache.apply(tick(2, { batches: [batch(A, { leave: [[0, B]] })] }));
  assert.equal(cache.size, 0);
  assert.deepEqual(log, [["rem", "b1", "moved_out"]]);
  assert.deepEqual(b1.calls.at(-1), ["teardown", "moved_out"]);
  assert.deepEqual(msgs, [{ id: "b1", v: 1, d: {}, to: KB }]);
});

test("leave to a key in this frame's sub.add: kept through sub.rem of the old key, then the snapshot", () => {
  const { cache, log } = setup([[A, [boat(0, "b1")]]]);
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  cache.apply(
    tick(2, {
      subRem: [A],
      subAdd: [B],
      batches: [batch(A, { leave: [[0, B]] })],
      snaps: [snapshot(B, [[4, "b1", 0, 2, [2600, 100, 5, "b"]]])],
    }),
  );
  assert.equal(cache.get("b1"), b1);
  assert.equal(b1.key, KB);
  assert.deepEqual([...cache.held], [KB]);
  assert.deepEqual(log, [["mod", "b1", KB, 2]]);
  cache.apply(tick(3, { batches: [batch(B, { motion: [[4, 0, 1]] })] }));
  assert.equal(b1.state.y, 10.1);
});

test("leave to a key neither held nor in sub.add: torn down even if other keys are added", () => {
  const { cache, log } = setup([[A, [boat(0, "b1")]]]);
  cache.apply(tick(2, { subAdd: [C], batches: [batch(A, { leave: [[0, B]] })], snaps: [snapshot(C, [])] }));
  assert.deepEqual(log, [["rem", "b1", "moved_out"]]);
});

test("a leave whose object the new cell's batch moved already, or of an empty slot, is nothing", () => {
  const { cache, log } = setup([
    [A, [boat(0, "b1"), boat(1, "b2")]],
    [B, []],
  ]);
  const b1 = cache.get("b1");
  cache.apply(
    tick(2, {
      batches: [
        batch(B, { adds: [[0, "b1", 0, 2, [2600, 100, 5, "b"]]] }),
        // Slot 0 is b1's, moved by B's batch already; slot 9 is nobody's. A new object
        // takes slot 0 in the same batch.
        batch(A, { leave: [[0, B], [9, C]], adds: [boat(0, "n1")] }),
      ],
    }),
  );
  assert.equal(cache.get("b1"), b1);
  assert.equal(b1?.key, KB);
  assert.deepEqual(idsIn(cache, KA), ["b2", "n1"]);
  assert.deepEqual(log, [
    ["mod", "b1", KB, 2],
    ["add", "n1", KA],
  ]);
});

test("an object left for a held key whose batch never brings it is torn down at the end of the frame", () => {
  const { cache, log } = setup([
    [A, [boat(0, "b1")]],
    [B, []],
  ]);
  cache.apply(tick(2, { batches: [batch(A, { leave: [[0, B]] })] }));
  assert.equal(cache.size, 0);
  assert.deepEqual(log, [["rem", "b1", "moved_out"]]);
});

test("an add for an id held elsewhere replaces its state and keeps the instance; another type is another object", () => {
  const { cache, log } = setup([
    [A, [boat(0, "b1"), boat(1, "b2")]],
    [CHAT, []],
  ]);
  const b1 = cache.get("b1");
  const b2 = cache.get("b2");
  cache.apply(
    tick(2, {
      batches: [
        batch(CHAT, { adds: [[0, "b1", 0, 7, [1, 2, 3, "moved"]], [1, "b2", 1, 1, ["now a message"]]] }),
      ],
    }),
  );
  assert.equal(cache.get("b1"), b1);
  assert.equal(b1?.key, "chat:lobby");
  assert.equal(b1?.version, 7);
  // Under a channel key, positions are the integers as they are (no map, no precision).
  assert.deepEqual(b1?.state, { x: 1, y: 2, hp: 3, name: "moved" });
  assert.notEqual(cache.get("b2"), b2);
  assert.equal(cache.get("b2")?.type, "msg");
  assert.deepEqual(log, [
    ["mod", "b1", "chat:lobby", 7],
    ["rem", "b2", "snapshot"],
    ["add", "b2", "chat:lobby"],
  ]);
  assert.deepEqual(idsIn(cache, KA), []);
});

test("a snapshot replaces the key's slots, keeps named objects and tears down the others", () => {
  const { cache, log } = setup([[A, [boat(0, "b1"), boat(1, "b2"), boat(2, "b3")]]]);
  const b1 = cache.get("b1");
  const b3 = cache.get("b3");
  cache.apply(tick(2, { subAdd: [A], snaps: [snapshot(A, [boat(1, "b1", 200, 200, 4), boat(0, "b3", 300, 300, 2)])] }));
  assert.equal(cache.get("b1"), b1);
  assert.equal(cache.get("b3"), b3);
  assert.deepEqual(log, [
    ["rem", "b2", "snapshot"],
    ["mod", "b1", KA, 4],
    ["mod", "b3", KA, 2],
  ]);
  log.length = 0;
  // The new slots: 0 is b3, 1 is b1, 2 nobody.
  cache.apply(tick(3, { batches: [batch(A, { motion: [[0, 1, 0], [1, 2, 0], [2, 3, 0]] })] }));
  assert.equal(b3?.state.x, 30.1);
  assert.equal(b1?.state.x, 20.2);
  assert.deepEqual(log, [
    ["mod", "b3", KA, 3],
    ["mod", "b1", KA, 5],
  ]);
});

test("a snapshot naming an object held under another key moves it there, same instance", () => {
  const { cache, log } = setup([[A, [boat(0, "b1")]]]);
  const b1 = cache.get("b1");
  cache.apply(tick(2, { subAdd: [B], snaps: [snapshot(B, [[3, "b1", 0, 2, [2600, 100, 5, "b"]]])] }));
  assert.equal(cache.get("b1"), b1);
  assert.equal(b1?.key, KB);
  assert.deepEqual(log, [["mod", "b1", KB, 2]]);
  // Its old slot is free: A's slot 0 is nobody's.
  cache.apply(tick(3, { batches: [batch(A, { motion: [[0, 1, 1]] }), batch(B, { motion: [[3, 1, 1]] })] }));
  assert.equal(b1?.state.x, 260.1);
  assert.equal(b1?.version, 3);
});

test("sub.rem tears down the key's objects; batches of keys not held are skipped", () => {
  const { cache, log } = setup([
    [A, [boat(0, "b1")]],
    [B, [boat(0, "b2")]],
  ]);
  cache.apply(
    tick(2, {
      subRem: [B],
      batches: [
        batch(C, { adds: [boat(0, "ghost")], motion: [[0, 1, 1]], rem: [3], leave: [[1, A]] }),
        batch(B, { motion: [[0, 1, 1]] }), // held before the frame: applied before sub.rem
      ],
    }),
  );
  assert.deepEqual([...cache.held], [KA]);
  assert.equal(cache.get("ghost"), undefined);
  assert.deepEqual(log, [
    ["mod", "b2", KB, 2],
    ["rem", "b2", "unsubscribed"],
  ]);
});

test("resync: held keys, objects and slots become exactly the snapshots', identities kept", () => {
  const { cache, log } = setup([
    [A, [boat(0, "b1"), boat(1, "b2")]],
    [B, [boat(0, "b3")]],
  ]);
  const b1 = cache.get("b1");
  const msg = cache.applyBinary(resync(50, { snaps: [snapshot(A, [boat(5, "b1", 1, 1, 9)]), snapshot(C, [boat(0, "c1")])] }));
  assert.deepEqual(msg, {
    m: "resync",
    n: 50,
    snap: [
      { k: KA, objs: [{ id: "b1", t: "boat", v: 9, s: { x: 0.1, y: 0.1, hp: 5, name: "b" } }] },
      { k: KC, objs: [{ id: "c1", t: "boat", v: 1, s: { x: 10, y: 10, hp: 5, name: "b" } }] },
    ],
  });
  assert.deepEqual([...cache.held].sort(), [KA, KC]);
  assert.equal(cache.get("b1"), b1);
  assert.deepEqual(log, [
    ["rem", "b2", "resync"],
    ["rem", "b3", "resync"],
    ["mod", "b1", KA, 9],
    ["add", "c1", KC],
  ]);
  log.length = 0;
  cache.apply(tick(51, { batches: [batch(A, { motion: [[0, 1, 1], [5, 1, 1]] })] }));
  assert.deepEqual(log, [["mod", "b1", KA, 10]]);
});

test("resync: an object that moved between held keys meanwhile keeps its instance, whatever the snapshot order", () => {
  for (const order of [
    [A, B],
    [B, A],
  ]) {
    const { cache, log } = setup([
      [A, [boat(0, "b1")]],
      [B, [boat(0, "b2", 2600)]],
    ]);
    const b1 = cache.get("b1");
    const entries = new Map([
      [A, [boat(0, "b2", 100, 100, 3)]],
      [B, [[1, "b1", 0, 4, [2700, 100, 5, "b"]]]],
    ]);
    cache.apply(resync(9, { snaps: order.map((k) => snapshot(k, /** @type {any[][]} */ (entries.get(k)))) }));
    assert.equal(cache.get("b1"), b1);
    assert.equal(b1?.key, KB);
    assert.equal(cache.get("b2")?.key, KA);
    assert.deepEqual(
      log.filter((e) => e[0] !== "mod"),
      [],
      "no teardown, no new object",
    );
  }
});

test("types part: a type learned later is defined before the entries that use it", () => {
  const { cache } = setup([[A, []]]);
  const flag = [3, "flag", ["color", "x", "y"], [1, 2]];
  cache.apply(tick(2, { types: [flag], batches: [batch(A, { adds: [[0, "f1", 3, 1, ["red", 15, 25]]] })] }));
  assert.deepEqual(cache.get("f1")?.state, { color: "red", x: 1.5, y: 2.5 });
  assert.equal(cache.get("f1")?.type, "flag");
  cache.apply(tick(3, { batches: [batch(A, { motion: [[0, 1, 1]], mods: [] })] }));
  assert.deepEqual(cache.get("f1")?.state, { color: "red", x: 1.6, y: 2.6 });
  // A resync may bring types too.
  cache.apply(resync(4, { types: [[4, "rock", ["size"], null]], snaps: [snapshot(A, [[0, "r1", 4, 1, [3]]])] }));
  assert.deepEqual(cache.get("r1")?.state, { size: 3 });
  assert.equal(cache.get("f1"), undefined);
});

test("interpolation follows motion: from the shown value to the new one over one tick", () => {
  const { cache, clock } = setup([[A, [boat(0, "b1", 0, 0)]]]);
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  clock.t = 1000;
  cache.apply(tick(2, { batches: [batch(A, { motion: [[0, 100, 0]] })] }));
  assert.deepEqual(b1.lerp(1050), { x: 5, y: 0 });
  assert.deepEqual(b1.lerp(1100), { x: 10, y: 0 });
});

test("message frames decode with MessagePack; only the hello changes the cache", () => {
  const cache = new ObjectCache();
  const hello = cache.applyBinary(message(HELLO));
  assert.deepEqual(hello, HELLO);
  assert.equal(cache.maps.main.num, 0);
  assert.equal(cache.tickMs, 100);
  assert.deepEqual(cache.applyBinary(message({ m: "reply", id: 3, ok: { a: [1, 2.5, null] } })), {
    m: "reply",
    id: 3,
    ok: { a: [1, 2.5, null] },
  });
  assert.equal(cache.apply(message({ m: "pong", t: 1.5, n: 7 })), false);
  // An ArrayBuffer does as well as a Uint8Array.
  const frame = tick(2, { subAdd: [A], snaps: [snapshot(A, [boat(0, "b1")])] });
  assert.equal(cache.apply(frame.slice().buffer), true);
  assert.equal(cache.size, 1);
});

test("a malformed frame throws bad_frame before changing anything", () => {
  const good = batch(A, { motion: [[0, 1, 1]] });
  const bad = {
    empty: new Uint8Array([]),
    "unknown kind": new Uint8Array([0x09, 0x01, 0x00]),
    truncated: tick(2, { batches: [good] }).subarray(0, 6),
    "trailing bytes": new Uint8Array([...tick(2, { batches: [good] }), 0]),
    "unknown tick part": new Uint8Array([0x01, 0x02, 0x20]),
    "motion past the end": tick(2, { batches: [good, [...A, 0x10]] }), // head: one motion entry, none follows
    "dense motion past the end": tick(2, { batches: [good, [...A, 0x28, 2]] }),
    "unknown map": tick(2, { batches: [good, batch(key.grid(7, 0, 0), { motion: [] })] }),
    "unknown type": tick(2, { batches: [good, batch(A, { adds: [[1, "x", 9, 1, []]] })] }),
    "state of the wrong length": tick(2, { batches: [good, batch(A, { adds: [[1, "x", 0, 1, [1, 2]]] })] }),
    "bad add": tick(2, { batches: [good, batch(A, { adds: [["slot", "x", 0, 1, [1, 2, 3, 4]]] })] }),
    "bad mod": tick(2, { batches: [good, batch(A, { mods: [[0, 2]] })] }),
    "entries not a pair": tick(2, { batches: [good, [...A, 0x04, ...mp([[]])]] }),
    "bad MessagePack": tick(2, { batches: [good, [...A, 0x04, 2, 0xc1, 0xc1]] }),
    "channel key not UTF-8": tick(2, { batches: [good, [0, 2, 0xff, 0xfe, 0x00]] }),
    "varint too long": new Uint8Array([0x01, ...Array(10).fill(0x80), 0x01, 0x00]),
    "bad snapshot": tick(2, { subAdd: [A], batches: [good], snaps: [snapshot(A, [[0, "b1"]])] }),
    "bad type definition": tick(2, { types: [[5, "t", "fields", null]], batches: [good] }),
    "bad resync": resync(3, { snaps: [[...A, ...mp("nope")]] }),
    "not a map": message([1, 2]),
  };
  for (const [what, frame] of Object.entries(bad)) {
    const { cache, log } = setup([[A, [boat(0, "b1")]]]);
    assert.throws(
      () => cache.applyBinary(frame),
      (err) => err instanceof SynkError && err.code === "bad_frame",
      what,
    );
    assert.deepEqual(cache.get("b1")?.state, { x: 10, y: 10, hp: 5, name: "b" }, what);
    assert.equal(cache.get("b1")?.version, 1, what);
    assert.deepEqual([...cache.held], [KA], what);
    assert.deepEqual(log, [], what);
  }
  // Ticks before a version 2 hello have no maps or types to read them by.
  assert.throws(
    () => new ObjectCache().applyBinary(tick(1, { subAdd: [A] })),
    (err) => err instanceof SynkError && err.code === "bad_frame",
  );
});

test("a new session forgets the slots; objects a snapshot names keep their instances", () => {
  const { cache, log } = setup([[A, [boat(0, "b1"), boat(1, "b2")]]]);
  const b1 = cache.get("b1");
  cache.beginSession();
  cache.apply(message({ ...HELLO, sid: "s2" }));
  cache.apply(tick(1, { subAdd: [A], snaps: [snapshot(A, [boat(1, "b1", 100, 100, 2)])] }));
  assert.equal(cache.get("b1"), b1);
  assert.equal(cache.staleCount, 0, "b2, under A and not named, went with A's snapshot");
  cache.settle();
  assert.deepEqual(log, [
    ["rem", "b2", "session"],
    ["mod", "b1", KA, 2],
  ]);
  cache.apply(tick(2, { batches: [batch(A, { motion: [[0, 1, 0], [1, 2, 0]] })] }));
  assert.equal(b1?.state.x, 10.2);
});
