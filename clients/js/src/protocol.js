// imcloud's wire protocol (goim v1): a 16-byte big-endian header, then the
// body. Sans-IO: these functions turn packets into bytes and back, and the
// client (client.js) moves the bytes. docs/protocol.md has the byte examples.

/** Length of every packet header. */
export const HEADER_LEN = 16;
/** Protocol version the server pushes with. */
export const VERSION = 1;

/** The ops of DESIGN section 2. Business messages use ops >= 1000. */
export const Op = Object.freeze({
  HEARTBEAT: 2,
  HEARTBEAT_REPLY: 3,
  SEND_MSG: 4,
  SEND_MSG_REPLY: 5,
  DISCONNECT: 6,
  AUTH: 7,
  AUTH_REPLY: 8,
  BATCH: 9,
  CHANGE_ROOM: 12,
  CHANGE_ROOM_REPLY: 13,
  WATCH: 14,
  WATCH_REPLY: 15,
  UNWATCH: 16,
  UNWATCH_REPLY: 17,
  RESUME: 18,
  RESUMED: 19,
  ACK: 20,
  JOIN_ROOM: 22,
  JOIN_ROOM_REPLY: 23,
  LEAVE_ROOM: 24,
  LEAVE_ROOM_REPLY: 25,
  ROOM_COUNT: 26,
  FIRST_BUSINESS: 1000,
});

/**
 * One packet.
 * @typedef {object} Packet
 * @property {number} ver
 * @property {number} op
 * @property {number} seq
 * @property {Uint8Array} body
 */

/** Bytes that are not a valid packet. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Encodes one packet.
 * @param {number} op
 * @param {number} seq
 * @param {Uint8Array|string} [body] a string is sent as UTF-8
 * @param {number} [ver]
 * @returns {Uint8Array}
 */
export function encode(op, seq, body = new Uint8Array(0), ver = VERSION) {
  const bytes = typeof body === 'string' ? encoder.encode(body) : body;
  const packet = new Uint8Array(HEADER_LEN + bytes.length);
  const view = new DataView(packet.buffer);
  view.setUint32(0, packet.length);
  view.setUint16(4, HEADER_LEN);
  view.setUint16(6, ver);
  view.setUint32(8, op);
  view.setUint32(12, seq >>> 0);
  packet.set(bytes, HEADER_LEN);
  return packet;
}

/**
 * Decodes packets back to back (a TCP stream's worth, or an op-9 body).
 * Every byte must belong to a whole packet.
 * @param {Uint8Array} bytes
 * @returns {Packet[]}
 */
export function decodeAll(bytes) {
  const packets = [];
  let offset = 0;
  while (offset < bytes.length) {
    const packet = decodeOne(bytes.subarray(offset));
    packets.push(packet);
    offset += HEADER_LEN + packet.body.length;
  }
  return packets;
}

/**
 * Decodes one WebSocket frame: one packet, or an op-9 batch whose packets
 * are returned in order.
 * @param {ArrayBuffer|Uint8Array} data
 * @returns {Packet[]}
 */
export function decodeFrame(data) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  const packet = decodeOne(bytes);
  if (HEADER_LEN + packet.body.length !== bytes.length) {
    throw new ProtocolError(
      `frame holds ${bytes.length} bytes but its packet is ${HEADER_LEN + packet.body.length}`,
    );
  }
  return packet.op === Op.BATCH ? decodeAll(packet.body) : [packet];
}

/**
 * @param {Uint8Array} bytes
 * @returns {Packet}
 */
function decodeOne(bytes) {
  if (bytes.length < HEADER_LEN) {
    throw new ProtocolError(`need ${HEADER_LEN} header bytes, have ${bytes.length}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const packetLen = view.getUint32(0);
  const headerLen = view.getUint16(4);
  if (headerLen !== HEADER_LEN) {
    throw new ProtocolError(`header_len must be ${HEADER_LEN}, got ${headerLen}`);
  }
  if (packetLen < HEADER_LEN) {
    throw new ProtocolError(`packet_len ${packetLen} is shorter than the header`);
  }
  if (packetLen > bytes.length) {
    throw new ProtocolError(`packet of ${packetLen} bytes truncated to ${bytes.length}`);
  }
  return {
    ver: view.getUint16(6),
    op: view.getUint32(8),
    seq: view.getUint32(12),
    body: bytes.subarray(HEADER_LEN, packetLen),
  };
}

/**
 * A packet's body as text (UTF-8).
 * @param {Packet} packet
 * @returns {string}
 */
export function text(packet) {
  return decoder.decode(packet.body);
}

/**
 * The body of an op-6 packet: why the server closed the connection.
 * @typedef {object} CloseInfo
 * @property {number} code 3000-3499: reconnect; 3500 and up: do not
 * @property {string} reason
 * @property {boolean} reconnect whether reconnecting can help
 * @property {number} [retryAfterMs] wait at least this long first
 */

/**
 * Parses an op-6 body; an unreadable one still closes the connection, with
 * reconnect allowed (the server's codes decide, not our parser).
 * @param {Packet} packet
 * @returns {CloseInfo}
 */
export function closeInfo(packet) {
  try {
    const body = JSON.parse(text(packet));
    const code = Number(body.code) || 0;
    return {
      code,
      reason: String(body.reason ?? ''),
      reconnect: typeof body.reconnect === 'boolean' ? body.reconnect : code < 3500,
      retryAfterMs: Number.isFinite(body.retry_after_ms) ? body.retry_after_ms : undefined,
    };
  } catch {
    return { code: 0, reason: text(packet), reconnect: true };
  }
}
