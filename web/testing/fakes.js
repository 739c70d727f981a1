// @ts-check
// Test doubles for the client's unit tests. Kept outside test/ because Node's
// test runner runs every .js file under a test/ folder as a test file.

/**
 * Returns a fresh in-process WebSocket class and the list of the sockets it
 * made. The test plays the server: `open()`, `push(msg)`, `drop(code)`.
 */
export function fakeWebSocket() {
  /** @type {FakeSocket[]} */
  const sockets = [];

  class FakeSocket {
    /** @param {string} url @param {string[]} [protocols] */
    constructor(url, protocols) {
      this.url = url;
      /** The subprotocols offered, if any. */
      this.protocols = protocols;
      /** The browser's default; the client sets "arraybuffer". */
      this.binaryType = "blob";
      this.readyState = 0;
      /** Parsed frames the client sent. @type {any[]} */
      this.sent = [];
      /** @type {{code: number, reason: string} | null} */
      this.closedWith = null;
      /** @type {((ev: any) => void) | null} */
      this.onopen = null;
      /** @type {((ev: any) => void) | null} */
      this.onmessage = null;
      /** @type {((ev: any) => void) | null} */
      this.onclose = null;
      /** @type {((ev: any) => void) | null} */
      this.onerror = null;
      sockets.push(this);
    }

    /** @param {string} text */
    send(text) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }

    /** @param {number} [code] @param {string} [reason] */
    close(code = 1000, reason = "") {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.closedWith = { code, reason };
      this.onclose?.({ code, reason });
    }

    // --- the server's side ---

    open() {
      this.readyState = 1;
      this.onopen?.({});
    }

    /** @param {unknown} msg an object (sent as JSON) or a raw string */
    push(msg) {
      this.onmessage?.({ data: typeof msg === "string" ? msg : JSON.stringify(msg) });
    }

    /** @param {unknown} data sent as is (e.g. a binary frame) */
    pushRaw(data) {
      this.onmessage?.({ data });
    }

    /** @param {number} [code] @param {string} [reason] */
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({ code, reason });
    }

    /** Frames sent of one kind. @param {string} m */
    sentOf(m) {
      return this.sent.filter((f) => f.m === m);
    }
  }

  return { FakeSocket, sockets };
}

/**
 * Records what a cache or client emits, and what the hooks of objects of the
 * registered `Tracked` class see, as short tuples easy to compare.
 * @param {{on: Function}} emitter
 */
export function recordEvents(emitter) {
  /** @type {any[][]} */
  const log = [];
  emitter.on("add", (/** @type {any} */ obj) => log.push(["add", obj.id, obj.key]));
  emitter.on("mod", (/** @type {any} */ obj) => log.push(["mod", obj.id, obj.key, obj.version]));
  emitter.on("rem", (/** @type {any} */ obj, /** @type {any} */ _msg, /** @type {string} */ reason) =>
    log.push(["rem", obj.id, reason]),
  );
  /** @type {any[]} */
  const errors = [];
  emitter.on("error", (/** @type {any} */ err) => errors.push(err));
  return { log, errors };
}
