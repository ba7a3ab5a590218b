// The protocol as this client speaks it (docs/protocol.md): the frames it sends, what it reads
// out of the frames and answers it gets, and readers for their fields. Pure: no DOM, no state.
//
// Stored events may be redacted (`data: {deleted: true}`, no text, maybe no user), and a server
// may be older or newer than this page: every field is checked before use.

/** Most characters of a message (the server counts Unicode scalar values, as `chars` does). */
export const MAX_TEXT = 4000;
/** Room and user ids. */
export const ID_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;

/** `x` when it is a non-empty string, else `fallback`. */
export const str = (x, fallback = '') => (typeof x === 'string' && x ? x : fallback);
/** The strings of `x` when it is an array, else none. */
export const strList = (x) => (Array.isArray(x) ? x.filter((v) => typeof v === 'string') : []);
export const isObject = (x) => !!x && typeof x === 'object';
export const chars = (s) => [...s].length;

export function uuid() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

/** The users `text` mentions, as the server finds them (shown on a message before it is stored). */
export function mentionsIn(text) {
  const out = [];
  const re = /(^|[^a-z0-9_@-])@([a-z0-9][a-z0-9_-]{0,31})(?![a-z0-9_-])/g;
  let x;
  while ((x = re.exec(text))) if (!out.includes(x[2])) out.push(x[2]);
  return out;
}

/** The claims of a token (not verified: the server does that), or null. */
export function tokenClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(decodeURIComponent(escape(atob(part))));
  } catch { return null; }
}

// ------------------------------------------------------------------ frames to the server

export const pingFrame = () => ({ type: 'ping' });

/**
 * Joins `room` from after seq `since` (undefined: from its head). The id names the room, so an
 * error answering this join says which join it answers.
 */
export function joinFrame(room, since) {
  const frame = { type: 'join', room, id: `join:${room}` };
  if (since !== undefined) frame.since = since;
  return frame;
}

export const leaveFrame = (room) => ({ type: 'leave', room });

export function sendFrame(room, id, text, replyTo, attachments) {
  const frame = { type: 'send', room, text, id };
  if (replyTo) frame.reply_to = replyTo;
  if (attachments && attachments.length) frame.attachments = attachments;
  return frame;
}

export const editFrame = (room, messageId, text) => ({ type: 'edit', room, message_id: messageId, text });
export const deleteFrame = (room, messageId) => ({ type: 'delete', room, message_id: messageId });

export function reactFrame(room, messageId, emoji, remove) {
  const frame = { type: 'react', room, message_id: messageId, emoji };
  if (remove) frame.remove = true;
  return frame;
}

export const typingFrame = (room, active) => ({ type: 'typing', room, active });
export const readFrame = (room, seq, id) => ({ type: 'read', room, seq, id });

// ------------------------------------------------------------------ frames from the server

/** The frame a WebSocket text message holds, or null. */
export function parseFrame(text) {
  try {
    const f = JSON.parse(text);
    return isObject(f) ? f : null;
  } catch { return null; }
}

/** The room whose join an error's id names (`join:<room>`), or null. */
export const joinOf = (id) => (typeof id === 'string' && id.startsWith('join:') ? id.slice('join:'.length) : null);

/** The room whose catch-up an error says failed, or null. */
export function catchUpFailedIn(message) {
  const x = /^could not catch up in ([a-z0-9][a-z0-9_-]*)/.exec(message);
  return x ? x[1] : null;
}

/** A `notification` frame as the notifications list keeps it, or null. */
export function notificationOf(f) {
  if (!isObject(f.event) || !isObject(f.event.data)) return null;
  const d = f.event.data;
  return {
    id: f.event.id, room: d.room, seq: d.seq, message_id: d.message_id, by: d.by || d.user,
    text: d.text, reason: d.reason, time: f.event.time, read: false,
  };
}
