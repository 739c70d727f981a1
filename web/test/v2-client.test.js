// Client with protocol version 2 over the fake WebSocket (testing/fakes.js):
// choosing the version, binary frames, messages as MessagePack.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Client, SynkCallError, SynkError } from "../synkworld.js";
import { fakeWebSocket, recordEvents } from "../testing/fakes.js";
import { batch, key, message, snapshot, tick } from "../testing/v2-frames.js";

const MAPS = { main: { cell: 250, origin: [0, 0], bounds: [0, 0, 10000, 10000], pos: ["x", "y"], prec: 1 } };
const HELLO1 = { m: "hello", proto: 1, sid: "s1", tick: 100, rate: 20, maps: MAPS };
const HELLO2 = {
  m: "hello",
  proto: 2,
  sid: "s2",
  tick: 100,
  rate: 20,
  maps: { main: { num: 0, ...MAPS.main } },
  types: [[0, "boat", ["x", "y"], [0, 1]]],
};
const A = key.grid(0, 0, 0);
const KA = "main:0:0";

/**
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
  /** @type {any[]} */
  const ticks = [];
  client.on("tick", (msg) => ticks.push(msg));
  client.connect();
  return { client, sockets, log, errors, ticks, timers: t.mock.timers };
}

test("by default the client offers synkworld.v2 then synkworld.v1, and reads binary frames as ArrayBuffers", (t) => {
  const { client, sockets } = start(t);
  assert.deepEqual(sockets[0].protocols, ["synkworld.v2", "synkworld.v1"]);
  assert.equal(sockets[0].binaryType, "arraybuffer");
  assert.equal(client.protocol, null);
});

test("protocol: 1 offers no subprotocol, as a version 1 client always did", (t) => {
  const { client, sockets, errors } = start(t, { protocol: 1 });
  assert.equal(sockets[0].protocols, undefined);
  const ws = sockets[0];
  ws.open();
  ws.pushRaw(message(HELLO2)); // a server that ignored the offer
  assert.equal(errors[0]?.code, "bad_frame");
  ws.push(HELLO1);
  assert.equal(client.protocol, 1);
  assert.throws(() => new Client("http://x", { WebSocket: sockets[0].constructor, protocol: /** @type {any} */ (3) }), TypeError);
});

test("a binary hello starts a version 2 session: ticks, calls, errors and pongs in binary", async (t) => {
  const { client, sockets, log, errors, ticks } = start(t, { now: () => 1000 });
  client.setView("main", [0, 0, 100, 100]);
  const ws = sockets[0];
  ws.open();
  ws.pushRaw(message(HELLO2).buffer);
  assert.equal(client.state, "ready");
  assert.equal(client.protocol, 2);
  assert.deepEqual(client.hello, HELLO2);
  // Client to server stays JSON text.
  assert.deepEqual(ws.sent, [{ m: "view", map: "main", rect: [0, 0, 100, 100], margin: 1 }]);

  ws.pushRaw(tick(101, { subAdd: [A], snaps: [snapshot(A, [[0, "b1", 0, 1, [15, 25]]])] }).buffer);
  ws.pushRaw(tick(102, { batches: [batch(A, { motion: [[0, 10, 0]] })] }).buffer);
  assert.deepEqual(client.get("b1")?.state, { x: 2.5, y: 2.5 });
  assert.equal(client.tick, 102);
  assert.deepEqual([...client.held], [KA]);
  assert.deepEqual(log, [
    ["add", "b1", KA],
    ["mod", "b1", KA, 2],
  ]);
  assert.deepEqual(
    ticks.map((m) => [m.n, m.sub?.add]),
    [
      [101, [KA]],
      [102, undefined],
    ],
  );

  const answer = client.call("steer", { heading: 90 });
  const call = ws.sentOf("call")[0];
  ws.pushRaw(message({ m: "reply", id: call.id, ok: { done: true } }));
  assert.deepEqual(await answer, { done: true });
  const refused = client.call("steer");
  ws.pushRaw(message({ m: "error", id: ws.sentOf("call")[1].id, code: "bad_args", msg: "no heading" }));
  await assert.rejects(refused, (err) => err instanceof SynkCallError && err.code === "bad_args");
  ws.pushRaw(message({ m: "error", id: null, code: "too_many_keys", msg: "at most 64" }));
  assert.equal(errors.at(-1)?.code, "too_many_keys");
  ws.pushRaw(message({ m: "pong", t: 990, n: 150 }));
  assert.equal(client.latencyMs, 10);
  assert.equal(client.tick, 150);
  assert.equal(errors.length, 1);
});

test("a text hello is version 1 even when v2 was offered; the connection then reads JSON only", (t) => {
  const { client, sockets, errors } = start(t);
  const ws = sockets[0];
  ws.open();
  ws.push(HELLO1);
  assert.equal(client.protocol, 1);
  ws.pushRaw(tick(101, { subAdd: [A] }));
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "bad_frame");
  ws.push({ m: "tick", n: 101, sub: { add: [KA] }, snap: [{ k: KA, objs: [{ id: "b1", t: "boat", v: 1, s: { x: 1, y: 2 } }] }] });
  assert.equal(client.get("b1")?.key, KA);
});

test("a version 2 connection reads binary frames only", (t) => {
  const { client, sockets, errors } = start(t);
  const ws = sockets[0];
  ws.open();
  ws.pushRaw(message(HELLO2));
  ws.push({ m: "tick", n: 101, sub: { add: [KA] } });
  ws.pushRaw(message({ m: "tick", n: 101, sub: { add: [KA] } })); // no v1 tick inside MessagePack either
  assert.deepEqual(
    errors.map((e) => e.code),
    ["bad_frame"],
  );
  assert.equal(client.held.size, 0);
  assert.equal(client.state, "ready");
});

test("bad binary frames are error events, never throws; nothing is half-applied", (t) => {
  const { client, sockets, errors, log } = start(t);
  const ws = sockets[0];
  ws.open();
  // Before the hello a tick cannot be read.
  ws.pushRaw(tick(1, { subAdd: [A] }));
  ws.pushRaw(message(HELLO2));
  ws.pushRaw(tick(101, { subAdd: [A], snaps: [snapshot(A, [[0, "b1", 0, 1, [15, 25]]])] }));
  log.length = 0;
  const frames = [
    new Uint8Array([]),
    new Uint8Array([0x03, 0xc1]),
    new Uint8Array([0x07]),
    tick(102, { batches: [batch(A, { motion: [[0, 1, 1]] })] }).subarray(0, 5),
    { size: 3, type: "" }, // a Blob, had binaryType not been set
  ];
  for (const f of frames) assert.doesNotThrow(() => ws.pushRaw(f));
  assert.equal(errors.length, frames.length + 1);
  assert.ok(errors.every((e) => e instanceof SynkError && e.code === "bad_frame"));
  assert.deepEqual(log, []);
  assert.equal(client.get("b1")?.version, 1);
});

test("a binary hello saying another version closes the client", (t) => {
  const { client, sockets, errors } = start(t);
  sockets[0].open();
  sockets[0].pushRaw(message({ ...HELLO2, proto: 3 }));
  assert.equal(errors[0].code, "proto_mismatch");
  assert.equal(client.state, "closed");
});

test("after a reconnect to a version 1 server the objects keep their instances", (t) => {
  const { client, sockets, timers } = start(t);
  client.setView("main", [0, 0, 100, 100]);
  sockets[0].open();
  sockets[0].pushRaw(message(HELLO2));
  sockets[0].pushRaw(tick(101, { subAdd: [A], snaps: [snapshot(A, [[0, "b1", 0, 1, [15, 25]]])] }));
  const b1 = client.get("b1");
  sockets[0].drop();
  timers.tick(1000);
  assert.equal(sockets.length, 2);
  sockets[1].open();
  sockets[1].push({ ...HELLO1, sid: "s3" });
  assert.equal(client.protocol, 1);
  sockets[1].push({ m: "tick", n: 120, sub: { add: [KA] }, snap: [{ k: KA, objs: [{ id: "b1", t: "boat", v: 4, s: { x: 1.5, y: 2.5 } }] }] });
  assert.equal(client.get("b1"), b1);
  assert.equal(b1?.version, 4);
  assert.equal(client.cache.staleCount, 0);
});
