// Version choice over the `ws` package's real WebSocket, against scripted `ws`
// servers on the loopback address: one that selects synkworld.v2 and speaks
// binary frames, and one that knows no subprotocols (selects none), which the
// ws package refuses at the handshake.
import { test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import WebSocket, { WebSocketServer } from "ws";

import { Client } from "../synkworld.js";
import { key, message, snapshot, tick } from "../testing/v2-frames.js";

const MAP = { cell: 250, origin: [0, 0], bounds: [0, 0, 1000, 1000], pos: ["x", "y"], prec: 1 };
const HELLO1 = { m: "hello", proto: 1, sid: "s1", tick: 1, rate: 20, maps: { main: MAP } };
const HELLO2 = { ...HELLO1, proto: 2, maps: { main: { num: 0, ...MAP } }, types: [[0, "boat", ["x", "y"], [0, 1]]] };

/** Resolves when `cond()` holds, polling briefly; fails after 2 s. @param {() => boolean} cond */
async function until(cond) {
  const deadline = Date.now() + 2000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * @param {import("node:test").TestContext} t
 * @param {import("ws").ServerOptions} options
 */
async function server(t, options) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/ws", ...options });
  await once(wss, "listening");
  t.after(() => wss.close());
  const { port } = /** @type {import("node:net").AddressInfo} */ (wss.address());
  return { wss, url: `http://127.0.0.1:${port}` };
}

test("over ws: a server that selects synkworld.v2 speaks binary frames", async (t) => {
  const { wss, url } = await server(t, { handleProtocols: (offered) => (offered.has("synkworld.v2") ? "synkworld.v2" : false) });
  /** @type {string[]} */
  const offers = [];
  wss.on("connection", (socket, req) => {
    offers.push(String(req.headers["sec-websocket-protocol"]));
    socket.on("message", (data, isBinary) => {
      assert.equal(isBinary, false, "the client sends JSON text");
      const msg = JSON.parse(String(data));
      if (msg.m === "view") {
        const A = key.grid(0, 0, 0);
        socket.send(tick(2, { subAdd: [A], snaps: [snapshot(A, [[0, "b1", 0, 1, [55, 5]]])] }));
      } else if (msg.m === "call") {
        socket.send(message({ m: "reply", id: msg.id, ok: { echo: msg.args } }));
      }
    });
    socket.send(message(HELLO2));
  });
  const client = new Client(url, { WebSocket, reconnect: false, pingIntervalMs: 0 });
  t.after(() => client.close());
  /** @type {string[]} */
  const errors = [];
  client.on("error", (e) => errors.push(e.message));
  client.setView("main", [0, 0, 100, 100]);
  client.connect();
  await until(() => client.get("b1") !== undefined);
  assert.equal(client.protocol, 2);
  assert.deepEqual(offers, ["synkworld.v2,synkworld.v1"]);
  assert.deepEqual(client.get("b1")?.state, { x: 5.5, y: 0.5 });
  assert.deepEqual(await client.call("echo", { n: 1 }), { echo: { n: 1 } });
  assert.deepEqual(errors, []);
});

test("over ws: a server that knows no subprotocols gets a second handshake offering none, and speaks v1", async (t) => {
  const { wss, url } = await server(t, { handleProtocols: () => false });
  /** @type {(string | undefined)[]} */
  const offers = [];
  wss.on("connection", (socket, req) => {
    offers.push(req.headers["sec-websocket-protocol"]);
    socket.send(JSON.stringify(HELLO1));
  });
  const client = new Client(url, { WebSocket, reconnect: false, pingIntervalMs: 0 });
  t.after(() => client.close());
  /** @type {string[]} */
  const events = [];
  client.on("error", (e) => events.push(`error ${e.message}`));
  client.on("close", () => events.push("close"));
  client.connect();
  await until(() => client.state === "ready");
  assert.equal(client.protocol, 1);
  // The server answered the first handshake selecting nothing, which the ws package
  // refused; the second offered nothing.
  assert.deepEqual(offers, ["synkworld.v2,synkworld.v1", undefined]);
  assert.deepEqual(events, [], "the retry is silent");
});
