// Rooms: the list of those the user may see, opening, joining, leaving and creating them, their
// history (a page at a time over HTTP, then each stored event as the socket delivers it, folded
// by fold.js), and who is online in them.

import { applyEvent, mergePage } from './fold.js';
import { api, errText, missing } from './http.js';
import { ID_RE, leaveFrame, str, strList } from './protocol.js';
import { S, load, room, saveJoined, store, unload } from './state.js';
import { joinRoom, wsSend } from './connection.js';
import {
  cancelComposerMode, composerMode, markStored, messageChanged, scheduleRead, stopTyping,
} from './messages.js';
import { addNotification } from './notifications.js';
import {
  $, afterAppend, announce, authorName, isAtBottom, keepScrollPosition, renderHistoryTop, renderPresence,
  renderRoom, renderRoomHeader, renderRooms, scrollToBottom, setNav, showMessage, toast,
} from './render.js';

const PAGE = 50; // messages per history page
const ROOMS_PAGE = 500; // rooms asked per page of the room list (the server's most)

const leaving = new Set(); // rooms whose `leave` this page sent and whose `left` answer is due
let roomsTimer = null;

// ------------------------------------------------------------------ history

/** Merges a page of the history API into the room. */
function mergeHistory(r, messages) {
  const { added, stored } = mergePage(r.timeline, messages);
  for (const m of stored) {
    markStored(m.id);
    showMessage(r, m);
  }
  for (const m of added) {
    showMessage(r, m);
    if (m.seq != null && m.seq > r.lastSeq && !r.live) r.lastSeq = m.seq;
  }
}

/** The room's latest page of history, once (a promise of whether it loaded). */
export async function loadInitial(r) {
  if (r.loaded) return true;
  if (r.loading) return r.loading;
  r.loading = (async () => {
    const res = await api('GET', `/api/rooms/${encodeURIComponent(r.id)}/messages?limit=${PAGE}`);
    r.loading = null;
    if (res.ok && res.data && Array.isArray(res.data.messages)) {
      const stick = r.id === S.current && (isAtBottom() || !r.timeline.list.length);
      mergeHistory(r, res.data.messages);
      r.hasMore = !!res.data.has_more;
      r.loaded = true;
      r.historyError = null;
      if (r.id === S.current) renderRoom();
      if (stick) scrollToBottom();
      return true;
    } else if (res.status === 404) {
      r.historyError = 'This room does not exist or is private.';
      if (r.joined && S.token) {
        toast(`#${r.id}: room not found (or private).`, 'error');
        forgetRoom(r.id);
      }
    } else if (res.status !== 401) {
      r.historyError = `History is unavailable (${errText(res)}).`;
    }
    if (r.id === S.current) renderRoom();
    return r.loaded;
  })();
  return r.loading;
}

export async function loadOlder(r) {
  if (r.loadingOlder || !r.hasMore) return;
  const oldest = r.timeline.list.find((m) => m.seq != null);
  if (!oldest) return;
  r.loadingOlder = true;
  renderHistoryTop();
  const res = await api('GET', `/api/rooms/${encodeURIComponent(r.id)}/messages?before=${oldest.seq}&limit=${PAGE}`);
  r.loadingOlder = false;
  if (res.ok && res.data && Array.isArray(res.data.messages)) {
    const merge = () => mergeHistory(r, res.data.messages);
    if (r.id === S.current) keepScrollPosition(merge); else merge();
    r.hasMore = !!res.data.has_more;
  } else if (res.status !== 401) {
    toast(`Could not load older messages: ${errText(res)}`, 'error');
  }
  renderHistoryTop();
}

/** An `event` frame: one stored room event, live or caught up, each applied once. */
export function onEvent(f) {
  const r = S.rooms.get(f.room);
  if (!r || !r.joined || typeof f.seq !== 'number' || !f.event || typeof f.event !== 'object') return;
  if (f.seq <= r.lastSeq) return; // seen already
  r.lastSeq = f.seq;
  const ev = f.event;
  const change = applyEvent(r.timeline, f.seq, ev);
  if (!change) return; // its id was applied already
  const { before, after } = change;
  if (/^chat\.(room|member)\./.test(str(ev.type))) {
    applyRoomEvent(r, f.seq, ev);
  } else if (after && !before) {
    // A new message.
    const atBottom = r.id === S.current && isAtBottom(); // before it is on the page
    showMessage(r, after);
    if (after.user !== S.user && !after.deleted) onIncoming(r, after, atBottom);
    if (r.id === S.current) afterAppend(atBottom || (!!after.user && after.user === S.user));
  } else if (after !== before) {
    // A message changed; the post of one this page sent: it is stored.
    if (ev.type === 'chat.message.posted') markStored(after.id);
    showMessage(r, after);
    messageChanged(after);
  }
  if (r.id === S.current) scheduleRead(r);
}

/** `chat.room.*` and `chat.member.*` (any of those this page does not know is ignored). */
function applyRoomEvent(r, seq, ev) {
  const d = ev.data && typeof ev.data === 'object' ? ev.data : {};
  switch (ev.type) {
    case 'chat.room.created':
    case 'chat.room.updated':
      if (typeof d.name === 'string' && d.name) r.name = d.name;
      if (typeof d.topic === 'string') r.topic = d.topic;
      if (ev.type === 'chat.room.created') {
        r.private = !!d.private;
        if (Array.isArray(d.members)) r.members = d.members;
      }
      renderRooms();
      if (r.id === S.current) renderRoomHeader();
      return;
    case 'chat.member.joined':
    case 'chat.member.left': {
      const who = str(d.member) || str(d.user);
      if (!who) return;
      if (ev.type === 'chat.member.joined') {
        if (r.private && !r.members.includes(who)) r.members = [...r.members, who];
      } else {
        r.members = r.members.filter((u) => u !== who);
        // Only a removal after this join's head: a replayed one may have been undone since.
        if (who === S.user && r.private && seq > (r.head || 0)) {
          if (d.user === S.user) { S.left.add(r.id); forgetRoom(r.id); } else removedFrom(r.id);
          return;
        }
      }
      if (r.id === S.current) renderRoomHeader();
      return;
    }
    default:
  }
}

/** A live message from someone else: unread counts, a mention, the screen reader. */
function onIncoming(r, m, atBottom) {
  const mentioned = m.mentions.includes(S.user);
  const visible = r.id === S.current && document.visibilityState === 'visible' && atBottom;
  if (!visible) {
    r.unread += 1;
    if (mentioned) r.mentions += 1;
    renderRooms();
  }
  if (r.id === S.current) announce(`${authorName(m)}: ${m.text.slice(0, 200)}`);
  if (mentioned) {
    addNotification({
      id: `local:${m.id}`, local: true, room: r.id, seq: m.seq, message_id: m.id,
      by: m.user, text: m.text, reason: 'mention', time: m.time, read: visible,
    }, !visible);
  }
}

// ------------------------------------------------------------------ the room list

/**
 * Every room the user may see, from `GET /api/rooms` page by page (pages are by id; one shorter
 * than asked is the last). `{rooms}`, or `{error: res}` when a page failed.
 */
async function fetchRoomList() {
  const rooms = new Map();
  let after = null;
  for (let page = 0; page < 100; page += 1) {
    const res = await api('GET', `/api/rooms?limit=${ROOMS_PAGE}${after ? `&after=${encodeURIComponent(after)}` : ''}`);
    if (!res.ok || !Array.isArray(res.data)) return { error: res };
    for (const x of res.data) if (x && typeof x.id === 'string' && ID_RE.test(x.id)) rooms.set(x.id, x);
    const last = res.data.length ? res.data[res.data.length - 1] : null;
    const next = last && typeof last.id === 'string' ? last.id : null;
    // A server without pages answers every room each time: stop when a page does not move on.
    if (res.data.length < ROOMS_PAGE || !next || (after && next <= after)) break;
    after = next;
  }
  return { rooms: [...rooms.values()] };
}

/** Takes one room of the list in; a private room the user was made a member of becomes theirs. */
function listedRoom(x) {
  const r = room(x.id);
  r.known = true;
  r.name = str(x.name, x.id);
  r.topic = str(x.topic);
  r.private = !!x.private;
  r.members = strList(x.members);
  r.listedSeq = typeof x.last_seq === 'number' ? x.last_seq : 0;
  if (r.private && r.members.includes(S.user) && !r.joined && !S.left.has(r.id)) {
    r.joined = true;
    S.joined.push(r.id);
    saveJoined();
    joinRoom(r);
  }
}

export async function refreshRooms() {
  const { rooms, error } = await fetchRoomList();
  const note = $('rooms-error');
  if (rooms) {
    const listed = new Set(rooms.map((x) => x.id));
    for (const r of [...S.rooms.values()]) {
      // A room no longer listed (a private one the user was removed from) leaves "More rooms".
      if (r.known && !listed.has(r.id)) {
        r.known = false;
        if (!r.joined) S.rooms.delete(r.id);
      }
    }
    for (const x of rooms) listedRoom(x);
    note.hidden = true;
  } else if (error.status !== 401) {
    note.textContent = `The room list is unavailable (${errText(error)}); retrying.`;
    note.hidden = false;
    clearTimeout(roomsTimer);
    roomsTimer = setTimeout(refreshRooms, 5000);
  }
  renderRooms();
  if (S.current) renderRoomHeader();
  return !!rooms;
}

export async function refreshUnread() {
  if (!S.features.unread) return;
  const res = await api('GET', '/api/unread');
  if (res.ok && res.data && res.data.rooms && typeof res.data.rooms === 'object') {
    for (const [id, count] of Object.entries(res.data.rooms)) {
      const r = S.rooms.get(id);
      if (!r || typeof count !== 'number') continue;
      r.unread = id === S.current && isAtBottom() && document.visibilityState === 'visible' ? 0 : count;
    }
    renderRooms();
  } else if (missing(res) || res.status === 400) {
    S.features.unread = false; // coming with a later server; counted locally meanwhile
  }
}

// ------------------------------------------------------------------ open, leave, create

export function openRoom(id, opts = {}) {
  if (!ID_RE.test(id)) {
    toast('Room ids are lower-case letters, digits, _ and -.', 'error');
    return;
  }
  const r = room(id);
  S.left.delete(id);
  if (!r.joined) {
    r.joined = true;
    S.joined.push(id);
    saveJoined();
    joinRoom(r);
  }
  if (S.current !== id) {
    stopTyping();
    if (composerMode() !== 'send') cancelComposerMode();
    S.current = id;
    store(`current.${S.user}`, id);
    if (location.hash !== `#${id}`) history.replaceState(null, '', `#${id}`);
    renderRoom();
    scrollToBottom();
    fetchPresence(r);
  }
  if (!r.loaded && !r.loading) loadInitial(r);
  setNav(false);
  if (!opts.keepFocus) $('composer-input').focus({ preventScroll: true });
  scheduleRead(r);
}

/** The room the user would see first: the one in the address, else the last open, else the first joined. */
export function firstRoom() {
  const wanted = decodeURIComponent(location.hash.slice(1));
  return ID_RE.test(wanted) ? wanted : (load(`current.${S.user}`) || S.joined[0]);
}

/** The room is no longer the user's: off the sidebar, its messages forgotten. */
export function forgetRoom(id) {
  const r = S.rooms.get(id);
  if (r) {
    unload(r);
    if (!r.known) S.rooms.delete(id);
  }
  S.joined = S.joined.filter((x) => x !== id);
  saveJoined();
  if (S.current === id) {
    S.current = null;
    const next = S.joined[0];
    if (next) openRoom(next, { keepFocus: true });
    else renderRoom();
  }
  renderRooms();
}

export async function leaveRoom(id) {
  const r = S.rooms.get(id);
  if (r && r.private && r.members.includes(S.user)) {
    // Leaving a private room gives up the membership (someone has to add you again).
    const res = await api('DELETE', `/api/rooms/${encodeURIComponent(id)}/members/${encodeURIComponent(S.user)}`);
    if (!res.ok && res.status !== 404) {
      toast(`Could not leave #${id}: ${errText(res)}`, 'error');
      return;
    }
  }
  S.left.add(id);
  if (wsSend(leaveFrame(id))) leaving.add(id);
  forgetRoom(id);
}

/** `left`: the answer to this page's own `leave`, or, unasked, the user was removed from the room. */
export function onLeft(roomId) {
  if (typeof roomId !== 'string') return;
  if (leaving.delete(roomId)) return;
  removedFrom(roomId);
}

/**
 * The user was removed from a (private) room: it is no longer theirs, and is not joined again
 * by itself (not on reconnect, not from the room list) until they open it.
 */
function removedFrom(roomId) {
  const r = S.rooms.get(roomId);
  if (!r || !r.joined) return;
  toast(`You were removed from #${r.name || roomId}.`, 'error');
  announce(`You were removed from the room ${r.name || roomId}.`);
  S.left.add(roomId);
  if (r.private) r.known = false; // no longer visible to the user: off the room list too
  forgetRoom(roomId);
}

export async function addMember(e) {
  e.preventDefault();
  const r = S.rooms.get(S.current);
  const input = $('member-id');
  const user = input.value.trim().toLowerCase().replace(/^@/, '');
  if (!r || !user) return;
  if (!ID_RE.test(user)) {
    toast(`"${user}" is not a valid user id.`, 'error');
    return;
  }
  const res = await api('POST', `/api/rooms/${encodeURIComponent(r.id)}/members`, { user });
  if (res.ok) {
    input.value = '';
    if (!r.members.includes(user)) r.members = [...r.members, user];
    renderRoomHeader();
    toast(`${user} can now see #${r.name}.`);
  } else if (res.status === 404 || res.status === 405) {
    toast(missing(res) && /route/i.test(errText(res)) ? 'This server cannot add members yet.' : `Could not add ${user}: ${errText(res)}`, 'error');
  } else {
    toast(`Could not add ${user}: ${errText(res)}`, 'error');
  }
}

export async function createRoom(e) {
  e.preventDefault();
  const err = $('room-error');
  const id = $('room-id').value.trim();
  if (!ID_RE.test(id)) {
    err.textContent = 'The id must be lower-case letters, digits, _ and - (up to 32), starting with a letter or digit.';
    err.hidden = false;
    $('room-id').focus();
    return;
  }
  const body = { id };
  const name = $('room-display').value.trim();
  const topic = $('room-topic-input').value.trim();
  if (name) body.name = name;
  if (topic) body.topic = topic;
  if ($('room-private').checked) {
    body.private = true;
    const members = $('room-members-input').value.split(/[\s,]+/).map((s) => s.trim().replace(/^@/, '')).filter(Boolean);
    const bad = members.find((m) => !ID_RE.test(m));
    if (bad) {
      err.textContent = `"${bad}" is not a valid user id.`;
      err.hidden = false;
      $('room-members-input').focus();
      return;
    }
    body.members = [...new Set([S.user, ...members])];
  }
  const res = await api('POST', '/api/rooms', body);
  if (res.ok) {
    $('room-dialog').close();
    const r = room(id);
    r.known = true;
    r.name = (res.data && res.data.name) || name || id;
    r.topic = (res.data && res.data.topic) || topic;
    r.private = !!body.private;
    r.members = (res.data && res.data.members) || body.members || [];
    openRoom(id);
    refreshRooms();
    toast(`Room #${id} created.`);
  } else {
    err.textContent = res.status === 409 ? `A room called "${id}" already exists.` : `Could not create the room: ${errText(res)}`;
    err.hidden = false;
  }
}

// ------------------------------------------------------------------ presence

export async function fetchPresence(r) {
  if (!S.features.presence || !r) return;
  const res = await api('GET', `/api/rooms/${encodeURIComponent(r.id)}/presence`);
  if (res.ok && res.data) {
    if (Array.isArray(res.data.online)) r.online = strList(res.data.online);
    if (Array.isArray(res.data.typing)) r.typing = strList(res.data.typing);
    if (r.id === S.current) renderPresence();
  } else if (missing(res) && res.data && /route/i.test(res.data.message || '')) {
    S.features.presence = false; // not served yet
  }
}

/** A `presence` frame: who is online and typing in a room now. */
export function onPresence(f) {
  const r = S.rooms.get(f.room);
  if (!r) return;
  r.online = Array.isArray(f.online) ? strList(f.online) : r.online;
  r.typing = strList(f.typing);
  if (r.id === S.current) renderPresence();
}

/** The socket closed: no answer to a `leave` comes on another socket. */
export function socketClosedForRooms() {
  leaving.clear();
}

/** The session ended. */
export function clearRooms() {
  clearTimeout(roomsTimer);
  leaving.clear();
}
