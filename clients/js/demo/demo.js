// The demo page: connects with the SDK, shows what arrives, joins and
// leaves rooms (each with its live online count), and pushes through
// logic's HTTP API. "Go offline" closes the connection: pushes by
// mid sent meanwhile are kept by the server and replayed on "Go online",
// from the last message this browser showed (kept in localStorage per mid). Settings come from the query string (ws, api,
// mid, room, token, apikey), then the cloud node's /demo/config.json, then
// defaults built from this page's host.
import { Client, text } from './sdk/index.js';

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);

async function settings() {
  let served = {};
  try {
    served = await (await fetch('/demo/config.json')).json();
  } catch {
    // Not served by a cloud node: the defaults below will do.
  }
  const host = location.hostname || '127.0.0.1';
  const wsScheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return {
    ws: query.get('ws') || `${wsScheme}://${host}:${served.ws_port || 3102}/sub`,
    api: query.get('api') || served.api_url || `${location.protocol}//${host}:3111`,
    mid: query.get('mid') || String(1 + Math.floor(Math.random() * 100000)),
    room: query.get('room') || 'live://1000',
    token: query.get('token') || '',
    apikey: query.get('apikey') || '',
  };
}

function show(result, message, error = false) {
  result.textContent = message;
  result.className = error ? 'error' : '';
}

function addMessage(packet) {
  const item = document.createElement('li');
  const meta = document.createElement('span');
  meta.className = 'meta';
  const numbered = packet.seq > 0 ? ` · #${packet.seq}` : '';
  const missed = packet.seq > 0 && packet.seq <= missedUpTo ? ' · sent while offline' : '';
  meta.textContent = `${new Date().toLocaleTimeString()} op ${packet.op}${numbered}${missed}`;
  const body = document.createElement('span');
  body.className = 'body';
  body.textContent = text(packet);
  item.append(meta, body);
  $('messages').prepend(item);
}

async function api(path, body) {
  const headers = { 'content-type': 'application/json' };
  if ($('apikey').value) headers.authorization = `Bearer ${$('apikey').value}`;
  const response = await fetch(`${$('api').value}${path}`, {
    method: body ? 'POST' : 'GET',
    headers,
    body: body && JSON.stringify(body),
  });
  const reply = await response.json();
  if (!response.ok) throw new Error(reply.message || response.statusText);
  return reply.data;
}

/** The rooms this page is in, and each one's online count (op 26). */
const joined = new Map();

function showRooms() {
  const list = $('joined');
  list.replaceChildren();
  for (const [room, online] of joined) {
    const item = document.createElement('li');
    item.dataset.room = room;
    item.textContent = `${room} · online ${online ?? '-'}`;
    item.addEventListener('click', () => {
      $('join-room').value = room;
    });
    list.append(item);
  }
}

async function joinRoom(event) {
  event.preventDefault();
  const room = $('join-room').value;
  try {
    await client.join(room, { count: true });
    if (!joined.has(room)) joined.set(room, undefined);
    showRooms();
    show($('result'), `joined ${room}`);
  } catch (error) {
    show($('result'), `cannot join ${room}: ${error.message}`, true);
  }
}

async function leaveRoom() {
  const room = $('join-room').value;
  try {
    await client.leave(room);
    joined.delete(room);
    showRooms();
    show($('result'), `left ${room}`);
  } catch (error) {
    show($('result'), `cannot leave ${room}: ${error.message}`, true);
  }
}

let client;
/** User messages up to this one were pushed while the page was offline. */
let missedUpTo = 0;
const lastSeqKey = (mid) => `imcloud-demo-last-${mid}`;

async function connect() {
  client?.close();
  const mid = $('mid').value;
  const lastSeq = Number(localStorage.getItem(lastSeqKey(mid))) || 0;
  const room = $('room').value;
  const typed = $('token').value;
  client = new Client({
    url: $('ws').value,
    // Asked again at every reconnect, so expired development tokens renew.
    token: async () => typed || (await api(`/im/dev/token?mid=${encodeURIComponent(mid)}&room=${encodeURIComponent(room)}&accepts=1000`)).token,
    lastSeq,
  });
  client.on('state', (state) => {
    $('state').textContent = state;
    $('state').dataset.state = state;
  });
  client.on('open', (identity) => {
    $('who').textContent = `mid ${identity.mid} · ${identity.room_id || 'no room'}`;
    for (const room of identity.rooms ?? []) {
      if (!joined.has(room)) joined.set(room, undefined);
    }
    // The token's rooms are joined already (this asks for their counts);
    // the others were joined on this page before it went offline.
    for (const room of joined.keys()) client.join(room, { count: true }).catch(() => {});
    showRooms();
  });
  client.on('count', ({ room, online }) => {
    if (joined.has(room)) joined.set(room, online);
    showRooms();
  });
  client.on('online', (count) => {
    $('online').textContent = String(count);
  });
  client.on('close', (info) => show($('result'), `closed: ${info.reason} (${info.code})`, !info.reconnect));
  client.on('message', (packet) => {
    addMessage(packet);
    localStorage.setItem(lastSeqKey(mid), String(client.lastSeq));
  });
  client.on('reset', ({ oldest }) => show($('result'), `messages before #${oldest} are no longer kept`, true));
  try {
    await client.connect();
  } catch (error) {
    show($('result'), `cannot connect: ${error.message}`, true);
  }
}

async function push(event) {
  event.preventDefault();
  const operation = Number($('op').value) || 1000;
  const msg = $('message').value;
  const identity = client?.identity;
  try {
    let data;
    switch ($('target').value) {
      case 'mid':
        data = await api('/im/push/mids', { mids: [Number($('mid').value)], operation, msg });
        break;
      case 'room': {
        const typed = $('join-room').value;
        const room = joined.has(typed) ? typed : identity?.room_id || $('room').value;
        const [type, id] = room.split('://');
        data = await api('/im/push/room', { type, room: id, operation, msg });
        break;
      }
      default:
        data = await api('/im/push/all', { operation, msg });
    }
    show($('result'), `sent: ${JSON.stringify(data)}`);
  } catch (error) {
    show($('result'), `push failed: ${error.message}`, true);
  }
}

async function toggleOffline() {
  const button = $('offline');
  if (client && client.state !== 'closed') {
    client.close();
    button.textContent = 'Go online';
    return;
  }
  button.textContent = 'Go offline';
  // What the server numbered meanwhile is what the replay will bring.
  try {
    const inbox = await api(`/im/inbox?mid=${encodeURIComponent($('mid').value)}&since=${client?.lastSeq ?? 0}`);
    missedUpTo = inbox.last;
  } catch {
    // Needs the API key on a keyed logic: then no "sent while offline" marks.
  }
  connect();
}

const initial = await settings();
for (const [id, value] of Object.entries(initial)) $(id).value = value;
$('push').addEventListener('submit', push);
$('offline').addEventListener('click', toggleOffline);
$('rooms').addEventListener('submit', joinRoom);
$('leave').addEventListener('click', leaveRoom);
$('settings').addEventListener('submit', (event) => {
  event.preventDefault();
  connect();
});
connect();
