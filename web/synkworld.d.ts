// Public API of the synkworld JavaScript client (synkworld.js), protocol versions 1 and 2.
// synkworld.js checks itself against this file (see the end of synkworld.js), so
// the two cannot drift apart without `npm run typecheck` failing.

// ---------------------------------------------------------------------------
// Wire messages (docs/protocol.md; version 2, docs/protocol-v2.md, carries the same
// in binary frames: its hello, reply, error and pong are these as MessagePack maps)

/** A wire protocol version: 1, JSON text frames; 2, binary frames. */
export type ProtocolVersion = 1 | 2;

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type State = Record<string, JsonValue>;

export interface MapInfo {
  cell: number;
  origin: [number, number];
  bounds: [number, number, number, number];
  /** Names of the two state fields that hold a position on this map. */
  pos: [string, string];
  /** Decimals positions are rounded to on the wire. */
  prec: number;
  /** Version 2: the map's number in grid keys. */
  num?: number;
}

/**
 * Version 2: a type definition, `[number, type key, field names, position]`, where
 * position is the indices of the two position fields, or null for a type without one.
 */
export type TypeDef = [number, string, string[], [number, number] | null];

export interface HelloMsg {
  m: "hello";
  proto: number;
  sid: string;
  tick: number;
  /** Server ticks per second. */
  rate: number;
  maps: Record<string, MapInfo>;
  /** Version 2: the types the server knew when the client connected. */
  types?: TypeDef[];
}

export interface AddEntry {
  id: string;
  t: string;
  v: number;
  s: State;
  /** Key of the cell the object moved from in this tick. */
  from?: string;
}

export interface ModEntry {
  id: string;
  v: number;
  d: State;
  /** Key of the cell the object moved to in this tick. */
  to?: string;
}

export interface RemEntry {
  id: string;
}

/** `[[ids], [first pos field values], [second pos field values]]` */
export type MvArrays = [string[], number[], number[]];

export interface Batch {
  k: string;
  add?: AddEntry[];
  mod?: ModEntry[];
  mv?: MvArrays;
  rem?: RemEntry[];
}

export type SnapshotEntry = Omit<AddEntry, "from">;

export interface Snapshot {
  k: string;
  objs: SnapshotEntry[];
}

/**
 * A tick frame. With version 2 the `tick` event gets a summary of the binary
 * frame: `n`, `sub` and the applied snapshots in this shape; never `b`.
 */
export interface TickMsg {
  m: "tick";
  n: number;
  b?: Batch[];
  sub?: { add?: string[]; rem?: string[] };
  snap?: Snapshot[];
}

export interface ResyncMsg {
  m: "resync";
  n: number;
  snap: Snapshot[];
}

export interface ReplyMsg {
  m: "reply";
  id: number;
  ok: JsonValue;
}

export interface ErrorMsg {
  m: "error";
  id: number | null;
  code: string;
  msg: string;
}

export interface PongMsg {
  m: "pong";
  t: number;
  n: number;
}

export type ServerMsg = HelloMsg | TickMsg | ResyncMsg | ReplyMsg | ErrorMsg | PongMsg;

export type Rect = [number, number, number, number];

export interface ViewMsg {
  m: "view";
  map: string;
  rect: Rect;
  margin: number;
}

export interface SubMsg {
  m: "sub";
  add: string[];
  rem: string[];
}

export interface CallMsg {
  m: "call";
  id: number;
  name: string;
  args: Record<string, unknown>;
}

export interface PingMsg {
  m: "ping";
  t: number;
}

export type ClientMsg = ViewMsg | SubMsg | CallMsg | PingMsg;

// ---------------------------------------------------------------------------
// Constants

/** The version of docs/protocol.md, the base that version 2 changes; `PROTOCOL.VERSIONS` lists what this client speaks. */
export declare const PROTOCOL_VERSION: 1;

/** Everything the wire protocol fixes, in one object, to compare with the Python side. */
export declare const PROTOCOL: Readonly<{
  VERSION: 1;
  PATH: "/ws";
  MAX_CLIENT_FRAME_BYTES: 65536;
  DEFAULT_MAP: "main";
  DEFAULT_MARGIN: 1;
  SERVER_KINDS: readonly ["hello", "tick", "resync", "reply", "error", "pong"];
  CLIENT_KINDS: readonly ["view", "sub", "call", "ping"];
  ERROR_CODES: readonly [
    "bad_json",
    "bad_message",
    "unknown_message",
    "too_many_keys",
    "rate_limited",
    "forbidden",
    "no_handler",
    "bad_args",
    "handler_failed",
  ];
  CLOSE_CODES: Readonly<{ POLICY_VIOLATION: 1008; MESSAGE_TOO_BIG: 1009; TRY_AGAIN_LATER: 1013 }>;
  /** The versions this client speaks. */
  VERSIONS: readonly [1, 2];
  /** The WebSocket subprotocol of each version (a version 2 client offers both, 2 first). */
  SUBPROTOCOLS: Readonly<{ 1: "synkworld.v1"; 2: "synkworld.v2" }>;
}>;

/** Codes of errors raised by this library itself (never sent by a server). */
export declare const CLIENT_ERROR_CODES: Readonly<{
  /** A call got no answer within its timeout. */
  TIMEOUT: "timeout";
  /** The connection closed (or was not ready) before the call was answered. */
  CLOSED: "closed";
  /** A call's encoded frame exceeds PROTOCOL.MAX_CLIENT_FRAME_BYTES. */
  TOO_LARGE: "too_large";
  /** A server frame that is not JSON (or, in version 2, not binary), or not shaped as the protocol says. */
  BAD_FRAME: "bad_frame";
  /** The server speaks another protocol version (or a version in the other kind of frame). */
  PROTO_MISMATCH: "proto_mismatch";
  /** A user hook (init, update, teardown, constructor) or listener threw. */
  CALLBACK_FAILED: "callback_failed";
  /** The WebSocket reported an error (it closes right after). */
  SOCKET: "socket";
}>;

// ---------------------------------------------------------------------------
// Errors

/** Base of every error this library reports; `code` is a protocol or client error code. */
export declare class SynkError extends Error {
  constructor(code: string, message: string, options?: { cause?: unknown });
  readonly code: string;
}

/** Rejection of `Client.call`: a server `error` frame, or "timeout" / "closed" / "too_large". */
export declare class SynkCallError extends SynkError {
  constructor(code: string, message: string, callName: string);
  readonly callName: string;
}

// ---------------------------------------------------------------------------
// Objects

/** Why an object left the cache (second argument of `teardown`, third of the `rem` event). */
export type RemoveReason =
  | "deleted" // a batch's `rem`: deleted from the world
  | "moved_out" // a `mod` with `to` a key the client does not hold
  | "unsubscribed" // its key was in `sub.rem`
  | "snapshot" // missing from the snapshot of the key it was held under
  | "resync" // missing from every snapshot of a `resync`
  | "session" // not seen again after a reconnect
  | "closed"; // Client.close() / ObjectCache.clear()

/** What the library passes to an object's constructor. */
export interface ObjectInit {
  id: string;
  t: string;
  v: number;
  s: State;
  key: string;
}

/** Base class of every cached object; subclass it and register the subclass per type. */
export declare class SynkObject {
  /** Numeric state fields that `lerp` interpolates between ticks; none by default. */
  static interpolate: readonly string[];
  /** Called by the library only; override `init` instead. */
  constructor(init: ObjectInit);
  readonly id: string;
  readonly type: string;
  /** The key the object is held under (a grid cell key or a channel key); maintained by the cache. */
  readonly key: string;
  /** Maintained by the cache. */
  readonly version: number;
  /** The object's current state; kept as one object, mutated in place. */
  readonly state: State;
  /** Hook: called once with the initial state, after construction and before the `add` event. */
  init(state: State): void;
  /**
   * Hook: called after a change was applied to `state`. `diff` holds the changed fields
   * (for a snapshot or resync replacement: the whole new state); `msg` is the wire entry.
   */
  update(diff: State, msg: ModEntry | AddEntry | SnapshotEntry): void;
  /** Hook: called once when the object leaves the cache, after the `rem` event. */
  teardown(reason: RemoveReason): void;
  /**
   * The fields named in the class's static `interpolate`, interpolated linearly between the
   * value shown before the last change and the new one, over one server tick (1000/rate ms)
   * from the moment the change arrived. `nowMs` is on the clock of the cache's `now` option
   * (default `performance.now()`, the clock of requestAnimationFrame's timestamp).
   */
  lerp(nowMs?: number): Record<string, number>;
}

export interface SynkObjectClass {
  new (init: ObjectInit): SynkObject;
  readonly interpolate?: readonly string[];
}

// ---------------------------------------------------------------------------
// Cache

export interface CacheEvents {
  add: (obj: SynkObject, msg: AddEntry | SnapshotEntry) => void;
  mod: (obj: SynkObject, msg: ModEntry | AddEntry | SnapshotEntry) => void;
  rem: (obj: SynkObject, msg: RemEntry | ModEntry | null, reason: RemoveReason) => void;
  error: (err: SynkError) => void;
}

export interface CacheOptions {
  /** Classes per object type, as with `register`. */
  classes?: Record<string, SynkObjectClass>;
  /** Clock for interpolation, in ms (default `performance.now()`). */
  now?: () => number;
}

/**
 * Applies server frames to a set of objects held by id and by key, exactly as
 * docs/protocol.md orders it; knows nothing of sockets.
 */
export declare class ObjectCache {
  constructor(options?: CacheOptions);
  on<K extends keyof CacheEvents>(name: K, fn: CacheEvents[K]): () => void;
  off<K extends keyof CacheEvents>(name: K, fn: CacheEvents[K]): void;
  register(type: string, cls: SynkObjectClass): void;
  /** Maps from the last hello (for `mv` position fields). */
  readonly maps: Readonly<Record<string, MapInfo>>;
  /** One server tick in ms (1000 / hello.rate), 0 before a hello. */
  readonly tickMs: number;
  /** Keys the server says this session holds (from `sub.add` / `sub.rem` / `resync`). */
  readonly held: ReadonlySet<string>;
  readonly size: number;
  /** Objects kept from a previous session and not yet confirmed by the new one. */
  readonly staleCount: number;
  get(id: string): SynkObject | undefined;
  /** The objects held under one key. */
  inKey(key: string): SynkObject[];
  objects(): IterableIterator<SynkObject>;
  /**
   * Applies one server frame: a parsed version 1 frame (hello, tick or resync), or the
   * bytes of a version 2 frame (`Uint8Array` or `ArrayBuffer`). Other kinds are ignored and
   * return false. Throws SynkError("bad_frame") before changing anything if the frame is
   * malformed.
   */
  apply(frame: unknown): boolean;
  /**
   * Applies the bytes of one version 2 frame (after a version 2 hello, itself one of
   * them). A tick or resync is applied and returned as a summary (`n`, `sub`, the applied
   * snapshots; not the batches); a message frame is decoded and returned, and applied
   * only if it is the hello. Throws SynkError("bad_frame") before changing anything if the
   * frame is malformed.
   */
  applyBinary(frame: Uint8Array | ArrayBuffer): ServerMsg;
  applyHello(msg: HelloMsg): void;
  applyTick(msg: TickMsg): void;
  applyResync(msg: ResyncMsg): void;
  /** Starts a new server session: holds no key; every object is stale until a snapshot names it. */
  beginSession(): void;
  /** Tears down every object still stale (reason "session"). */
  settle(): void;
  /** Tears down every object and forgets every key. */
  clear(reason?: RemoveReason): void;
}

// ---------------------------------------------------------------------------
// Client

/** The part of a WebSocket the client uses; the browser's and the `ws` package's fit. */
export interface WebSocketLike {
  readonly readyState: number;
  /** Set to "arraybuffer" by the client, so that binary frames are read at once. */
  binaryType?: string;
  /** The subprotocol the server selected ("" for none). */
  readonly protocol?: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: any) => void) | null;
  onclose: ((ev: any) => void) | null;
  onerror: ((ev: any) => void) | null;
}

export interface WebSocketClass {
  /** `protocols` is given only when the client offers subprotocols (version 2). */
  new (url: string, protocols?: string[]): WebSocketLike;
}

export interface ClientOptions extends CacheOptions {
  /** WebSocket class (default globalThis.WebSocket; pass `ws`'s in Node 20). */
  WebSocket?: WebSocketClass;
  /** Sent as the `token` query parameter. */
  token?: string;
  /**
   * The version to speak (default 2). With 2 the client offers the subprotocols
   * "synkworld.v2", "synkworld.v1" and speaks what the server answers (its first frame:
   * binary is version 2, a JSON hello version 1); with 1 it offers none and speaks JSON.
   */
  protocol?: ProtocolVersion;
  /** Reconnect after a drop (default true). */
  reconnect?: boolean;
  /** First reconnect delay in ms before jitter (default 500); doubles per failed attempt. */
  reconnectBaseMs?: number;
  /** Largest reconnect delay in ms (default 30000). */
  reconnectMaxMs?: number;
  /** Send at most one view per this many ms (default: one per animation frame in a browser, 50 ms elsewhere). */
  viewIntervalMs?: number;
  /** Ping period in ms for `latencyMs` (default 5000; 0 turns periodic pings off). */
  pingIntervalMs?: number;
  /** Default timeout of `call` in ms (default 10000; 0 for none). */
  callTimeoutMs?: number;
  /** After a reconnect, ms to wait for the resent subscription's snapshots before dropping unconfirmed objects (default 3000). */
  settleTimeoutMs?: number;
  /** Random source in [0, 1) for back-off jitter (default Math.random). */
  random?: () => number;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** Delay before the next attempt, or null when the client will not reconnect. */
  reconnectInMs: number | null;
}

export interface ClientEvents extends CacheEvents {
  open: () => void;
  close: (info: CloseInfo) => void;
  hello: (msg: HelloMsg) => void;
  tick: (msg: TickMsg) => void;
  resync: (msg: ResyncMsg) => void;
}

export interface ViewRequest {
  map: string;
  rect: Rect;
  margin: number;
}

export type ClientState = "idle" | "connecting" | "open" | "ready" | "backoff" | "closed";

export interface CallOptions {
  timeoutMs?: number;
}

/** A connection to a synkworld server with its object cache. */
export declare class Client {
  /** `url` is the server's base (http(s):// or ws(s)://; default: the page's origin); `/ws` is appended. */
  constructor(url?: string, options?: ClientOptions);
  /** The socket URL: the base with `/ws` and the token query parameter. */
  readonly url: string;
  readonly cache: ObjectCache;
  readonly state: ClientState;
  /** The last hello of the current session, or null. */
  readonly hello: HelloMsg | null;
  /** The protocol version the current session speaks, or null before its hello. */
  readonly protocol: ProtocolVersion | null;
  /** The last server tick number seen (hello, tick, resync or pong). */
  readonly tick: number;
  /** Smoothed round-trip time from ping/pong, in ms; null before the first pong. */
  readonly latencyMs: number | null;
  /** The current view request (re-sent on every reconnect), or null. */
  readonly view: ViewRequest | null;
  /** Keys requested with `subscribe` (re-sent on every reconnect). */
  readonly keys: ReadonlySet<string>;
  /** Keys the server granted (what the cache holds). */
  readonly held: ReadonlySet<string>;
  on<K extends keyof ClientEvents>(name: K, fn: ClientEvents[K]): () => void;
  off<K extends keyof ClientEvents>(name: K, fn: ClientEvents[K]): void;
  register(type: string, cls: SynkObjectClass): void;
  get(id: string): SynkObject | undefined;
  /** Opens the connection (and keeps it open until `close`). */
  connect(): void;
  /** Closes for good: no reconnect, pending calls rejected with "closed", every object torn down. */
  close(): void;
  /** Sets the grid part of the subscription; sends are coalesced. */
  setView(map: string, rect: Rect, margin?: number): void;
  subscribe(keys: string | Iterable<string>): void;
  unsubscribe(keys: string | Iterable<string>): void;
  /** Calls a server handler; resolves with `reply.ok`, rejects with SynkCallError. */
  call(name: string, args?: Record<string, unknown>, options?: CallOptions): Promise<JsonValue>;
  /** Sends one ping now. */
  ping(): void;
}

// ---------------------------------------------------------------------------
// Helpers

export declare function gridKey(map: string, cx: number, cy: number): string;
/** Splits `"<map>:<cx>:<cy>"`; null for a channel key. The map name may itself contain ':'. */
export declare function parseGridKey(key: string): { map: string; cx: number; cy: number } | null;
/** The key of the cell holding point (x, y) on a map. */
export declare function cellKey(map: string, info: MapInfo, x: number, y: number): string;
