// @ts-check
// The library's Client against a real synkworld server, driven over stdin/stdout
// by the cross-language conformance test (tests/web/test_conformance.py).
//
//   node web/testing/conformance-client.mjs <server base url> [type,type,...] [protocol]
//
// `protocol` is the version the library asks for: 1 (the default here, JSON
// frames) or 2 (binary frames, docs/protocol-v2.md).
//
// It prints one JSON line {"event":"hello",...} once the session starts, then
// reads one JSON command per line and answers each with exactly one JSON line:
//
//   {"cmd":"view","map":m,"rects":[[x0,y0,x1,y1],...],"margin":n}  setView per rect (a pan)
//   {"cmd":"sub","keys":[...]} / {"cmd":"unsub","keys":[...]}     subscribe / unsubscribe
//   {"cmd":"sync"}   a ping, answered once its pong is in: every frame the server
//                    queued before the ping has then been applied to the cache
//   {"cmd":"dump"}   the cache, the held keys, and what happened since the last dump
//   {"cmd":"close"}  Client.close(), then exit
//
// Every command first waits until a view the library deferred (it coalesces view
// frames) is on the wire, so that frames reach the server in command order.
// Objects of the types named on the command line get a class whose hooks are
// logged next to the cache's events, to check that the two agree.
import readline from "node:readline";
import { decode } from "@msgpack/msgpack";
import WebSocket from "ws";

import { Client, SynkObject } from "../synkworld.js";

const [url, typeList = "", protocolArg = "1"] = process.argv.slice(2);
if (!url || (protocolArg !== "1" && protocolArg !== "2")) {
  process.stderr.write("usage: conformance-client.mjs <server base url> [type,type,...] [1|2]\n");
  process.exit(2);
}
const protocol = protocolArg === "2" ? 2 : 1;

/** @param {unknown} obj */
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

/** Instance serial numbers: a new number means a new object (identity). @type {WeakMap<SynkObject, number>} */
const serials = new WeakMap();
let nextSerial = 0;
/** Cache events since the last dump: ["add", id, serial] and ["rem", id, reason, serial]. @type {any[][]} */
let events = [];
/** Hooks of the tracked class since the last dump: ["add", id], ["rem", id, reason]. @type {any[][]} */
let hooks = [];
/** Cache events of tracked types since the last dump, in the shape of `hooks`. @type {any[][]} */
let trackedEvents = [];
/** @type {{code: string, message: string}[]} */
let errors = [];
/** @type {any[]} */
const closes = [];

/** A class for every tracked type: logs its hooks, to compare with the events. */
class Tracked extends SynkObject {
  /** @param {import("../synkworld.js").State} state */
  init(state) {
    void state;
    hooks.push(["add", this.id]);
  }

  /** @param {import("../synkworld.js").RemoveReason} reason */
  teardown(reason) {
    hooks.push(["rem", this.id, reason]);
  }
}

/** The text of the last view frame sent, and the t of the last ping sent. */
let lastSentView = "";
/** @type {number | null} */
let lastPingT = null;
/** @type {Map<number, () => void>} */
const pongWaiters = new Map();

/**
 * A server frame as a message, if it is one: JSON text (version 1), or a
 * version 2 message frame (03, then MessagePack); null for version 2 ticks.
 * @param {unknown} data
 * @returns {any}
 */
function messageOf(data) {
  if (typeof data === "string") return JSON.parse(data);
  const bytes = new Uint8Array(/** @type {ArrayBuffer} */ (data));
  return bytes[0] === 3 ? decode(bytes.subarray(1)) : null;
}

/** The `ws` WebSocket, tapped: records what the library sends, sees pongs first. */
class TappedWebSocket extends WebSocket {
  /** @param {string} address @param {string[]} [protocols] */
  constructor(address, protocols) {
    super(address, protocols);
    // Registered before the library sets onmessage, so this runs first for each frame;
    // every frame before a pong has been applied by the time the pong is seen.
    this.addEventListener("message", (ev) => {
      const msg = messageOf(ev.data);
      if (msg?.m !== "pong") return;
      const done = pongWaiters.get(msg.t);
      if (done) {
        pongWaiters.delete(msg.t);
        done();
      }
    });
  }

  /**
   * @param {any} data
   * @param {...any} rest
   */
  send(data, ...rest) {
    const msg = JSON.parse(String(data));
    if (msg.m === "view") lastSentView = String(data);
    if (msg.m === "ping") lastPingT = msg.t;
    return super.send(data, ...rest);
  }
}

const types = typeList.split(",").filter(Boolean);
const client = new Client(url, {
  protocol,
  WebSocket: /** @type {any} */ (TappedWebSocket),
  classes: Object.fromEntries(types.map((t) => [t, Tracked])),
  reconnect: false,
  pingIntervalMs: 0,
  viewIntervalMs: 0,
  callTimeoutMs: 5000,
});
const tracked = new Set(types);
client.on("add", (obj) => {
  serials.set(obj, ++nextSerial);
  events.push(["add", obj.id, nextSerial]);
  if (tracked.has(obj.type)) trackedEvents.push(["add", obj.id]);
});
client.on("rem", (obj, _msg, reason) => {
  events.push(["rem", obj.id, reason, serials.get(obj) ?? null]);
  if (tracked.has(obj.type)) trackedEvents.push(["rem", obj.id, reason]);
});
client.on("error", (err) => errors.push({ code: err.code, message: err.message }));
client.on("close", (info) => closes.push(info));

/**
 * Resolves when cond() holds; rejects after `ms`.
 * @param {() => boolean} cond
 * @param {string} what
 * @param {number} [ms]
 */
async function until(cond, what, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    if (client.state === "closed" || client.state === "backoff") throw new Error(`connection lost while waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** The frame the library sends for the current view (same field order as the library). */
function wantedViewText() {
  const v = client.view;
  return v ? JSON.stringify({ m: "view", map: v.map, rect: v.rect, margin: v.margin }) : "";
}

/** Waits until a deferred view frame has been sent. */
const viewFlushed = () => until(() => wantedViewText() === lastSentView, "the view frame");

async function sync() {
  client.ping();
  const t = lastPingT;
  if (t === null) throw new Error("ping not sent");
  lastPingT = null;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      pongWaiters.delete(t);
      reject(new Error("no pong in 5 s"));
    }, 5000);
    pongWaiters.set(t, () => {
      clearTimeout(timer);
      resolve(undefined);
    });
  });
}

function dump() {
  /** @type {Record<string, any[]>} */
  const objects = {};
  for (const obj of client.cache.objects()) {
    objects[obj.id] = [obj.type, obj.version, obj.state, obj.key, serials.get(obj) ?? null];
  }
  const result = {
    ok: true,
    tick: client.tick,
    state: client.state,
    held: [...client.cache.held].sort(),
    stale: client.cache.staleCount,
    objects,
    events,
    hooks,
    trackedEvents,
    errors,
    closes,
  };
  events = [];
  hooks = [];
  trackedEvents = [];
  errors = [];
  return result;
}

/** @param {any} cmd */
async function run(cmd) {
  await viewFlushed();
  switch (cmd.cmd) {
    case "view":
      for (const rect of cmd.rects) client.setView(cmd.map, rect, cmd.margin);
      return { ok: true };
    case "sub":
      client.subscribe(cmd.keys);
      return { ok: true };
    case "unsub":
      client.unsubscribe(cmd.keys);
      return { ok: true };
    case "sync":
      await sync();
      return { ok: true, tick: client.tick };
    case "dump":
      return dump();
    case "close":
      client.close();
      return { ok: true, size: client.cache.size, ...dump() };
    default:
      throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
  }
}

client.on("hello", (msg) => out({ event: "hello", sid: msg.sid, hello: msg, protocol: client.protocol }));
client.connect();

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
    out(await run(cmd));
  } catch (err) {
    out({ ok: false, error: String(err instanceof Error ? err.stack : err) });
  }
  if (cmd?.cmd === "close") break;
}
client.close();
process.exit(0);
