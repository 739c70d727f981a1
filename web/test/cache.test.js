// Unit tests of ObjectCache: hand-written frame sequences, one per case of
// docs/protocol.md, applied with no socket.
import { test } from "node:test";
import assert from "node:assert/strict";

import { ObjectCache, SynkError, SynkObject } from "../synkworld.js";
import { recordEvents } from "../testing/fakes.js";

const HELLO = {
  m: "hello",
  proto: 1,
  sid: "s1",
  tick: 0,
  rate: 10,
  maps: {
    main: { cell: 250, origin: [0, 0], bounds: [0, 0, 10000, 10000], pos: ["x", "y"], prec: 1 },
    "sea:north": { cell: 100, origin: [0, 0], bounds: [0, 0, 1000, 1000], pos: ["lon", "lat"], prec: 2 },
  },
};

const A = "main:0:0";
const B = "main:1:0";
const C = "main:2:0";

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

/** A cache that has seen HELLO, and holds `snaps` ({key: [entries]}) through one tick frame. */
function setup(snaps = {}) {
  const clock = { t: 0 };
  const cache = new ObjectCache({ classes: { boat: Boat }, now: () => clock.t });
  const { log, errors } = recordEvents(cache);
  cache.apply(HELLO);
  const keys = Object.keys(snaps);
  if (keys.length > 0) {
    cache.apply({ m: "tick", n: 1, sub: { add: keys }, snap: keys.map((k) => ({ k, objs: snaps[k] })) });
  }
  log.length = 0;
  return { cache, log, errors, clock };
}

const boat = (/** @type {string} */ id, x = 10, y = 10, v = 1) => ({ id, t: "boat", v, s: { x, y } });

/** @param {ObjectCache} cache @param {string} key */
const idsIn = (cache, key) => cache.inKey(key).map((o) => o.id).sort();

test("sub.add and snapshots create objects, held by id and by key", () => {
  const { cache, log } = setup();
  cache.apply({
    m: "tick",
    n: 1,
    sub: { add: [A, "chat:lobby"] },
    snap: [
      { k: A, objs: [boat("b1"), boat("b2", 20, 20, 3)] },
      { k: "chat:lobby", objs: [{ id: "m1", t: "msg", v: 1, s: { text: "hi" } }] },
    ],
  });
  assert.deepEqual([...cache.held].sort(), ["chat:lobby", A]);
  assert.deepEqual(idsIn(cache, A), ["b1", "b2"]);
  assert.equal(cache.get("b2")?.version, 3);
  assert.equal(cache.get("m1")?.key, "chat:lobby");
  assert.deepEqual(cache.get("m1")?.state, { text: "hi" });
  assert.equal(cache.size, 3);
  assert.deepEqual(log, [
    ["add", "b1", A],
    ["add", "b2", A],
    ["add", "m1", "chat:lobby"],
  ]);
});

test("registered types get their class, with init before the add event; others get SynkObject", () => {
  const { cache } = setup();
  /** @type {string[]} */
  const order = [];
  cache.on("add", (obj) => order.push(`add:${obj.id}:${obj instanceof Boat ? "Boat" : "plain"}`));
  cache.apply({ m: "tick", n: 1, sub: { add: [A] }, snap: [{ k: A, objs: [boat("b1", 1, 2), { id: "r1", t: "rock", v: 1, s: {} }] }] });
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  assert.ok(b1 instanceof Boat);
  assert.deepEqual(b1.calls, [["init", { x: 1, y: 2 }]]);
  assert.equal(b1.type, "boat");
  const r1 = cache.get("r1");
  assert.ok(r1 instanceof SynkObject && !(r1 instanceof Boat));
  assert.deepEqual(order, ["add:b1:Boat", "add:r1:plain"]);
});

test("a mod applies its diff and version and calls update", () => {
  const { cache, log } = setup({ [A]: [{ id: "b1", t: "boat", v: 1, s: { x: 10, y: 10, hp: 5 } }] });
  cache.apply({ m: "tick", n: 2, b: [{ k: A, mod: [{ id: "b1", v: 2, d: { hp: 4 } }] }] });
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  assert.deepEqual(b1.state, { x: 10, y: 10, hp: 4 });
  assert.equal(b1.version, 2);
  assert.deepEqual(b1.calls.at(-1), ["update", { hp: 4 }]);
  assert.deepEqual(log, [["mod", "b1", A, 2]]);
});

test("mods whose version is not greater than the held one are discarded, moves included", () => {
  const { cache, log } = setup({ [A]: [boat("b1", 10, 10, 3)], [B]: [] });
  const b1 = cache.get("b1");
  cache.apply({
    m: "tick",
    n: 2,
    b: [{ k: A, mod: [{ id: "b1", v: 3, d: { x: 99 } }] }],
  });
  cache.apply({
    m: "tick",
    n: 3,
    b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 260 }, to: B }] }],
  });
  assert.deepEqual(log, []);
  assert.equal(b1?.key, A);
  assert.deepEqual(b1?.state, { x: 10, y: 10 });
  cache.apply({ m: "tick", n: 4, b: [{ k: A, mod: [{ id: "b1", v: 4, d: { x: 11 } }] }] });
  assert.deepEqual(log, [["mod", "b1", A, 4]]);
});

test("move, holder of both sides: same instance in the new cell, in either batch order", () => {
  const modBatch = { k: A, mod: [{ id: "b1", v: 2, d: { x: 260 }, to: B }] };
  const addBatch = { k: B, add: [{ id: "b1", t: "boat", v: 2, s: { x: 260, y: 10 }, from: A }] };
  for (const b of [
    [modBatch, addBatch],
    [addBatch, modBatch],
  ]) {
    const { cache, log } = setup({ [A]: [boat("b1")], [B]: [] });
    const b1 = /** @type {Boat} */ (cache.get("b1"));
    cache.apply({ m: "tick", n: 2, b });
    assert.equal(cache.get("b1"), b1);
    assert.equal(b1.key, B);
    assert.equal(b1.version, 2);
    assert.deepEqual(b1.state, { x: 260, y: 10 });
    assert.deepEqual(idsIn(cache, A), []);
    assert.deepEqual(idsIn(cache, B), ["b1"]);
    assert.deepEqual(log, [["mod", "b1", B, 2]]);
    assert.deepEqual(b1.calls.at(-1), ["update", { x: 260 }]);
  }
});

test("move, holder of the old side only: torn down", () => {
  const { cache, log } = setup({ [A]: [boat("b1")] });
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  cache.apply({ m: "tick", n: 2, b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 260 }, to: B }] }] });
  assert.equal(cache.get("b1"), undefined);
  assert.equal(cache.size, 0);
  assert.deepEqual(log, [["rem", "b1", "moved_out"]]);
  assert.deepEqual(b1.calls.at(-1), ["teardown", "moved_out"]);
});

test("move, holder of the new side only: the add with from builds it", () => {
  const { cache, log } = setup({ [B]: [] });
  cache.apply({ m: "tick", n: 2, b: [{ k: B, add: [{ id: "b1", t: "boat", v: 2, s: { x: 260, y: 10 }, from: A }] }] });
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  assert.equal(b1.key, B);
  assert.equal(b1.version, 2);
  assert.deepEqual(b1.calls, [["init", { x: 260, y: 10 }]]);
  assert.deepEqual(log, [["add", "b1", B]]);
});

test("move, holder of neither side: batches of keys not held are ignored", () => {
  const { cache, log } = setup({ [C]: [] });
  cache.apply({
    m: "tick",
    n: 2,
    b: [
      { k: A, mod: [{ id: "b1", v: 2, d: { x: 260 }, to: B }] },
      { k: B, add: [{ id: "b1", t: "boat", v: 2, s: { x: 260, y: 10 }, from: A }] },
    ],
  });
  assert.equal(cache.size, 0);
  assert.deepEqual(log, []);
});

test("mod with to a key in this frame's sub.add: moved, kept through sub.rem and the snapshot", () => {
  const { cache, log } = setup({ [A]: [boat("b1")] });
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  cache.apply({
    m: "tick",
    n: 2,
    b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 260 }, to: B }] }],
    sub: { add: [B], rem: [A] },
    snap: [{ k: B, objs: [{ id: "b1", t: "boat", v: 2, s: { x: 260, y: 10 } }] }],
  });
  assert.equal(cache.get("b1"), b1);
  assert.equal(b1.key, B);
  assert.deepEqual([...cache.held], [B]);
  assert.deepEqual(log, [
    ["mod", "b1", B, 2],
    ["mod", "b1", B, 2],
  ]);
  assert.ok(!b1.calls.some((c) => c[0] === "teardown"));
});

test("mod with to a key neither held nor in sub.add: torn down even if other keys are added", () => {
  const { cache, log } = setup({ [A]: [boat("b1")] });
  cache.apply({
    m: "tick",
    n: 2,
    b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 510 }, to: C }] }],
    sub: { add: [B] },
    snap: [{ k: B, objs: [] }],
  });
  assert.equal(cache.get("b1"), undefined);
  assert.deepEqual(log, [["rem", "b1", "moved_out"]]);
});

test("delete during a move: a rem tears the object down by id, whichever cell's batch has it", () => {
  // Moved and deleted in one tick: the rem is in the old cell's batch.
  {
    const { cache, log } = setup({ [A]: [boat("b1")], [B]: [] });
    cache.apply({ m: "tick", n: 2, b: [{ k: A, rem: [{ id: "b1" }] }] });
    assert.equal(cache.size, 0);
    assert.deepEqual(log, [["rem", "b1", "deleted"]]);
  }
  // The same, with the rem in the new cell's batch while the client holds it under the old key.
  {
    const { cache, log } = setup({ [A]: [boat("b1")], [B]: [] });
    const b1 = /** @type {Boat} */ (cache.get("b1"));
    cache.apply({ m: "tick", n: 2, b: [{ k: B, rem: [{ id: "b1" }] }] });
    assert.equal(cache.size, 0);
    assert.deepEqual(idsIn(cache, A), []);
    assert.deepEqual(log, [["rem", "b1", "deleted"]]);
    assert.deepEqual(b1.calls.at(-1), ["teardown", "deleted"]);
  }
  // Moved in one tick, deleted from the new cell in the next.
  {
    const { cache, log } = setup({ [A]: [boat("b1")], [B]: [] });
    cache.apply({
      m: "tick",
      n: 2,
      b: [
        { k: B, add: [{ id: "b1", t: "boat", v: 2, s: { x: 260, y: 10 }, from: A }] },
        { k: A, mod: [{ id: "b1", v: 2, d: { x: 260 }, to: B }] },
      ],
    });
    cache.apply({ m: "tick", n: 3, b: [{ k: B, rem: [{ id: "b1" }] }] });
    assert.equal(cache.size, 0);
    assert.deepEqual(log, [
      ["mod", "b1", B, 2],
      ["rem", "b1", "deleted"],
    ]);
  }
  // Moved into a key this same frame unsubscribes: moved, then torn down with the key.
  {
    const { cache, log } = setup({ [A]: [boat("b1")], [B]: [] });
    cache.apply({ m: "tick", n: 2, b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 260 }, to: B }] }], sub: { rem: [B] } });
    assert.equal(cache.size, 0);
    assert.deepEqual(log, [
      ["mod", "b1", B, 2],
      ["rem", "b1", "unsubscribed"],
    ]);
  }
});

test("create and move in one tick: a plain add in the new cell builds the object there", () => {
  const { cache, log } = setup({ [A]: [], [B]: [] });
  cache.apply({ m: "tick", n: 2, b: [{ k: B, add: [{ id: "b9", t: "boat", v: 1, s: { x: 300, y: 10 } }] }] });
  assert.equal(cache.get("b9")?.key, B);
  assert.deepEqual(log, [["add", "b9", B]]);
});

test("an add with from a held key builds the object when the client does not have it", () => {
  // Nothing else could bring the object (the old cell never showed it), so the
  // add's full state is used rather than dropped.
  const { cache, log } = setup({ [A]: [], [B]: [] });
  cache.apply({ m: "tick", n: 2, b: [{ k: B, add: [{ id: "b9", t: "boat", v: 1, s: { x: 300, y: 10 }, from: A }] }] });
  assert.equal(cache.get("b9")?.key, B);
  assert.deepEqual(log, [["add", "b9", B]]);
});

test("a snapshot replaces the state of a held object and keeps the instance", () => {
  const { cache, log } = setup({ [A]: [{ id: "b1", t: "boat", v: 3, s: { x: 10, y: 10, hp: 5 } }] });
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  const state = b1.state;
  cache.apply({ m: "tick", n: 9, sub: { add: [A] }, snap: [{ k: A, objs: [{ id: "b1", t: "boat", v: 7, s: { x: 11, y: 12 } }] }] });
  assert.equal(cache.get("b1"), b1);
  assert.equal(b1.state, state, "the state object itself is kept");
  assert.deepEqual(b1.state, { x: 11, y: 12 });
  assert.equal(b1.version, 7);
  assert.deepEqual(b1.calls.slice(1), [["update", { x: 11, y: 12 }]]);
  assert.deepEqual(log, [["mod", "b1", A, 7]]);
});

test("a snapshot naming a held object under another key moves it, keeping the instance", () => {
  const { cache, log } = setup({ [A]: [boat("b1")] });
  const b1 = cache.get("b1");
  cache.apply({ m: "tick", n: 2, sub: { add: [B] }, snap: [{ k: B, objs: [boat("b1", 260, 10, 2)] }] });
  assert.equal(cache.get("b1"), b1);
  assert.equal(b1?.key, B);
  assert.deepEqual(idsIn(cache, A), []);
  assert.deepEqual(log, [["mod", "b1", B, 2]]);
});

test("a snapshot tears down the objects held under its key that it does not name", () => {
  const { cache, log } = setup({ [A]: [boat("b1"), boat("b2")] });
  cache.apply({ m: "tick", n: 2, sub: { add: [A] }, snap: [{ k: A, objs: [boat("b1")] }] });
  assert.deepEqual(idsIn(cache, A), ["b1"]);
  assert.deepEqual(log, [
    ["rem", "b2", "snapshot"],
    ["mod", "b1", A, 1],
  ]);
});

test("resync: held keys and objects become exactly the snapshots', identities kept", () => {
  const { cache, log } = setup({ [A]: [boat("b1"), boat("b2")], [B]: [boat("b3", 300, 10)] });
  const b1 = cache.get("b1");
  const b3 = cache.get("b3");
  cache.apply({
    m: "resync",
    n: 40,
    snap: [
      { k: A, objs: [boat("b1", 15, 15, 5)] },
      { k: C, objs: [boat("b3", 600, 10, 4), boat("b4", 700, 10, 1)] },
    ],
  });
  assert.deepEqual([...cache.held].sort(), [A, C]);
  assert.equal(cache.get("b1"), b1);
  assert.equal(cache.get("b3"), b3);
  assert.equal(b3?.key, C);
  assert.deepEqual(b1?.state, { x: 15, y: 15 });
  assert.equal(cache.get("b2"), undefined);
  assert.deepEqual(idsIn(cache, B), []);
  assert.deepEqual(log, [
    ["rem", "b2", "resync"],
    ["mod", "b1", A, 5],
    ["mod", "b3", C, 4],
    ["add", "b4", C],
  ]);
  // B is no longer held, so a batch for it is ignored.
  cache.apply({ m: "tick", n: 41, b: [{ k: B, add: [boat("b5")] }] });
  assert.equal(cache.get("b5"), undefined);
});

test("the held keys follow the frames, in frame order", () => {
  const { cache, log } = setup({ [A]: [boat("b1")] });
  // Removing a key never held changes nothing.
  cache.apply({ m: "tick", n: 2, sub: { rem: [C] } });
  assert.deepEqual([...cache.held], [A]);
  // Batches apply against the keys held before the frame: A's mod lands, then A goes.
  cache.apply({ m: "tick", n: 3, b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 1 } }] }], sub: { rem: [A], add: [B] }, snap: [{ k: B, objs: [] }] });
  assert.deepEqual([...cache.held], [B]);
  assert.deepEqual(log, [
    ["mod", "b1", A, 2],
    ["rem", "b1", "unsubscribed"],
  ]);
  log.length = 0;
  // A batch for a key added in this same frame is not applied: the snapshot is the truth.
  cache.apply({
    m: "tick",
    n: 4,
    b: [{ k: C, add: [boat("ghost")] }],
    sub: { add: [C] },
    snap: [{ k: C, objs: [boat("b7")] }],
  });
  assert.equal(cache.get("ghost"), undefined);
  assert.deepEqual(log, [["add", "b7", C]]);
  log.length = 0;
  // A key dropped and re-added in one frame: sub.rem first, then sub.add and its snapshot.
  const b7 = cache.get("b7");
  cache.apply({ m: "tick", n: 5, sub: { rem: [C], add: [C] }, snap: [{ k: C, objs: [boat("b7")] }] });
  assert.notEqual(cache.get("b7"), b7);
  assert.deepEqual(log, [
    ["rem", "b7", "unsubscribed"],
    ["add", "b7", C],
  ]);
  // A snapshot for a key that is not held is ignored.
  log.length = 0;
  cache.apply({ m: "tick", n: 6, snap: [{ k: A, objs: [boat("b8")] }] });
  assert.equal(cache.get("b8"), undefined);
  assert.deepEqual(log, []);
});

test("mv arrays change the map's two pos fields, version + 1 each", () => {
  const sea = "sea:north:0:0";
  const { cache, log } = setup({
    [A]: [boat("b1", 10, 10, 1), boat("b2", 20, 20, 4)],
    [sea]: [{ id: "s1", t: "buoy", v: 2, s: { lon: 0.5, lat: 0.5, name: "n" } }],
    "room:9:9x": [{ id: "c1", t: "buoy", v: 1, s: { x: 0, y: 0 } }],
  });
  /** @type {any[]} */
  const msgs = [];
  cache.on("mod", (_obj, msg) => msgs.push(msg));
  cache.apply({
    m: "tick",
    n: 2,
    b: [
      { k: A, mv: [["b1", "b2", "nobody"], [11, 21, 0], [12, 22, 0]] },
      { k: sea, mv: [["s1"], [1.25], [2.5]] },
      // A key that is not a grid key of a known map: the fields default to x and y.
      { k: "room:9:9x", mv: [["c1"], [3], [4]] },
    ],
  });
  assert.deepEqual(cache.get("b1")?.state, { x: 11, y: 12 });
  assert.equal(cache.get("b1")?.version, 2);
  assert.deepEqual(cache.get("b2")?.state, { x: 21, y: 22 });
  assert.equal(cache.get("b2")?.version, 5);
  assert.deepEqual(cache.get("s1")?.state, { lon: 1.25, lat: 2.5, name: "n" });
  assert.equal(cache.get("s1")?.version, 3);
  assert.deepEqual(cache.get("c1")?.state, { x: 3, y: 4 });
  assert.deepEqual(msgs[0], { id: "b1", v: 2, d: { x: 11, y: 12 } });
  assert.deepEqual(/** @type {Boat} */ (cache.get("b1")).calls.at(-1), ["update", { x: 11, y: 12 }]);
  assert.deepEqual(log, [
    ["mod", "b1", A, 2],
    ["mod", "b2", A, 5],
    ["mod", "s1", sea, 3],
    ["mod", "c1", "room:9:9x", 2],
  ]);
});

test("a malformed frame throws bad_frame before changing anything", () => {
  const bad = [
    { m: "tick", n: 2, b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 1 } }] }, { k: B, add: [{ id: "x" }] }] },
    { m: "tick", n: 2, b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 1 } }] }, { k: A, mv: [["b1"], [1, 2], [3]] }] },
    { m: "tick", n: 2, b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 1 } }] }], sub: { add: [7] } },
    { m: "tick", n: 2, b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 1 } }] }], snap: [{ k: A, objs: [{ id: "z" }] }] },
    { m: "tick", n: 2, b: "nope" },
    { m: "tick", b: [] },
    { m: "resync", n: 3 },
    { m: "hello", proto: 1 },
    [1, 2],
    null,
  ];
  for (const frame of bad) {
    const { cache, log } = setup({ [A]: [boat("b1")] });
    assert.throws(
      () => cache.apply(frame),
      (err) => err instanceof SynkError && err.code === "bad_frame",
      JSON.stringify(frame),
    );
    assert.deepEqual(cache.get("b1")?.state, { x: 10, y: 10 });
    assert.equal(cache.get("b1")?.version, 1);
    assert.deepEqual(log, []);
  }
  // Kinds the cache does not handle are left to the caller.
  const { cache } = setup();
  assert.equal(cache.apply({ m: "reply", id: 1, ok: null }), false);
});

test("user hooks and listeners that throw are reported, and the frame goes on", () => {
  class Fragile extends SynkObject {
    init() {
      throw new Error("init broke");
    }
    update() {
      throw new Error("update broke");
    }
    teardown() {
      throw new Error("teardown broke");
    }
  }
  class Unbuildable extends SynkObject {
    constructor(/** @type {any} */ init) {
      super(init);
      throw new Error("constructor broke");
    }
  }
  const cache = new ObjectCache({ classes: { fragile: Fragile, unbuildable: Unbuildable } });
  const { log, errors } = recordEvents(cache);
  cache.on("add", () => {
    throw new Error("listener broke");
  });
  cache.apply(HELLO);
  cache.apply({
    m: "tick",
    n: 1,
    sub: { add: [A] },
    snap: [{ k: A, objs: [{ id: "f1", t: "fragile", v: 1, s: {} }, { id: "u1", t: "unbuildable", v: 1, s: {} }, boat("b1")] }],
  });
  cache.apply({ m: "tick", n: 2, b: [{ k: A, mod: [{ id: "f1", v: 2, d: { x: 1 } }], rem: [{ id: "f1" }, { id: "b1" }] }] });
  assert.equal(cache.get("u1")?.constructor, SynkObject, "falls back to the base class");
  assert.deepEqual(idsIn(cache, A), ["u1"]);
  assert.deepEqual(log, [
    ["add", "f1", A],
    ["add", "u1", A],
    ["add", "b1", A],
    ["mod", "f1", A, 2],
    ["rem", "f1", "deleted"],
    ["rem", "b1", "deleted"],
  ]);
  assert.ok(errors.every((e) => e instanceof SynkError && e.code === "callback_failed"));
  const messages = errors.map((e) => e.message).join("\n");
  for (const what of ["init broke", "update broke", "teardown broke", "constructor broke", "listener broke"]) {
    assert.ok(messages.includes(what), what);
  }
});

test("a new session: objects stay stale until a snapshot names them; settle drops the rest", () => {
  const { cache, log } = setup({ [A]: [boat("b1")], [B]: [boat("b2")], [C]: [boat("b3")] });
  const b1 = cache.get("b1");
  cache.beginSession();
  assert.equal(cache.held.size, 0);
  assert.equal(cache.staleCount, 3);
  assert.equal(cache.size, 3);
  cache.apply({
    m: "tick",
    n: 1,
    sub: { add: [A, B] },
    snap: [
      { k: A, objs: [boat("b1", 12, 12, 2)] },
      { k: B, objs: [] },
    ],
  });
  assert.equal(cache.get("b1"), b1);
  assert.equal(cache.staleCount, 1);
  cache.settle();
  assert.equal(cache.staleCount, 0);
  assert.deepEqual([...cache.objects()].map((o) => o.id), ["b1"]);
  assert.deepEqual(log, [
    ["mod", "b1", A, 2],
    ["rem", "b2", "session"],
    ["rem", "b3", "session"],
  ]);
});

test("clear tears every object down and forgets the keys", () => {
  const { cache, log } = setup({ [A]: [boat("b1")], "chat:x": [] });
  cache.clear();
  assert.equal(cache.size, 0);
  assert.equal(cache.held.size, 0);
  assert.deepEqual(log, [["rem", "b1", "closed"]]);
});

test("interpolation: lerp goes from the shown value to the new one over one tick", () => {
  const { cache, clock } = setup({ [A]: [boat("b1", 0, 0)] });
  assert.equal(cache.tickMs, 100);
  const b1 = /** @type {Boat} */ (cache.get("b1"));
  assert.deepEqual(b1.lerp(), { x: 0, y: 0 }, "no motion yet: the state");
  clock.t = 1000;
  cache.apply({ m: "tick", n: 2, b: [{ k: A, mv: [["b1"], [10], [0]] }] });
  assert.deepEqual(b1.lerp(1000), { x: 0, y: 0 });
  assert.deepEqual(b1.lerp(1050), { x: 5, y: 0 });
  assert.deepEqual(b1.lerp(1100), { x: 10, y: 0 });
  assert.deepEqual(b1.lerp(5000), { x: 10, y: 0 });
  // A change mid-way starts from what is shown, so motion has no jump.
  clock.t = 1050;
  cache.apply({ m: "tick", n: 3, b: [{ k: A, mod: [{ id: "b1", v: 3, d: { x: 20 } }] }] });
  assert.deepEqual(b1.lerp(), { x: 5, y: 0 }, "without an argument, the cache's clock");
  assert.deepEqual(b1.lerp(1100), { x: 12.5, y: 0 });
  // A snapshot places the object without motion.
  cache.apply({ m: "tick", n: 4, sub: { add: [A] }, snap: [{ k: A, objs: [boat("b1", 50, 50, 9)] }] });
  assert.deepEqual(b1.lerp(1060), { x: 50, y: 50 });
  // Classes without `interpolate` have nothing to interpolate.
  assert.deepEqual(new SynkObject({ id: "p", t: "p", v: 1, s: { x: 1 }, key: A }).lerp(0), {});
});
