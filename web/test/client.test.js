// Unit tests of Client over an in-process fake WebSocket (testing/fakes.js),
// with Node's mock timers; tests against a real server live elsewhere.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Client, SynkCallError, SynkError } from "../synkworld.js";
import { fakeWebSocket, recordEvents } from "../testing/fakes.js";

const HELLO = {
  m: "hello",
  proto: 1,
  sid: "s1",
  tick: 100,
  rate: 20,
  maps: { main: { cell: 250, origin: [0, 0], bounds: [0, 0, 10000, 10000], pos: ["x", "y"], prec: 1 } },
};
const A = "main:0:0";
const B = "main:1:0";
const boat = (/** @type {string} */ id, x = 10, v = 1) => ({ id, t: "boat", v, s: { x, y: 10 } });

/**
 * A client over a fake socket, with timers mocked and `connect()` called.
 * @param {import("node:test").TestContext} t
 * @param {import("../synkworld.js").ClientOptions} [options]
 */
function start(t, options = {}) {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { FakeSocket, sockets } = fakeWebSocket();
  const client = new Client("http://game.test:8080", {
    WebSocket: FakeSocket,
    viewIntervalMs: 50,
    pingIntervalMs: 0,
    random: () => 0.5,
    ...options,
  });
  const { log, errors } = recordEvents(client);
  /** @type {string[]} */
  const events = [];
  for (const name of /** @type {const} */ (["open", "close", "hello", "tick", "resync"])) {
    client.on(name, () => events.push(name));
  }
  client.connect();
  return { client, sockets, log, errors, events, timers: t.mock.timers };
}

/** Opens the last socket and sends a hello on it. @param {any[]} sockets */
function ready(sockets, hello = HELLO) {
  const ws = sockets.at(-1);
  ws.open();
  ws.push(hello);
  return ws;
}

test("the socket URL: ws(s) scheme, /ws path, token parameter", () => {
  const { FakeSocket } = fakeWebSocket();
  const url = (/** @type {string} */ base, /** @type {string | undefined} */ token) =>
    new Client(base, { WebSocket: FakeSocket, token }).url;
  assert.equal(url("http://game.test:8080", undefined), "ws://game.test:8080/ws");
  assert.equal(url("https://game.test/", "a b&c"), "wss://game.test/ws?token=a+b%26c");
  assert.equal(url("ws://game.test/world/", undefined), "ws://game.test/world/ws");
  assert.equal(url("wss://game.test/ws", undefined), "wss://game.test/ws");
  assert.throws(() => new Client("http://x"), TypeError, "Node 20 has no global WebSocket");
  assert.throws(() => new Client(undefined, { WebSocket: FakeSocket }), TypeError, "no page to take the origin from");
});

test("on hello the client sends its view and explicit keys; the held keys come from frames", (t) => {
  const { client, sockets, events } = start(t);
  client.setView("main", [0, 0, 500, 400], 2);
  client.subscribe(["chat:lobby", "chat:lobby", "guild:7"]);
  assert.equal(client.state, "connecting");
  assert.deepEqual(sockets[0].sent, [], "nothing is sent before the session starts");
  const ws = ready(sockets);
  assert.equal(client.state, "ready");
  assert.equal(client.tick, 100);
  assert.deepEqual(client.hello, HELLO);
  assert.deepEqual(ws.sent, [
    { m: "view", map: "main", rect: [0, 0, 500, 400], margin: 2 },
    { m: "sub", add: ["chat:lobby", "guild:7"], rem: [] },
  ]);
  assert.deepEqual(client.held, new Set(), "requested is not held");
  ws.push({ m: "tick", n: 101, sub: { add: [A, "chat:lobby"] }, snap: [{ k: A, objs: [boat("b1")] }, { k: "chat:lobby", objs: [] }] });
  assert.deepEqual(new Set(client.held), new Set([A, "chat:lobby"]));
  assert.equal(client.get("b1")?.key, A);
  assert.equal(client.tick, 101);
  assert.deepEqual(events, ["open", "hello", "tick"]);
});

test("subscribe and unsubscribe send only what changes", (t) => {
  const { client, sockets } = start(t);
  const ws = ready(sockets);
  client.subscribe("a");
  client.subscribe(["a", "b"]);
  client.unsubscribe(["a", "zzz"]);
  client.unsubscribe("zzz");
  assert.deepEqual(ws.sentOf("sub"), [
    { m: "sub", add: ["a"], rem: [] },
    { m: "sub", add: ["b"], rem: [] },
    { m: "sub", add: [], rem: ["a"] },
  ]);
  assert.deepEqual([...client.keys], ["b"]);
});

test("views are coalesced: at most one per interval, the latest wins, repeats are skipped", (t) => {
  const { client, sockets, timers } = start(t, { viewIntervalMs: 50 });
  const ws = ready(sockets);
  client.setView("main", [0, 0, 100, 100]);
  client.setView("main", [10, 0, 110, 100]);
  client.setView("main", [20, 0, 120, 100]);
  assert.deepEqual(ws.sentOf("view").map((v) => v.rect), [[0, 0, 100, 100]], "the first goes at once");
  timers.tick(49);
  assert.equal(ws.sentOf("view").length, 1);
  timers.tick(1);
  assert.deepEqual(ws.sentOf("view").map((v) => v.rect), [[0, 0, 100, 100], [20, 0, 120, 100]]);
  client.setView("main", [20, 0, 120, 100]);
  timers.tick(200);
  assert.equal(ws.sentOf("view").length, 2, "the same view is not sent again");
  client.setView("main", [30, 0, 130, 100], 0);
  assert.deepEqual(ws.sentOf("view").at(-1), { m: "view", map: "main", rect: [30, 0, 130, 100], margin: 0 });
  assert.throws(() => client.setView("main", /** @type {any} */ ([0, 0, 1])), TypeError);
  assert.throws(() => client.setView("main", [0, 0, 1, NaN]), TypeError);
});

test("views are coalesced to one per animation frame in a browser", (t) => {
  /** @type {Map<number, FrameRequestCallback>} */
  const frames = new Map();
  let next = 0;
  const g = /** @type {any} */ (globalThis);
  g.requestAnimationFrame = (/** @type {FrameRequestCallback} */ fn) => (frames.set(++next, fn), next);
  g.cancelAnimationFrame = (/** @type {number} */ h) => frames.delete(h);
  t.after(() => {
    delete g.requestAnimationFrame;
    delete g.cancelAnimationFrame;
  });
  const runFrame = () => {
    const due = [...frames.values()];
    frames.clear();
    for (const fn of due) fn(0);
  };
  const { client, sockets } = start(t, { viewIntervalMs: undefined });
  const ws = ready(sockets);
  for (let i = 0; i < 5; i++) client.setView("main", [i, 0, 100 + i, 100]);
  assert.equal(ws.sentOf("view").length, 1);
  runFrame();
  assert.deepEqual(ws.sentOf("view").map((v) => v.rect[0]), [0, 4]);
  runFrame();
  runFrame();
  assert.equal(ws.sentOf("view").length, 2);
  client.close();
  assert.equal(frames.size, 0, "close cancels the pending frame");
});

test("reconnect: back-off with jitter, then the view and keys are re-sent", (t) => {
  const { client, sockets, events, timers } = start(t, { reconnectBaseMs: 100, reconnectMaxMs: 1000, random: () => 0.5 });
  /** @type {(number | null)[]} */
  const delays = [];
  client.on("close", (info) => delays.push(info.reconnectInMs));
  client.setView("main", [0, 0, 500, 500]);
  client.subscribe("chat:lobby");
  const ws1 = ready(sockets);
  ws1.drop(1006);
  assert.equal(client.state, "backoff");
  // Each failed attempt doubles the ceiling (capped); the delay is half of it plus jitter.
  for (let i = 1; i <= 5; i++) {
    const delay = /** @type {number} */ (delays.at(-1));
    timers.tick(delay - 1);
    assert.equal(sockets.length, i, "not before the delay");
    timers.tick(1);
    assert.equal(sockets.length, i + 1);
    sockets[i].drop(1006);
  }
  assert.deepEqual(delays, [75, 150, 300, 600, 750, 750]);
  timers.tick(750);
  const ws = ready(sockets);
  assert.deepEqual(ws.sent, [
    { m: "view", map: "main", rect: [0, 0, 500, 500], margin: 1 },
    { m: "sub", add: ["chat:lobby"], rem: [] },
  ]);
  // A session resets the back-off.
  ws.drop(1013);
  assert.equal(delays.at(-1), 75);
  assert.equal(events.filter((e) => e === "hello").length, 2);
  assert.ok(events.includes("open"));
});

test("reconnect: objects in the new session's snapshots keep identity, the others are torn down", (t) => {
  const { client, sockets, log, timers } = start(t, { reconnectBaseMs: 100 });
  client.setView("main", [0, 0, 500, 200]);
  client.subscribe("chat:lobby");
  const ws1 = ready(sockets);
  ws1.push({
    m: "tick",
    n: 101,
    sub: { add: [A, B, "chat:lobby"] },
    snap: [
      { k: A, objs: [boat("b1")] },
      { k: B, objs: [boat("b2", 300)] },
      { k: "chat:lobby", objs: [{ id: "m1", t: "msg", v: 1, s: { text: "hi" } }] },
    ],
  });
  const b1 = client.get("b1");
  const m1 = client.get("m1");
  ws1.drop();
  timers.tick(100);
  const ws2 = ready(sockets, { ...HELLO, sid: "s2", tick: 500 });
  assert.equal(client.held.size, 0, "a new session holds nothing");
  assert.equal(client.cache.size, 3, "but the objects stay until the snapshots come");
  log.length = 0;
  // The server answers the view and the keys (here in two frames).
  ws2.push({ m: "tick", n: 501, sub: { add: [A] }, snap: [{ k: A, objs: [boat("b1", 12, 4)] }] });
  assert.equal(client.cache.size, 3, "keys still unanswered: nothing dropped yet");
  ws2.push({
    m: "tick",
    n: 502,
    sub: { add: ["chat:lobby"] },
    snap: [{ k: "chat:lobby", objs: [{ id: "m1", t: "msg", v: 1, s: { text: "hi" } }] }],
  });
  assert.equal(client.get("b1"), b1);
  assert.equal(client.get("m1"), m1);
  assert.equal(client.get("b1")?.version, 4);
  assert.equal(client.get("b2"), undefined);
  assert.deepEqual(log, [
    ["mod", "b1", A, 4],
    ["mod", "m1", "chat:lobby", 1],
    ["rem", "b2", "session"],
  ]);
});

test("reconnect: unconfirmed objects go after settleTimeoutMs when the server answers nothing", (t) => {
  const { client, sockets, log, timers } = start(t, { reconnectBaseMs: 100, settleTimeoutMs: 1000 });
  client.setView("main", [0, 0, 100, 100]);
  const ws1 = ready(sockets);
  ws1.push({ m: "tick", n: 101, sub: { add: [A] }, snap: [{ k: A, objs: [boat("b1")] }] });
  ws1.drop();
  timers.tick(100);
  ready(sockets);
  timers.tick(999);
  assert.equal(client.cache.size, 1);
  timers.tick(1);
  assert.equal(client.cache.size, 0);
  assert.deepEqual(log.at(-1), ["rem", "b1", "session"]);
});

test("reconnect: a refused key does not hold up settling", (t) => {
  const { client, sockets, errors, timers } = start(t, { reconnectBaseMs: 100 });
  client.subscribe(["vault"]);
  client.setView("main", [0, 0, 100, 100]);
  const ws1 = ready(sockets);
  ws1.push({ m: "tick", n: 101, sub: { add: [A, "vault"] }, snap: [{ k: A, objs: [boat("b1")] }, { k: "vault", objs: [boat("v1")] }] });
  ws1.drop();
  timers.tick(100);
  const ws2 = ready(sockets);
  ws2.push({ m: "error", id: null, code: "forbidden", msg: "not yours any more" });
  ws2.push({ m: "tick", n: 102, sub: { add: [A] }, snap: [{ k: A, objs: [boat("b1")] }] });
  assert.deepEqual([...client.cache.objects()].map((o) => o.id), ["b1"]);
  assert.equal(errors.at(-1)?.code, "forbidden");
});

test("call: reply resolves with ok, error rejects with its code", async (t) => {
  const { client, sockets } = start(t);
  const ws = ready(sockets);
  const moved = client.call("move", { x: 1 });
  const failed = client.call("move", { x: "far" });
  assert.deepEqual(ws.sentOf("call"), [
    { m: "call", id: 1, name: "move", args: { x: 1 } },
    { m: "call", id: 2, name: "move", args: { x: "far" } },
  ]);
  ws.push({ m: "error", id: 2, code: "bad_args", msg: "x must be a number" });
  ws.push({ m: "reply", id: 1, ok: { at: [1, 0] } });
  assert.deepEqual(await moved, { at: [1, 0] });
  await assert.rejects(failed, (err) => {
    assert.ok(err instanceof SynkCallError && err instanceof SynkError);
    assert.equal(err.code, "bad_args");
    assert.equal(err.callName, "move");
    assert.match(err.message, /x must be a number/);
    return true;
  });
});

test("call: timeout, late reply ignored, closed, queued while connecting, too large", async (t) => {
  const { client, sockets, errors, timers } = start(t, { callTimeoutMs: 1000, reconnectBaseMs: 100 });
  // Before connect() a client cannot call.
  const { FakeSocket } = fakeWebSocket();
  await assert.rejects(new Client("http://x", { WebSocket: FakeSocket }).call("a"), { code: "closed" });
  // A call made while connecting waits for the session.
  const early = client.call("early");
  const ws = ready(sockets);
  assert.deepEqual(ws.sentOf("call"), [{ m: "call", id: 1, name: "early", args: {} }]);
  ws.push({ m: "reply", id: 1, ok: 7 });
  assert.equal(await early, 7);
  // Timeouts, per call and by default.
  const slow = client.call("slow", {}, { timeoutMs: 50 });
  const slower = client.call("slower");
  timers.tick(50);
  await assert.rejects(slow, { code: "timeout" });
  timers.tick(950);
  await assert.rejects(slower, { code: "timeout" });
  ws.push({ m: "reply", id: 2, ok: "late" });
  assert.deepEqual(errors, [], "a late reply is dropped quietly");
  // Frames over 64 KiB are refused locally.
  await assert.rejects(client.call("big", { blob: "é".repeat(40000) }), { code: "too_large" });
  assert.equal(ws.sentOf("call").length, 3);
  // A sent call whose connection drops may or may not have run: rejected.
  const lost = client.call("lost", {}, { timeoutMs: 0 });
  ws.drop();
  await assert.rejects(lost, { code: "closed" });
  // One made during the back-off is sent once the next session starts.
  const later = client.call("later");
  timers.tick(100);
  const ws2 = ready(sockets);
  assert.deepEqual(ws2.sentOf("call").map((c) => c.name), ["later"]);
  ws2.push({ m: "reply", id: ws2.sentOf("call")[0].id, ok: null });
  assert.equal(await later, null);
  // close() rejects whatever is pending.
  const pending = client.call("pending");
  client.close();
  await assert.rejects(pending, { code: "closed" });
});

test("ping/pong: latencyMs is a smoothed round trip; pings repeat every pingIntervalMs", (t) => {
  let now = 1000;
  const { client, sockets, timers } = start(t, { pingIntervalMs: 5000, now: () => now });
  assert.equal(client.latencyMs, null);
  const ws = ready(sockets);
  assert.deepEqual(ws.sentOf("ping"), [{ m: "ping", t: 1000 }]);
  now = 1040;
  ws.push({ m: "pong", t: 1000, n: 120 });
  assert.equal(client.latencyMs, 40);
  assert.equal(client.tick, 120);
  now = 6000;
  timers.tick(5000);
  assert.deepEqual(ws.sentOf("ping").at(-1), { m: "ping", t: 6000 });
  now = 6060;
  ws.push({ m: "pong", t: 6000, n: 220 });
  assert.equal(client.latencyMs, 44);
  ws.drop();
  timers.tick(60000);
  assert.equal(ws.sentOf("ping").length, 2, "no pings on a dropped socket");
});

test("bad frames are reported as error events and never throw", (t) => {
  const { client, sockets, errors, log } = start(t);
  const ws = ready(sockets);
  ws.push({ m: "tick", n: 101, sub: { add: [A] }, snap: [{ k: A, objs: [boat("b1")] }] });
  log.length = 0;
  const bad = [
    "this is not JSON{",
    "",
    "42",
    "null",
    "[1,2]",
    JSON.stringify({ m: "tick", n: 102, b: "nope" }),
    JSON.stringify({ m: "tick", n: 102, b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 1 } }] }, { k: A, mv: [[1], [], []] }] }),
    JSON.stringify({ m: "resync", n: 3, snap: [{ k: A }] }),
    JSON.stringify({ m: "reply", ok: 1 }),
    JSON.stringify({ m: "error", id: null }),
  ];
  for (const frame of bad) assert.doesNotThrow(() => ws.push(frame), frame);
  assert.doesNotThrow(() => ws.pushRaw(new Uint8Array([1, 2, 3])));
  assert.equal(errors.length, bad.length + 1);
  assert.ok(errors.every((e) => e instanceof SynkError && e.code === "bad_frame"));
  assert.deepEqual(log, [], "nothing was half-applied");
  assert.equal(client.get("b1")?.version, 1);
  // Unknown kinds are ignored (a newer server may add some).
  ws.push({ m: "weather", rain: true });
  assert.equal(errors.length, bad.length + 1);
  // The connection still works.
  assert.equal(client.state, "ready");
  ws.push({ m: "tick", n: 103, b: [{ k: A, mod: [{ id: "b1", v: 2, d: { x: 1 } }] }] });
  assert.deepEqual(log, [["mod", "b1", A, 2]]);
});

test("server error frames without a call id become error events with their code", (t) => {
  const { sockets, errors } = start(t);
  const ws = ready(sockets);
  ws.push({ m: "error", id: null, code: "too_many_keys", msg: "at most 64 keys" });
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "too_many_keys");
  assert.equal(errors[0].message, "at most 64 keys");
});

test("a listener that throws is reported and the others still run", (t) => {
  const { client, sockets, errors } = start(t);
  let second = 0;
  client.on("add", () => {
    throw new Error("boom");
  });
  const off = client.on("add", () => second++);
  const ws = ready(sockets);
  ws.push({ m: "tick", n: 101, sub: { add: [A] }, snap: [{ k: A, objs: [boat("b1"), boat("b2")] }] });
  assert.equal(second, 2);
  assert.equal(client.cache.size, 2);
  assert.equal(errors.length, 2);
  assert.equal(errors[0].code, "callback_failed");
  off();
  ws.push({ m: "tick", n: 102, b: [{ k: A, add: [boat("b3")] }] });
  assert.equal(second, 2, "off() removed the listener");
});

test("resync frames reach the cache and the resync event", (t) => {
  const { client, sockets, events, log } = start(t);
  const ws = ready(sockets);
  ws.push({ m: "tick", n: 101, sub: { add: [A, B] }, snap: [{ k: A, objs: [boat("b1")] }, { k: B, objs: [boat("b2", 300)] }] });
  log.length = 0;
  ws.push({ m: "resync", n: 150, snap: [{ k: A, objs: [boat("b1", 20, 9)] }] });
  assert.equal(client.tick, 150);
  assert.deepEqual([...client.held], [A]);
  assert.deepEqual(log, [
    ["rem", "b2", "resync"],
    ["mod", "b1", A, 9],
  ]);
  assert.equal(events.at(-1), "resync");
});

test("a hello of another protocol version closes the client for good", (t) => {
  const { client, sockets, errors, timers } = start(t);
  const ws = ready(sockets, { ...HELLO, proto: 2 });
  assert.equal(errors[0].code, "proto_mismatch");
  assert.equal(client.state, "closed");
  assert.deepEqual(ws.closedWith, { code: 1000, reason: "client closed" });
  timers.tick(120000);
  assert.equal(sockets.length, 1);
});

test("close() stops reconnecting and tears every object down", (t) => {
  const { client, sockets, log, events, timers } = start(t);
  const ws = ready(sockets);
  ws.push({ m: "tick", n: 101, sub: { add: [A] }, snap: [{ k: A, objs: [boat("b1")] }] });
  client.close();
  assert.equal(client.state, "closed");
  assert.deepEqual(log.at(-1), ["rem", "b1", "closed"]);
  assert.equal(events.filter((e) => e === "close").length, 1);
  timers.tick(120000);
  assert.equal(sockets.length, 1);
  client.close();
  assert.equal(events.filter((e) => e === "close").length, 1, "a second close() is quiet");
  // connect() after close() starts afresh.
  client.connect();
  assert.equal(sockets.length, 2);
});

test("reconnect: false reports the close and stays closed", (t) => {
  const /** @type {(number | null)[]} */ delays = [];
  const { client, sockets, timers } = start(t, { reconnect: false });
  client.on("close", (info) => delays.push(info.reconnectInMs));
  ready(sockets).drop(1008, "too many bad frames");
  assert.equal(client.state, "closed");
  assert.deepEqual(delays, [null]);
  timers.tick(120000);
  assert.equal(sockets.length, 1);
});
