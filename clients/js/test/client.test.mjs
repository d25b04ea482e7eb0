// The client against a scripted in-memory WebSocket, with mocked timers:
// auth, heartbeats, acks, batches, and what each op-6 reason makes it do.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, mock, test } from 'node:test';

import { Client, RequestError, backoffDelay } from '../src/client.js';
import { Op, decodeFrame, encode, text } from '../src/protocol.js';

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(bytes) {
    this.sent.push(...decodeFrame(bytes));
  }
  close() {
    this.drop(1000);
  }
  // --- the server's side ---
  accept() {
    this.readyState = 1;
    this.onopen?.();
  }
  push(bytes) {
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }
  drop(code = 1006) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }
  ops() {
    return this.sent.map((p) => p.op);
  }
}

const identity = { mid: 7, key: 'k1', room_id: 'live://1', heartbeat: 30 };
const flush = () => new Promise((resolve) => setImmediate(resolve));

/** Opens a client and completes its auth on the newest socket. */
async function opened(options = {}) {
  const client = new Client({ url: 'ws://x/sub', token: 'tok', WebSocket: FakeSocket, ...options });
  const connected = client.connect();
  await flush();
  const socket = FakeSocket.all.at(-1);
  socket.accept();
  socket.push(encode(Op.AUTH_REPLY, socket.sent[0].seq, JSON.stringify(identity)));
  assert.deepEqual(await connected, identity);
  return { client, socket };
}

beforeEach(() => {
  FakeSocket.all = [];
  mock.timers.enable({ apis: ['setTimeout', 'setInterval'] });
});
afterEach(() => mock.timers.reset());

test('authenticates with the token, then heartbeats at the interval the server gave', async () => {
  const { client, socket } = await opened();
  assert.equal(socket.sent[0].op, Op.AUTH);
  assert.equal(text(socket.sent[0]), 'tok');
  assert.deepEqual(socket.ops(), [Op.AUTH, Op.RESUME, Op.HEARTBEAT], 'resume with auth, heartbeat after it');
  mock.timers.tick(29_000);
  assert.equal(socket.ops().length, 3);
  mock.timers.tick(1_000);
  assert.deepEqual(socket.ops(), [Op.AUTH, Op.RESUME, Op.HEARTBEAT, Op.HEARTBEAT]);
  const counts = [];
  client.on('online', (n) => counts.push(n));
  socket.push(encode(Op.HEARTBEAT_REPLY, 2, new Uint8Array([0, 0, 1, 0])));
  assert.deepEqual(counts, [256]);
  client.close();
});

test('business packets reach their handlers, batches unpacked in order', async () => {
  const { client, socket } = await opened();
  const seen = [];
  client.on(1000, (body) => seen.push(`1000:${new TextDecoder().decode(body)}`));
  client.on('message', (packet) => seen.push(`any:${packet.op}`));
  const a = encode(1000, 0, 'a');
  const b = encode(1001, 0, 'b');
  const body = new Uint8Array([...a, ...b]);
  socket.push(encode(Op.BATCH, 0, body));
  assert.deepEqual(seen, ['any:1000', '1000:a', 'any:1001']);
  client.close();
});

test('send resolves on its ack and rejects with the error logic gave', async () => {
  const { client, socket } = await opened();
  const ok = client.send('hello');
  const sent = socket.sent.at(-1);
  assert.equal(sent.op, Op.SEND_MSG);
  socket.push(encode(Op.SEND_MSG_REPLY, sent.seq));
  await ok;

  const refused = client.send('again');
  const second = socket.sent.at(-1);
  socket.push(encode(Op.SEND_MSG_REPLY, second.seq, '{"code":14,"error":"webhook down"}'));
  await assert.rejects(refused, (err) => err instanceof RequestError && err.code === 14 && /webhook down/.test(err.message));

  const lost = client.send('into the void');
  socket.drop();
  await assert.rejects(lost, /connection closed/);
  client.close();
});

test('a request with no reply times out', async () => {
  const { client } = await opened({ requestTimeoutMs: 500 });
  const watching = client.watch([1001]);
  mock.timers.tick(500);
  await assert.rejects(watching, /no reply to op 14 within 500 ms/);
  client.close();
});

test('after a retryable close it waits at least retry_after_ms, re-auths and restores its room and watches', async () => {
  let tokens = 0;
  const { client, socket } = await opened({ token: () => `tok${++tokens}`, backoff: { initialMs: 100, jitter: 0 } });
  const room = client.changeRoom('live://2');
  socket.push(encode(Op.CHANGE_ROOM_REPLY, socket.sent.at(-1).seq, 'live://2'));
  await room;
  const watch = client.watch([1001, 1002]);
  socket.push(encode(Op.WATCH_REPLY, socket.sent.at(-1).seq, '1001,1002'));
  await watch;

  const closes = [];
  client.on('close', (info) => closes.push(info));
  socket.push(encode(Op.DISCONNECT, 0, '{"code":3001,"reason":"draining","reconnect":true,"retry_after_ms":2000}'));
  socket.drop();
  assert.deepEqual(closes, [{ code: 3001, reason: 'draining', reconnect: true, retryAfterMs: 2000 }]);
  assert.equal(client.state, 'reconnecting');
  mock.timers.tick(1_999);
  await flush();
  assert.equal(FakeSocket.all.length, 1, 'not before retry_after_ms');
  mock.timers.tick(1);
  await flush();
  assert.equal(FakeSocket.all.length, 2);
  const again = FakeSocket.all[1];
  again.accept();
  assert.equal(text(again.sent[0]), 'tok2', 'the token function is asked again');
  again.push(encode(Op.AUTH_REPLY, again.sent[0].seq, JSON.stringify(identity)));
  assert.equal(client.state, 'open');
  const restored = again.sent.filter((p) => p.op === Op.CHANGE_ROOM || p.op === Op.WATCH).map((p) => [p.op, text(p)]);
  assert.deepEqual(restored, [[Op.CHANGE_ROOM, 'live://2'], [Op.WATCH, '1001,1002']]);
  client.close();
});

test('lost connections back off exponentially', async () => {
  const { client, socket } = await opened({ backoff: { initialMs: 100, factor: 2, maxMs: 1000, jitter: 0 } });
  socket.drop();
  const waits = [];
  for (let attempt = 0; attempt < 5; attempt += 1) {
    const before = FakeSocket.all.length;
    let waited = 0;
    while (FakeSocket.all.length === before) {
      mock.timers.tick(50);
      waited += 50;
      await flush();
    }
    waits.push(waited);
    FakeSocket.all.at(-1).drop();
  }
  assert.deepEqual(waits, [100, 200, 400, 800, 1000]);
  client.close();
});

test('a refused token closes for good: connect rejects and nothing reconnects', async () => {
  const client = new Client({ url: 'ws://x/sub', token: 'bad', WebSocket: FakeSocket });
  const connected = client.connect();
  await flush();
  const socket = FakeSocket.all[0];
  socket.accept();
  socket.push(encode(Op.DISCONNECT, 0, '{"code":3500,"reason":"auth failed: bad signature","reconnect":false}'));
  socket.drop();
  await assert.rejects(connected, /auth failed: bad signature/);
  assert.equal(client.state, 'closed');
  mock.timers.tick(600_000);
  await flush();
  assert.equal(FakeSocket.all.length, 1);
});

test('a silent server is dropped after two heartbeats', async () => {
  const { client, socket } = await opened({ backoff: { initialMs: 100, jitter: 0 } });
  mock.timers.tick(65_000);
  assert.equal(socket.readyState, 3, 'closed after 2 x 30 s + 5 s of silence');
  assert.equal(client.state, 'reconnecting');
  client.close();
});

test('backoff stays within its cap and jitter', () => {
  assert.equal(backoffDelay(0, { jitter: 0 }), 500);
  assert.equal(backoffDelay(20, { jitter: 0 }), 30000);
  assert.equal(backoffDelay(3, { initialMs: 100, jitter: 0.5 }, () => 1), 400);
  for (let i = 0; i < 100; i += 1) {
    const delay = backoffDelay(4);
    assert.ok(delay >= 4000 && delay <= 8000, `${delay}`);
  }
});

/** The user messages (op 1000) a client hands over, as `seq:body`. */
function handed(client) {
  const seen = [];
  client.on(1000, (body, packet) => seen.push(`${packet.seq}:${new TextDecoder().decode(body)}`));
  return seen;
}

const json = (packet) => JSON.parse(text(packet));

test('resumes from lastSeq with auth, hands the replay once and in order, then acks it', async () => {
  const { client, socket } = await opened({ lastSeq: 3 });
  const seen = handed(client);
  const resume = socket.sent.find((p) => p.op === Op.RESUME);
  assert.deepEqual(json(resume), { since: 3 });
  // The replay, a live push racing it, and op 19: judged once op 19 says how.
  for (const seq of [4, 6, 5, 5]) socket.push(encode(1000, seq, `m${seq}`));
  assert.deepEqual(seen, [], 'held until the resume is answered');
  socket.push(encode(Op.RESUMED, 0, JSON.stringify({ last: 6 })));
  assert.deepEqual(seen, ['4:m4', '5:m5', '6:m6']);
  assert.equal(client.lastSeq, 6);
  assert.ok(!socket.ops().includes(Op.ACK), 'acks wait a moment to cover more');
  mock.timers.tick(200);
  const acks = socket.sent.filter((p) => p.op === Op.ACK).map(json);
  assert.deepEqual(acks, [{ ack: 6 }], 'one cumulative ack');
  client.close();
});

test('an early message waits for the missing one, then resumes from the gap', async () => {
  const { client, socket } = await opened({ lastSeq: 0 });
  socket.push(encode(Op.RESUMED, 0, JSON.stringify({ last: 0 })));
  const seen = handed(client);
  socket.push(encode(1000, 2, 'two'));
  assert.deepEqual(seen, []);
  socket.push(encode(1000, 1, 'one'));
  assert.deepEqual(seen, ['1:one', '2:two'], 'the missing one came: both, in order');
  socket.push(encode(1000, 4, 'four'));
  mock.timers.tick(500);
  const resumes = socket.sent.filter((p) => p.op === Op.RESUME).map(json);
  assert.deepEqual(resumes.at(-1), { since: 2 }, 'it did not: resume from the gap');
  socket.push(encode(1000, 3, 'three'));
  socket.push(encode(1000, 4, 'four'));
  socket.push(encode(Op.RESUMED, 0, JSON.stringify({ last: 4 })));
  assert.deepEqual(seen, ['1:one', '2:two', '3:three', '4:four']);
  client.close();
});

test('a reset says which messages are gone and goes on from the oldest kept', async () => {
  const { client, socket } = await opened({ lastSeq: 2 });
  const seen = handed(client);
  const resets = [];
  client.on('reset', (info) => resets.push(info));
  for (const seq of [8, 9]) socket.push(encode(1000, seq, `m${seq}`));
  socket.push(encode(Op.RESUMED, 0, JSON.stringify({ last: 9, reset: true, oldest: 8 })));
  assert.deepEqual(resets, [{ oldest: 8 }]);
  assert.deepEqual(seen, ['8:m8', '9:m9']);
  client.close();
});

test('after a reconnect it resumes from the last message handed, and acks there', async () => {
  const { client, socket } = await opened();
  const seen = handed(client);
  socket.push(encode(Op.RESUMED, 0, JSON.stringify({ last: 0 })));
  socket.push(encode(1000, 1, 'one'));
  socket.drop();
  mock.timers.tick(30_000);
  await flush();
  const again = FakeSocket.all.at(-1);
  assert.notEqual(again, socket);
  again.accept();
  again.push(encode(Op.AUTH_REPLY, again.sent[0].seq, JSON.stringify(identity)));
  assert.deepEqual(json(again.sent.find((p) => p.op === Op.RESUME)), { since: 1 });
  again.push(encode(1000, 2, 'two'));
  again.push(encode(Op.RESUMED, 0, JSON.stringify({ last: 2 })));
  assert.deepEqual(seen, ['1:one', '2:two']);
  mock.timers.tick(200);
  assert.deepEqual(again.sent.filter((p) => p.op === Op.ACK).map(json).at(-1), { ack: 2 });
  client.close();
});
