// The imcloud client: one WebSocket to a cloud node's /sub, authenticated
// with a token, kept alive with heartbeats and brought back after failures
// with capped exponential backoff and jitter, unless the server said that
// reconnecting cannot help (op 6 with reconnect: false, as after a refused
// token).
//
// Messages to the user (pushes with seq > 0) are handed to the app once and
// in order across reconnects: the client remembers the last one handed,
// resumes from it on every connection (op 18, sent with op 7), acknowledges
// what the app's handlers returned from (op 20, cumulative, debounced), and
// resumes from a gap that does not fill by itself.

import { Op, closeInfo, decodeFrame, encode, text } from './protocol.js';
import { Sequencer } from './sequence.js';

/**
 * What the server says about this connection once authenticated (op 8).
 * @typedef {object} Identity
 * @property {number} mid
 * @property {string} key
 * @property {string} room_id the first of `rooms` (goim's field)
 * @property {string[]} [rooms] every room joined at auth
 * @property {number} heartbeat seconds between heartbeats
 */

/**
 * @typedef {object} Backoff
 * @property {number} [initialMs] first delay (default 500)
 * @property {number} [maxMs] cap (default 30000)
 * @property {number} [factor] growth per failed attempt (default 2)
 * @property {number} [jitter] fraction of the delay taken off at random, 0-1 (default 0.5)
 */

/**
 * @typedef {object} ClientOptions
 * @property {string} url the cloud node's WebSocket address, e.g. ws://127.0.0.1:3102/sub
 * @property {string | (() => string | Promise<string>)} token sent in op 7;
 *   a function is asked again before every reconnect (tokens expire)
 * @property {boolean} [reconnect] reconnect after failures (default true)
 * @property {Backoff} [backoff]
 * @property {number} [requestTimeoutMs] how long a request waits for its reply (default 10000)
 * @property {typeof WebSocket} [WebSocket] a WebSocket implementation (default: the global one)
 * @property {number} [lastSeq] the last user message already handled (e.g. kept in
 *   localStorage across page loads; default 0: everything the server keeps is replayed)
 * @property {boolean} [resume] resume and acknowledge user messages (default true)
 * @property {number} [gapWaitMs] how long an early message waits for a missing one (default 500)
 * @property {number} [ackDelayMs] how long a handled message waits for its cumulative ack (default 200)
 */

/** A request that could not complete: closed connection, timeout or refusal. */
export class RequestError extends Error {
  /**
   * @param {string} message
   * @param {number} [code] the gRPC status code logic gave, for a refused op 4
   */
  constructor(message, code) {
    super(message);
    this.name = 'RequestError';
    this.code = code;
  }
}

/**
 * The delay before reconnect attempt `attempt` (0-based).
 * @param {number} attempt
 * @param {Backoff} [backoff]
 * @param {() => number} [random]
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, backoff = {}, random = Math.random) {
  const { initialMs = 500, maxMs = 30000, factor = 2, jitter = 0.5 } = backoff;
  const full = Math.min(maxMs, initialMs * factor ** attempt);
  return Math.round(full * (1 - jitter * random()));
}

/**
 * The answer to a room request (op 23 / 25, or a refused op 12).
 * @returns {{room?: string, ok?: boolean, error?: string}}
 */
function roomAnswer(reply) {
  try {
    return JSON.parse(text(reply));
  } catch {
    return { error: `unexpected answer: ${text(reply)}` };
  }
}

const REPLY = {
  [Op.SEND_MSG]: Op.SEND_MSG_REPLY,
  [Op.CHANGE_ROOM]: Op.CHANGE_ROOM_REPLY,
  [Op.WATCH]: Op.WATCH_REPLY,
  [Op.UNWATCH]: Op.UNWATCH_REPLY,
  [Op.JOIN_ROOM]: Op.JOIN_ROOM_REPLY,
  [Op.LEAVE_ROOM]: Op.LEAVE_ROOM_REPLY,
};

/**
 * Events:
 * - a number (an op >= 1000, or any op): `(body: Uint8Array, packet) => void` for each packet of that op
 * - `'message'`: `(packet) => void` for every business packet (op >= 1000); user
 *   messages (seq > 0) once each, in order; acknowledged once the handlers return
 * - `'reset'`: `({oldest}) => void` messages after `lastSeq` and before `oldest`
 *   are no longer kept by the server (fetch them from your backend if they matter)
 * - `'open'`: `(identity) => void` after each successful auth
 * - `'online'`: `(count) => void` the room's online count from each heartbeat reply
 * - `'count'`: `({room, online}) => void` a room's online count, for rooms joined with
 *   `{count: true}`: at the join, then as it changes (at most once a second)
 * - `'close'`: `({code, reason, reconnect, retryAfterMs}) => void` when a connection ends
 * - `'room-refused'`: `({room, error}) => void` when a room joined with `join()` could
 *   not be joined again after a reconnect (it is then forgotten)
 * - `'state'`: `(state) => void` on every state change
 * - `'error'`: `(error) => void` for a frame that does not parse (the connection is then closed)
 */
export class Client {
  /** @param {ClientOptions} options */
  constructor(options) {
    if (!options?.url) throw new TypeError('imcloud Client: url is required');
    if (options.token === undefined) throw new TypeError('imcloud Client: token is required');
    this.options = {
      reconnect: true,
      requestTimeoutMs: 10000,
      resume: true,
      gapWaitMs: 500,
      ackDelayMs: 200,
      ...options,
      backoff: { ...options.backoff },
    };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) {
      throw new TypeError('imcloud Client: no WebSocket; pass one (Node 20 needs --experimental-websocket)');
    }
    /** @type {'idle'|'connecting'|'open'|'reconnecting'|'closed'} */
    this.state = 'idle';
    /** @type {Identity | undefined} */
    this.identity = undefined;
    this.handlers = new Map();
    this.pending = new Map();
    this.seq = 0;
    this.attempt = 0;
    this.socket = undefined;
    this.timers = { heartbeat: undefined, silence: undefined, retry: undefined, ack: undefined, gap: undefined };
    this.sequencer = new Sequencer(options.lastSeq ?? 0, this.options.gapWaitMs);
    /** The last user message the app's handlers returned from (acknowledged soon). */
    this.handled = this.sequencer.last;
    this.acked = this.handled;
    /**
     * What to restore after a reconnect: the room changed to, the rooms joined (each with
     * whether its count was asked for), the ops watched.
     */
    this.wanted = { room: undefined, rooms: new Map(), watched: new Set() };
  }

  /**
   * Subscribes to an event; returns the function that unsubscribes.
   * @param {number|string} event
   * @param {Function} handler
   * @returns {() => void}
   */
  on(event, handler) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(handler);
    return () => this.handlers.get(event)?.delete(handler);
  }

  /**
   * Connects and authenticates. Resolves with the identity of the first
   * successful auth; rejects if the client is closed for good before that
   * (a refused token, or `close()`).
   * @returns {Promise<Identity>}
   */
  connect() {
    if (this.state === 'idle' || this.state === 'closed') {
      this.stopped = false;
      this.open();
    }
    if (this.state === 'open' && this.identity) return Promise.resolve(this.identity);
    return new Promise((resolve, reject) => {
      const offOpen = this.on('open', (identity) => {
        offOpen();
        offState();
        resolve(identity);
      });
      const offState = this.on('state', (state) => {
        if (state !== 'closed') return;
        offOpen();
        offState();
        reject(new RequestError(this.lastClose?.reason || 'connection closed'));
      });
    });
  }

  /** Closes the connection for good; nothing reconnects. */
  close() {
    this.stopped = true;
    clearTimeout(this.timers.retry);
    clearTimeout(this.timers.ack);
    clearTimeout(this.timers.gap);
    this.ack();
    clearTimeout(this.timers.ack);
    this.socket?.close(1000);
    this.teardown({ code: 1000, reason: 'closed by the client', reconnect: false });
    this.setState('closed');
  }

  /**
   * Moves to another room (`type://id`), or leaves rooms with `''`.
   * Restored after a reconnect.
   * @param {string} room
   */
  async changeRoom(room) {
    this.wanted.room = room;
    this.wanted.rooms.clear();
    const reply = await this.request(Op.CHANGE_ROOM, room);
    if (text(reply) !== room) throw new RequestError(roomAnswer(reply).error ?? 'refused');
  }

  /**
   * Joins a room (`type://id`) beside the ones this connection is in (op 22);
   * resolves once pushes to it reach this client, rejects with the server's
   * reason (`max_rooms`, the token's `allow_rooms`, the join webhook). Joined
   * again after every reconnect, until `leave`. With `{count: true}`, the
   * room's online count comes as `'count'` events.
   * @param {string} room
   * @param {{count?: boolean}} [options]
   */
  async join(room, { count = false } = {}) {
    const answer = roomAnswer(await this.request(Op.JOIN_ROOM, JSON.stringify({ room, count })));
    if (answer.error) throw new RequestError(answer.error);
    this.wanted.rooms.set(room, count);
  }

  /** Leaves a room (op 24), here and after reconnects. @param {string} room */
  async leave(room) {
    this.wanted.rooms.delete(room);
    const answer = roomAnswer(await this.request(Op.LEAVE_ROOM, JSON.stringify({ room })));
    if (answer.error) throw new RequestError(answer.error);
  }

  /**
   * Receives broadcasts of these ops too. Restored after a reconnect.
   * @param {number[]} ops
   */
  async watch(ops) {
    for (const op of ops) this.wanted.watched.add(op);
    await this.request(Op.WATCH, ops.join(','));
  }

  /** @param {number[]} ops */
  async unwatch(ops) {
    for (const op of ops) this.wanted.watched.delete(op);
    await this.request(Op.UNWATCH, ops.join(','));
  }

  /**
   * Sends a message to the backend (op 4). Resolves when logic has it (the
   * op-5 ack); rejects with logic's error when it refused it.
   * @param {Uint8Array|string} body
   */
  async send(body) {
    const ack = await this.request(Op.SEND_MSG, body);
    if (ack.body.length > 0) {
      let error;
      try {
        error = JSON.parse(text(ack));
      } catch {
        error = { error: text(ack) };
      }
      throw new RequestError(error.error ?? 'refused', error.code);
    }
  }

  /** The last user message handed to the app: keep it to pass as `lastSeq` next time. */
  get lastSeq() {
    return this.sequencer.last;
  }

  // --- the connection's life ---

  async open() {
    this.setState(this.attempt === 0 ? 'connecting' : 'reconnecting');
    let token;
    try {
      const { token: source } = this.options;
      token = typeof source === 'function' ? await source() : source;
    } catch (error) {
      this.emit('error', error);
      this.retry({ code: 0, reason: `token: ${error.message}`, reconnect: true });
      return;
    }
    if (this.stopped) return;
    const socket = new this.WebSocket(this.options.url);
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    /** @type {import('./protocol.js').CloseInfo | undefined} */
    let told;
    socket.onopen = () => {
      socket.send(encode(Op.AUTH, this.nextSeq(), token));
      // Right behind op 7: the node holds live user pushes until it is read.
      if (this.options.resume) this.resume();
    };
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      let packets;
      try {
        packets = decodeFrame(event.data);
      } catch (error) {
        this.emit('error', error);
        socket.close(1002);
        return;
      }
      for (const packet of packets) {
        if (packet.op === Op.DISCONNECT) told = closeInfo(packet);
        else this.dispatch(packet);
      }
    };
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this.retry(told ?? { code: event.code, reason: event.reason || 'connection lost', reconnect: true });
    };
    // An error is always followed by close, which decides what happens next.
    socket.onerror = () => {};
  }

  /** @param {import('./protocol.js').Packet} packet */
  dispatch(packet) {
    this.touch();
    switch (packet.op) {
      case Op.AUTH_REPLY:
        this.authenticated(JSON.parse(text(packet)));
        return;
      case Op.RESUMED:
        this.sequencer.resumed(JSON.parse(text(packet)), Date.now());
        this.deliver();
        return;
      case Op.ROOM_COUNT:
        this.emit('count', JSON.parse(text(packet)));
        return;
      case Op.HEARTBEAT_REPLY:
        if (packet.body.length >= 4) {
          const view = new DataView(packet.body.buffer, packet.body.byteOffset, 4);
          this.emit('online', view.getUint32(0));
        }
        return;
      default:
        break;
    }
    const waiting = this.pending.get(packet.seq);
    if (waiting && waiting.reply === packet.op) {
      this.pending.delete(packet.seq);
      clearTimeout(waiting.timer);
      waiting.resolve(packet);
      return;
    }
    if (packet.op >= Op.FIRST_BUSINESS && this.options.resume) {
      this.sequencer.push(packet, Date.now());
      this.deliver();
      return;
    }
    if (packet.op >= Op.FIRST_BUSINESS) this.emit('message', packet);
    this.emit(packet.op, packet.body, packet);
  }

  /** Hands the app what is in order; acks what its handlers returned from. */
  deliver() {
    for (let event = this.sequencer.pop(); event; event = this.sequencer.pop()) {
      if (event.type === 'reset') {
        this.emit('reset', { oldest: event.oldest });
        continue;
      }
      const { packet } = event;
      this.emit('message', packet);
      this.emit(packet.op, packet.body, packet);
      if (packet.seq > this.handled) {
        this.handled = packet.seq;
        this.timers.ack ??= setTimeout(() => this.ack(), this.options.ackDelayMs);
      }
    }
    clearTimeout(this.timers.gap);
    const due = this.sequencer.resumeDue();
    if (due !== undefined) {
      this.timers.gap = setTimeout(() => this.resume(), Math.max(0, due - Date.now()));
    }
  }

  /** Asks for the user messages after the last one handed (op 18). */
  resume() {
    this.write(encode(Op.RESUME, 0, JSON.stringify({ since: this.sequencer.last })));
    this.sequencer.resuming();
  }

  /** Acknowledges, cumulatively, what the app handled (op 20). */
  ack() {
    this.timers.ack = undefined;
    if (this.handled <= this.acked) return;
    if (this.socket?.readyState !== 1) {
      // Sent on the next connection, right after its resume.
      if (!this.stopped) this.timers.ack = setTimeout(() => this.ack(), this.options.ackDelayMs);
      return;
    }
    this.write(encode(Op.ACK, 0, JSON.stringify({ ack: this.handled })));
    this.acked = this.handled;
  }

  /** @param {Identity} identity */
  authenticated(identity) {
    this.identity = identity;
    this.attempt = 0;
    this.setState('open');
    const interval = Math.max(1, identity.heartbeat || 30) * 1000;
    this.heartbeat();
    this.timers.heartbeat = setInterval(() => this.heartbeat(), interval);
    this.silenceLimit = interval * 2 + 5000;
    this.touch();
    this.restore();
    this.emit('open', identity);
  }

  /** Puts back the rooms and watched ops the application asked for. */
  restore() {
    const { room, rooms, watched } = this.wanted;
    if (room !== undefined && room !== this.identity?.room_id) {
      this.request(Op.CHANGE_ROOM, room).catch(() => {});
    }
    const atAuth = new Set(this.identity?.rooms ?? []);
    for (const [joined, count] of rooms) {
      if (atAuth.has(joined) && !count) continue;
      this.request(Op.JOIN_ROOM, JSON.stringify({ room: joined, count }))
        .then((reply) => {
          const { error } = roomAnswer(reply);
          if (error && this.wanted.rooms.delete(joined)) this.emit('room-refused', { room: joined, error });
        })
        .catch(() => {});
    }
    if (watched.size > 0) this.request(Op.WATCH, [...watched].join(',')).catch(() => {});
  }

  heartbeat() {
    this.write(encode(Op.HEARTBEAT, this.nextSeq()));
  }

  /** A server that says nothing for two heartbeats is gone, even if TCP has not noticed. */
  touch() {
    clearTimeout(this.timers.silence);
    if (this.silenceLimit && !this.stopped) {
      this.timers.silence = setTimeout(() => this.socket?.close(4000, 'server silent'), this.silenceLimit);
    }
  }

  /** @param {import('./protocol.js').CloseInfo} info */
  retry(info) {
    this.teardown(info);
    this.emit('close', info);
    if (this.stopped || !this.options.reconnect || !info.reconnect) {
      this.stopped = true;
      this.setState('closed');
      return;
    }
    const delay = Math.max(backoffDelay(this.attempt, this.options.backoff), info.retryAfterMs ?? 0);
    this.attempt += 1;
    this.setState('reconnecting');
    this.timers.retry = setTimeout(() => this.open(), delay);
  }

  /** @param {import('./protocol.js').CloseInfo} info */
  teardown(info) {
    this.lastClose = info;
    clearInterval(this.timers.heartbeat);
    clearTimeout(this.timers.silence);
    this.silenceLimit = undefined;
    this.identity = undefined;
    this.socket = undefined;
    for (const waiting of this.pending.values()) {
      clearTimeout(waiting.timer);
      waiting.reject(new RequestError(`connection closed: ${info.reason}`));
    }
    this.pending.clear();
  }

  // --- plumbing ---

  /**
   * @param {number} op
   * @param {Uint8Array|string} body
   * @returns {Promise<import('./protocol.js').Packet>}
   */
  request(op, body) {
    if (this.state !== 'open') {
      return Promise.reject(new RequestError(`not connected (${this.state})`));
    }
    const seq = this.nextSeq();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new RequestError(`no reply to op ${op} within ${this.options.requestTimeoutMs} ms`));
      }, this.options.requestTimeoutMs);
      this.pending.set(seq, { reply: REPLY[op], resolve, reject, timer });
      this.write(encode(op, seq, body));
    });
  }

  /** @param {Uint8Array} bytes */
  write(bytes) {
    if (this.socket?.readyState === 1) this.socket.send(bytes);
  }

  nextSeq() {
    this.seq = (this.seq + 1) >>> 0;
    return this.seq;
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('state', state);
  }

  emit(event, ...args) {
    for (const handler of this.handlers.get(event) ?? []) {
      try {
        handler(...args);
      } catch (error) {
        if (event !== 'error') this.emit('error', error);
      }
    }
  }
}
