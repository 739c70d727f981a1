// @ts-check
// The browser test's page: the library from the server's static files, a client on
// window.synk, and what the test reads on window.synkTest.
import { Client, SynkObject } from "/synkworld/client.js";

/** Instance serials: a new serial is a new object. @type {WeakMap<object, number>} */
const serials = new WeakMap();
let nextSerial = 0;

const log = {
  /** [id, reason, serial, type] of every object that left, in order. @type {any[][]} */
  teardowns: [],
  /** Teardown hooks of ships, in the same shape. @type {any[][]} */
  shipTeardowns: [],
  /** @type {string[]} */
  errors: [],
  /** Close events, with the cache's size then. @type {any[]} */
  closes: [],
  hellos: 0,
  frames: 0,
  /** Interpolated positions that were not finite numbers. @type {any[]} */
  badLerps: [],
};

class Ship extends SynkObject {
  static interpolate = ["x", "y"];

  /** @param {import("/synkworld/client.js").RemoveReason} reason */
  teardown(reason) {
    log.shipTeardowns.push([this.id, reason, serials.get(this) ?? null]);
  }
}

// `?protocol=1` makes the page speak version 1; by default the client's (2).
const asked = new URLSearchParams(location.search).get("protocol");
const client = new Client(undefined, {
  protocol: asked === "1" ? 1 : 2,
  classes: { "brw-ship": Ship },
  reconnectBaseMs: 100,
  reconnectMaxMs: 400,
  settleTimeoutMs: 10000,
});
client.on("add", (obj) => serials.set(obj, ++nextSerial));
client.on("rem", (obj, _msg, reason) => log.teardowns.push([obj.id, reason, serials.get(obj) ?? null, obj.type]));
client.on("error", (err) => log.errors.push(`${err.code}: ${err.message}`));
client.on("close", (info) => log.closes.push({ ...info, size: client.cache.size }));
client.on("hello", () => log.hellos++);

/** The cache as id -> [type, version, state, key, serial], with the held keys. */
function dump() {
  /** @type {Record<string, any[]>} */
  const objects = {};
  for (const obj of client.cache.objects()) {
    objects[obj.id] = [obj.type, obj.version, obj.state, obj.key, serials.get(obj) ?? null];
  }
  return {
    state: client.state,
    stale: client.cache.staleCount,
    tick: client.tick,
    held: [...client.held].sort(),
    objects,
  };
}

/**
 * The server's truth and the cache, taken together: the reply is queued after the
 * frame of the tick it describes, and this continuation runs before any later frame.
 */
async function sample() {
  const truth = await client.call("truth");
  return { truth, cache: dump() };
}

// Draws every ship where it is shown now, as a game would.
const canvas = /** @type {HTMLCanvasElement} */ (document.getElementById("map"));
const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d"));
requestAnimationFrame(function draw(now) {
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  for (const obj of client.cache.objects()) {
    if (!(obj instanceof Ship)) continue;
    const { x, y } = obj.lerp(now);
    if (!Number.isFinite(x) || !Number.isFinite(y)) log.badLerps.push([obj.id, x, y]);
    else ctx.fillRect(x / 5, y / 5, 2, 2);
  }
  log.frames++;
  requestAnimationFrame(draw);
});

Object.assign(window, { synk: client, synkTest: { log, dump, sample } });
client.connect();
