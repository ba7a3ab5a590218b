// Everything the page shows: built from the state, never read back from the page. User text only
// ever reaches the page through textContent / text nodes, never innerHTML.
//
// What a click does is the business of the modules above this one: they set `actions`.

import { download, fileUrl, fmtSize, isImage, removeUpload, uploadsOf } from './files.js';
import { indexOf } from './fold.js';
import { MAX_TEXT, chars } from './protocol.js';
import { S, currentRoom } from './state.js';

const GROUP_GAP = 5 * 60 * 1000; // messages of one author within 5 min are grouped
const QUICK_EMOJI = ['👍', '❤️', '😂', '🎉', '😮', '👀'];

/** Set by app.js: what the buttons of messages, rooms and notifications do. */
export const actions = {
  openRoom: (_id) => {},
  openNotification: (_n) => {},
  react: (_r, _m, _emoji) => {},
  reply: (_r, _m) => {},
  edit: (_r, _m) => {},
  delete: (_r, _m) => {},
  retry: (_r, _m) => {},
  discard: (_r, _m) => {},
};

// The elements of the open room's messages by id. A message is drawn again when it changed (its
// object is another), or its neighbour or the message it quotes did.
let elements = new Map();
let shownRoom = null; // the room whose messages `elements` are
let openPicker = null; // id of the message whose reaction picker is open
let presenceSeen = false; // the server told who is online once: the column shows from then on

export const $ = (id) => document.getElementById(id);

/** Builds an element. `attrs`: class, text, dataset, on<event>, aria-*, anything else as attribute. */
export function h(tag, attrs, ...children) {
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

/** The name shown for a message's author (a redacted event may not say). */
export const authorName = (m) => m.user || 'unknown';

// ------------------------------------------------------------------ files

/** A message's files: raster images as thumbnails that open full size, the rest as cards. */
function attachmentsOf(m) {
  return h('div', { class: 'attachments' }, m.attachments.map((a) => (isImage(a) ? thumbnail(a) : fileCard(a))));
}

function thumbnail(a) {
  const img = h('img', { class: 'thumb', alt: a.name });
  fileUrl(a.id).then((url) => {
    if (url) img.src = url; else img.alt = `${a.name} (not available)`;
  });
  return h('button', {
    type: 'button', class: 'attachment image', 'data-action': 'open-file', title: `${a.name}, ${fmtSize(a.size)}`,
    'aria-label': `Open ${a.name} full size`,
    onclick: async () => {
      const url = await fileUrl(a.id);
      if (url) window.open(url, '_blank', 'noopener');
    },
  }, img);
}

function fileCard(a) {
  return h('div', { class: 'attachment card' },
    h('span', { class: 'file-icon', 'aria-hidden': 'true', text: '📄' }),
    h('span', { class: 'file-name', text: a.name }),
    h('span', { class: 'file-size', text: fmtSize(a.size) }),
    h('button', {
      type: 'button', class: 'link-button', 'data-action': 'download', text: 'Download', 'aria-label': `Download ${a.name}`,
      onclick: async () => { if (!(await download(a))) toast(`${a.name} could not be downloaded.`, 'error'); },
    }));
}

/** The composer's files: name, size, a progress bar while uploading, the error if it failed. */
export function renderUploads() {
  const list = $('composer-files');
  if (!list) return;
  const r = currentRoom();
  const ups = r ? uploadsOf(r.id) : [];
  list.hidden = !ups.length;
  list.replaceChildren(...ups.map((u) => h('li', { class: `upload ${u.state}` },
    h('span', { class: 'file-name', text: u.name }),
    h('span', { class: 'file-size', text: fmtSize(u.size) }),
    u.state === 'uploading'
      ? h('progress', { max: String(Math.max(u.size, 1)), value: String(u.loaded), 'aria-label': `Uploading ${u.name}` })
      : null,
    u.state === 'failed' ? h('span', { class: 'upload-error', role: 'alert', text: u.error }) : null,
    h('button', {
      type: 'button', class: 'link-button', 'data-action': 'remove-upload', 'aria-label': `Remove ${u.name}`, text: '×',
      onclick: () => removeUpload(u.key),
    }))));
}

/** What a deleted message shows in its place. */
export const deletedText = (m) => (m.moderated ? 'Removed by moderation.' : 'This message was deleted.');

/** What a notification says: the message's text, which is empty once the message was deleted. */
export function notificationText(n) {
  return typeof n.text === 'string' && n.text ? n.text : 'message deleted';
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
  if (Number.isNaN(d.getTime())) return '';
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
export function avatar(name, cls = 'avatar') {
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

// ------------------------------------------------------------------ notices

const lastToasts = new Map(); // toast text -> time, to avoid repeating a message

export function toast(text, kind = 'info', onClick) {
  const now = Date.now();
  const last = lastToasts.get(text);
  if (last && now - last < 10000) return;
  lastToasts.set(text, now);
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

// Screen readers hear new messages in batches: more than 3 in half a second are counted instead.
let announceBuf = [];
let announceTimer = null;
export function announce(text) {
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

/** The connection indicator (and what depends on it). `detail`: ms to the next attempt. */
export function showConn(state, detail, connects, everConnected) {
  const el = $('conn');
  el.dataset.state = state;
  el.dataset.connects = String(connects);
  const words = {
    connecting: 'connecting…',
    connected: 'connected',
    reconnecting: detail ? `reconnecting in ${Math.ceil(detail / 1000)} s…` : 'reconnecting…',
    offline: 'offline',
  };
  $('conn-text').textContent = words[state] || state;
  $('conn-retry').hidden = !(state === 'reconnecting' && detail && detail > 1500);
  $('offline-banner').hidden = state === 'connected' || !everConnected;
  renderComposerState();
}

/** Why the socket ended, for whoever looks (the browser test does). */
export function showConnReason(reason) {
  $('conn').dataset.reason = reason;
}

// ------------------------------------------------------------------ rooms

export function renderRooms() {
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
      onclick: () => actions.openRoom(r.id),
    }, h('span', { class: 'room-sigil', 'aria-hidden': 'true' }, r.private ? icon('lock') : '#'),
    h('span', { class: 'room-label', text: r.name }), badge));
  };
  const room = (id) => S.rooms.get(id) || { id, name: id, unread: 0, mentions: 0 };
  joined.replaceChildren(...S.joined.map((id) => item(room(id), true)));
  const rest = [...S.rooms.values()].filter((r) => r.known && !r.joined).sort((a, b) => a.id.localeCompare(b.id));
  other.replaceChildren(...rest.map((r) => item(r, false)));
  $('other-rooms-title').hidden = rest.length === 0;
  other.hidden = rest.length === 0;
  const total = S.joined.reduce((n, id) => n + (id === S.current ? 0 : room(id).unread), 0);
  const nav = $('nav-badge');
  nav.hidden = !total;
  nav.textContent = String(total);
  const cur = currentRoom();
  document.title = `${total ? `(${total}) ` : ''}${cur ? `#${cur.name} · ` : ''}chatlog`;
}

export function renderRoomHeader() {
  const r = currentRoom();
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

export function renderHistoryTop() {
  const r = currentRoom();
  const btn = $('load-older');
  const note = $('history-note');
  if (!r) { btn.hidden = true; note.hidden = true; return; }
  btn.hidden = !((r.loaded && r.hasMore) || (r.historyError && r.joined));
  btn.disabled = r.loadingOlder || !!r.loading;
  btn.textContent = r.loadingOlder ? 'Loading…' : (r.loaded ? 'Load older messages' : 'Try again');
  let text = '';
  if (r.historyError) text = r.historyError;
  else if (!r.loaded) text = 'Loading messages…';
  else if (!r.hasMore) text = r.timeline.list.length ? `This is the beginning of #${r.name}.` : `No messages in #${r.name} yet. Say hello!`;
  note.textContent = text;
  note.hidden = !text;
  note.classList.toggle('error', !!r.historyError);
}

/** The open room from scratch: header, messages, history note. */
export function renderRoom() {
  const r = currentRoom();
  renderRooms();
  renderRoomHeader();
  renderUploads();
  const list = $('messages');
  if (!r) {
    list.replaceChildren();
    elements = new Map();
    renderHistoryTop();
    return;
  }
  if (shownRoom !== r.id) {
    elements = new Map();
    openPicker = null;
  }
  shownRoom = r.id;
  const shown = r.timeline.list.map((m, i) => draw(r, m, i));
  for (const id of [...elements.keys()]) if (!r.timeline.byId.has(id)) elements.delete(id);
  list.replaceChildren(...shown);
  renderHistoryTop();
  renderComposerState();
}

export function renderPresence() {
  const r = currentRoom();
  const online = r && r.online;
  const ul = $('online-list');
  ul.replaceChildren(...(online || []).slice().sort().map((u) => h('li', null, h('span', { class: 'online-dot', 'aria-hidden': 'true' }), avatar(u, 'avatar small'), h('span', { text: u === S.user ? `${u} (you)` : u }))));
  $('online-empty').hidden = !!(online && online.length);
  if (online) presenceSeen = true;
  $('chat').classList.toggle('with-people', presenceSeen);
  $('room-online').textContent = online ? `${online.length} online` : '';
  $('room-bar').hidden = !($('room-online').textContent || $('room-members').textContent || !$('member-form').hidden);
  const typers = ((r && r.typing) || []).filter((u) => u !== S.user);
  let t = '';
  if (typers.length === 1) t = `${typers[0]} is typing…`;
  else if (typers.length === 2) t = `${typers[0]} and ${typers[1]} are typing…`;
  else if (typers.length > 2) t = 'Several people are typing…';
  $('typing').textContent = t;
}

export function renderNotifications() {
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
    h('button', { type: 'button', class: 'notif-item', onclick: () => actions.openNotification(n) },
      h('span', { class: 'notif-meta' }, h('strong', { text: `@${n.by || '?'}` }), ` in #${n.room || '?'} · `, h('time', { datetime: n.time, text: fmtTime(n.time) })),
      h('span', { class: `notif-text${n.text ? '' : ' deleted'}`, text: notificationText(n).slice(0, 200) })))));
}

export function toggleNotifications(open) {
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

export function setNav(open) {
  document.body.classList.toggle('nav-open', open);
  $('nav-toggle').setAttribute('aria-expanded', String(open));
  $('nav-toggle').setAttribute('aria-label', open ? 'Hide rooms' : 'Show rooms');
  $('scrim').hidden = !open;
  if (open) $('sidebar').querySelector('button')?.focus();
}

// ------------------------------------------------------------------ composer

/** The line above the composer while editing or replying to `m` (`mode` 'edit' or 'reply'). */
export function renderComposerContext(mode, m) {
  const box = $('composer-context');
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

export function renderComposerState() {
  const r = currentRoom();
  $('composer-input').disabled = !r;
  $('send').disabled = !r;
}

export function updateCount() {
  const n = chars($('composer-input').value);
  const el = $('composer-count');
  if (n > MAX_TEXT - 500) {
    const plural = (k) => `${k} character${k === 1 ? '' : 's'}`;
    el.textContent = n > MAX_TEXT ? `${plural(n - MAX_TEXT)} too many` : `${plural(MAX_TEXT - n)} left`;
    el.classList.toggle('over', n > MAX_TEXT);
  } else {
    el.textContent = '';
  }
  $('send').disabled = n > MAX_TEXT || !currentRoom();
}

export function autoGrow() {
  const t = $('composer-input');
  t.style.height = 'auto';
  t.style.height = `${Math.min(t.scrollHeight, 200)}px`;
}

// ------------------------------------------------------------------ messages

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

/** (Re)builds the element of `m`, at index `i` of the room's list, in place; returns it. */
function draw(r, m, i) {
  const list = r.timeline.list;
  const prev = i > 0 ? list[i - 1] : null;
  const newDay = !prev || dayKey(prev.time) !== dayKey(m.time);
  const grouped = prev && !newDay && !!m.user && prev.user === m.user && !prev.deleted && !m.reply_to
    && Math.abs(new Date(m.time) - new Date(prev.time)) < GROUP_GAP;
  const own = m.user === S.user;
  const el = elements.get(m.id) || h('li', { class: 'msg' });
  elements.set(m.id, el);
  const hadFocus = el.contains(document.activeElement) ? document.activeElement : null;
  const focusKey = hadFocus && (hadFocus.dataset.action || (hadFocus === el ? 'self' : null));
  el.id = `m-${m.id}`;
  el.dataset.id = m.id;
  if (m.seq != null) el.dataset.seq = String(m.seq); else delete el.dataset.seq;
  el.dataset.user = m.user;
  el.tabIndex = -1;
  el.className = ['msg', own && 'own', grouped && 'grouped', m.pending && 'pending', m.failed && 'failed',
    m.deleted && 'deleted', m.moderated && 'moderated', m.mentions.includes(S.user) && !own && 'mentions-me'].filter(Boolean).join(' ');
  // The handlers act on the message as it is when clicked.
  const now = () => r.timeline.byId.get(m.id) || m;

  const parts = [];
  if (newDay) parts.push(h('div', { class: 'day', role: 'separator', text: fmtDay(m.time) }));
  if (m.reply_to) {
    const q = r.timeline.byId.get(m.reply_to);
    parts.push(h('button', {
      type: 'button', class: 'reply-ref', 'data-action': 'goto-reply',
      onclick: () => { const t = r.timeline.byId.get(m.reply_to); if (t) focusMessage(t); },
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
  if (m.deleted || m.text) {
    parts.push(h('div', { class: 'text' }, m.deleted ? h('em', { text: deletedText(m) }) : richText(m.text)));
  }
  if (!m.deleted && m.attachments.length) parts.push(attachmentsOf(m));
  if (m.failed) {
    parts.push(h('div', { class: 'failed-note', role: 'alert' },
      `Not sent: ${m.failed} `,
      h('button', { type: 'button', class: 'link-button', 'data-action': 'retry', text: 'Retry', onclick: () => actions.retry(r, now()) }),
      ' ',
      h('button', { type: 'button', class: 'link-button', 'data-action': 'discard', text: 'Discard', onclick: () => actions.discard(r, now()) })));
  }
  if (m.reactions.size) {
    parts.push(h('div', { class: 'reactions', role: 'group', 'aria-label': 'Reactions' },
      [...m.reactions].map(([emoji, users]) => {
        const mine = users.includes(S.user);
        const names = users.join(', ');
        return h('button', {
          type: 'button', class: `reaction${mine ? ' mine' : ''}`, 'aria-pressed': String(mine),
          'data-action': `reaction:${emoji}`, title: names,
          'aria-label': `${emoji} ${users.length}: ${names}. ${mine ? 'Remove your reaction' : 'React too'}`,
          onclick: () => actions.react(r, now(), emoji),
        }, h('span', { class: 'emoji', text: emoji }), h('span', { class: 'n', text: String(users.length) }));
      })));
  }
  if (!m.deleted && m.seq != null) {
    const focusReact = () => elements.get(m.id)?.querySelector('[data-action="react"]')?.focus();
    const actionsBar = h('div', { class: 'actions', role: 'group', 'aria-label': 'Message actions' },
      h('button', { type: 'button', 'data-action': 'reply', 'aria-label': `Reply to ${authorName(m)}`, title: 'Reply', onclick: () => actions.reply(r, now()) }, icon('reply'), h('span', { class: 'label', text: ' Reply' })),
      h('button', {
        type: 'button', 'data-action': 'react', 'aria-label': 'Add a reaction', title: 'React', 'aria-expanded': String(openPicker === m.id),
        onclick: () => {
          openPicker = openPicker === m.id ? null : m.id;
          redraw(r, now());
          if (openPicker) elements.get(m.id)?.querySelector('.picker button')?.focus();
        },
      }, icon('smile'), h('span', { class: 'label', text: ' React' })),
      own ? h('button', { type: 'button', 'data-action': 'edit', 'aria-label': 'Edit your message', title: 'Edit', onclick: () => actions.edit(r, now()) }, icon('edit'), h('span', { class: 'label', text: ' Edit' })) : null,
      own ? h('button', { type: 'button', 'data-action': 'delete', 'aria-label': 'Delete your message', title: 'Delete', onclick: () => actions.delete(r, now()) }, icon('trash'), h('span', { class: 'label', text: ' Delete' })) : null);
    parts.push(actionsBar);
    if (openPicker === m.id) {
      parts.push(h('div', {
        class: 'picker', role: 'group', 'aria-label': 'Pick a reaction',
        onkeydown: (e) => { if (e.key === 'Escape') { e.stopPropagation(); openPicker = null; redraw(r, now()); focusReact(); } },
      }, QUICK_EMOJI.map((emoji) => h('button', {
        type: 'button', class: 'picker-emoji', 'data-action': `pick:${emoji}`, 'aria-label': `React with ${emoji}`, text: emoji,
        onclick: () => { openPicker = null; actions.react(r, now(), emoji); redraw(r, now()); focusReact(); },
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

/** Draws `m` again where it is, if it is shown. */
function redraw(r, m) {
  if (r.id !== S.current || !elements.has(m.id)) return;
  const i = indexOf(r.timeline, m);
  if (i >= 0) draw(r, m, i);
}

/** The message an element of the list shows. */
const shownIn = (r, el) => (el ? r.timeline.byId.get(el.dataset.id) : undefined);

/**
 * Shows `m`, new or changed in the room's timeline, at its place when the room is open; the
 * messages its change may concern (the one after it, those quoting it) are drawn again too.
 */
export function showMessage(r, m) {
  if (r.id !== S.current) return;
  const list = r.timeline.list;
  const i = indexOf(r.timeline, m);
  if (i < 0) return;
  const ol = $('messages');
  const old = elements.get(m.id);
  const oldNext = old && old.parentNode === ol ? old.nextElementSibling : null;
  const el = draw(r, m, i);
  // Before the first message after it that is shown.
  let next = null;
  for (let j = i + 1; j < list.length && !next; j += 1) {
    const e = elements.get(list[j].id);
    if (e && e.parentNode === ol) next = e;
  }
  if (el.parentNode !== ol || el.nextElementSibling !== next) ol.insertBefore(el, next);
  const after = shownIn(r, el.nextElementSibling);
  if (after) redraw(r, after);
  if (oldNext && oldNext !== el.nextElementSibling) {
    const moved = shownIn(r, oldNext);
    if (moved) redraw(r, moved);
  }
  for (const other of list) if (other.reply_to === m.id) redraw(r, other);
}

/** Takes message `id` off the page (discarded), redrawing the one that followed it. */
export function hideMessage(r, id) {
  const el = elements.get(id);
  if (!el) return;
  const next = shownIn(r, el.nextElementSibling);
  el.remove();
  elements.delete(id);
  if (next) redraw(r, next);
}

/** Closes the reaction picker; false when none was open. */
export function closePicker() {
  if (!openPicker) return false;
  const r = currentRoom();
  const m = r && r.timeline.byId.get(openPicker);
  openPicker = null;
  if (m) {
    redraw(r, m);
    elements.get(m.id)?.querySelector('[data-action="react"]')?.focus();
  }
  return true;
}

export function focusMessage(m) {
  const el = elements.get(m.id);
  if (!el) return;
  el.scrollIntoView({ block: 'center', behavior: 'smooth' });
  el.classList.add('flash');
  setTimeout(() => el.classList.remove('flash'), 1600);
  el.focus({ preventScroll: true });
}

export function isAtBottom() {
  const s = $('scroller');
  return s.scrollHeight - s.scrollTop - s.clientHeight < 60;
}

export function scrollToBottom() {
  const s = $('scroller');
  s.scrollTop = s.scrollHeight;
  $('jump-new').hidden = true;
}

/** Runs `change` (messages added above) keeping the messages on screen where they are. */
export function keepScrollPosition(change) {
  const scroller = $('scroller');
  const before = scroller.scrollHeight;
  const top = scroller.scrollTop;
  change();
  scroller.scrollTop = top + (scroller.scrollHeight - before);
}

/** After a message was added to the open room: follow it, or offer to jump to it. */
export function afterAppend(stick) {
  if (stick) scrollToBottom();
  else $('jump-new').hidden = false;
  renderHistoryTop();
}

/** Forgets what the page showed of the session that ended. */
export function clearPage() {
  elements = new Map();
  shownRoom = null;
  openPicker = null;
  presenceSeen = false;
  $('composer-input').value = '';
  $('chat').classList.remove('with-people');
  $('messages').replaceChildren();
}
