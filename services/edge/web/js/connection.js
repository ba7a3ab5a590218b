// The WebSocket: connect, notice a dead socket (pings), reconnect with backoff, and join every
// room of the user on each new socket from the last seq seen (`since`), so that the server sends
// exactly what was missed. Frames other than join answers go to `hooks.frame`.

import { api } from './http.js';
import { joinFrame, joinOf, catchUpFailedIn, parseFrame, pingFrame } from './protocol.js';
import { S, room } from './state.js';
import { renderPresence, showConn, showConnReason, toast } from './render.js';

const PING_EVERY = 5000; // ms between pings while connected
const PONG_TIMEOUT = 4000; // no frame this long after a ping: the socket is dead
const CONNECT_TIMEOUT = 8000; // a socket not open after this is abandoned
const BACKOFF_MIN = 500; // first reconnect delay, doubled per failed attempt
const BACKOFF_MAX = 30000; // ... up to this; each delay is jittered by ±50 % (and capped here)

/** Set by app.js: what the rest of the page does when the connection does something. */
export const hooks = {
  /** A socket opened (`again`: not the page's first): send what is not acked yet, refresh. */
  opened: (_again) => {},
  /** The socket closed. */
  closed: () => {},
  /** The server refused the token. */
  expired: () => {},
  /** Loads `r`'s history before its first join (a promise). */
  load: async (_r) => {},
  /** `r`'s history loaded while joining: send what waited for it. */
  loaded: (_r) => {},
  /** The server answered the join of `r`. */
  joined: (_r) => {},
  /** The room `id` does not exist or is not the user's to join. */
  refused: (_id) => {},
  /** Any other frame. */
  frame: (_f) => {},
};

let ws = null;
let conn = 'offline'; // connecting | connected | reconnecting | offline
let everConnected = false;
let connects = 0;
let attempt = 0;
let retryTimer = null;
let pingTimer = null;
let pongTimer = null;
let lastFrameAt = 0;
const pendingJoins = new Map(); // room -> {since}

export const isConnected = () => conn === 'connected';
export const hasSocket = () => !!ws;

function setConn(state, detail) {
  conn = state;
  showConn(state, detail, connects, everConnected);
}

/** Sends `frame` on the open socket; false when there is none (it is not queued). */
export function wsSend(frame) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  try {
    ws.send(JSON.stringify(frame));
    return true;
  } catch {
    return false;
  }
}

export function connect() {
  clearTimeout(retryTimer);
  retryTimer = null;
  if (!S.token || ws) return;
  setConn(everConnected ? 'reconnecting' : 'connecting');
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws?token=${encodeURIComponent(S.token)}`;
  let socket;
  try {
    socket = new WebSocket(url);
  } catch {
    scheduleReconnect(false, false);
    return;
  }
  ws = socket;
  let opened = false;
  const openTimer = setTimeout(() => { if (!opened) dropSocket(socket, 'connect timeout', false); }, CONNECT_TIMEOUT);
  socket.onopen = () => {
    clearTimeout(openTimer);
    if (ws !== socket) return;
    opened = true;
    onOpen(socket);
  };
  socket.onmessage = (e) => {
    if (ws !== socket) return;
    lastFrameAt = Date.now();
    const f = parseFrame(e.data);
    if (f) onFrame(f);
  };
  socket.onerror = () => { /* a close follows */ };
  socket.onclose = (e) => {
    clearTimeout(openTimer);
    if (ws !== socket) return;
    showConnReason(`closed ${e.code}${e.reason ? `: ${e.reason}` : ''}`);
    onClosed(e.code, opened);
  };
}

/** Gives up on `socket` now (dead or offline), without waiting for the close handshake. */
function dropSocket(socket, why, wasOpen = true) {
  if (!socket || ws !== socket) return;
  socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
  try { socket.close(4000, why); } catch { /* already closed */ }
  showConnReason(why);
  onClosed(4000, wasOpen);
}

/** No network: the socket is gone even if the browser has not noticed yet. */
export function wentOffline() {
  if (ws) dropSocket(ws, 'offline');
  else setConn('offline');
}

/** Reconnects now, as if no attempt had failed yet (the network is back, the user asked). */
export function reconnectNow() {
  attempt = 0;
  if (!ws) connect();
}

/** A page that wakes up may have missed a close: checks the socket, or connects. */
export function checkSocket() {
  if (ws && ws.readyState === WebSocket.OPEN) wsSend(pingFrame());
  else if (S.token && !ws) connect();
}

/** Closes the socket for good (logout). */
export function disconnect() {
  const socket = ws;
  ws = null;
  stopPing();
  clearTimeout(retryTimer);
  if (socket) {
    socket.onclose = socket.onmessage = null;
    try { socket.close(1000, 'logout'); } catch { /* closed */ }
  }
  pendingJoins.clear();
  everConnected = false;
  connects = 0;
  setConn('offline');
}

function onOpen(socket) {
  attempt = 0;
  connects += 1;
  everConnected = true;
  lastFrameAt = Date.now();
  setConn('connected');
  startPing(socket);
  for (const id of S.joined) joinRoom(room(id));
  hooks.opened(connects > 1);
}

function onClosed(code, wasOpen) {
  stopPing();
  ws = null;
  pendingJoins.clear();
  for (const r of S.rooms.values()) { r.live = false; r.typing = []; }
  hooks.closed();
  renderPresence();
  if (!S.token) return;
  if (code === 4401) {
    hooks.expired();
    return;
  }
  if (!wasOpen && attempt >= 1) {
    // Refused before the upgrade: maybe the token (HTTP 401, which ends the session), maybe the
    // network.
    api('GET', '/api/rooms');
  }
  // 1001 (edge going away) and 1008 (slow consumer): reconnect at once and resume.
  scheduleReconnect(code === 1001 || code === 1008, wasOpen);
}

function scheduleReconnect(fast, wasOpen) {
  clearTimeout(retryTimer);
  if (!S.token) return;
  if (navigator.onLine === false) {
    setConn('offline');
    // The `online` event reconnects; check now and then in case it never comes.
    retryTimer = setTimeout(connect, BACKOFF_MAX);
    return;
  }
  // A socket that was up (or an edge going away) is tried again at once, the first time.
  const delay = fast || (wasOpen && attempt === 0) ? 100 + Math.random() * 400 : backoff(attempt);
  attempt += 1;
  setConn('reconnecting', delay);
  retryTimer = setTimeout(connect, delay);
}

/**
 * The wait before reconnect attempt `n` (0-based): 0.5 s doubling per attempt, ±50 % jitter so
 * that the clients of an edge that went away do not all come back at once, never more than
 * BACKOFF_MAX.
 */
export function backoff(n) {
  const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** Math.min(n, 16));
  return Math.min(BACKOFF_MAX, base * (0.5 + Math.random()));
}

function startPing(socket) {
  stopPing();
  pingTimer = setInterval(() => {
    if (ws !== socket) return;
    const sentAt = Date.now();
    if (!wsSend(pingFrame())) return;
    clearTimeout(pongTimer);
    pongTimer = setTimeout(() => {
      if (ws === socket && lastFrameAt < sentAt) dropSocket(socket, 'ping timeout');
    }, PONG_TIMEOUT);
  }, PING_EVERY);
}

function stopPing() {
  clearInterval(pingTimer);
  clearTimeout(pongTimer);
  pingTimer = pongTimer = null;
}

/** Joins `r` on the current socket, from the last seq seen (history first when not loaded). */
export async function joinRoom(r) {
  const socket = ws;
  if (!socket || socket.readyState !== WebSocket.OPEN || !r.joined) return;
  const waited = !r.loaded;
  if (waited) await hooks.load(r);
  if (ws !== socket || socket.readyState !== WebSocket.OPEN || !r.joined) return;
  if (waited) hooks.loaded(r);
  // Only a room whose messages this page has joins with `since`: any other starts at the head.
  const since = r.loaded || r.lastSeq > 0 ? r.lastSeq : undefined;
  pendingJoins.set(r.id, { since });
  wsSend(joinFrame(r.id, since));
}

function onFrame(f) {
  if (f.type === 'joined') {
    onJoined(f);
    return;
  }
  hooks.frame(f);
}

function onJoined(f) {
  const r = S.rooms.get(f.room);
  const pending = pendingJoins.get(f.room);
  pendingJoins.delete(f.room);
  if (!r) return;
  r.live = true;
  r.joinFailures = 0;
  if (typeof f.head === 'number') r.head = f.head;
  // Only a join without `since` starts at the head; one with `since` is caught up by events.
  if (pending && pending.since === undefined && typeof f.head === 'number' && f.head > r.lastSeq) {
    r.lastSeq = f.head;
  }
  hooks.joined(r);
}

/**
 * Handles `error` frame `f` when it answers a join (or says a catch-up failed); false when it
 * is about something else.
 */
export function joinError(f, code, message) {
  const caughtUp = catchUpFailedIn(message);
  if (caughtUp) {
    const r = S.rooms.get(caughtUp);
    if (r && r.joined) setTimeout(() => joinRoom(r), 2000);
    return true;
  }
  const roomId = failedJoin(f, code, message);
  if (!roomId) return false;
  pendingJoins.delete(roomId);
  const r = S.rooms.get(roomId);
  if (code === 'not_found' || code === 'forbidden') {
    toast(`#${roomId}: ${code === 'not_found' ? 'no such room, or it is private' : message}.`, 'error');
    hooks.refused(roomId);
  } else if (code === 'unavailable' || code === 'internal') {
    // The server cannot decide the join yet (a view starting): again, later and later.
    if (!r) return true;
    r.joinFailures = (r.joinFailures || 0) + 1;
    setTimeout(() => joinRoom(r), backoff(r.joinFailures));
  } else {
    toast(`Could not join #${roomId}: ${message}`, 'error');
  }
  return true;
}

/**
 * The room of the join an `error` answers, or null. Joins carry the id `join:<room>`, which the
 * error names; an id-less error (a server that dropped the id) is taken, as join answers come in
 * order, for the oldest join still waiting when it reads like a join's.
 */
function failedJoin(f, code, message) {
  const joined = joinOf(f.id);
  if (joined !== null) return pendingJoins.has(joined) ? joined : null;
  if (f.id || !pendingJoins.size) return null;
  if (typeof f.room === 'string') return pendingJoins.has(f.room) ? f.room : null;
  if (code !== 'unavailable' && !/room|join/i.test(message)) return null;
  const [roomId] = pendingJoins.keys();
  return roomId;
}
