// @ts-check
// The demo map's page: one canvas that draws what the client holds, an overlay
// with the connection's numbers, and the controls (pan, zoom, inspect, pins, steering).
import { Client, SynkObject, parseGridKey } from "/synkworld/client.js";

const MAP = "main";
/** Keys a client may hold (the server's `max_keys`, 256 by default); its `hello` reply says. */
let maxKeys = 256;
/** Cells the page asks for at most: a little below the limit, for the rounding of the rectangle. */
const cellBudget = () => Math.max(1, maxKeys - 16);
/** Units per `steer` call; the server allows 200. */
const STEER_STEP = 60;
const STEER_PAUSE_MS = 60;
const FONT = '"Inter", system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif';
const PIN_LABELS = [
  "Here be whales",
  "Good fishing",
  "Shallows",
  "Meet here",
  "Treasure?",
  "Calm water",
  "Rendezvous",
  "Wreck site",
  "Sunset spot",
  "Kelp ahead",
];

const SEA = "#0b1f30";
const ABYSS = "#06121d";

/** @param {unknown} color */
function css(color) {
  const n = typeof color === "number" ? color >>> 0 : 0xffffff;
  return `#${(n & 0xffffff).toString(16).padStart(6, "0")}`;
}

/** @param {number} v @param {number} lo @param {number} hi */
const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

// ---------------------------------------------------------------------------
// Objects

/** Something that moves: positions are interpolated, and the direction of travel is estimated. */
class Mover extends SynkObject {
  static interpolate = ["x", "y"];
  vx = 0;
  vy = 0;
  px = 0;
  py = 0;
  fill = "#ffffff";

  /** @param {Record<string, any>} state */
  init(state) {
    this.px = state.x;
    this.py = state.y;
    this.fill = css(state.color);
  }

  /** @param {Record<string, any>} diff */
  update(diff) {
    const s = /** @type {Record<string, any>} */ (this.state);
    if ("color" in diff) this.fill = css(s.color);
    if ("x" in diff || "y" in diff) {
      const dx = s.x - this.px;
      const dy = s.y - this.py;
      // Positions are whole units on the wire: smooth the per-tick steps into a direction.
      if (Math.abs(dx) + Math.abs(dy) < 80) {
        this.vx = this.vx * 0.85 + dx * 0.15;
        this.vy = this.vy * 0.85 + dy * 0.15;
      }
      this.px = s.x;
      this.py = s.y;
    }
  }

  /** The direction of travel in radians (the `heading` field when it does not move). */
  angle() {
    if (Math.hypot(this.vx, this.vy) > 0.2) return Math.atan2(this.vy, this.vx);
    const h = /** @type {Record<string, any>} */ (this.state).heading;
    return typeof h === "number" ? h : 0;
  }
}

class Agent extends Mover {}
class Avatar extends Mover {}

class Marker extends SynkObject {
  fill = "#ffffff";
  born = 0;

  /** @param {Record<string, any>} state */
  init(state) {
    this.fill = css(state.color);
    this.born = performance.now();
  }

  /** @param {Record<string, any>} diff */
  update(diff) {
    if ("color" in diff) this.fill = css(/** @type {any} */ (this.state).color);
  }
}

/** Landmarks stay put: the overview keeps showing the ones this page has seen. */
const landmarksSeen = /** @type {Map<string, {x: number, y: number, radius: number}>} */ (new Map());

class Landmark extends SynkObject {
  /** @param {Record<string, any>} state */
  init(state) {
    landmarksSeen.set(this.id, { x: state.x, y: state.y, radius: state.radius ?? 120 });
  }

  update() {
    this.init(this.state);
  }
}

// ---------------------------------------------------------------------------
// Traffic meter: every frame the socket receives, counted as it arrives.

const meter = {
  frames: 0,
  bytes: 0,
  /** @type {[number, number][]} */
  recent: [],
  /** @param {number} n */
  note(n) {
    this.frames++;
    this.bytes += n;
    this.recent.push([performance.now(), n]);
  },
  /** Frames and bytes of the last second. */
  rate() {
    const since = performance.now() - 1000;
    let i = 0;
    while (i < this.recent.length && this.recent[i][0] < since) i++;
    if (i) this.recent.splice(0, i);
    let bytes = 0;
    for (const [, n] of this.recent) bytes += n;
    return { frames: this.recent.length, bytes };
  },
};

const utf8 = new TextEncoder();

/** The browser's WebSocket, counting what it receives. */
class MeteredWebSocket extends WebSocket {
  /** @param {string | URL} url @param {string | string[]} [protocols] */
  constructor(url, protocols) {
    super(url, protocols);
    this.addEventListener("message", (ev) => {
      const data = ev.data;
      meter.note(typeof data === "string" ? utf8.encode(data).length : (data?.byteLength ?? data?.size ?? 0));
    });
  }
}

// ---------------------------------------------------------------------------
// The client

const client = new Client(undefined, {
  WebSocket: MeteredWebSocket,
  classes: { agent: Agent, avatar: Avatar, marker: Marker, landmark: Landmark },
  viewIntervalMs: 100, // well inside the server's rate limit while dragging
  pingIntervalMs: 2000,
});

let avatarId = /** @type {string | null} */ (null);
/**
 * Where your avatar was last seen: in the cache, in the `hello` reply or in a `steer` reply.
 * Only this page steers it, so this stays right while its cell is not held (panned away).
 * @type {{x: number, y: number} | null}
 */
let ownSeen = null;
let players = /** @type {number | null} */ (null);
let pinCount = Math.floor(Math.random() * PIN_LABELS.length);

/** @type {{x: number, y: number, label: string, ok?: any, error?: string}[]} */
const drops = [];

function mapInfo() {
  const info = client.hello?.maps?.[MAP];
  return info ?? { cell: 500, origin: [0, 0], bounds: [0, 0, 20000, 20000], pos: ["x", "y"], prec: 0 };
}

// Which process serves this page (several may share the map): /healthz says. Asked
// again now and then: the regions a process owns change as processes come and go.
function showProcess() {
  fetch("/healthz")
    .then((r) => r.json())
    .then((h) => {
      $("s-node").textContent = h.node ? `${h.node} (${h.regions} regions)` : "one process";
    })
    .catch(() => {});
}
setInterval(() => {
  if (client.state === "ready") showProcess();
}, 5000);

client.on("hello", () => {
  showProcess();
  client
    .call("hello")
    .then((r) => {
      const reply = /** @type {{avatar: string | null, at: [number, number] | null, players: number, max_keys?: number}} */ (r);
      avatarId = reply.avatar;
      ownSeen = reply.at ? { x: reply.at[0], y: reply.at[1] } : null;
      players = reply.players;
      if (typeof reply.max_keys === "number" && reply.max_keys !== maxKeys) {
        maxKeys = reply.max_keys;
        sendView();
      }
    })
    .catch((err) => toast(`hello failed: ${err.code}`, true));
});

client.on("close", (info) => {
  avatarId = null; // the avatar belonged to that connection; the next session brings a new one
  ownSeen = null;
  taps.length = 0;
  if (info.reconnectInMs !== null) toast(`Connection lost; retrying in ${(info.reconnectInMs / 1000).toFixed(1)} s`, true);
});

let lastErrorToast = 0;
client.on("error", (err) => {
  console.warn("synkworld:", err.code, err.message);
  const now = performance.now();
  if (err.code !== "socket" && now - lastErrorToast > 2000) {
    lastErrorToast = now;
    toast(`${err.code}: ${err.message}`, true);
  }
});

client.on("rem", (obj, _msg, reason) => {
  if (obj.id === selectedId) selectionNote = reason === "deleted" ? "deleted from the world" : "left the cells this page holds";
});

// ---------------------------------------------------------------------------
// The view

const canvas = /** @type {HTMLCanvasElement} */ (document.getElementById("map"));
const ctx = /** @type {CanvasRenderingContext2D} */ (canvas.getContext("2d", { alpha: false }));
const mini = /** @type {HTMLCanvasElement} */ (document.getElementById("minimap"));
const mctx = /** @type {CanvasRenderingContext2D} */ (mini.getContext("2d"));

let W = 0;
let H = 0;
let dpr = 1;

const view = { cx: 10000, cy: 10000, scale: 0.16 };
/** @type {[number, number, number, number] | null} */
let requested = null;

/** @param {number} sx @param {number} sy */
function toWorld(sx, sy) {
  return { x: view.cx + (sx - W / 2) / view.scale, y: view.cy + (sy - H / 2) / view.scale };
}

/** @param {number} x @param {number} y */
function toScreen(x, y) {
  return { x: (x - view.cx) * view.scale + W / 2, y: (y - view.cy) * view.scale + H / 2 };
}

/** @returns {[number, number, number, number]} */
function visibleRect(scale = view.scale) {
  const hw = W / 2 / scale;
  const hh = H / 2 / scale;
  return [view.cx - hw, view.cy - hh, view.cx + hw, view.cy + hh];
}

/**
 * The cells of the map that a rectangle and a margin cover: first and last column, first and last row.
 * @param {number[]} rect
 * @returns {[number, number, number, number]}
 */
function cellSpan(rect, margin = 1) {
  const { cell, origin, bounds } = mapInfo();
  const first = (/** @type {number} */ lo, /** @type {number} */ o, /** @type {number} */ b0) =>
    Math.max(Math.floor((lo - o) / cell) - margin, Math.floor((b0 - o) / cell));
  const last = (/** @type {number} */ hi, /** @type {number} */ o, /** @type {number} */ b1) =>
    Math.min(Math.floor((hi - o) / cell) + margin, Math.floor((b1 - o) / cell));
  return [first(rect[0], origin[0], bounds[0]), first(rect[1], origin[1], bounds[1]), last(rect[2], origin[0], bounds[2]), last(rect[3], origin[1], bounds[3])];
}

/** How many cells the server would grant for this rectangle and margin (an upper bound). */
function cellCount(/** @type {number[]} */ rect, margin = 1) {
  const [c0, r0, c1, r1] = cellSpan(rect, margin);
  return Math.max(0, c1 - c0 + 1) * Math.max(0, r1 - r0 + 1);
}

/** The rectangle to ask for: what is visible, shrunk around the centre when it would hold too many cells. */
function requestRect() {
  let rect = visibleRect();
  let f = 1;
  while (cellCount(rect) > cellBudget() && f > 0.05) {
    f *= 0.94;
    const hw = ((rect[2] - rect[0]) / 2) * 0.94;
    const hh = ((rect[3] - rect[1]) / 2) * 0.94;
    rect = [view.cx - hw, view.cy - hh, view.cx + hw, view.cy + hh];
  }
  return /** @type {[number, number, number, number]} */ (rect.map(Math.round));
}

/**
 * The cells asked for (margin included) when they leave out cells on screen, else null: zoomed out
 * this far, the screen spans more cells than the server lets a client hold.
 * @type {[number, number, number, number] | null}
 */
let clippedTo = null;

function sendView() {
  if (!W || !H) return;
  requested = requestRect();
  client.setView(MAP, requested, 1);
  const got = cellSpan(requested, 1);
  const [c0, r0, c1, r1] = cellSpan(visibleRect(), 0);
  clippedTo = c0 < got[0] || r0 < got[1] || c1 > got[2] || r1 > got[3] ? got : null;
  showClipNote();
}

/** Says on the page, while the view is clipped, that only its middle is shown, and why. */
function showClipNote() {
  const note = $("clip-note");
  if (clippedTo) {
    $("clip-max").textContent = maxKeys.toLocaleString("en");
    $("clip-need").textContent = cellCount(visibleRect(), 1).toLocaleString("en");
  }
  if (note.hidden !== !clippedTo) note.hidden = !clippedTo;
}

/** The smallest zoom at which the whole screen can still be held. */
function fullyHeldScale() {
  let lo = 0.01;
  let hi = 4;
  for (let i = 0; i < 30; i++) {
    const mid = (lo + hi) / 2;
    if (cellCount(visibleRect(mid)) > cellBudget()) lo = mid;
    else hi = mid;
  }
  return hi;
}

function clampView() {
  const [x0, y0, x1, y1] = mapInfo().bounds;
  view.scale = clamp(view.scale, 0.03, 3);
  view.cx = clamp(view.cx, x0, x1);
  view.cy = clamp(view.cy, y0, y1);
}

/** Where your avatar is: as held, else as last seen (null before the `hello` reply). */
function ownPosition() {
  const own = avatarId ? client.get(avatarId) : undefined;
  if (own) {
    const st = /** @type {Record<string, any>} */ (own.state);
    ownSeen = { x: st.x, y: st.y };
  }
  return ownSeen;
}

/** @param {number} x @param {number} y */
function centreOn(x, y) {
  view.cx = x;
  view.cy = y;
  clampView();
  sendView();
}

function resize() {
  const w = window.innerWidth;
  const h = window.innerHeight;
  const r = window.devicePixelRatio || 1;
  if (w === W && h === H && r === dpr) return;
  W = w;
  H = h;
  dpr = r;
  canvas.width = Math.round(W * dpr);
  canvas.height = Math.round(H * dpr);
  const m = mini.getBoundingClientRect();
  mini.width = Math.round((m.width || 180) * dpr);
  mini.height = Math.round((m.height || 180) * dpr);
  sendView();
}

// ---------------------------------------------------------------------------
// Drawing

/** Glyph half-size in CSS pixels at the current zoom. */
const glyphSize = () => clamp(3 + 20 * view.scale, 3, 12);

/**
 * @param {CanvasRenderingContext2D} g
 * @param {string} kind
 * @param {number} r
 */
function glyphPath(g, kind, r) {
  g.beginPath();
  switch (kind) {
    case "ship":
      g.moveTo(r * 1.35, 0);
      g.lineTo(-r * 0.9, r * 0.75);
      g.lineTo(-r * 0.45, 0);
      g.lineTo(-r * 0.9, -r * 0.75);
      g.closePath();
      break;
    case "whale":
      g.ellipse(0, 0, r * 1.15, r * 0.62, 0, 0, Math.PI * 2);
      g.moveTo(-r * 0.9, 0);
      g.lineTo(-r * 1.7, r * 0.6);
      g.lineTo(-r * 1.5, 0);
      g.lineTo(-r * 1.7, -r * 0.6);
      g.closePath();
      break;
    case "gull":
      g.moveTo(-r * 0.7, -r * 1.05);
      g.quadraticCurveTo(r * 0.1, -r * 0.5, r * 0.55, 0);
      g.quadraticCurveTo(r * 0.1, r * 0.5, -r * 0.7, r * 1.05);
      g.quadraticCurveTo(-r * 0.05, 0, -r * 0.7, -r * 1.05);
      break;
    case "buoy-tender":
      g.rect(-r * 0.75, -r * 0.75, r * 1.5, r * 1.5);
      break;
    case "kayak":
      g.ellipse(0, 0, r * 1.4, r * 0.34, 0, 0, Math.PI * 2);
      break;
    default:
      g.arc(0, 0, r * 0.8, 0, Math.PI * 2);
  }
}

/** @param {number} now */
function draw(now) {
  const g = ctx;
  const s = view.scale;
  const info = mapInfo();
  const { cell, origin, bounds } = info;
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.fillStyle = ABYSS;
  g.fillRect(0, 0, W, H);

  // The map itself, then the cells this page holds, then the grid.
  const tl = toScreen(bounds[0], bounds[1]);
  const br = toScreen(bounds[2], bounds[3]);
  g.fillStyle = SEA;
  g.fillRect(tl.x, tl.y, br.x - tl.x, br.y - tl.y);

  const cs = cell * s;
  g.beginPath();
  for (const key of client.held) {
    const k = parseGridKey(key);
    if (!k || k.map !== MAP) continue;
    const p = toScreen(origin[0] + k.cx * cell, origin[1] + k.cy * cell);
    if (p.x > W || p.y > H || p.x + cs < 0 || p.y + cs < 0) continue;
    g.rect(p.x, p.y, cs, cs);
  }
  g.fillStyle = "rgba(70, 165, 225, 0.075)";
  g.fill();
  if (clippedTo) {
    // The part of the screen that is shown (the note on the page says why).
    const a = toScreen(origin[0] + clippedTo[0] * cell, origin[1] + clippedTo[1] * cell);
    const b = toScreen(origin[0] + (clippedTo[2] + 1) * cell, origin[1] + (clippedTo[3] + 1) * cell);
    g.setLineDash([6, 5]);
    g.strokeStyle = "rgba(255, 201, 20, 0.55)";
    g.lineWidth = 1.5;
    g.strokeRect(Math.round(a.x) + 0.5, Math.round(a.y) + 0.5, Math.round(b.x - a.x), Math.round(b.y - a.y));
    g.setLineDash([]);
  }

  if (cs >= 10) {
    g.beginPath();
    const x0 = Math.max(bounds[0], origin[0] + Math.floor((toWorld(0, 0).x - origin[0]) / cell) * cell);
    const y0 = Math.max(bounds[1], origin[1] + Math.floor((toWorld(0, 0).y - origin[1]) / cell) * cell);
    const x1 = Math.min(bounds[2], toWorld(W, H).x);
    const y1 = Math.min(bounds[3], toWorld(W, H).y);
    const top = Math.max(0, tl.y);
    const bottom = Math.min(H, br.y);
    const left = Math.max(0, tl.x);
    const right = Math.min(W, br.x);
    for (let x = x0; x <= x1; x += cell) {
      const sx = Math.round(toScreen(x, 0).x) + 0.5;
      g.moveTo(sx, top);
      g.lineTo(sx, bottom);
    }
    for (let y = y0; y <= y1; y += cell) {
      const sy = Math.round(toScreen(0, y).y) + 0.5;
      g.moveTo(left, sy);
      g.lineTo(right, sy);
    }
    g.strokeStyle = `rgba(150, 200, 235, ${clamp(cs / 900, 0.035, 0.09)})`;
    g.lineWidth = 1;
    g.stroke();
  }
  g.strokeStyle = "rgba(150, 200, 235, 0.3)";
  g.lineWidth = 1.5;
  g.strokeRect(tl.x, tl.y, br.x - tl.x, br.y - tl.y);

  /** @type {Landmark[]} */
  const landmarks = [];
  /** @type {Agent[]} */
  const agents = [];
  /** @type {Marker[]} */
  const markers = [];
  /** @type {Avatar[]} */
  const avatars = [];
  for (const o of client.cache.objects()) {
    if (o instanceof Agent) agents.push(o);
    else if (o instanceof Avatar) avatars.push(o);
    else if (o instanceof Marker) markers.push(o);
    else if (o instanceof Landmark) landmarks.push(o);
  }

  for (const lm of landmarks) drawLandmark(g, lm);
  drawAgents(g, agents, now);
  for (const m of markers) drawMarker(g, m, now);
  for (const a of avatars) drawAvatar(g, a, now);
  drawHighlights(g, now);
  drawScaleBar(g);
}

/** @param {CanvasRenderingContext2D} g @param {Landmark} lm */
function drawLandmark(g, lm) {
  const st = /** @type {Record<string, any>} */ (lm.state);
  const p = toScreen(st.x, st.y);
  const r = Math.max(6, (st.radius ?? 120) * view.scale);
  if (p.x < -r - 100 || p.y < -r - 40 || p.x > W + r + 100 || p.y > H + r + 40) return;
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  const grad = g.createRadialGradient(p.x, p.y, 0, p.x, p.y, r);
  grad.addColorStop(0, "rgba(23, 190, 187, 0.16)");
  grad.addColorStop(1, "rgba(23, 190, 187, 0.03)");
  g.fillStyle = grad;
  g.beginPath();
  g.arc(p.x, p.y, r, 0, Math.PI * 2);
  g.fill();
  g.setLineDash([4, 5]);
  g.strokeStyle = "rgba(120, 225, 220, 0.45)";
  g.lineWidth = 1.2;
  g.stroke();
  g.setLineDash([]);
  g.beginPath();
  g.arc(p.x, p.y, 3, 0, Math.PI * 2);
  g.fillStyle = "rgba(160, 240, 235, 0.9)";
  g.fill();
  label(g, String(st.name ?? lm.id).toUpperCase(), p.x, p.y - r - 7, "rgba(170, 240, 236, 0.9)", "600 11px", 1.5);
}

/**
 * @param {CanvasRenderingContext2D} g
 * @param {string} text
 * @param {number} x
 * @param {number} y
 * @param {string} color
 * @param {string} weightSize e.g. "600 11px"
 * @param {number} [spacing] letter spacing in px
 */
function label(g, text, x, y, color, weightSize, spacing = 0) {
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.font = `${weightSize} ${FONT}`;
  g.letterSpacing = `${spacing}px`;
  g.textAlign = "center";
  g.textBaseline = "alphabetic";
  g.lineJoin = "round";
  g.lineWidth = 3;
  g.strokeStyle = "rgba(6, 18, 29, 0.85)";
  g.strokeText(text, x, y);
  g.fillStyle = color;
  g.fillText(text, x, y);
  g.letterSpacing = "0px";
}

/** @param {CanvasRenderingContext2D} g @param {Agent[]} agents @param {number} now */
function drawAgents(g, agents, now) {
  const r = glyphSize();
  const pad = r * 3;
  const names = view.scale >= 0.45;
  for (const a of agents) {
    const pos = a.lerp(now);
    const p = toScreen(pos.x, pos.y);
    if (p.x < -pad || p.y < -pad || p.x > W + pad || p.y > H + pad) continue;
    const st = /** @type {Record<string, any>} */ (a.state);
    const ang = a.angle();
    const c = Math.cos(ang);
    const sn = Math.sin(ang);
    g.setTransform(dpr * c, dpr * sn, -dpr * sn, dpr * c, dpr * p.x, dpr * p.y);
    // The wake, then the glyph, then a dot marking where it is heading.
    if (st.kind !== "gull") {
      const len = r * (1.0 + (st.speed ?? 40) / 40);
      g.beginPath();
      g.moveTo(-r * 0.7, -r * 0.38);
      g.lineTo(-r * 0.7 - len, 0);
      g.lineTo(-r * 0.7, r * 0.38);
      g.closePath();
      g.fillStyle = a.fill;
      g.globalAlpha = 0.2;
      g.fill();
    }
    if (st.mood === "curious") {
      g.globalAlpha = 0.35;
      g.beginPath();
      g.arc(0, 0, r * 2.1, 0, Math.PI * 2);
      g.strokeStyle = a.fill;
      g.lineWidth = 1;
      g.stroke();
    }
    g.globalAlpha = 1;
    glyphPath(g, st.kind, r);
    g.fillStyle = a.fill;
    g.fill();
    if (st.kind === "buoy-tender") {
      g.beginPath();
      g.arc(0, 0, r * 0.3, 0, Math.PI * 2);
      g.fillStyle = SEA;
      g.fill();
    }
    g.beginPath();
    g.arc(r * 2.05, 0, Math.max(0.8, r * 0.16), 0, Math.PI * 2);
    g.fillStyle = "rgba(235, 245, 255, 0.7)";
    g.fill();
    if (names) label(g, String(st.name), p.x, p.y + r + 13, "rgba(200, 220, 235, 0.75)", "500 10px");
  }
  g.globalAlpha = 1;
}

/** @param {CanvasRenderingContext2D} g @param {Marker} m @param {number} now */
function drawMarker(g, m, now) {
  const st = /** @type {Record<string, any>} */ (m.state);
  const p = toScreen(st.x, st.y);
  if (p.x < -120 || p.y < -40 || p.x > W + 120 || p.y > H + 40) return;
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  const age = now - m.born;
  if (age < 900) {
    // A ripple where a pin lands.
    const t = age / 900;
    g.beginPath();
    g.ellipse(p.x, p.y, 6 + 28 * t, (6 + 28 * t) * 0.45, 0, 0, Math.PI * 2);
    g.strokeStyle = m.fill;
    g.globalAlpha = 1 - t;
    g.lineWidth = 2;
    g.stroke();
    g.globalAlpha = 1;
  }
  if (view.scale < 0.05) {
    g.beginPath();
    g.arc(p.x, p.y, 3, 0, Math.PI * 2);
    g.fillStyle = m.fill;
    g.fill();
    return;
  }
  const drop = age < 300 ? (1 - age / 300) ** 2 * 24 : 0;
  g.beginPath();
  g.ellipse(p.x, p.y, 5, 2, 0, 0, Math.PI * 2);
  g.fillStyle = "rgba(0, 0, 0, 0.35)";
  g.fill();
  const hx = p.x;
  const hy = p.y - 17 - drop;
  g.beginPath();
  g.moveTo(p.x, p.y - drop);
  g.bezierCurveTo(hx - 3, hy + 9, hx - 7, hy + 5, hx - 7, hy);
  g.arc(hx, hy, 7, Math.PI, 0);
  g.bezierCurveTo(hx + 7, hy + 5, hx + 3, hy + 9, p.x, p.y - drop);
  g.fillStyle = m.fill;
  g.fill();
  g.strokeStyle = "rgba(6, 18, 29, 0.7)";
  g.lineWidth = 1;
  g.stroke();
  g.beginPath();
  g.arc(hx, hy, 2.6, 0, Math.PI * 2);
  g.fillStyle = "rgba(6, 18, 29, 0.85)";
  g.fill();
  if (view.scale >= 0.08) label(g, String(st.label ?? ""), p.x, hy - 12, "#f2f7fb", "600 11px");
}

/** @param {CanvasRenderingContext2D} g @param {Avatar} a @param {number} now */
function drawAvatar(g, a, now) {
  const st = /** @type {Record<string, any>} */ (a.state);
  const pos = a.lerp(now);
  const p = toScreen(pos.x, pos.y);
  if (p.x < -80 || p.y < -40 || p.x > W + 80 || p.y > H + 40) return;
  const mine = a.id === avatarId;
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  if (mine) {
    const pulse = (now % 1600) / 1600;
    g.beginPath();
    g.arc(p.x, p.y, 11 + pulse * 16, 0, Math.PI * 2);
    g.strokeStyle = "rgba(255, 255, 255, 0.6)";
    g.globalAlpha = 1 - pulse;
    g.lineWidth = 1.5;
    g.stroke();
    g.globalAlpha = 1;
  }
  g.beginPath();
  g.arc(p.x, p.y, mine ? 10 : 8, 0, Math.PI * 2);
  g.fillStyle = "rgba(6, 18, 29, 0.55)";
  g.fill();
  g.lineWidth = mine ? 3 : 2.5;
  g.strokeStyle = a.fill;
  g.stroke();
  if (mine) {
    g.beginPath();
    g.arc(p.x, p.y, 13.5, 0, Math.PI * 2);
    g.strokeStyle = "#ffffff";
    g.lineWidth = 1.5;
    g.stroke();
  }
  g.beginPath();
  g.arc(p.x, p.y, 3, 0, Math.PI * 2);
  g.fillStyle = mine ? "#ffffff" : a.fill;
  g.fill();
  const name = mine ? `${st.name} (you)` : String(st.name);
  label(g, name, p.x, p.y - (mine ? 20 : 15), mine ? "#ffffff" : a.fill, mine ? "700 12px" : "600 11px");
}

/** @param {CanvasRenderingContext2D} g @param {number} now */
function drawHighlights(g, now) {
  for (const [id, strong] of [
    [hoverId, false],
    [selectedId, true],
  ]) {
    if (!id || (!strong && id === selectedId)) continue;
    const o = client.get(/** @type {string} */ (id));
    if (!o) continue;
    const st = /** @type {Record<string, any>} */ (o.state);
    const pos = o instanceof Mover ? o.lerp(now) : { x: st.x, y: st.y };
    const p = toScreen(pos.x, pos.y);
    const r = o instanceof Agent ? glyphSize() * 2.4 + 4 : o instanceof Marker ? 16 : 18;
    const cy = o instanceof Marker ? p.y - 14 : p.y;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.beginPath();
    g.arc(p.x, cy, r, 0, Math.PI * 2);
    g.strokeStyle = strong ? "#ffffff" : "rgba(255, 255, 255, 0.45)";
    g.lineWidth = strong ? 1.6 : 1;
    if (strong) {
      g.setLineDash([5, 4]);
      g.lineDashOffset = -now / 60;
    }
    g.stroke();
    g.setLineDash([]);
    if (o instanceof Agent && (strong || view.scale < 0.45)) {
      label(g, String(st.name), p.x, cy - r - 6, "#ffffff", "600 11px");
    }
  }
}

/** @param {CanvasRenderingContext2D} g */
function drawScaleBar(g) {
  const target = 140 / view.scale;
  const pow = 10 ** Math.floor(Math.log10(target));
  const nice = [5, 2, 1].map((k) => k * pow).find((v) => v <= target) ?? pow;
  const len = nice * view.scale;
  const x1 = W - 16 - 180 - 20;
  const x0 = x1 - len;
  const y = H - 24;
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.beginPath();
  g.moveTo(x0 + 0.5, y - 5);
  g.lineTo(x0 + 0.5, y + 0.5);
  g.lineTo(x1 + 0.5, y + 0.5);
  g.lineTo(x1 + 0.5, y - 5);
  g.strokeStyle = "rgba(200, 225, 245, 0.55)";
  g.lineWidth = 1;
  g.stroke();
  label(g, `${nice.toLocaleString("en")} units`, (x0 + x1) / 2, y - 6, "rgba(200, 225, 245, 0.7)", "500 10px");
}

function drawMinimap() {
  const g = mctx;
  const w = mini.width / dpr;
  const h = mini.height / dpr;
  const { cell, origin, bounds } = mapInfo();
  const pad = 10;
  const k = Math.min((w - 2 * pad) / (bounds[2] - bounds[0]), (h - 2 * pad) / (bounds[3] - bounds[1]));
  const mx = (/** @type {number} */ x) => pad + (x - bounds[0]) * k;
  const my = (/** @type {number} */ y) => pad + (y - bounds[1]) * k;
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  g.fillStyle = SEA;
  g.fillRect(mx(bounds[0]), my(bounds[1]), (bounds[2] - bounds[0]) * k, (bounds[3] - bounds[1]) * k);
  g.fillStyle = "rgba(70, 165, 225, 0.22)";
  for (const key of client.held) {
    const c = parseGridKey(key);
    if (!c || c.map !== MAP) continue;
    g.fillRect(mx(origin[0] + c.cx * cell), my(origin[1] + c.cy * cell), cell * k + 0.3, cell * k + 0.3);
  }
  for (const o of client.cache.objects()) {
    const st = /** @type {Record<string, any>} */ (o.state);
    if (o instanceof Agent) {
      g.fillStyle = o.fill;
      g.fillRect(mx(st.x) - 0.5, my(st.y) - 0.5, 1.2, 1.2);
    } else if (o instanceof Marker) {
      g.fillStyle = o.fill;
      g.beginPath();
      g.arc(mx(st.x), my(st.y), 1.8, 0, Math.PI * 2);
      g.fill();
    }
  }
  for (const lm of landmarksSeen.values()) {
    g.beginPath();
    g.arc(mx(lm.x), my(lm.y), Math.max(2.5, lm.radius * k), 0, Math.PI * 2);
    g.strokeStyle = "rgba(120, 225, 220, 0.8)";
    g.lineWidth = 1;
    g.stroke();
  }
  const at = ownPosition();
  if (at) {
    g.beginPath();
    g.arc(mx(at.x), my(at.y), 3, 0, Math.PI * 2);
    g.fillStyle = "#ffffff";
    g.fill();
  }
  const [x0, y0, x1, y1] = visibleRect();
  const vx0 = Math.max(x0, bounds[0]);
  const vy0 = Math.max(y0, bounds[1]);
  const vx1 = Math.min(x1, bounds[2]);
  const vy1 = Math.min(y1, bounds[3]);
  g.strokeStyle = "rgba(255, 255, 255, 0.85)";
  g.lineWidth = 1;
  if (vx1 > vx0 && vy1 > vy0) g.strokeRect(mx(vx0), my(vy0), (vx1 - vx0) * k, (vy1 - vy0) * k);
  g.strokeStyle = "rgba(150, 200, 235, 0.35)";
  g.strokeRect(mx(bounds[0]), my(bounds[1]), (bounds[2] - bounds[0]) * k, (bounds[3] - bounds[1]) * k);
}

// ---------------------------------------------------------------------------
// The overlay

/** @param {string} id */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

const STATE_TEXT = { idle: "idle", connecting: "connecting", open: "connecting", ready: "live", backoff: "reconnecting", closed: "closed" };

/** @param {number} n */
function formatBytes(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} MB/s`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB/s`;
  return `${n} B/s`;
}

function updateStats() {
  const state = client.state;
  const el = $("state");
  el.dataset.state = state;
  el.textContent = STATE_TEXT[state] ?? state;
  const { frames, bytes } = meter.rate();
  $("s-players").textContent = players === null ? "–" : String(players);
  $("s-objects").textContent = client.cache.size.toLocaleString("en");
  $("s-cells").textContent = String(client.held.size);
  $("s-fps").textContent = String(frames);
  $("s-bytes").textContent = formatBytes(bytes);
  $("s-rtt").textContent = client.latencyMs === null ? "–" : `${client.latencyMs.toFixed(client.latencyMs < 10 ? 1 : 0)} ms`;
  $("s-tick").textContent = client.tick ? client.tick.toLocaleString("en") : "–";
  const held = avatarId ? client.get(avatarId) : undefined;
  const at = ownPosition();
  const you = $("s-you");
  you.textContent = at ? `${Math.round(at.x)}, ${Math.round(at.y)}${held ? "" : " · C"}` : "–";
  you.title = at && !held ? "where your avatar was last seen, out of the cells this page holds: C centres the view on it" : "";
}

let selectedId = /** @type {string | null} */ (null);
let hoverId = /** @type {string | null} */ (null);
let selectionNote = "";
let follow = false;
/** @type {Map<string, {dd: HTMLElement, text: string}>} */
let inspectorRows = new Map();

const HEADINGS = ["E", "SE", "S", "SW", "W", "NW", "N", "NE"];

/** @param {string} field @param {any} v */
function formatField(field, v) {
  if (field === "heading" && typeof v === "number") {
    const deg = ((v * 180) / Math.PI + 360) % 360;
    return `${deg.toFixed(0)}° ${HEADINGS[Math.round(deg / 45) % 8]}`;
  }
  if (field === "speed" && typeof v === "number") return `${v.toFixed(1)} u/s`;
  if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(2);
  return String(v);
}

/** @param {string | null} id */
function select(id) {
  selectedId = id;
  selectionNote = "";
  follow = false;
  inspectorRows = new Map();
  $("i-fields").replaceChildren();
  $("inspector").hidden = !id;
  updateInspector();
}

function updateInspector() {
  if (!selectedId) return;
  const o = client.get(selectedId);
  $("i-note").textContent = o ? (follow ? "following · F to stop" : "F to follow") : `${selectedId}: ${selectionNote || "not held"}`;
  if (!o) return;
  const st = /** @type {Record<string, any>} */ (o.state);
  $("i-swatch").style.background = css(st.color);
  $("i-name").textContent = String(st.name ?? st.label ?? o.id);
  $("i-sub").textContent =
    o instanceof Agent
      ? `${st.kind} · ${st.mood}`
      : o instanceof Avatar
        ? o.id === avatarId
          ? "your avatar"
          : "another player"
        : o instanceof Marker
          ? `pin dropped by ${st.placed_by}`
          : o.type;
  const hidden = new Set(["name", "color", "label"]);
  const rows = Object.keys(st)
    .filter((f) => !hidden.has(f))
    .map((f) => /** @type {[string, string]} */ ([f, formatField(f, st[f])]));
  rows.push(["version", String(o.version)], ["cell", o.key], ["id", o.id]);
  const dl = $("i-fields");
  for (const [field, text] of rows) {
    let row = inspectorRows.get(field);
    if (!row) {
      const dt = document.createElement("dt");
      dt.textContent = field;
      const dd = document.createElement("dd");
      dd.dataset.field = field;
      dl.append(dt, dd);
      row = { dd, text: "" };
      inspectorRows.set(field, row);
    }
    if (row.text !== text) {
      const changed = row.text !== "" && !["x", "y", "version", "cell"].includes(field);
      row.text = text;
      row.dd.textContent = text;
      if (changed) {
        row.dd.classList.remove("flash");
        void row.dd.offsetWidth; // restart the animation
        row.dd.classList.add("flash");
      }
    }
  }
}

let toastTimer = 0;
/** @param {string} text @param {boolean} [bad] */
function toast(text, bad = false) {
  const el = $("toast");
  el.textContent = text;
  el.classList.toggle("bad", bad);
  el.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = window.setTimeout(() => el.classList.remove("show"), 2600);
}

// ---------------------------------------------------------------------------
// Interaction

/** The object under a screen point (agents, avatars and pins), or null. */
function pick(/** @type {number} */ sx, /** @type {number} */ sy) {
  const now = performance.now();
  const r = glyphSize();
  let best = /** @type {string | null} */ (null);
  let bestD = Infinity;
  for (const o of client.cache.objects()) {
    let p;
    let reach;
    if (o instanceof Mover) {
      const pos = o.lerp(now);
      p = toScreen(pos.x, pos.y);
      reach = o instanceof Avatar ? 14 : Math.max(9, r * 1.6);
    } else if (o instanceof Marker) {
      const st = /** @type {Record<string, any>} */ (o.state);
      p = toScreen(st.x, st.y);
      p.y -= 13;
      reach = 13;
    } else continue;
    const d = Math.hypot(p.x - sx, p.y - sy);
    if (d <= reach && d < bestD) {
      best = o.id;
      bestD = d;
    }
  }
  return best;
}

/** Drops a pin at a screen point; resolves with the server's reply or the error code. */
async function dropPin(/** @type {number} */ sx, /** @type {number} */ sy) {
  const w = toWorld(sx, sy);
  const [x0, y0, x1, y1] = mapInfo().bounds;
  if (w.x < x0 || w.y < y0 || w.x > x1 || w.y > y1) {
    toast("Pins go on the map", true);
    return null;
  }
  const label = PIN_LABELS[pinCount++ % PIN_LABELS.length];
  const entry = /** @type {{x: number, y: number, label: string, ok?: any, error?: string}} */ ({
    x: Math.round(w.x),
    y: Math.round(w.y),
    label,
  });
  drops.push(entry);
  try {
    entry.ok = await client.call("drop_marker", { x: entry.x, y: entry.y, label });
    toast(`Pin “${label}” dropped at ${entry.x}, ${entry.y}`);
  } catch (err) {
    entry.error = /** @type {any} */ (err).code ?? String(err);
    toast(`Could not drop the pin: ${entry.error}`, true);
  }
  return entry;
}

/** @type {{id: number, x: number, y: number, cx: number, cy: number, moved: boolean} | null} */
let press = null;

canvas.addEventListener("pointerdown", (ev) => {
  if (ev.button !== 0) return;
  canvas.setPointerCapture(ev.pointerId);
  press = { id: ev.pointerId, x: ev.clientX, y: ev.clientY, cx: view.cx, cy: view.cy, moved: false };
});

canvas.addEventListener("pointermove", (ev) => {
  if (press && press.id === ev.pointerId) {
    const dx = ev.clientX - press.x;
    const dy = ev.clientY - press.y;
    if (!press.moved && Math.hypot(dx, dy) < 4) return;
    if (!press.moved) {
      press.moved = true;
      follow = false;
      canvas.classList.add("dragging");
    }
    view.cx = press.cx - dx / view.scale;
    view.cy = press.cy - dy / view.scale;
    clampView();
    sendView();
    return;
  }
  const id = pick(ev.clientX, ev.clientY);
  if (id !== hoverId) {
    hoverId = id;
    canvas.classList.toggle("pointing", id !== null);
  }
});

function endPress(/** @type {PointerEvent} */ ev, /** @type {boolean} */ cancelled) {
  if (!press || press.id !== ev.pointerId) return;
  const p = press;
  press = null;
  canvas.classList.remove("dragging");
  if (p.moved || cancelled) return;
  const id = pick(ev.clientX, ev.clientY);
  if (id) select(id);
  else if (selectedId) select(null); // the first click on the sea only lets go of the selection
  else void dropPin(ev.clientX, ev.clientY);
}

canvas.addEventListener("pointerup", (ev) => endPress(ev, false));
canvas.addEventListener("pointercancel", (ev) => endPress(ev, true));
canvas.addEventListener("pointerleave", () => {
  if (!press && hoverId) {
    hoverId = null;
    canvas.classList.remove("pointing");
  }
});

canvas.addEventListener(
  "wheel",
  (ev) => {
    ev.preventDefault();
    const unit = ev.deltaMode === 1 ? 16 : ev.deltaMode === 2 ? H : 1;
    zoomAt(ev.clientX, ev.clientY, Math.exp(-ev.deltaY * unit * 0.0015));
  },
  { passive: false },
);

/** @param {number} sx @param {number} sy @param {number} factor */
function zoomAt(sx, sy, factor) {
  const before = toWorld(sx, sy);
  view.scale = clamp(view.scale * factor, 0.03, 3);
  const after = toWorld(sx, sy);
  view.cx += before.x - after.x;
  view.cy += before.y - after.y;
  clampView();
  sendView();
}

mini.addEventListener("pointerdown", (ev) => {
  const r = mini.getBoundingClientRect();
  const { bounds } = mapInfo();
  const pad = 10;
  const k = Math.min((r.width - 2 * pad) / (bounds[2] - bounds[0]), (r.height - 2 * pad) / (bounds[3] - bounds[1]));
  follow = false;
  centreOn(bounds[0] + (ev.clientX - r.left - pad) / k, bounds[1] + (ev.clientY - r.top - pad) / k);
});

$("i-close").addEventListener("click", () => select(null));

/** @type {Record<string, [number, number]>} */
const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
/** Arrow keys down now, and when each went down. */
const steerKeys = /** @type {Map<string, number>} */ (new Map());
/** Presses not stepped yet (direction, with Shift?): every press is one step, however short. */
const taps = /** @type {[number, number, boolean][]} */ ([]);
/** A key held this long repeats its step. */
const REPEAT_AFTER_MS = 250;
let steering = false;
let steerBoost = false;
let keepOwnInViewUntil = 0;
let steers = 0;
let lastSteer = /** @type {{x: number, y: number} | null} */ (null);

/** Sends the next step of your avatar (one at a time): a pending press, else the keys held long enough. */
function pumpSteer() {
  if (steering || !avatarId) return;
  let dir = taps.shift();
  const boost = dir ? dir[2] : steerBoost;
  if (!dir) {
    const now = performance.now();
    let dx = 0;
    let dy = 0;
    let wait = Infinity;
    for (const [key, since] of steerKeys) {
      if (now - since >= REPEAT_AFTER_MS) {
        dx += ARROWS[key][0];
        dy += ARROWS[key][1];
      } else wait = Math.min(wait, REPEAT_AFTER_MS - (now - since));
    }
    if (!dx && !dy) {
      if (wait < Infinity) setTimeout(pumpSteer, wait);
      return;
    }
    dir = [dx, dy, steerBoost];
  }
  const step = boost ? STEER_STEP * 3 : STEER_STEP;
  const n = Math.hypot(dir[0], dir[1]);
  steering = true;
  keepOwnInViewUntil = performance.now() + 2000;
  client
    .call("steer", { avatar: avatarId, dx: Math.round((dir[0] / n) * step), dy: Math.round((dir[1] / n) * step) })
    .then((r) => {
      steers++;
      lastSteer = /** @type {{x: number, y: number}} */ (r);
      ownSeen = { x: lastSteer.x, y: lastSteer.y };
    })
    .catch((err) => toast(`steer: ${err.code}`, true))
    .finally(() => {
      steering = false;
      setTimeout(pumpSteer, STEER_PAUSE_MS);
    });
}

window.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLInputElement || ev.metaKey || ev.ctrlKey || ev.altKey) return;
  if (ev.key in ARROWS) {
    ev.preventDefault();
    steerBoost = ev.shiftKey;
    if (!ev.repeat || !steerKeys.has(ev.key)) {
      steerKeys.set(ev.key, performance.now());
      if (taps.length < 4) taps.push([...ARROWS[ev.key], ev.shiftKey]);
    }
    pumpSteer();
    return;
  }
  switch (ev.key) {
    case "c":
    case "C": {
      // Your avatar's cell is not held once you pan away: go where it was last seen.
      const at = ownPosition();
      if (at) {
        follow = false;
        centreOn(at.x, at.y);
      } else toast("You have no avatar yet", true);
      break;
    }
    case "f":
    case "F":
      if (selectedId) follow = !follow;
      break;
    case "Escape":
      select(null);
      break;
    case "+":
    case "=":
      zoomAt(W / 2, H / 2, 1.25);
      break;
    case "-":
    case "_":
      zoomAt(W / 2, H / 2, 0.8);
      break;
    default:
      return;
  }
  ev.preventDefault();
});

window.addEventListener("keyup", (ev) => {
  steerKeys.delete(ev.key);
  steerBoost = ev.shiftKey;
});
window.addEventListener("blur", () => steerKeys.clear());

/** Moves the view along with whatever it follows. */
function track(/** @type {number} */ now) {
  if (follow && selectedId) {
    const o = client.get(selectedId);
    if (o instanceof Mover) {
      const p = o.lerp(now);
      view.cx = p.x;
      view.cy = p.y;
      clampView();
      sendView();
    }
  }
  if (now < keepOwnInViewUntil && avatarId) {
    // While steering, keep your avatar inside the middle of the screen.
    const o = client.get(avatarId);
    if (o instanceof Mover) {
      const pos = o.lerp(now);
      const p = toScreen(pos.x, pos.y);
      const mx = W * 0.3;
      const my = H * 0.3;
      const ox = p.x < mx ? p.x - mx : p.x > W - mx ? p.x - (W - mx) : 0;
      const oy = p.y < my ? p.y - my : p.y > H - my ? p.y - (H - my) : 0;
      if (ox || oy) {
        view.cx += ox / view.scale;
        view.cy += oy / view.scale;
        clampView();
        sendView();
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Start

let lastStats = 0;
let lastSlow = 0;
/** Smoothed time of one draw, in ms (for tests and curious people: `demo.drawMs`). */
let drawMs = 0;

/** @param {number} now */
function frame(now) {
  resize();
  track(now);
  const t0 = performance.now();
  draw(now);
  drawMs = 0.9 * drawMs + 0.1 * (performance.now() - t0);
  if (now - lastSlow > 100) {
    lastSlow = now;
    drawMinimap();
    updateInspector();
  }
  if (now - lastStats > 250) {
    lastStats = now;
    updateStats();
  }
  requestAnimationFrame(frame);
}

resize();
view.scale = Math.max(fullyHeldScale() * 1.03, 0.03);
sendView();
client.connect();
setInterval(() => {
  if (client.state !== "ready") return;
  client
    .call("players")
    .then((n) => {
      players = /** @type {number} */ (n);
    })
    .catch(() => {});
}, 3000);
requestAnimationFrame(frame);

/** Everything this page holds, in the shape of the server's `truth` reply. */
function dump() {
  /** @type {Record<string, {t: string, v: number, s: any, k: string}>} */
  const objs = {};
  for (const o of client.cache.objects()) objs[o.id] = { t: o.type, v: o.version, s: o.state, k: o.key };
  return { tick: client.tick, held: [...client.held].sort(), objs, stale: client.cache.staleCount };
}

Object.assign(window, {
  synk: client,
  demo: {
    client,
    view,
    meter,
    drops,
    toWorld,
    toScreen,
    pick,
    select,
    dropPin,
    dump,
    centreOn,
    get avatarId() {
      return avatarId;
    },
    get players() {
      return players;
    },
    get selected() {
      return selectedId;
    },
    get requested() {
      return requested;
    },
    get clipped() {
      return clippedTo !== null;
    },
    get maxKeys() {
      return maxKeys;
    },
    get steers() {
      return steers;
    },
    get steering() {
      return steering || taps.length > 0 || steerKeys.size > 0;
    },
    get lastSteer() {
      return lastSteer;
    },
    get drawMs() {
      return drawMs;
    },
  },
});
