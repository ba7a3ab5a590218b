// chatlog web client: plain JavaScript, no build step, no dependencies.
//
// State lives in `S`; the server is the source of truth. Per joined room the client keeps the
// last seq it saw (`room.lastSeq`): every (re)connection joins with `since` = that seq, so the
// server sends exactly what was missed. Events at or below it, and event ids already seen, are
// dropped, so nothing shows twice. Frames that ask for an ack carry a UUID `id`; until acked
// they stay in `S.outbox` and are sent again, with the same id, after a reconnect.
//
// A guest name is held by a secret the server hands out at its first login: the client keeps it
// in localStorage (`chatlog.guest.<user>`), sends it with every guest login for that name, and
// never drops it (logging out keeps it, so the same browser can be that guest again).
//
// Stored events may be redacted (`data: {deleted: true}`, no text, maybe no user): every field
// of a frame or an answer is checked before use.
//
// User text only ever reaches the page through textContent / text nodes, never innerHTML.
'use strict';

(() => {
  const MAX_TEXT = 4000;
  const PAGE = 50;
  const ROOMS_PAGE = 500; // rooms asked per page of the room list (the server's most)
  const PING_EVERY = 5000; // ms between pings while connected
  const PONG_TIMEOUT = 4000; // no frame this long after a ping: the socket is dead
  const CONNECT_TIMEOUT = 8000; // a socket not open after this is abandoned
  const HTTP_TIMEOUT = 15000; // an HTTP request not answered by then failed
  const BACKOFF_MIN = 500; // first reconnect delay, doubled per failed attempt
  const BACKOFF_MAX = 30000; // ... up to this; each delay is jittered by ±50 % (and capped here)
  const TYPING_EVERY = 3000; // at most one typing frame per 3 s
  const TYPING_IDLE = 4000; // stop "typing" after this much quiet
  const READ_EVERY = 2000; // read markers: at most one per room every 2 s
  const GROUP_GAP = 5 * 60 * 1000; // messages of one author within 5 min are grouped
  const QUICK_EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '👀'];
  const ID_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;
  const STORE = 'chatlog.';

  // ------------------------------------------------------------------ state

  const S = {
    token: null,
    user: null,
    kind: null, // 'guest' | 'account', from the token
    rooms: new Map(), // id -> room
    joined: [], // ids of the rooms the user is in, in sidebar order
    left: new Set(), // rooms the user left or was removed from (not joined again by themselves)
    leaving: new Set(), // rooms whose `leave` this page sent and whose `left` answer is due
    current: null, // id of the open room
    ws: null,
    conn: 'offline', // connecting | connected | reconnecting | offline
    everConnected: false,
    connects: 0,
    attempt: 0,
    retryTimer: null,
    pingTimer: null,
    pongTimer: null,
    lastFrameAt: 0,
    outbox: new Map(), // id -> {kind, room, frame, tries}
    pendingJoins: new Map(), // room -> {since}
    readIds: new Set(), // ids of read frames in flight
    local: 0, // order of messages not yet acked
    features: { read: true, typing: true, presence: true, unread: true, notifications: true },
    notifications: new Map(), // id -> notification
    composer: { mode: 'send', target: null },
    typing: { active: false, sentAt: 0, room: null, idleTimer: null, deferTimer: null, lastSentTyping: 0 },
    openPicker: null, // message id whose reaction picker is open
    roomsTimer: null,
    unreadTimer: null,
    lastErrors: new Map(), // toast text -> time, to avoid repeating a message
  };

  // ------------------------------------------------------------------ helpers

  const $ = (id) => document.getElementById(id);

  /** Builds an element. `attrs`: class, text, dataset, on<event>, aria-*, anything else as attribute. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else if (k === 'dataset') Object.assign(el.dataset, v);
        else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
    return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
  }

  const chars = (s) => [...s].length; // the server counts Unicode scalar values

  /** `x` when it is a non-empty string, else `fallback`: fields of frames may be missing. */
  const str = (x, fallback = '') => (typeof x === 'string' && x ? x : fallback);
  const strList = (x) => (Array.isArray(x) ? x.filter((v) => typeof v === 'string') : []);
  /** The name shown for a message's author (a redacted event may not say). */
  const authorName = (m) => m.user || 'unknown';

  function store(key, value) {
    try {
      if (value === null || value === undefined) localStorage.removeItem(STORE + key);
      else localStorage.setItem(STORE + key, JSON.stringify(value));
    } catch { /* storage full or off: the client still works */ }
  }
  function load(key) {
    try {
      const v = localStorage.getItem(STORE + key);
      return v === null ? null : JSON.parse(v);
    } catch { return null; }
  }

  function tokenClaims(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(decodeURIComponent(escape(atob(part))));
    } catch { return null; }
  }

  function fmtTime(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }
  function fmtFull(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? '' : d.toLocaleString();
  }
  function dayKey(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? '' : d.toDateString();
  }
  function fmtDay(iso) {
    const d = new Date(iso);
    const today = new Date();
    const yesterday = new Date(Date.now() - 864e5);
    if (d.toDateString() === today.toDateString()) return 'Today';
    if (d.toDateString() === yesterday.toDateString()) return 'Yesterday';
    return d.toLocaleDateString([], { weekday: 'long', month: 'long', day: 'numeric' });
  }

  function hue(name) {
    let x = 0;
    for (const c of name) x = (x * 31 + c.codePointAt(0)) % 360;
    return x;
  }
  function avatar(name, cls = 'avatar') {
    const el = h('span', { class: cls, 'aria-hidden': 'true', text: (name[0] || '?').toUpperCase() });
    el.style.setProperty('--hue', hue(name));
    return el;
  }

  const ICONS = {
    lock: ['M7 11V8a5 5 0 0 1 10 0v3', 'M5 11h14v10H5z'],
    reply: ['M9 15l-5-5 5-5', 'M4 10h10a6 6 0 0 1 6 6v3'],
    smile: ['M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18z', 'M8 14s1.5 2 4 2 4-2 4-2', 'M9 9.5h.01', 'M15 9.5h.01'],
    edit: ['M12 20h9', 'M16.5 3.5a2.1 2.1 0 0 1 3 3L7 19l-4 1 1-4z'],
    trash: ['M3 6h18', 'M8 6V4h8v2', 'M19 6l-1 14H6L5 6', 'M10 11v6', 'M14 11v6'],
  };
  /** A small stroked SVG icon (decorative: the button around it has the label). */
  function icon(name) {
    const NS = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    svg.setAttribute('class', `icon icon-${name}`);
    for (const d of ICONS[name]) {
      const path = document.createElementNS(NS, 'path');
      path.setAttribute('d', d);
      svg.append(path);
    }
    return svg;
  }

  function toast(text, kind = 'info', onClick) {
    const now = Date.now();
    const last = S.lastErrors.get(text);
    if (last && now - last < 10000) return;
    S.lastErrors.set(text, now);
    const box = $('toasts');
    while (box.children.length >= 3) box.firstChild.remove();
    const el = h('div', { class: `toast ${kind}` });
    if (onClick) {
      el.append(h('button', { type: 'button', class: 'toast-body', text, onclick: () => { el.remove(); onClick(); } }));
    } else {
      el.append(h('span', { class: 'toast-body', text }));
    }
    el.append(h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', text: '×', onclick: () => el.remove() }));
    box.append(el);
    setTimeout(() => el.remove(), kind === 'error' ? 8000 : 6000);
  }

  let announceBuf = [];
  let announceTimer = null;
  function announce(text) {
    announceBuf.push(text);
    if (announceTimer) return;
    announceTimer = setTimeout(() => {
      announceTimer = null;
      const el = $('announcer');
      const items = announceBuf.splice(0);
      const shown = items.length > 3 ? [`${items.length} new messages`] : items;
      el.replaceChildren(...shown.map((t) => h('p', { text: t })));
    }, 500);
  }

  // ------------------------------------------------------------------ HTTP

  /** `{ok, status, data}`; never throws. A 401 on an authenticated call ends the session. */
  async function api(method, path, body) {
    const headers = {};
    const token = S.token;
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), HTTP_TIMEOUT);
    let res;
    let text = '';
    try {
      res = await fetch(path, {
        method, headers, signal: abort.signal, body: body === undefined ? undefined : JSON.stringify(body),
      });
      text = await res.text();
    } catch {
      return { ok: false, status: 0, data: { code: 'network', message: 'network error' } };
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = { message: text }; }
    }
    if (res.status === 401 && token && S.token === token && !path.startsWith('/api/auth/')) sessionExpired();
    return { ok: res.ok, status: res.status, data };
  }
  const errText = (r) => (r.data && r.data.message) || (r.status ? `HTTP ${r.status}` : 'network error');
  /** A route this server does not have (yet), or a view that is not running. */
  const missing = (r) => r.status === 404 || r.status === 501 || r.status === 503 || r.status === 405;

  // ------------------------------------------------------------------ rooms and messages

  function room(id) {
    let r = S.rooms.get(id);
    if (!r) {
      r = {
        id, name: id, topic: '', private: false, members: [], known: false,
        joined: false, loaded: false, loading: null, historyError: null,
        lastSeq: 0, hasMore: false, loadingOlder: false,
        msgs: new Map(), list: [], orphans: new Map(), seen: new Set(), seenOrder: [],
        unread: 0, mentions: 0, online: null, typing: [],
        readSent: 0, readAt: 0, readTimer: null, live: false,
      };
      S.rooms.set(id, r);
    }
    return r;
  }

  const key = (m) => (m.seq != null ? m.seq : 1e15 + m.local);

  /** A message from a history answer, an event's data or this page; any field may be missing. */
  function makeMessage(fields) {
    const deleted = fields.deleted === true;
    const reactions = fields.reactions && typeof fields.reactions === 'object' && !deleted ? fields.reactions : {};
    return {
      id: fields.id, seq: typeof fields.seq === 'number' ? fields.seq : null, local: fields.local ?? 0,
      user: str(fields.user), text: deleted ? '' : str(fields.text), time: str(fields.time, new Date().toISOString()),
      reply_to: str(fields.reply_to, null), edited: !!fields.edited, deleted,
      mentions: deleted ? [] : strList(fields.mentions),
      reactions: new Map(Object.entries(reactions).map(([e, us]) => [e, new Set(strList(us))])),
      pending: !!fields.pending, failed: null, el: null,
    };
  }

  /** Marks `m` deleted: no text, no reactions, nothing to edit or reply to. */
  function markDeleted(m) {
    m.deleted = true;
    m.text = '';
    m.mentions = [];
    m.reactions = new Map();
    if (S.composer.target === m.id) cancelComposerMode();
  }

  /** Inserts `m` into the room's sorted list (and the page when the room is open). */
  function insertMessage(r, m) {
    r.msgs.set(m.id, m);
    const k = key(m);
    let lo = 0;
    let hi = r.list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (key(r.list[mid]) < k) lo = mid + 1; else hi = mid;
    }
    r.list.splice(lo, 0, m);
    const orphans = r.orphans.get(m.id);
    if (orphans) {
      r.orphans.delete(m.id);
      for (const ev of orphans) applyChange(r, ev, false);
    }
    if (r.id === S.current) {
      const next = r.list[lo + 1];
      const el = renderMessage(r, m);
      $('messages').insertBefore(el, next ? next.el : null);
      if (next) renderMessage(r, next);
    }
  }

  function repositionMessage(r, m) {
    const i = r.list.indexOf(m);
    if (i >= 0) r.list.splice(i, 1);
    const prevNext = r.list[i];
    r.msgs.delete(m.id);
    insertMessage(r, m);
    if (r.id === S.current && prevNext && prevNext.el) renderMessage(r, prevNext);
  }

  function rememberEvent(r, id) {
    if (!id) return true;
    if (r.seen.has(id)) return false;
    r.seen.add(id);
    r.seenOrder.push(id);
    if (r.seenOrder.length > 5000) r.seen.delete(r.seenOrder.shift());
    return true;
  }

  /** Merges a page of the history API into the room. */
  function mergeHistory(r, messages) {
    for (const raw of messages) {
      if (!raw || typeof raw.id !== 'string' || !raw.id) continue;
      const have = r.msgs.get(raw.id);
      if (have) {
        // A message of ours still waiting for its ack is stored already: take its seq.
        if (have.seq == null && typeof raw.seq === 'number') {
          have.seq = raw.seq;
          have.pending = false;
          have.failed = null;
          S.outbox.delete(raw.id);
          saveOutbox();
          repositionMessage(r, have);
        }
        continue; // otherwise what we have is at least as new
      }
      insertMessage(r, makeMessage(raw));
      if (typeof raw.seq === 'number' && raw.seq > r.lastSeq && !r.live) r.lastSeq = raw.seq;
    }
  }

  async function loadInitial(r) {
    if (r.loaded) return true;
    if (r.loading) return r.loading;
    r.loading = (async () => {
      const res = await api('GET', `/api/rooms/${encodeURIComponent(r.id)}/messages?limit=${PAGE}`);
      r.loading = null;
      if (res.ok && res.data && Array.isArray(res.data.messages)) {
        const stick = r.id === S.current && (isAtBottom() || !r.list.length);
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

  async function loadOlder(r) {
    if (r.loadingOlder || !r.hasMore) return;
    const oldest = r.list.find((m) => m.seq != null);
    if (!oldest) return;
    r.loadingOlder = true;
    renderHistoryTop();
    const res = await api('GET', `/api/rooms/${encodeURIComponent(r.id)}/messages?before=${oldest.seq}&limit=${PAGE}`);
    r.loadingOlder = false;
    if (res.ok && res.data && Array.isArray(res.data.messages)) {
      const scroller = $('scroller');
      const before = scroller.scrollHeight;
      const top = scroller.scrollTop;
      mergeHistory(r, res.data.messages);
      r.hasMore = !!res.data.has_more;
      if (r.id === S.current) scroller.scrollTop = top + (scroller.scrollHeight - before);
    } else if (res.status !== 401) {
      toast(`Could not load older messages: ${errText(res)}`, 'error');
    }
    renderHistoryTop();
  }

  /** Applies one stored room event (live or caught up). */
  function applyEvent(r, seq, ev, live) {
    const d = ev.data && typeof ev.data === 'object' ? ev.data : {};
    switch (ev.type) {
      case 'chat.message.posted':
        applyPosted(r, seq, ev, d, live);
        return;
      case 'chat.message.edited':
      case 'chat.message.deleted':
      case 'chat.reaction.added':
      case 'chat.reaction.removed':
        applyChange(r, ev, true);
        return;
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
          if (who === S.user && r.private && live && seq > (r.head || 0)) {
            if (d.user === S.user) { S.left.add(r.id); forgetRoom(r.id); } else removedFrom(r.id);
            return;
          }
        }
        if (r.id === S.current) renderRoomHeader();
        return;
      }
      default:
        // chat.room.* / chat.member.* we do not know yet, or anything newer: ignored.
    }
  }

  /**
   * A `chat.message.posted`: a new message, or one of ours (sent from this page, or seen in the
   * history already) coming back from the log. A stored one may be redacted: `data` is then
   * `{deleted: true}`, without text, mentions or user.
   */
  function applyPosted(r, seq, ev, d, live) {
    if (typeof ev.id !== 'string' || !ev.id) return;
    const existing = r.msgs.get(ev.id);
    if (existing) {
      const moved = existing.seq !== seq;
      existing.seq = seq;
      existing.pending = false;
      existing.failed = null;
      existing.time = str(ev.time, existing.time);
      if (d.deleted === true) markDeleted(existing);
      if (S.outbox.delete(ev.id)) saveOutbox();
      if (moved) repositionMessage(r, existing); else if (existing.el) renderMessage(r, existing);
      return;
    }
    const m = makeMessage({
      id: ev.id, seq, user: d.user, text: d.text, time: ev.time, reply_to: d.reply_to, mentions: d.mentions,
      deleted: d.deleted === true,
    });
    const atBottom = r.id === S.current && isAtBottom();
    insertMessage(r, m);
    if (live && m.user !== S.user && !m.deleted) onIncoming(r, m, atBottom);
    if (r.id === S.current) afterAppend(atBottom || (!!m.user && m.user === S.user));
  }

  /**
   * An edit, delete or reaction. One naming a message not loaded yet is kept for later; a
   * redacted edit (`{deleted: true}`, no `message_id`) names none and changes nothing.
   */
  function applyChange(r, ev, canOrphan) {
    const d = ev.data && typeof ev.data === 'object' ? ev.data : {};
    if (typeof d.message_id !== 'string' || !d.message_id) return;
    const m = r.msgs.get(d.message_id);
    if (!m) {
      if (canOrphan) {
        const list = r.orphans.get(d.message_id) || [];
        list.push(ev);
        r.orphans.set(d.message_id, list);
        if (r.orphans.size > 1000) r.orphans.delete(r.orphans.keys().next().value);
      }
      return;
    }
    switch (ev.type) {
      case 'chat.message.edited':
        if (m.deleted) return;
        if (d.deleted === true) { markDeleted(m); break; }
        if (typeof d.text !== 'string') return;
        m.text = d.text;
        if (Array.isArray(d.mentions)) m.mentions = strList(d.mentions);
        m.edited = true;
        break;
      case 'chat.message.deleted':
        markDeleted(m);
        break;
      case 'chat.reaction.added': {
        if (m.deleted || typeof d.emoji !== 'string' || !d.emoji || typeof d.user !== 'string' || !d.user) return;
        const set = m.reactions.get(d.emoji) || new Set();
        set.add(d.user);
        m.reactions.set(d.emoji, set);
        break;
      }
      case 'chat.reaction.removed': {
        const set = m.reactions.get(d.emoji);
        if (!set) return;
        set.delete(d.user);
        if (!set.size) m.reactions.delete(d.emoji);
        break;
      }
      default:
        return;
    }
    if (m.el) renderMessage(r, m);
    // Replies quoting this message show its new text.
    if (r.id === S.current) {
      for (const other of r.list) if (other.reply_to === m.id && other.el) renderMessage(r, other);
    }
  }

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

  // ------------------------------------------------------------------ WebSocket

  function setConn(state, detail) {
    S.conn = state;
    const el = $('conn');
    el.dataset.state = state;
    el.dataset.connects = String(S.connects);
    const words = {
      connecting: 'connecting…',
      connected: 'connected',
      reconnecting: detail ? `reconnecting in ${Math.ceil(detail / 1000)} s…` : 'reconnecting…',
      offline: 'offline',
    };
    $('conn-text').textContent = words[state] || state;
    $('conn-retry').hidden = !(state === 'reconnecting' && detail && detail > 1500);
    $('offline-banner').hidden = state === 'connected' || !S.everConnected;
    renderComposerState();
  }

  function wsSend(frame) {
    const ws = S.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  function connect() {
    clearTimeout(S.retryTimer);
    S.retryTimer = null;
    if (!S.token || S.ws) return;
    setConn(S.everConnected ? 'reconnecting' : 'connecting');
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws?token=${encodeURIComponent(S.token)}`;
    let ws;
    try {
      ws = new WebSocket(url);
    } catch {
      scheduleReconnect(false, false);
      return;
    }
    S.ws = ws;
    let opened = false;
    const openTimer = setTimeout(() => { if (!opened) dropSocket(ws, 'connect timeout', false); }, CONNECT_TIMEOUT);
    ws.onopen = () => {
      clearTimeout(openTimer);
      if (S.ws !== ws) return;
      opened = true;
      onOpen(ws);
    };
    ws.onmessage = (e) => {
      if (S.ws !== ws) return;
      S.lastFrameAt = Date.now();
      let f;
      try { f = JSON.parse(e.data); } catch { return; }
      if (f && typeof f === 'object') onFrame(f);
    };
    ws.onerror = () => { /* a close follows */ };
    ws.onclose = (e) => {
      clearTimeout(openTimer);
      if (S.ws !== ws) return;
      $('conn').dataset.reason = `closed ${e.code}${e.reason ? `: ${e.reason}` : ''}`;
      onClosed(e.code, opened);
    };
  }

  /** Gives up on a socket now (dead or offline), without waiting for the close handshake. */
  function dropSocket(ws, why, wasOpen = true) {
    if (!ws || S.ws !== ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(4000, why); } catch { /* already closed */ }
    $('conn').dataset.reason = why;
    onClosed(4000, wasOpen);
  }

  function onOpen(ws) {
    S.attempt = 0;
    S.connects += 1;
    S.everConnected = true;
    S.lastFrameAt = Date.now();
    setConn('connected');
    startPing(ws);
    for (const id of S.joined) joinRoom(room(id));
    // Everything not acked yet goes again, with the same id: the server stores it once. A room
    // whose history is still loading gets its own after the load (which may show them stored).
    for (const [, entry] of S.outbox) {
      const r = S.rooms.get(entry.room);
      if (!r || r.loaded || !r.joined) wsSend(entry.frame);
    }
    if (S.connects > 1) {
      refreshRooms();
      refreshUnread();
      refreshNotifications();
    }
  }

  function onClosed(code, wasOpen) {
    stopPing();
    S.ws = null;
    S.pendingJoins.clear();
    S.readIds.clear();
    S.leaving.clear(); // no answer to a `leave` comes on another socket
    for (const r of S.rooms.values()) { r.live = false; r.typing = []; }
    renderPresence();
    if (!S.token) return;
    if (code === 4401) {
      sessionExpired();
      return;
    }
    if (!wasOpen && S.attempt >= 1) {
      // Refused before the upgrade: maybe the token (HTTP 401), maybe the network.
      api('GET', '/api/rooms');
    }
    // 1001 (edge going away) and 1008 (slow consumer): reconnect at once and resume.
    scheduleReconnect(code === 1001 || code === 1008, wasOpen);
  }

  function scheduleReconnect(fast, wasOpen) {
    clearTimeout(S.retryTimer);
    if (!S.token) return;
    if (navigator.onLine === false) {
      setConn('offline');
      // The `online` event reconnects; check now and then in case it never comes.
      S.retryTimer = setTimeout(connect, BACKOFF_MAX);
      return;
    }
    // A socket that was up (or an edge going away) is tried again at once, the first time.
    const delay = fast || (wasOpen && S.attempt === 0) ? 100 + Math.random() * 400 : backoff(S.attempt);
    S.attempt += 1;
    setConn('reconnecting', delay);
    S.retryTimer = setTimeout(connect, delay);
  }

  /**
   * The wait before reconnect attempt `attempt` (0-based): 0.5 s doubling per attempt, ±50 %
   * jitter so that the clients of an edge that went away do not all come back at once, never
   * more than BACKOFF_MAX.
   */
  function backoff(attempt) {
    const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** Math.min(attempt, 16));
    return Math.min(BACKOFF_MAX, base * (0.5 + Math.random()));
  }

  function startPing(ws) {
    stopPing();
    S.pingTimer = setInterval(() => {
      if (S.ws !== ws) return;
      const sentAt = Date.now();
      if (!wsSend({ type: 'ping' })) return;
      clearTimeout(S.pongTimer);
      S.pongTimer = setTimeout(() => {
        if (S.ws === ws && S.lastFrameAt < sentAt) dropSocket(ws, 'ping timeout');
      }, PONG_TIMEOUT);
    }, PING_EVERY);
  }
  function stopPing() {
    clearInterval(S.pingTimer);
    clearTimeout(S.pongTimer);
    S.pingTimer = S.pongTimer = null;
  }

  /** Joins `r` on the current socket, from the last seq seen (history first when not loaded). */
  async function joinRoom(r) {
    const ws = S.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !r.joined) return;
    const waited = !r.loaded;
    if (waited) await loadInitial(r);
    if (S.ws !== ws || ws.readyState !== WebSocket.OPEN || !r.joined) return;
    if (waited) for (const [, entry] of S.outbox) if (entry.room === r.id) wsSend(entry.frame);
    // The id names the room, so an error answering this join says which join it answers.
    const frame = { type: 'join', room: r.id, id: `join:${r.id}` };
    if (r.loaded || r.lastSeq > 0) frame.since = r.lastSeq;
    S.pendingJoins.set(r.id, { since: frame.since });
    wsSend(frame);
  }

  function onFrame(f) {
    switch (f.type) {
      case 'event': {
        const r = S.rooms.get(f.room);
        if (!r || !r.joined || typeof f.seq !== 'number' || !f.event || typeof f.event !== 'object') return;
        if (f.seq <= r.lastSeq) return; // seen already
        r.lastSeq = f.seq;
        if (!rememberEvent(r, f.event.id)) return;
        applyEvent(r, f.seq, f.event, true);
        if (r.id === S.current) scheduleRead(r);
        return;
      }
      case 'joined': {
        const r = S.rooms.get(f.room);
        const pending = S.pendingJoins.get(f.room);
        S.pendingJoins.delete(f.room);
        if (!r) return;
        r.live = true;
        r.joinFailures = 0;
        if (typeof f.head === 'number') r.head = f.head;
        // Only a join without `since` starts at the head; one with `since` is caught up by events.
        if (pending && pending.since === undefined && typeof f.head === 'number' && f.head > r.lastSeq) {
          r.lastSeq = f.head;
        }
        if (r.id === S.current) {
          fetchPresence(r);
          scheduleRead(r);
        }
        return;
      }
      case 'ack': {
        const entry = S.outbox.get(f.id);
        S.outbox.delete(f.id);
        S.readIds.delete(f.id);
        if (entry && entry.kind === 'send') saveOutbox();
        if (!entry || entry.kind !== 'send') return;
        const r = S.rooms.get(entry.room);
        const m = r && r.msgs.get(f.id);
        if (!m) return;
        m.pending = false;
        m.failed = null;
        if (m.seq !== f.seq && typeof f.seq === 'number') {
          m.seq = f.seq;
          repositionMessage(r, m);
        } else if (m.el) {
          renderMessage(r, m);
        }
        return;
      }
      case 'error':
        onError(f);
        return;
      case 'presence': {
        const r = S.rooms.get(f.room);
        if (!r) return;
        r.online = Array.isArray(f.online) ? strList(f.online) : r.online;
        r.typing = strList(f.typing);
        if (r.id === S.current) renderPresence();
        return;
      }
      case 'notification':
        if (f.event && f.event.data && typeof f.event.data === 'object') {
          const d = f.event.data;
          addNotification({
            id: f.event.id, room: d.room, seq: d.seq, message_id: d.message_id, by: d.by || d.user,
            text: d.text, reason: d.reason, time: f.event.time, read: false,
          }, true);
        }
        return;
      case 'left':
        onLeft(f.room);
        return;
      case 'pong':
      default:
    }
  }

  /** `left`: the answer to this page's own `leave`, or, unasked, the user was removed from the room. */
  function onLeft(roomId) {
    if (typeof roomId !== 'string') return;
    if (S.leaving.delete(roomId)) return;
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

  function onError(f) {
    const code = f.code || 'internal';
    const message = f.message || code;
    if (f.id && S.readIds.has(f.id)) {
      S.readIds.delete(f.id);
      if (code === 'bad_request') S.features.read = false; // an edge that does not keep read markers
      return;
    }
    const entry = f.id ? S.outbox.get(f.id) : null;
    if (entry) {
      if (code === 'unavailable' || code === 'rate_limited' || code === 'internal') {
        entry.tries = (entry.tries || 0) + 1;
        if (entry.tries <= 5) {
          const delay = code === 'rate_limited' ? 1000 * entry.tries : 1500 * entry.tries;
          setTimeout(() => { if (S.outbox.get(f.id) === entry) wsSend(entry.frame); }, delay);
          return;
        }
      }
      S.outbox.delete(f.id);
      if (entry.kind === 'send') {
        const r = S.rooms.get(entry.room);
        const m = r && r.msgs.get(f.id);
        if (m) {
          m.failed = message;
          if (m.el) renderMessage(r, m);
        }
        saveOutbox();
      } else {
        const what = { edit: 'edit the message', delete: 'delete the message', react: 'react' }[entry.kind] || 'do that';
        toast(`Could not ${what}: ${message}`, 'error');
      }
      return;
    }
    const catchUp = /^could not catch up in ([a-z0-9][a-z0-9_-]*)/.exec(message);
    if (catchUp) {
      const r = S.rooms.get(catchUp[1]);
      if (r && r.joined) setTimeout(() => joinRoom(r), 2000);
      return;
    }
    const joinRoomId = failedJoin(f, code, message);
    if (joinRoomId) {
      onJoinError(joinRoomId, code, message);
      return;
    }
    if (Date.now() - S.typing.lastSentTyping < 2000 && code === 'bad_request' && /typing/i.test(message)) {
      S.features.typing = false; // not served yet: stop sending them
      return;
    }
    if (code === 'bad_request' && /typing|read|presence/i.test(message)) return; // features still to come
    toast(`Server: ${message}`, 'error');
  }

  /**
   * The room of the join an `error` answers, or null. Joins carry the id `join:<room>`, which the
   * error names; an id-less error (a server that dropped the id) is taken, as join answers come in
   * order, for the oldest join still waiting when it reads like a join's.
   */
  function failedJoin(f, code, message) {
    if (typeof f.id === 'string' && f.id.startsWith('join:')) {
      const roomId = f.id.slice('join:'.length);
      return S.pendingJoins.has(roomId) ? roomId : null;
    }
    if (f.id || !S.pendingJoins.size) return null;
    if (typeof f.room === 'string') return S.pendingJoins.has(f.room) ? f.room : null;
    if (code !== 'unavailable' && !/room|join/i.test(message)) return null;
    const [roomId] = S.pendingJoins.keys();
    return roomId;
  }

  function onJoinError(roomId, code, message) {
    S.pendingJoins.delete(roomId);
    const r = S.rooms.get(roomId);
    if (code === 'not_found' || code === 'forbidden') {
      toast(`#${roomId}: ${code === 'not_found' ? 'no such room, or it is private' : message}.`, 'error');
      forgetRoom(roomId);
    } else if (code === 'unavailable' || code === 'internal') {
      // The server cannot decide the join yet (a view starting): again, later and later.
      if (!r) return;
      r.joinFailures = (r.joinFailures || 0) + 1;
      setTimeout(() => joinRoom(r), backoff(r.joinFailures));
    } else {
      toast(`Could not join #${roomId}: ${message}`, 'error');
    }
  }

  // ------------------------------------------------------------------ actions

  /** Sends a frame that expects an ack; kept until acked and re-sent after reconnects. */
  function sendOp(kind, roomId, frame) {
    frame.id = frame.id || uuid();
    S.outbox.set(frame.id, { kind, room: roomId, frame, tries: 0, at: Date.now() });
    saveOutbox();
    wsSend(frame); // when offline it goes on the next connection
    return frame.id;
  }

  /** Unacked messages survive a reload: they are sent again, with their ids, by the next page. */
  function saveOutbox() {
    if (!S.user) return;
    const sends = [...S.outbox.values()].filter((e) => e.kind === 'send' && !S.rooms.get(e.room)?.msgs.get(e.frame.id)?.failed);
    store(`outbox.${S.user}`, sends.map((e) => ({ frame: e.frame, at: e.at })));
  }

  function restoreOutbox() {
    const saved = load(`outbox.${S.user}`);
    if (!Array.isArray(saved)) return;
    for (const { frame, at } of saved) {
      if (!frame || frame.type !== 'send' || !frame.id || !ID_RE.test(frame.room || '')) continue;
      const r = room(frame.room);
      if (r.msgs.has(frame.id)) continue;
      const m = makeMessage({
        id: frame.id, user: S.user, text: frame.text, reply_to: frame.reply_to, pending: true,
        local: ++S.local, time: new Date(at || Date.now()).toISOString(),
      });
      m.mentions = mentionsIn(m.text);
      insertMessage(r, m);
      S.outbox.set(frame.id, { kind: 'send', room: r.id, frame, tries: 0, at });
    }
  }

  function sendMessage(r, text, replyTo) {
    const id = uuid();
    const m = makeMessage({ id, user: S.user, text, reply_to: replyTo, pending: true, local: ++S.local });
    m.mentions = mentionsIn(text);
    insertMessage(r, m);
    afterAppend(true);
    const frame = { type: 'send', room: r.id, text, id };
    if (replyTo) frame.reply_to = replyTo;
    sendOp('send', r.id, frame);
  }

  function retryMessage(r, m) {
    m.failed = null;
    m.pending = true;
    renderMessage(r, m);
    const frame = { type: 'send', room: r.id, text: m.text, id: m.id };
    if (m.reply_to) frame.reply_to = m.reply_to;
    sendOp('send', r.id, frame);
  }

  function discardMessage(r, m) {
    S.outbox.delete(m.id);
    saveOutbox();
    r.msgs.delete(m.id);
    const i = r.list.indexOf(m);
    if (i >= 0) r.list.splice(i, 1);
    if (m.el) m.el.remove();
    const next = r.list[i];
    if (next && next.el) renderMessage(r, next);
  }

  function mentionsIn(text) {
    const out = [];
    const re = /(^|[^a-z0-9_@-])@([a-z0-9][a-z0-9_-]{0,31})(?![a-z0-9_-])/g;
    let x;
    while ((x = re.exec(text))) if (!out.includes(x[2])) out.push(x[2]);
    return out;
  }

  function react(r, m, emoji) {
    const mine = m.reactions.get(emoji)?.has(S.user);
    const frame = { type: 'react', room: r.id, message_id: m.id, emoji };
    if (mine) frame.remove = true;
    sendOp('react', r.id, frame);
  }

  function deleteMessage(r, m) {
    if (!window.confirm('Delete this message?')) return;
    sendOp('delete', r.id, { type: 'delete', room: r.id, message_id: m.id });
  }

  function startEdit(r, m) {
    S.composer = { mode: 'edit', target: m.id };
    const input = $('composer-input');
    input.value = m.text;
    renderComposerContext();
    autoGrow();
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  function startReply(r, m) {
    S.composer = { mode: 'reply', target: m.id };
    renderComposerContext();
    $('composer-input').focus();
  }

  function cancelComposerMode() {
    const wasEdit = S.composer.mode === 'edit';
    S.composer = { mode: 'send', target: null };
    if (wasEdit) $('composer-input').value = '';
    renderComposerContext();
    autoGrow();
    updateCount();
  }

  function submitComposer() {
    const r = S.rooms.get(S.current);
    const input = $('composer-input');
    const text = input.value;
    if (!r || !text.trim()) return;
    if (chars(text) > MAX_TEXT) {
      toast(`Messages are at most ${MAX_TEXT} characters.`, 'error');
      return;
    }
    const { mode, target } = S.composer;
    if (mode === 'edit') {
      const m = r.msgs.get(target);
      if (m && m.text !== text && !m.deleted) {
        sendOp('edit', r.id, { type: 'edit', room: r.id, message_id: m.id, text });
      }
    } else {
      sendMessage(r, text, mode === 'reply' ? target : null);
    }
    input.value = '';
    S.composer = { mode: 'send', target: null };
    renderComposerContext();
    autoGrow();
    updateCount();
    stopTyping();
  }

  // typing: one `active:true` at most every 3 s while typing; `active:false` once when done
  function onTypingInput() {
    const r = S.rooms.get(S.current);
    if (!r || !S.features.typing) return;
    if (!$('composer-input').value.trim()) { stopTyping(); return; }
    if (S.typing.room && S.typing.room !== r.id) stopTyping();
    const now = Date.now();
    const wait = S.typing.sentAt + TYPING_EVERY - now;
    if (wait <= 0) {
      sendTyping(r.id);
    } else if (!S.typing.active && !S.typing.deferTimer) {
      // Too soon after the last one: say it as soon as it is allowed, if still typing then.
      S.typing.deferTimer = setTimeout(() => {
        S.typing.deferTimer = null;
        if (S.current === r.id && !S.typing.active && $('composer-input').value.trim()
          && document.activeElement === $('composer-input')) sendTyping(r.id);
      }, wait);
    }
    clearTimeout(S.typing.idleTimer);
    S.typing.idleTimer = setTimeout(stopTyping, TYPING_IDLE);
  }
  function sendTyping(roomId) {
    if (!wsSend({ type: 'typing', room: roomId, active: true })) return;
    const now = Date.now();
    S.typing.sentAt = now;
    S.typing.lastSentTyping = now;
    S.typing.active = true;
    S.typing.room = roomId;
  }
  function stopTyping() {
    clearTimeout(S.typing.idleTimer);
    clearTimeout(S.typing.deferTimer);
    S.typing.deferTimer = null;
    if (S.typing.active && S.typing.room && S.features.typing) {
      wsSend({ type: 'typing', room: S.typing.room, active: false });
      S.typing.lastSentTyping = Date.now();
    }
    S.typing.active = false;
    S.typing.room = null;
  }

  // read markers: when the open room's newest message is on screen; throttled per room
  function scheduleRead(r) {
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
    if (wsSend({ type: 'read', room: r.id, seq: r.lastSeq, id })) {
      S.readIds.add(id);
      r.readSent = r.lastSeq;
      r.readAt = Date.now();
    }
  }

  // ------------------------------------------------------------------ rooms: list, open, create

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
      joinedSave();
      joinRoom(r);
    }
  }

  async function refreshRooms() {
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
      clearTimeout(S.roomsTimer);
      S.roomsTimer = setTimeout(refreshRooms, 5000);
    }
    renderRooms();
    if (S.current) renderRoomHeader();
    return !!rooms;
  }

  async function refreshUnread() {
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

  function joinedSave() {
    store(`joined.${S.user}`, S.joined);
    store(`left.${S.user}`, [...S.left]);
  }

  function openRoom(id, opts = {}) {
    if (!ID_RE.test(id)) {
      toast('Room ids are lower-case letters, digits, _ and -.', 'error');
      return;
    }
    const r = room(id);
    S.left.delete(id);
    if (!r.joined) {
      r.joined = true;
      S.joined.push(id);
      joinedSave();
      joinRoom(r);
    }
    if (S.current !== id) {
      stopTyping();
      if (S.composer.mode !== 'send') cancelComposerMode();
      S.current = id;
      S.openPicker = null;
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

  function forgetRoom(id) {
    const r = S.rooms.get(id);
    if (r) {
      r.joined = false;
      r.live = false;
      r.loaded = false;
      r.msgs.clear();
      r.list = [];
      r.lastSeq = 0;
      r.seen.clear();
      r.seenOrder = [];
      r.orphans.clear();
      r.unread = 0;
      r.mentions = 0;
      if (!r.known) S.rooms.delete(id);
    }
    S.joined = S.joined.filter((x) => x !== id);
    joinedSave();
    if (S.current === id) {
      S.current = null;
      const next = S.joined[0];
      if (next) openRoom(next, { keepFocus: true });
      else renderRoom();
    }
    renderRooms();
  }

  async function leaveRoom(id) {
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
    if (wsSend({ type: 'leave', room: id })) S.leaving.add(id);
    forgetRoom(id);
  }

  async function addMember(e) {
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

  async function createRoom(e) {
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

  // ------------------------------------------------------------------ presence and notifications

  async function fetchPresence(r) {
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

  function addNotification(n, alert) {
    if (!n || !n.id || S.notifications.has(n.id)) return;
    // One entry per message: the server's replaces the one this page made up from the event.
    let seenBefore = false;
    for (const [id, other] of S.notifications) {
      if (!other.message_id || other.message_id !== n.message_id) continue;
      if (!other.local) return; // the server's is there already
      S.notifications.delete(id);
      alert = false;
      seenBefore = seenBefore || other.read;
    }
    S.notifications.set(n.id, n);
    const seeing = n.room === S.current && document.visibilityState === 'visible' && isAtBottom();
    if (!n.read && (seeing || seenBefore)) markNotificationsRead([n.id]);
    renderNotifications();
    if (alert && !n.read) {
      toast(`@${n.by || 'someone'} mentioned you in #${n.room || '?'}: ${notificationText(n).slice(0, 120)}`, 'mention', () => openNotification(n));
    }
  }

  /** What a notification says: the message's text, which is empty once the message was deleted. */
  function notificationText(n) {
    return typeof n.text === 'string' && n.text ? n.text : 'message deleted';
  }

  async function refreshNotifications() {
    if (!S.features.notifications) return;
    const res = await api('GET', '/api/notifications');
    if (res.ok && res.data && Array.isArray(res.data.notifications)) {
      for (const n of res.data.notifications) {
        if (n && typeof n === 'object') addNotification({ ...n, read: !!n.read }, false);
      }
      renderNotifications();
    } else if (missing(res) || res.status === 400) {
      S.features.notifications = false;
    }
  }

  function markNotificationsRead(ids) {
    const serverIds = [];
    for (const id of ids) {
      const n = S.notifications.get(id);
      if (!n || n.read) continue;
      n.read = true;
      if (!n.local) serverIds.push(id);
    }
    if (serverIds.length && S.features.notifications) api('POST', '/api/notifications/read', { ids: serverIds });
    renderNotifications();
  }

  function markRoomNotificationsRead(roomId) {
    const ids = [...S.notifications.values()].filter((n) => n.room === roomId && !n.read).map((n) => n.id);
    if (ids.length) markNotificationsRead(ids);
  }

  function openNotification(n) {
    toggleNotifications(false);
    markNotificationsRead([n.id]);
    if (n.room) {
      openRoom(n.room, { keepFocus: true });
      const r = S.rooms.get(n.room);
      const m = r && r.msgs.get(n.message_id);
      if (m && m.el) focusMessage(m);
    }
  }

  function toggleNotifications(open) {
    const panel = $('notif-panel');
    const show = open === undefined ? panel.hidden : open;
    panel.hidden = !show;
    $('notif-toggle').setAttribute('aria-expanded', String(show));
    if (show) {
      renderNotifications();
      const first = panel.querySelector('button');
      if (first) first.focus();
    }
  }

  // ------------------------------------------------------------------ rendering

  function renderRooms() {
    const joined = $('joined-rooms');
    const other = $('other-rooms');
    const noted = new Map(); // room -> unread mention notifications
    for (const n of S.notifications.values()) if (!n.read && n.room) noted.set(n.room, (noted.get(n.room) || 0) + 1);
    const item = (r, isJoined) => {
      const mentioned = r.mentions || (r.unread && noted.get(r.id)) || 0;
      const badge = r.unread ? h('span', { class: `badge${mentioned ? ' mention' : ''}`, text: mentioned ? `@${r.unread}` : String(r.unread) }) : null;
      const label = `${r.private ? 'Private room' : 'Room'} ${r.name}${r.unread ? `, ${r.unread} unread` : ''}${mentioned ? ', mentioned' : ''}${isJoined ? '' : ', not joined'}`;
      return h('li', null, h('button', {
        type: 'button',
        class: `room-item${r.unread ? ' has-unread' : ''}`,
        'aria-current': r.id === S.current ? 'page' : null,
        'aria-label': label,
        title: r.topic || r.name,
        dataset: { room: r.id },
        onclick: () => openRoom(r.id),
      }, h('span', { class: 'room-sigil', 'aria-hidden': 'true' }, r.private ? icon('lock') : '#'),
      h('span', { class: 'room-label', text: r.name }), badge));
    };
    joined.replaceChildren(...S.joined.map((id) => item(room(id), true)));
    const rest = [...S.rooms.values()].filter((r) => r.known && !r.joined).sort((a, b) => a.id.localeCompare(b.id));
    other.replaceChildren(...rest.map((r) => item(r, false)));
    $('other-rooms-title').hidden = rest.length === 0;
    other.hidden = rest.length === 0;
    const total = S.joined.reduce((n, id) => n + (id === S.current ? 0 : room(id).unread), 0);
    const nav = $('nav-badge');
    nav.hidden = !total;
    nav.textContent = String(total);
    const cur = S.rooms.get(S.current);
    document.title = `${total ? `(${total}) ` : ''}${cur ? `#${cur.name} · ` : ''}chatlog`;
  }

  function renderRoomHeader() {
    const r = S.rooms.get(S.current);
    $('room-name').replaceChildren(...(r
      ? [h('span', { class: 'room-sigil', 'aria-hidden': 'true' }, r.private ? icon('lock') : '#'), ' ', r.name]
      : ['No room open']));
    $('room-name').setAttribute('aria-label', r ? `${r.private ? 'Private room' : 'Room'} ${r.name}` : 'No room open');
    $('room-topic').textContent = r ? r.topic : 'Pick a room on the left, or create one.';
    $('leave-room').hidden = !r;
    const members = $('room-members');
    if (r && r.private && r.members.length) members.textContent = `Members: ${r.members.join(', ')}`;
    else members.textContent = '';
    $('member-form').hidden = !(r && r.private);
    $('composer-label').textContent = r ? `Message #${r.name}` : 'Message';
    $('composer-input').placeholder = r ? `Message #${r.name}` : 'Open a room first';
    renderPresence();
  }

  function renderHistoryTop() {
    const r = S.rooms.get(S.current);
    const btn = $('load-older');
    const note = $('history-note');
    if (!r) { btn.hidden = true; note.hidden = true; return; }
    btn.hidden = !((r.loaded && r.hasMore) || (r.historyError && r.joined));
    btn.disabled = r.loadingOlder || !!r.loading;
    btn.textContent = r.loadingOlder ? 'Loading…' : (r.loaded ? 'Load older messages' : 'Try again');
    let text = '';
    if (r.historyError) text = r.historyError;
    else if (!r.loaded) text = 'Loading messages…';
    else if (!r.hasMore) text = r.list.length ? `This is the beginning of #${r.name}.` : `No messages in #${r.name} yet. Say hello!`;
    note.textContent = text;
    note.hidden = !text;
    note.classList.toggle('error', !!r.historyError);
  }

  function renderRoom() {
    const r = S.rooms.get(S.current);
    renderRooms();
    renderRoomHeader();
    const list = $('messages');
    if (!r) {
      list.replaceChildren();
      renderHistoryTop();
      return;
    }
    list.replaceChildren(...r.list.map((m, i) => renderMessage(r, m, i)));
    renderHistoryTop();
    renderComposerState();
  }

  function renderPresence() {
    const r = S.rooms.get(S.current);
    const online = r && r.online;
    const ul = $('online-list');
    ul.replaceChildren(...(online || []).slice().sort().map((u) => h('li', null, h('span', { class: 'online-dot', 'aria-hidden': 'true' }), avatar(u, 'avatar small'), h('span', { text: u === S.user ? `${u} (you)` : u }))));
    $('online-empty').hidden = !!(online && online.length);
    // The column shows once the server tells who is online (presence may not be served yet).
    if (online) S.presenceSeen = true;
    $('chat').classList.toggle('with-people', !!S.presenceSeen);
    $('room-online').textContent = online ? `${online.length} online` : '';
    $('room-bar').hidden = !($('room-online').textContent || $('room-members').textContent || !$('member-form').hidden);
    const typers = ((r && r.typing) || []).filter((u) => u !== S.user);
    let t = '';
    if (typers.length === 1) t = `${typers[0]} is typing…`;
    else if (typers.length === 2) t = `${typers[0]} and ${typers[1]} are typing…`;
    else if (typers.length > 2) t = 'Several people are typing…';
    $('typing').textContent = t;
  }

  function renderNotifications() {
    renderRooms();
    const all = [...S.notifications.values()].sort((a, b) => String(b.time).localeCompare(String(a.time)));
    const unread = all.filter((n) => !n.read).length;
    const badge = $('notif-badge');
    badge.hidden = !unread;
    badge.textContent = String(unread);
    $('notif-toggle').setAttribute('aria-label', unread ? `Notifications, ${unread} unread` : 'Notifications');
    $('notif-empty').hidden = all.length > 0;
    $('notif-all-read').hidden = !unread;
    if ($('notif-panel').hidden) return;
    $('notif-list').replaceChildren(...all.slice(0, 50).map((n) => h('li', { class: n.read ? 'read' : 'unread' },
      h('button', { type: 'button', class: 'notif-item', onclick: () => openNotification(n) },
        h('span', { class: 'notif-meta' }, h('strong', { text: `@${n.by || '?'}` }), ` in #${n.room || '?'} · `, h('time', { datetime: n.time, text: fmtTime(n.time) })),
        h('span', { class: `notif-text${n.text ? '' : ' deleted'}`, text: notificationText(n).slice(0, 200) })))));
  }

  function renderComposerContext() {
    const box = $('composer-context');
    const r = S.rooms.get(S.current);
    const { mode, target } = S.composer;
    const m = r && target ? r.msgs.get(target) : null;
    if (mode === 'send' || !m) {
      box.hidden = true;
      $('send').textContent = 'Send';
      return;
    }
    box.hidden = false;
    box.dataset.mode = mode;
    $('composer-context-text').textContent = mode === 'edit'
      ? 'Editing your message'
      : `Replying to ${authorName(m)}: ${m.deleted ? '(deleted)' : m.text.slice(0, 80)}`;
    $('send').textContent = mode === 'edit' ? 'Save' : 'Reply';
  }

  function renderComposerState() {
    const r = S.rooms.get(S.current);
    $('composer-input').disabled = !r;
    $('send').disabled = !r;
  }

  function updateCount() {
    const n = chars($('composer-input').value);
    const el = $('composer-count');
    if (n > MAX_TEXT - 500) {
      const plural = (k) => `${k} character${k === 1 ? '' : 's'}`;
      el.textContent = n > MAX_TEXT ? `${plural(n - MAX_TEXT)} too many` : `${plural(MAX_TEXT - n)} left`;
      el.classList.toggle('over', n > MAX_TEXT);
    } else {
      el.textContent = '';
    }
    $('send').disabled = n > MAX_TEXT || !S.rooms.get(S.current);
  }

  function autoGrow() {
    const t = $('composer-input');
    t.style.height = 'auto';
    t.style.height = `${Math.min(t.scrollHeight, 200)}px`;
  }

  /** Text with @mentions and links highlighted, built from text nodes only. */
  function richText(text) {
    const frag = document.createDocumentFragment();
    const re = /(@[a-z0-9][a-z0-9_-]{0,31})|(https?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]])/g;
    let last = 0;
    let x;
    while ((x = re.exec(text))) {
      if (x.index > last) frag.append(document.createTextNode(text.slice(last, x.index)));
      if (x[1]) {
        const prev = x.index > 0 ? text[x.index - 1] : '';
        if (/[a-z0-9_@-]/.test(prev)) frag.append(document.createTextNode(x[1]));
        else frag.append(h('span', { class: `mention${x[1].slice(1) === S.user ? ' to-me' : ''}`, text: x[1] }));
      } else {
        frag.append(h('a', { href: x[2], target: '_blank', rel: 'noopener noreferrer nofollow', text: x[2] }));
      }
      last = re.lastIndex;
    }
    if (last < text.length) frag.append(document.createTextNode(text.slice(last)));
    return frag;
  }

  /** (Re)builds a message's element in place and returns it. */
  function renderMessage(r, m, index) {
    const i = index !== undefined && r.list[index] === m ? index : r.list.indexOf(m);
    const prev = i > 0 ? r.list[i - 1] : null;
    const newDay = !prev || dayKey(prev.time) !== dayKey(m.time);
    const grouped = prev && !newDay && !!m.user && prev.user === m.user && !prev.deleted && !m.reply_to
      && Math.abs(new Date(m.time) - new Date(prev.time)) < GROUP_GAP;
    const own = m.user === S.user;
    const el = m.el || h('li', { class: 'msg' });
    const hadFocus = el.contains(document.activeElement) ? document.activeElement : null;
    const focusKey = hadFocus && (hadFocus.dataset.action || (hadFocus === el ? 'self' : null));
    m.el = el;
    el.id = `m-${m.id}`;
    el.dataset.id = m.id;
    if (m.seq != null) el.dataset.seq = String(m.seq); else delete el.dataset.seq;
    el.dataset.user = m.user;
    el.tabIndex = -1;
    el.className = ['msg', own && 'own', grouped && 'grouped', m.pending && 'pending', m.failed && 'failed',
      m.deleted && 'deleted', m.mentions.includes(S.user) && !own && 'mentions-me'].filter(Boolean).join(' ');

    const parts = [];
    if (newDay) parts.push(h('div', { class: 'day', role: 'separator', text: fmtDay(m.time) }));
    if (m.reply_to) {
      const q = r.msgs.get(m.reply_to);
      parts.push(h('button', {
        type: 'button', class: 'reply-ref', 'data-action': 'goto-reply',
        onclick: () => { const t = r.msgs.get(m.reply_to); if (t && t.el) focusMessage(t); },
      }, h('span', { 'aria-hidden': 'true', text: '↪ ' }),
      q ? [h('strong', { text: authorName(q) }), ' ', h('span', { class: 'quote', text: q.deleted ? '(deleted message)' : q.text.slice(0, 120) })]
        : h('span', { class: 'quote', text: 'a reply to an earlier message' })));
    }
    parts.push(avatar(m.user, 'avatar msg-avatar'));
    const meta = h('div', { class: 'meta' },
      h('span', { class: `author${m.user ? '' : ' unknown'}`, text: authorName(m) }),
      h('time', { datetime: m.time, title: fmtFull(m.time), text: fmtTime(m.time) }),
      m.edited && !m.deleted ? h('span', { class: 'edited', text: '(edited)' }) : null,
      m.pending && !m.failed ? h('span', { class: 'status', text: 'sending…' }) : null);
    parts.push(meta);
    parts.push(h('div', { class: 'text' }, m.deleted ? h('em', { text: 'This message was deleted.' }) : richText(m.text)));
    if (m.failed) {
      parts.push(h('div', { class: 'failed-note', role: 'alert' },
        `Not sent: ${m.failed} `,
        h('button', { type: 'button', class: 'link-button', 'data-action': 'retry', text: 'Retry', onclick: () => retryMessage(r, m) }),
        ' ',
        h('button', { type: 'button', class: 'link-button', 'data-action': 'discard', text: 'Discard', onclick: () => discardMessage(r, m) })));
    }
    if (m.reactions.size) {
      parts.push(h('div', { class: 'reactions', role: 'group', 'aria-label': 'Reactions' },
        [...m.reactions].map(([emoji, users]) => {
          const mine = users.has(S.user);
          const names = [...users].join(', ');
          return h('button', {
            type: 'button', class: `reaction${mine ? ' mine' : ''}`, 'aria-pressed': String(mine),
            'data-action': `reaction:${emoji}`, title: names,
            'aria-label': `${emoji} ${users.size}: ${names}. ${mine ? 'Remove your reaction' : 'React too'}`,
            onclick: () => react(r, m, emoji),
          }, h('span', { class: 'emoji', text: emoji }), h('span', { class: 'n', text: String(users.size) }));
        })));
    }
    if (!m.deleted && m.seq != null) {
      const actions = h('div', { class: 'actions', role: 'group', 'aria-label': 'Message actions' },
        h('button', { type: 'button', 'data-action': 'reply', 'aria-label': `Reply to ${authorName(m)}`, title: 'Reply', onclick: () => startReply(r, m) }, icon('reply'), h('span', { class: 'label', text: ' Reply' })),
        h('button', {
          type: 'button', 'data-action': 'react', 'aria-label': 'Add a reaction', title: 'React', 'aria-expanded': String(S.openPicker === m.id),
          onclick: () => { S.openPicker = S.openPicker === m.id ? null : m.id; renderMessage(r, m); if (S.openPicker) m.el.querySelector('.picker button')?.focus(); },
        }, icon('smile'), h('span', { class: 'label', text: ' React' })),
        own ? h('button', { type: 'button', 'data-action': 'edit', 'aria-label': 'Edit your message', title: 'Edit', onclick: () => startEdit(r, m) }, icon('edit'), h('span', { class: 'label', text: ' Edit' })) : null,
        own ? h('button', { type: 'button', 'data-action': 'delete', 'aria-label': 'Delete your message', title: 'Delete', onclick: () => deleteMessage(r, m) }, icon('trash'), h('span', { class: 'label', text: ' Delete' })) : null);
      parts.push(actions);
      if (S.openPicker === m.id) {
        parts.push(h('div', {
          class: 'picker', role: 'group', 'aria-label': 'Pick a reaction',
          onkeydown: (e) => { if (e.key === 'Escape') { e.stopPropagation(); S.openPicker = null; renderMessage(r, m); m.el.querySelector('[data-action="react"]')?.focus(); } },
        }, QUICK_EMOJI.map((emoji) => h('button', {
          type: 'button', class: 'picker-emoji', 'data-action': `pick:${emoji}`, 'aria-label': `React with ${emoji}`, text: emoji,
          onclick: () => { S.openPicker = null; react(r, m, emoji); renderMessage(r, m); m.el.querySelector('[data-action="react"]')?.focus(); },
        }))));
      }
    }
    el.replaceChildren(...parts);
    if (focusKey) {
      const again = focusKey === 'self' ? el : el.querySelector(`[data-action="${CSS.escape(focusKey)}"]`);
      if (again) again.focus({ preventScroll: true });
    }
    return el;
  }

  function focusMessage(m) {
    m.el.scrollIntoView({ block: 'center', behavior: 'smooth' });
    m.el.classList.add('flash');
    setTimeout(() => m.el && m.el.classList.remove('flash'), 1600);
    m.el.focus({ preventScroll: true });
  }

  function isAtBottom() {
    const s = $('scroller');
    return s.scrollHeight - s.scrollTop - s.clientHeight < 60;
  }
  function scrollToBottom() {
    const s = $('scroller');
    s.scrollTop = s.scrollHeight;
    $('jump-new').hidden = true;
  }
  function afterAppend(stick) {
    if (stick) scrollToBottom();
    else $('jump-new').hidden = false;
    renderHistoryTop();
  }

  function setNav(open) {
    document.body.classList.toggle('nav-open', open);
    $('nav-toggle').setAttribute('aria-expanded', String(open));
    $('nav-toggle').setAttribute('aria-label', open ? 'Hide rooms' : 'Show rooms');
    $('scrim').hidden = !open;
    if (open) $('sidebar').querySelector('button')?.focus();
  }

  // ------------------------------------------------------------------ guest names

  // The server gives a guest name to the first browser that asks for it, with a secret; later
  // logins as that guest need the secret. It is kept per name and never removed by this page:
  // losing it would lose the name.

  /** The secret that holds guest name `user` for this browser, or null. */
  const guestSecret = (user) => str(load(`guest.${user}`), null);

  function keepGuestSecret(user, secret) {
    if (typeof secret !== 'string' || !secret || secret === guestSecret(user)) return;
    store(`guest.${user}`, secret);
    if (guestSecret(user) !== secret) {
      toast(`This browser could not store the key of the guest name "${user}": after a reload or a log out, the name cannot be used again here.`, 'error');
    }
  }

  /** `POST /api/auth/guest` for `user`, with the secret this browser holds for it (if any). */
  async function guestLogin(user) {
    const secret = guestSecret(user);
    const res = await api('POST', '/api/auth/guest', secret ? { user, secret } : { user });
    if (res.ok && res.data) keepGuestSecret(user, res.data.secret);
    return res;
  }

  let lastRenewal = 0;

  /** The server refused the token: a guest whose name this browser holds gets a new one. */
  function sessionExpired() {
    const user = S.user;
    const renew = S.kind === 'guest' && guestSecret(user) && Date.now() - lastRenewal > 60000;
    logout('Your session has expired. Please log in again.');
    if (renew) {
      lastRenewal = Date.now();
      renewGuest(user);
    }
  }

  /** A new token for the guest name this browser holds, once its token expired: same identity. */
  async function renewGuest(user) {
    const res = await guestLogin(user);
    if (res.ok && res.data && typeof res.data.token === 'string') start(res.data.token, true);
    else showLogin(`Your session has expired. ${loginFailure('guest', user, res)}`, user);
  }

  // ------------------------------------------------------------------ login / logout

  /** Checks the form; the error to show, or null. */
  function loginInputError(mode, user, password) {
    if (!ID_RE.test(user)) return ['login-user', 'Names are 1 to 32 lower-case letters, digits, _ or -, starting with a letter or digit.'];
    if (mode !== 'guest' && !password) return ['login-password', 'Enter your password to log in or register (or continue as a guest).'];
    if (mode === 'register' && password.length < 8) return ['login-password', 'Passwords are at least 8 characters.'];
    return null;
  }

  /** What to tell the user when the server refused a login of `mode` as `user`. */
  function loginFailure(mode, user, res) {
    const said = errText(res);
    if (mode === 'guest') {
      switch (res.status) {
        case 400: return `"${user}" cannot be a guest name (${said}). Pick another name.`;
        case 401: return `"${user}" is held by another guest: the key this browser kept for it does not match. Pick another name.`;
        case 403: return 'Guest access is switched off on this server: log in or register.';
        case 409: return /regist|account/i.test(said)
          ? `"${user}" belongs to a registered account: enter its password and log in.`
          : `"${user}" is held by another guest. Pick another name.`;
        default: return `Could not sign in: ${said}`;
      }
    }
    if (res.status === 404 || res.status === 405) return 'Accounts are not available on this server yet. Continue as a guest instead.';
    if (mode === 'login' && res.status === 401) return 'Wrong user name or password.';
    if (mode === 'register' && res.status === 409) return `"${user}" is taken. Pick another name, or log in.`;
    return `Could not sign in: ${said}`;
  }

  async function login(mode) {
    const user = $('login-user').value.trim().toLowerCase();
    const password = $('login-password').value;
    const err = $('login-error');
    err.hidden = true;
    const bad = loginInputError(mode, user, password);
    if (bad) {
      err.textContent = bad[1];
      err.hidden = false;
      $(bad[0]).focus();
      return;
    }
    const res = mode === 'guest' ? await guestLogin(user) : await api('POST', `/api/auth/${mode}`, { user, password });
    if (res.ok && res.data && typeof res.data.token === 'string') {
      $('login-password').value = '';
      start(res.data.token);
      return;
    }
    err.textContent = loginFailure(mode, user, res);
    err.hidden = false;
  }

  /** Starts the chat with `token`; an expired guest token is renewed (once) with the kept secret. */
  function start(token, renewed = false) {
    const claims = tokenClaims(token);
    if (!claims || typeof claims.sub !== 'string' || !ID_RE.test(claims.sub)) {
      store('token', null);
      showLogin('Your session has expired. Please log in again.');
      return;
    }
    if (claims.exp && claims.exp * 1000 < Date.now()) {
      store('token', null);
      if (claims.kind === 'guest' && guestSecret(claims.sub) && !renewed) renewGuest(claims.sub);
      else showLogin('Your session has expired. Please log in again.', claims.sub);
      return;
    }
    S.token = token;
    S.user = claims.sub;
    S.kind = claims.kind === 'guest' ? 'guest' : 'account';
    store('token', token);
    store('user', S.user);
    $('login').hidden = true;
    $('chat').hidden = false;
    $('me-name').textContent = S.user;
    $('me-avatar').replaceWith(Object.assign(avatar(S.user), { id: 'me-avatar' }));
    $('logout').title = S.kind === 'guest' && guestSecret(S.user)
      ? `Log out (the guest name "${S.user}" stays yours on this browser)` : 'Log out';
    const saved = load(`joined.${S.user}`);
    S.joined = Array.isArray(saved) ? saved.filter((x) => ID_RE.test(x)) : ['lobby'];
    for (const id of S.joined) room(id).joined = true;
    const left = load(`left.${S.user}`);
    S.left = new Set(Array.isArray(left) ? left : []);
    restoreOutbox();
    const wanted = decodeURIComponent(location.hash.slice(1));
    const first = ID_RE.test(wanted) ? wanted : (load(`current.${S.user}`) || S.joined[0]);
    connect();
    refreshRooms().then(() => {
      refreshUnread();
      if (S.joined.length === 0 && S.rooms.has('lobby')) openRoom('lobby');
    });
    refreshNotifications();
    if (first && ID_RE.test(first)) openRoom(first);
    else renderRoom();
  }

  /** The login page, with `message` as an error and the name field filled with `user` (or the last one). */
  function showLogin(message, user) {
    $('chat').hidden = true;
    $('login').hidden = false;
    const err = $('login-error');
    err.textContent = message || '';
    err.hidden = !message;
    const name = user || load('user');
    if (name && (user || !$('login-user').value)) $('login-user').value = name;
    renderLoginNote();
    $('login-user').focus();
  }

  /** Under the form: whether this browser holds the guest name typed (`loggedOut`: right after a log out). */
  function renderLoginNote(loggedOut = false) {
    const note = $('login-note');
    const user = $('login-user').value.trim().toLowerCase();
    const held = ID_RE.test(user) && guestSecret(user);
    let text = '';
    if (held && loggedOut) {
      text = `You logged out. The guest name "${user}" stays held by you on this browser: choose "Continue as guest" with it to come back as ${user}.`;
    } else if (held) {
      text = `This browser holds the guest name "${user}": "Continue as guest" logs you in as ${user} again.`;
    } else if (loggedOut) {
      text = 'You logged out.';
    }
    note.textContent = text;
    note.hidden = !text;
  }

  /** Ends the session. `byUser`: the user asked (the page says what becomes of a guest name). */
  function logout(message, byUser = false) {
    if (S.user) store('user', S.user);
    store('token', null);
    const ws = S.ws;
    S.token = null;
    S.ws = null;
    stopPing();
    clearTimeout(S.retryTimer);
    clearTimeout(S.roomsTimer);
    if (ws) { ws.onclose = ws.onmessage = null; try { ws.close(1000, 'logout'); } catch { /* closed */ } }
    const user = S.user;
    S.rooms = new Map();
    S.joined = [];
    S.left = new Set();
    S.leaving.clear();
    S.current = null;
    S.outbox.clear();
    S.pendingJoins.clear();
    S.notifications.clear();
    S.everConnected = false;
    S.connects = 0;
    S.user = null;
    S.kind = null;
    S.presenceSeen = false;
    clearTimeout(S.typing.idleTimer);
    clearTimeout(S.typing.deferTimer);
    S.typing = { active: false, sentAt: 0, room: null, idleTimer: null, deferTimer: null, lastSentTyping: 0 };
    S.composer = { mode: 'send', target: null };
    $('composer-input').value = '';
    $('chat').classList.remove('with-people');
    $('messages').replaceChildren();
    setConn('offline');
    showLogin(message, user);
    if (byUser) renderLoginNote(true);
  }

  // ------------------------------------------------------------------ wiring

  function wire() {
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      let mode = (e.submitter && e.submitter.dataset.mode) || 'guest';
      // Enter in the form submits with the first button (guest): a password means an account.
      if (mode === 'guest' && $('login-password').value) mode = 'login';
      login(mode);
    });
    $('logout').addEventListener('click', () => logout(null, true));
    $('login-user').addEventListener('input', () => renderLoginNote());
    $('nav-toggle').addEventListener('click', () => setNav(!document.body.classList.contains('nav-open')));
    $('scrim').addEventListener('click', () => setNav(false));
    $('conn-retry').addEventListener('click', () => { S.attempt = 0; connect(); });

    const input = $('composer-input');
    $('composer').addEventListener('submit', (e) => { e.preventDefault(); submitComposer(); });
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
        e.preventDefault();
        submitComposer();
      } else if (e.key === 'Escape') {
        if (S.composer.mode !== 'send') { e.preventDefault(); cancelComposerMode(); }
      } else if (e.key === 'ArrowUp' && !input.value && S.composer.mode === 'send') {
        const r = S.rooms.get(S.current);
        const mine = r && [...r.list].reverse().find((m) => m.user === S.user && !m.deleted && m.seq != null);
        if (mine) { e.preventDefault(); startEdit(r, mine); }
      }
    });
    input.addEventListener('input', () => { autoGrow(); updateCount(); onTypingInput(); });
    input.addEventListener('blur', () => setTimeout(() => { if (document.activeElement !== input) stopTyping(); }, 0));
    $('composer-cancel').addEventListener('click', () => { cancelComposerMode(); input.focus(); });

    $('scroller').addEventListener('scroll', () => {
      const r = S.rooms.get(S.current);
      if (isAtBottom()) { $('jump-new').hidden = true; scheduleRead(r); }
      if (r && $('scroller').scrollTop < 80 && r.hasMore && r.loaded) loadOlder(r);
    }, { passive: true });
    $('load-older').addEventListener('click', () => {
      const r = S.rooms.get(S.current);
      if (r && r.loaded) loadOlder(r);
      else if (r) loadInitial(r);
    });
    $('jump-new').addEventListener('click', () => { scrollToBottom(); scheduleRead(S.rooms.get(S.current)); input.focus(); });
    $('leave-room').addEventListener('click', () => {
      const r = S.rooms.get(S.current);
      if (!r) return;
      const what = r.private ? `Leave the private room #${r.name}? A member has to add you again to come back.` : `Leave #${r.name}?`;
      if (window.confirm(what)) leaveRoom(r.id);
    });
    $('member-form').addEventListener('submit', addMember);

    $('join-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const id = $('join-id').value.trim().toLowerCase().replace(/^#/, '');
      if (!id) return;
      $('join-id').value = '';
      openRoom(id);
    });

    const dialog = $('room-dialog');
    $('new-room').addEventListener('click', () => {
      $('room-form').reset();
      $('room-error').hidden = true;
      $('room-members-field').hidden = true;
      dialog.showModal();
      $('room-id').focus();
    });
    $('room-private').addEventListener('change', () => { $('room-members-field').hidden = !$('room-private').checked; });
    $('room-form').addEventListener('submit', createRoom);
    $('room-cancel').addEventListener('click', () => dialog.close());

    $('notif-toggle').addEventListener('click', () => toggleNotifications());
    $('notif-all-read').addEventListener('click', () => {
      const local = [...S.notifications.values()].filter((n) => !n.read);
      for (const n of local) n.read = true;
      if (S.features.notifications && local.some((n) => !n.local)) api('POST', '/api/notifications/read', { all: true });
      renderNotifications();
    });

    document.addEventListener('keydown', (e) => {
      if (e.key !== 'Escape') return;
      if (!$('notif-panel').hidden) { toggleNotifications(false); $('notif-toggle').focus(); return; }
      if (document.body.classList.contains('nav-open')) { setNav(false); $('nav-toggle').focus(); return; }
      if (S.openPicker) {
        const r = S.rooms.get(S.current);
        const m = r && r.msgs.get(S.openPicker);
        S.openPicker = null;
        if (m) { renderMessage(r, m); m.el.querySelector('[data-action="react"]')?.focus(); }
        return;
      }
      if (S.composer.mode !== 'send') { cancelComposerMode(); input.focus(); }
    });
    document.addEventListener('click', (e) => {
      const panel = $('notif-panel');
      if (!panel.hidden && !panel.contains(e.target) && !$('notif-toggle').contains(e.target)) toggleNotifications(false);
    });

    window.addEventListener('hashchange', () => {
      const id = decodeURIComponent(location.hash.slice(1));
      if (S.token && ID_RE.test(id) && id !== S.current) openRoom(id);
    });
    window.addEventListener('offline', () => {
      // No network: the socket is gone even if the browser has not noticed yet.
      if (S.ws) dropSocket(S.ws, 'offline');
      else setConn('offline');
    });
    window.addEventListener('online', () => {
      if (!S.token) return;
      S.attempt = 0;
      if (!S.ws) connect();
    });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') {
        scheduleRead(S.rooms.get(S.current));
        // A sleeping tab may have missed a close: check the socket now.
        if (S.ws && S.ws.readyState === WebSocket.OPEN) wsSend({ type: 'ping' });
        else if (S.token && !S.ws) connect();
      }
    });
    window.addEventListener('storage', (e) => {
      if (e.key === `${STORE}token` && !e.newValue && S.token) logout('You logged out in another tab.');
    });
    // Unread counts from the server now and then (a no-op when the server does not have them).
    S.unreadTimer = setInterval(() => {
      if (!S.token || S.conn !== 'connected') return;
      refreshRooms();
      if (S.features.unread) refreshUnread();
    }, 60000);
  }

  wire();
  const saved = load('token');
  if (saved) start(saved); else showLogin();
})();
