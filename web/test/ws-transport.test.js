// The client over the `ws` package's real WebSocket, against a scripted `ws`
// server on the loopback address: checks the transport glue (URL, token, text
// frames, reconnect), not a synkworld server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import WebSocket, { WebSocketServer } from "ws";

import { Client } from "../synkworld.js";

const HELLO = {
  m: "hello",
  proto: 1,
  sid: "s1",
  tick: 1,
  rate: 20,
  maps: { main: { cell: 250, origin: [0, 0], bounds: [0, 0, 1000, 1000], pos: ["x", "y"], prec: 1 } },
};

/** Resolves when `cond()` holds, polling briefly; fails after 2 s. @param {() => boolean} cond */
async function until(cond) {
  const deadline = Date.now() + 2000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 5));
  }
}

test("over ws: token, hello, view, tick, call, reconnect", async (t) => {
  const server = new WebSocketServer({ host: "127.0.0.1", port: 0, path: "/ws" });
  await once(server, "listening");
  t.after(() => server.close());
  const address = /** @type {import("node:net").AddressInfo} */ (server.address());

  /** @type {{url: string | undefined, frames: any[], socket: WebSocket}[]} */
  const sessions = [];
  server.on("connection", (socket, req) => {
    const session = { url: req.url, frames: /** @type {any[]} */ ([]), socket };
    sessions.push(session);
    socket.on("message", (data) => {
      const msg = JSON.parse(String(data));
      session.frames.push(msg);
      if (msg.m === "view") {
        socket.send(JSON.stringify({ m: "tick", n: 2, sub: { add: ["main:0:0"] }, snap: [{ k: "main:0:0", objs: [{ id: "b1", t: "boat", v: 1, s: { x: 5, y: 5 } }] }] }));
      } else if (msg.m === "call") {
        socket.send(JSON.stringify({ m: "reply", id: msg.id, ok: { echo: msg.args } }));
      }
    });
    socket.send(JSON.stringify({ ...HELLO, sid: `s${sessions.length}` }));
  });

  const client = new Client(`http://127.0.0.1:${address.port}`, {
    WebSocket,
    token: "secret token",
    reconnectBaseMs: 20,
    reconnectMaxMs: 40,
    pingIntervalMs: 0,
  });
  t.after(() => client.close());
  client.setView("main", [0, 0, 100, 100]);
  client.connect();

  await until(() => client.get("b1") !== undefined);
  assert.equal(sessions[0].url, "/ws?token=secret+token");
  const b1 = client.get("b1");
  assert.deepEqual(await client.call("echo", { n: 1 }), { echo: { n: 1 } });

  sessions[0].socket.terminate();
  await until(() => sessions.length === 2 && client.hello?.sid === "s2" && client.held.size === 1);
  assert.deepEqual(sessions[1].frames[0], { m: "view", map: "main", rect: [0, 0, 100, 100], margin: 1 });
  assert.equal(client.get("b1"), b1, "the object kept its identity across the reconnect");
});
