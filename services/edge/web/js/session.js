// Logging in and out, and the guest names this browser holds.
//
// The server gives a guest name to the first browser that asks for it, with a secret; later
// logins as that guest need the secret. This page keeps it in localStorage
// (`chatlog.guest.<user>`), sends it with every guest login for that name, and never removes it
// (logging out keeps it, so the same browser can be that guest again): losing it would lose the
// name.

import { clearUploads } from './files.js';
import { api, errText } from './http.js';
import { ID_RE, str, tokenClaims } from './protocol.js';
import { S, load, room, signIn, signOut, store } from './state.js';
import { connect, disconnect } from './connection.js';
import { clearMessages, restoreOutbox } from './messages.js';
import { refreshNotifications } from './notifications.js';
import { clearRooms, firstRoom, openRoom, refreshRooms, refreshUnread } from './rooms.js';
import { $, avatar, clearPage, renderRoom, toast } from './render.js';

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
export function sessionExpired() {
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

/** The login form's submit, as a guest, to an account, or registering one (`mode`). */
export async function login(mode) {
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
export function start(token, renewed = false) {
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
  signIn(token, claims.sub, claims.kind === 'guest' ? 'guest' : 'account');
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
  const first = firstRoom();
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
export function showLogin(message, user) {
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
export function renderLoginNote(loggedOut = false) {
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
export function logout(message, byUser = false) {
  const user = S.user;
  if (user) store('user', user);
  store('token', null);
  signOut();
  disconnect();
  clearRooms();
  clearMessages();
  clearUploads();
  clearPage();
  showLogin(message, user);
  if (byUser) renderLoginNote(true);
}
