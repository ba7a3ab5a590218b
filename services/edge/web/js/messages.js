// What the user does to messages: send, retry, edit, delete, react, and the composer they do it
// in; typing indicators and read markers; the answers to all that (`ack`, `error`).
//
// Frames that ask for an ack carry a UUID `id`; until acked they stay in the outbox and are sent
// again, with the same id, after a reconnect (the server stores each id once). Unacked messages
// are kept in localStorage too, so that the next page sends them.

import { clearSent, readyFor } from './files.js';
import { insert, message, remove, replace, withFields } from './fold.js';
import {
  ID_RE, MAX_TEXT, chars, deleteFrame, editFrame, mentionsIn, reactFrame, readFrame, sendFrame, str,
  typingFrame, uuid,
} from './protocol.js';
import { S, currentRoom, load, room, store } from './state.js';
import { joinError, wsSend } from './connection.js';
import { markRoomNotificationsRead } from './notifications.js';
import {
  $, afterAppend, autoGrow, hideMessage, isAtBottom, renderComposerContext, renderRooms, showMessage,
  toast, updateCount,
} from './render.js';

const TYPING_EVERY = 3000; // at most one typing frame per 3 s
const TYPING_IDLE = 4000; // stop "typing" after this much quiet
const READ_EVERY = 2000; // read markers: at most one per room every 2 s

const outbox = new Map(); // id -> {kind, room, frame, tries, at}
const readIds = new Set(); // ids of read frames in flight
let local = 0; // order of the messages written on this page
let composer = { mode: 'send', target: null }; // mode: send | edit | reply (target: a message id)
let typing = newTyping();

function newTyping() {
  return { active: false, sentAt: 0, room: null, idleTimer: null, deferTimer: null, lastSentTyping: 0 };
}

// ------------------------------------------------------------------ the outbox

/** Sends a frame that expects an ack; kept until acked and sent again after reconnects. */
function sendOp(kind, roomId, frame) {
  frame.id = frame.id || uuid();
  outbox.set(frame.id, { kind, room: roomId, frame, tries: 0, at: Date.now() });
  saveOutbox();
  wsSend(frame); // when offline it goes on the next connection
  return frame.id;
}

/** Unacked messages survive a reload: they are sent again, with their ids, by the next page. */
function saveOutbox() {
  if (!S.user) return;
  const failed = (e) => S.rooms.get(e.room)?.timeline.byId.get(e.frame.id)?.failed;
  const sends = [...outbox.values()].filter((e) => e.kind === 'send' && !failed(e));
  store(`outbox.${S.user}`, sends.map((e) => ({ frame: e.frame, at: e.at })));
}

/** The messages an earlier page of this user left unacked, shown pending and sent again. */
export function restoreOutbox() {
  const saved = load(`outbox.${S.user}`);
  if (!Array.isArray(saved)) return;
  for (const { frame, at } of saved) {
    if (!frame || frame.type !== 'send' || !frame.id || !ID_RE.test(frame.room || '')) continue;
    const r = room(frame.room);
    if (r.timeline.byId.has(frame.id)) continue;
    const m = message({
      id: frame.id, user: S.user, text: frame.text, reply_to: frame.reply_to, pending: true,
      local: ++local, time: new Date(at || Date.now()).toISOString(), mentions: mentionsIn(str(frame.text)),
    });
    insert(r.timeline, m);
    showMessage(r, m);
    outbox.set(frame.id, { kind: 'send', room: r.id, frame, tries: 0, at });
  }
}

/** A socket opened: everything not acked goes again, except what waits for its room's history. */
export function resendOutbox() {
  // A room whose history is still loading gets its own after the load (which may show them stored).
  for (const [, entry] of outbox) {
    const r = S.rooms.get(entry.room);
    if (!r || r.loaded || !r.joined) wsSend(entry.frame);
  }
}

/** `r`'s history loaded while joining: what waited for it goes now. */
export function resendRoom(r) {
  for (const [, entry] of outbox) if (entry.room === r.id) wsSend(entry.frame);
}

/** Message `id`, sent from this page, is stored (its post or a history page shows it). */
export function markStored(id) {
  if (outbox.delete(id)) saveOutbox();
}

export function onAck(f) {
  const entry = outbox.get(f.id);
  outbox.delete(f.id);
  readIds.delete(f.id);
  if (!entry || entry.kind !== 'send') return;
  saveOutbox();
  const r = S.rooms.get(entry.room);
  const m = r && r.timeline.byId.get(f.id);
  if (!m) return;
  const seq = typeof f.seq === 'number' ? f.seq : m.seq;
  showMessage(r, replace(r.timeline, m, withFields(m, { pending: false, failed: null, seq })));
}

export function onError(f) {
  const code = f.code || 'internal';
  const msg = f.message || code;
  if (f.id && readIds.has(f.id)) {
    readIds.delete(f.id);
    if (code === 'bad_request') S.features.read = false; // an edge that does not keep read markers
    return;
  }
  const entry = f.id ? outbox.get(f.id) : null;
  if (entry) {
    if (code === 'unavailable' || code === 'rate_limited' || code === 'internal') {
      entry.tries = (entry.tries || 0) + 1;
      if (entry.tries <= 5) {
        const delay = code === 'rate_limited' ? 1000 * entry.tries : 1500 * entry.tries;
        setTimeout(() => { if (outbox.get(f.id) === entry) wsSend(entry.frame); }, delay);
        return;
      }
    }
    outbox.delete(f.id);
    if (entry.kind === 'send') {
      const r = S.rooms.get(entry.room);
      const m = r && r.timeline.byId.get(f.id);
      if (m) showMessage(r, replace(r.timeline, m, withFields(m, { failed: msg })));
      saveOutbox();
    } else {
      const what = { edit: 'edit the message', delete: 'delete the message', react: 'react' }[entry.kind] || 'do that';
      toast(`Could not ${what}: ${msg}`, 'error');
    }
    return;
  }
  if (joinError(f, code, msg)) return;
  if (Date.now() - typing.lastSentTyping < 2000 && code === 'bad_request' && /typing/i.test(msg)) {
    S.features.typing = false; // not served yet: stop sending them
    return;
  }
  if (code === 'bad_request' && /typing|read|presence/i.test(msg)) return; // features still to come
  toast(`Server: ${msg}`, 'error');
}

/** The socket closed: no answer to a read marker comes on another one. */
export function socketClosed() {
  readIds.clear();
}

/** The session ended: nothing of it stays (its unacked messages stay in localStorage). */
export function clearMessages() {
  outbox.clear();
  readIds.clear();
  clearTimeout(typing.idleTimer);
  clearTimeout(typing.deferTimer);
  typing = newTyping();
  composer = { mode: 'send', target: null };
}

// ------------------------------------------------------------------ actions

function sendMessage(r, text, replyTo, attachments) {
  const id = uuid();
  const m = message({
    id, user: S.user, text, reply_to: replyTo, pending: true, local: ++local,
    time: new Date().toISOString(), mentions: mentionsIn(text), attachments,
  });
  insert(r.timeline, m);
  showMessage(r, m);
  afterAppend(true);
  sendOp('send', r.id, sendFrame(r.id, id, text, replyTo, attachments.map((a) => a.id)));
}

export function retryMessage(r, m) {
  const again = replace(r.timeline, m, withFields(m, { failed: null, pending: true }));
  showMessage(r, again);
  sendOp('send', r.id, sendFrame(r.id, m.id, m.text, m.reply_to, m.attachments.map((a) => a.id)));
}

export function discardMessage(r, m) {
  outbox.delete(m.id);
  saveOutbox();
  remove(r.timeline, m);
  hideMessage(r, m.id);
}

export function react(r, m, emoji) {
  const mine = !!m.reactions.get(emoji)?.includes(S.user);
  sendOp('react', r.id, reactFrame(r.id, m.id, emoji, mine));
}

export function deleteMessage(r, m) {
  if (!window.confirm('Delete this message?')) return;
  sendOp('delete', r.id, deleteFrame(r.id, m.id));
}

// ------------------------------------------------------------------ the composer

function showContext() {
  const r = currentRoom();
  const m = r && composer.target ? r.timeline.byId.get(composer.target) : null;
  renderComposerContext(composer.mode, m);
}

/** What the composer does on submit: 'send', 'edit' or 'reply'. */
export const composerMode = () => composer.mode;

export function startEdit(r, m) {
  composer = { mode: 'edit', target: m.id };
  const input = $('composer-input');
  input.value = m.text;
  showContext();
  autoGrow();
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

/** Edits the user's last message in the open room (the ↑ key); false when there is none. */
export function editLast() {
  const r = currentRoom();
  const mine = r && [...r.timeline.list].reverse().find((m) => m.user === S.user && !m.deleted && m.seq != null);
  if (mine) startEdit(r, mine);
  return !!mine;
}

export function startReply(r, m) {
  composer = { mode: 'reply', target: m.id };
  showContext();
  $('composer-input').focus();
}

export function cancelComposerMode() {
  const wasEdit = composer.mode === 'edit';
  composer = { mode: 'send', target: null };
  if (wasEdit) $('composer-input').value = '';
  showContext();
  autoGrow();
  updateCount();
}

/** Message `m` changed: once deleted, it can no longer be edited or replied to. */
export function messageChanged(m) {
  if (m && m.deleted && composer.target === m.id) cancelComposerMode();
}

export function submitComposer() {
  const r = currentRoom();
  const input = $('composer-input');
  const text = input.value;
  const { mode, target } = composer;
  const files = mode === 'edit' ? { busy: false, attachments: [] } : (r ? readyFor(r.id) : null);
  if (!r || (!text.trim() && !files.attachments.length)) {
    if (files && files.busy) toast('The files are still uploading.', 'info');
    return;
  }
  if (files.busy) {
    toast('Wait for the files to finish uploading.', 'info');
    return;
  }
  if (chars(text) > MAX_TEXT) {
    toast(`Messages are at most ${MAX_TEXT} characters.`, 'error');
    return;
  }
  if (mode === 'edit') {
    const m = r.timeline.byId.get(target);
    if (m && m.text !== text && !m.deleted) sendOp('edit', r.id, editFrame(r.id, m.id, text));
  } else {
    sendMessage(r, text, mode === 'reply' ? target : null, files.attachments);
    clearSent(r.id);
  }
  input.value = '';
  composer = { mode: 'send', target: null };
  showContext();
  autoGrow();
  updateCount();
  stopTyping();
}

// typing: one `active:true` at most every 3 s while typing; `active:false` once when done
export function onTypingInput() {
  const r = currentRoom();
  if (!r || !S.features.typing) return;
  if (!$('composer-input').value.trim()) { stopTyping(); return; }
  if (typing.room && typing.room !== r.id) stopTyping();
  const now = Date.now();
  const wait = typing.sentAt + TYPING_EVERY - now;
  if (wait <= 0) {
    sendTyping(r.id);
  } else if (!typing.active && !typing.deferTimer) {
    // Too soon after the last one: say it as soon as it is allowed, if still typing then.
    typing.deferTimer = setTimeout(() => {
      typing.deferTimer = null;
      if (S.current === r.id && !typing.active && $('composer-input').value.trim()
        && document.activeElement === $('composer-input')) sendTyping(r.id);
    }, wait);
  }
  clearTimeout(typing.idleTimer);
  typing.idleTimer = setTimeout(stopTyping, TYPING_IDLE);
}

function sendTyping(roomId) {
  if (!wsSend(typingFrame(roomId, true))) return;
  const now = Date.now();
  typing.sentAt = now;
  typing.lastSentTyping = now;
  typing.active = true;
  typing.room = roomId;
}

export function stopTyping() {
  clearTimeout(typing.idleTimer);
  clearTimeout(typing.deferTimer);
  typing.deferTimer = null;
  if (typing.active && typing.room && S.features.typing) {
    wsSend(typingFrame(typing.room, false));
    typing.lastSentTyping = Date.now();
  }
  typing.active = false;
  typing.room = null;
}

// ------------------------------------------------------------------ read markers

/** The open room's newest message is on screen: it is read (a marker at most every 2 s). */
export function scheduleRead(r) {
  if (!r || r.id !== S.current) return;
  if (document.visibilityState !== 'visible' || !isAtBottom()) return;
  if (r.unread || r.mentions) {
    r.unread = 0;
    r.mentions = 0;
    renderRooms();
  }
  markRoomNotificationsRead(r.id);
  if (!S.features.read || r.lastSeq <= r.readSent || !r.live) return;
  const wait = r.readAt + READ_EVERY - Date.now();
  if (wait > 0) {
    if (!r.readTimer) r.readTimer = setTimeout(() => { r.readTimer = null; scheduleRead(r); }, wait);
    return;
  }
  const id = uuid();
  if (wsSend(readFrame(r.id, r.lastSeq, id))) {
    readIds.add(id);
    r.readSent = r.lastSeq;
    r.readAt = Date.now();
  }
}
