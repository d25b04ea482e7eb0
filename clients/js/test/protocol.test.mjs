import assert from 'node:assert/strict';
import { test } from 'node:test';

import { HEADER_LEN, Op, ProtocolError, closeInfo, decodeAll, decodeFrame, encode, text } from '../src/protocol.js';

test('a heartbeat is the 16 bytes of DESIGN section 2', () => {
  assert.deepEqual(
    [...encode(Op.HEARTBEAT, 1)],
    [0, 0, 0, 16, 0, 16, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1],
  );
});

test('an auth packet carries its token as UTF-8 after the header', () => {
  const packet = encode(Op.AUTH, 7, 'héllo');
  assert.equal(packet.length, HEADER_LEN + 6);
  assert.deepEqual([...packet.subarray(0, 4)], [0, 0, 0, 22]);
  const [decoded] = decodeFrame(packet);
  assert.deepEqual({ op: decoded.op, seq: decoded.seq, ver: decoded.ver }, { op: 7, seq: 7, ver: 1 });
  assert.equal(text(decoded), 'héllo');
});

test('an op-9 frame yields its packets in order', () => {
  const inner = [encode(1000, 0, 'a'), encode(1001, 0, 'bc'), encode(Op.HEARTBEAT_REPLY, 3, new Uint8Array([0, 0, 0, 5]))];
  const body = new Uint8Array(inner.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of inner) {
    body.set(p, at);
    at += p.length;
  }
  const frame = encode(Op.BATCH, 0, body);
  const packets = decodeFrame(frame.buffer);
  assert.deepEqual(packets.map((p) => p.op), [1000, 1001, 3]);
  assert.deepEqual(packets.map(text).slice(0, 2), ['a', 'bc']);
  assert.deepEqual(decodeAll(body).map((p) => p.seq), [0, 0, 3]);
});

test('bad frames are refused with a reason', () => {
  assert.throws(() => decodeFrame(new Uint8Array(10)), ProtocolError);
  const badHeaderLen = encode(1000, 0, 'x');
  badHeaderLen[5] = 20;
  assert.throws(() => decodeFrame(badHeaderLen), /header_len must be 16/);
  const short = encode(1000, 0, 'x');
  short[3] = 8;
  assert.throws(() => decodeFrame(short), /shorter than the header/);
  const truncated = encode(1000, 0, 'hello').subarray(0, 18);
  assert.throws(() => decodeFrame(truncated), /truncated/);
  const trailing = new Uint8Array([...encode(1000, 0, 'x'), 1]);
  assert.throws(() => decodeFrame(trailing), /frame holds/);
  const batchOfJunk = encode(Op.BATCH, 0, new Uint8Array([0, 0, 0, 40, 0, 16]));
  assert.throws(() => decodeFrame(batchOfJunk), ProtocolError);
});

test('op-6 bodies say whether to reconnect', () => {
  const [drain] = decodeFrame(encode(6, 0, '{"code":3001,"reason":"draining","reconnect":true,"retry_after_ms":1500}'));
  assert.deepEqual(closeInfo(drain), { code: 3001, reason: 'draining', reconnect: true, retryAfterMs: 1500 });
  const [refused] = decodeFrame(encode(6, 0, '{"code":3500,"reason":"auth failed"}'));
  assert.equal(closeInfo(refused).reconnect, false, 'codes from 3500 mean do not reconnect');
  const [garbage] = decodeFrame(encode(6, 0, 'not json'));
  assert.deepEqual(closeInfo(garbage), { code: 0, reason: 'not json', reconnect: true });
});
