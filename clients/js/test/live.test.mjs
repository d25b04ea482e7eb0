// The SDK against a real imcloud: crates/imcloud/tests/javascript.rs starts
// a standalone node and runs these with IMCLOUD_WS and IMCLOUD_API set.
// Run by hand against `imcloud standalone`:
//   IMCLOUD_WS=ws://127.0.0.1:3102/sub IMCLOUD_API=http://127.0.0.1:3111 npm test
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Client, Op, text } from '../src/index.js';

const ws = process.env.IMCLOUD_WS;
const api = process.env.IMCLOUD_API;
const skip = !ws || !api ? 'set IMCLOUD_WS and IMCLOUD_API to run against a live node' : false;

async function call(path, body) {
  const response = await fetch(`${api}${path}`, {
    method: body ? 'POST' : 'GET',
    headers: { 'content-type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  const reply = await response.json();
  assert.equal(response.status, 200, JSON.stringify(reply));
  return reply.data;
}

async function token(mid, room = 'live://sdk') {
  return (await call(`/im/dev/token?mid=${mid}&room=${encodeURIComponent(room)}&accepts=1000`)).token;
}

/** Resolves with the next `count` packets of `op`. */
function next(client, op, count = 1) {
  return new Promise((resolve) => {
    const got = [];
    const off = client.on(op, (_body, packet) => {
      got.push(packet);
      if (got.length === count) {
        off();
        resolve(got);
      }
    });
  });
}

test('auth, a push by mid, then a burst that arrives whole and in order', { skip }, async () => {
  const client = new Client({ url: ws, token: () => token(9001) });
  const me = await client.connect();
  assert.equal(me.mid, 9001);
  assert.equal(me.room_id, 'live://sdk');

  const one = next(client, 1000);
  await call('/im/push/mids', { mids: [9001], operation: 1000, msg: 'hello' });
  assert.equal(text((await one)[0]), 'hello');

  const burst = next(client, 1001, 50);
  await Promise.all(
    Array.from({ length: 50 }, (_, i) => call('/im/push/mids', { mids: [9001], operation: 1001, msg: `m${i}` })),
  );
  const texts = (await burst).map(text);
  assert.equal(texts.length, 50);
  assert.deepEqual([...texts].sort(), Array.from({ length: 50 }, (_, i) => `m${i}`).sort());
  client.close();
});

test('change room, watch, and an acked message to the backend', { skip }, async () => {
  const client = new Client({ url: ws, token: () => token(9002) });
  await client.connect();
  await client.changeRoom('live://elsewhere');
  const inRoom = next(client, 1000);
  await call('/im/push/room', { type: 'live', room: 'elsewhere', operation: 1000, msg: 'room news' });
  assert.equal(text((await inRoom)[0]), 'room news');

  await client.watch([1002]);
  const broadcast = next(client, 1002);
  await call('/im/push/all', { operation: 1002, msg: 'to everyone watching 1002' });
  assert.equal(text((await broadcast)[0]), 'to everyone watching 1002');

  await client.send('hello backend');
  client.close();
});

test('a token the server refuses closes for good', { skip }, async () => {
  const states = [];
  const client = new Client({ url: ws, token: 'not-a-token' });
  client.on('state', (state) => states.push(state));
  const closes = [];
  client.on('close', (info) => closes.push(info));
  await assert.rejects(client.connect(), /auth/);
  assert.equal(closes.length, 1);
  assert.equal(closes[0].code, 3500);
  assert.equal(closes[0].reconnect, false);
  assert.deepEqual(states, ['connecting', 'closed'], 'no reconnect attempt');
});

test('the heartbeat reply carries the room count', { skip }, async () => {
  const client = new Client({ url: ws, token: () => token(9003, 'live://counted') });
  const online = new Promise((resolve) => client.on('online', resolve));
  await client.connect();
  const count = await online;
  assert.ok(count >= 1, `online ${count}`);
  assert.equal(Op.HEARTBEAT_REPLY, 3);
  client.close();
});

test('a message pushed while the page was away arrives once it is back, once', { skip }, async () => {
  const before = new Client({ url: ws, token: () => token(9004) });
  const first = next(before, 1000);
  await before.connect();
  await call('/im/push/mids', { mids: [9004], operation: 1000, msg: 'before' });
  assert.equal(text((await first)[0]), 'before');
  const lastSeq = before.lastSeq;
  before.close();

  const data = await call('/im/push/mids', { mids: [9004], operation: 1000, msg: 'while away' });
  assert.equal(data.stored, 1);

  // The page comes back with the lastSeq it kept (localStorage, say).
  const after = new Client({ url: ws, token: () => token(9004), lastSeq });
  const seen = [];
  after.on(1000, (_body, packet) => seen.push(`${packet.seq}:${text(packet)}`));
  const missed = next(after, 1000);
  await after.connect();
  await missed;
  const live = next(after, 1000);
  await call('/im/push/mids', { mids: [9004], operation: 1000, msg: 'live' });
  await live;
  assert.deepEqual(seen, [`${lastSeq + 1}:while away`, `${lastSeq + 2}:live`]);
  after.close();
});

test('several rooms at once: join, leave, a refusal, and every room back after a reconnect', { skip }, async () => {
  const client = new Client({ url: ws, token: () => token(9005, 'dm://9005'), backoff: { initialMs: 10 } });
  const me = await client.connect();
  assert.deepEqual(me.rooms, ['dm://9005']);
  await client.join('group://sdk-a');
  await client.join('group://sdk-b');
  await client.join('group://sdk-b'); // joined already: ok
  for (const [type, room] of [['dm', '9005'], ['group', 'sdk-a'], ['group', 'sdk-b']]) {
    const got = next(client, 1000);
    await call('/im/push/room', { type, room, operation: 1000, msg: `to ${room}` });
    assert.equal(text((await got)[0]), `to ${room}`);
  }
  await assert.rejects(client.join('Group://x'), /room type/);
  const counted = new Promise((resolve) => client.on('count', resolve));
  await client.join('group://sdk-counted', { count: true });
  assert.deepEqual(await counted, { room: 'group://sdk-counted', online: 1 });

  await client.leave('group://sdk-a');
  const after = next(client, 1000);
  await call('/im/push/room', { type: 'group', room: 'sdk-a', operation: 1000, msg: 'left' });
  await call('/im/push/room', { type: 'group', room: 'sdk-b', operation: 1000, msg: 'still in' });
  assert.equal(text((await after)[0]), 'still in', 'nothing from the room left');

  // The connection drops; the client reconnects and joins group://sdk-b again.
  const reopened = new Promise((resolve) => client.on('open', resolve));
  client.socket.close(4000, 'test: drop');
  await reopened;
  // The server answers in order: once this join is answered, the rejoin was too.
  await client.join('group://sdk-c');
  const back = next(client, 1000);
  await call('/im/push/room', { type: 'group', room: 'sdk-b', operation: 1000, msg: 'back' });
  assert.equal(text((await back)[0]), 'back');
  client.close();
});
