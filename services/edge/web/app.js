// chatlog web client: plain JavaScript modules, no build step, no dependencies. This entry wires
// them together and to the page; js/ holds the rest:
//   protocol.js  the frames and fields of the protocol (pure)
//   fold.js      a room's messages and what each stored event does to them (pure; the history
//                view's rules, tested against the same fixtures)
//   state.js     the session and its rooms; localStorage
//   http.js      the HTTP API
//   render.js    the page
//   connection.js  the WebSocket: reconnects, and rejoins every room with `since`
//   rooms.js, messages.js, notifications.js, session.js  what the user does, and the answers
//
// The server is the source of truth. Per joined room the client keeps the last seq it saw: every
// (re)connection joins with `since` = that seq, so the server sends exactly what was missed;
// events at or below it, and event ids already applied, are dropped, so nothing shows twice.

import { hooks, checkSocket, isConnected, reconnectNow, wentOffline } from './js/connection.js';
import { addFiles, onUploadsChange } from './js/files.js';
import { setUnauthorizedHandler } from './js/http.js';
import {
  cancelComposerMode, composerMode, deleteMessage, discardMessage, editLast, onAck, onError,
  onTypingInput, react, resendOutbox, resendRoom, retryMessage, scheduleRead, socketClosed,
  startEdit, startReply, stopTyping, submitComposer,
} from './js/messages.js';
import { addNotification, markAllNotificationsRead, markNotificationsRead, refreshNotifications } from './js/notifications.js';
import { ID_RE, notificationOf } from './js/protocol.js';
import {
  $, actions, autoGrow, closePicker, focusMessage, isAtBottom, renderUploads, scrollToBottom, setNav,
  toast, toggleNotifications, updateCount,
} from './js/render.js';
import {
  addMember, createRoom, fetchPresence, forgetRoom, leaveRoom, loadInitial, loadOlder, onEvent, onLeft,
  onPresence, openRoom, refreshRooms, refreshUnread, socketClosedForRooms,
} from './js/rooms.js';
import { login, logout, renderLoginNote, sessionExpired, showLogin, start } from './js/session.js';
import { S, TOKEN_KEY, currentRoom, load } from './js/state.js';

function openNotification(n) {
  toggleNotifications(false);
  markNotificationsRead([n.id]);
  if (n.room) {
    openRoom(n.room, { keepFocus: true });
    const m = S.rooms.get(n.room)?.timeline.byId.get(n.message_id);
    if (m) focusMessage(m);
  }
}

Object.assign(actions, {
  openRoom, openNotification, react, reply: startReply, edit: startEdit, delete: deleteMessage,
  retry: retryMessage, discard: discardMessage,
});

Object.assign(hooks, {
  opened(again) {
    resendOutbox();
    if (again) {
      refreshRooms();
      refreshUnread();
      refreshNotifications();
    }
  },
  closed() {
    socketClosed();
    socketClosedForRooms();
  },
  expired: sessionExpired,
  load: loadInitial,
  loaded: resendRoom,
  joined(r) {
    if (r.id !== S.current) return;
    fetchPresence(r);
    scheduleRead(r);
  },
  refused: forgetRoom,
  frame(f) {
    switch (f.type) {
      case 'event': onEvent(f); return;
      case 'ack': onAck(f); return;
      case 'error': onError(f); return;
      case 'presence': onPresence(f); return;
      case 'notification': {
        const n = notificationOf(f);
        if (n) addNotification(n, true);
        return;
      }
      case 'left': onLeft(f.room); return;
      default: // pong, and frames of a newer server
    }
  },
});

setUnauthorizedHandler(sessionExpired);

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
  $('conn-retry').addEventListener('click', reconnectNow);

  const input = $('composer-input');
  $('composer').addEventListener('submit', (e) => { e.preventDefault(); submitComposer(); });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      submitComposer();
    } else if (e.key === 'Escape') {
      if (composerMode() !== 'send') { e.preventDefault(); cancelComposerMode(); }
    } else if (e.key === 'ArrowUp' && !input.value && composerMode() === 'send') {
      if (editLast()) e.preventDefault();
    }
  });
  input.addEventListener('input', () => { autoGrow(); updateCount(); onTypingInput(); });
  input.addEventListener('blur', () => setTimeout(() => { if (document.activeElement !== input) stopTyping(); }, 0));
  $('composer-cancel').addEventListener('click', () => { cancelComposerMode(); input.focus(); });

  // Files: the button, a drop anywhere on the room, a paste into the message box.
  const attach = (files) => {
    const r = currentRoom();
    if (!r || !files || !files.length) return;
    const refused = addFiles(r.id, files);
    if (refused) toast(refused, 'error');
  };
  onUploadsChange(renderUploads);
  $('attach').addEventListener('click', () => $('attach-input').click());
  $('attach-input').addEventListener('change', (e) => { attach(e.target.files); e.target.value = ''; });
  const dropZone = $('room');
  dropZone.addEventListener('dragover', (e) => {
    if (![...e.dataTransfer.types].includes('Files')) return;
    e.preventDefault();
    dropZone.classList.add('dropping');
  });
  dropZone.addEventListener('dragleave', (e) => {
    if (!dropZone.contains(e.relatedTarget)) dropZone.classList.remove('dropping');
  });
  dropZone.addEventListener('drop', (e) => {
    dropZone.classList.remove('dropping');
    if (!e.dataTransfer.files.length) return;
    e.preventDefault();
    attach(e.dataTransfer.files);
  });
  input.addEventListener('paste', (e) => {
    const files = e.clipboardData && e.clipboardData.files;
    if (files && files.length) { e.preventDefault(); attach(files); }
  });

  $('scroller').addEventListener('scroll', () => {
    const r = currentRoom();
    if (isAtBottom()) { $('jump-new').hidden = true; scheduleRead(r); }
    if (r && $('scroller').scrollTop < 80 && r.hasMore && r.loaded) loadOlder(r);
  }, { passive: true });
  $('load-older').addEventListener('click', () => {
    const r = currentRoom();
    if (r && r.loaded) loadOlder(r);
    else if (r) loadInitial(r);
  });
  $('jump-new').addEventListener('click', () => { scrollToBottom(); scheduleRead(currentRoom()); input.focus(); });
  $('leave-room').addEventListener('click', () => {
    const r = currentRoom();
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
  $('notif-all-read').addEventListener('click', markAllNotificationsRead);

  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    if (!$('notif-panel').hidden) { toggleNotifications(false); $('notif-toggle').focus(); return; }
    if (document.body.classList.contains('nav-open')) { setNav(false); $('nav-toggle').focus(); return; }
    if (closePicker()) return;
    if (composerMode() !== 'send') { cancelComposerMode(); input.focus(); }
  });
  document.addEventListener('click', (e) => {
    const panel = $('notif-panel');
    if (!panel.hidden && !panel.contains(e.target) && !$('notif-toggle').contains(e.target)) toggleNotifications(false);
  });

  window.addEventListener('hashchange', () => {
    const id = decodeURIComponent(location.hash.slice(1));
    if (S.token && ID_RE.test(id) && id !== S.current) openRoom(id);
  });
  window.addEventListener('offline', wentOffline);
  window.addEventListener('online', () => { if (S.token) reconnectNow(); });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState !== 'visible') return;
    scheduleRead(currentRoom());
    checkSocket();
  });
  window.addEventListener('storage', (e) => {
    if (e.key === TOKEN_KEY && !e.newValue && S.token) logout('You logged out in another tab.');
  });
  // Unread counts from the server now and then (a no-op when the server does not have them).
  setInterval(() => {
    if (!S.token || !isConnected()) return;
    refreshRooms();
    if (S.features.unread) refreshUnread();
  }, 60000);
}

wire();
const saved = load('token');
if (saved) start(saved); else showLogin();
