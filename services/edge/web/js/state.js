// What this page knows of the session and its rooms, shared by the modules, and what it keeps
// in localStorage. The server is the source of truth; state that one module alone needs (the
// socket, the outbox, the composer) lives in that module.

import { newTimeline } from './fold.js';

export const S = {
  token: null,
  user: null,
  kind: null, // 'guest' | 'account', from the token
  rooms: new Map(), // id -> room
  joined: [], // ids of the rooms the user is in, in sidebar order
  left: new Set(), // rooms the user left or was removed from (not joined again by themselves)
  current: null, // id of the open room
  // What the server serves; each is switched off when it answers that it does not.
  features: { read: true, typing: true, presence: true, unread: true, notifications: true },
  notifications: new Map(), // id -> notification
};

/** The room `id`, made up (not joined, not known to exist) when this page has not seen it. */
export function room(id) {
  let r = S.rooms.get(id);
  if (!r) {
    r = {
      id, name: id, topic: '', private: false, members: [], known: false,
      joined: false, loaded: false, loading: null, historyError: null,
      // Per joined room the last seq seen: every (re)connection joins with `since` = that seq.
      lastSeq: 0, head: 0, hasMore: false, loadingOlder: false, listedSeq: 0, joinFailures: 0,
      timeline: newTimeline(),
      unread: 0, mentions: 0, online: null, typing: [],
      readSent: 0, readAt: 0, readTimer: null, live: false,
    };
    S.rooms.set(id, r);
  }
  return r;
}

/** The open room, or undefined. */
export const currentRoom = () => S.rooms.get(S.current);

/** Forgets what was loaded of `r`: its messages come again from the history when it is opened. */
export function unload(r) {
  r.joined = false;
  r.live = false;
  r.loaded = false;
  r.lastSeq = 0;
  r.timeline = newTimeline();
  r.unread = 0;
  r.mentions = 0;
}

/** Starts the session of `user`. */
export function signIn(token, user, kind) {
  S.token = token;
  S.user = user;
  S.kind = kind;
}

/** Ends the session: nothing of it stays in memory. */
export function signOut() {
  S.token = null;
  S.user = null;
  S.kind = null;
  S.rooms = new Map();
  S.joined = [];
  S.left = new Set();
  S.current = null;
  S.notifications.clear();
}

// ------------------------------------------------------------------ localStorage

const STORE = 'chatlog.';
/** The key of the token: another tab logging out removes it. */
export const TOKEN_KEY = `${STORE}token`;

export function store(key, value) {
  try {
    if (value === null || value === undefined) localStorage.removeItem(STORE + key);
    else localStorage.setItem(STORE + key, JSON.stringify(value));
  } catch { /* storage full or off: the client still works */ }
}

export function load(key) {
  try {
    const v = localStorage.getItem(STORE + key);
    return v === null ? null : JSON.parse(v);
  } catch { return null; }
}

/** Keeps the user's rooms (and those left) for the next page. */
export function saveJoined() {
  store(`joined.${S.user}`, S.joined);
  store(`left.${S.user}`, [...S.left]);
}
