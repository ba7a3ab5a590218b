// Mention notifications: the server's (`GET /api/notifications`, `notification` frames) and
// those this page makes up from a live message until the server's arrives.

import { api, missing } from './http.js';
import { S } from './state.js';
import { actions, isAtBottom, notificationText, renderNotifications, toast } from './render.js';

/** Adds notification `n` (`alert`: say so with a toast when it is unread). */
export function addNotification(n, alert) {
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
    toast(`@${n.by || 'someone'} mentioned you in #${n.room || '?'}: ${notificationText(n).slice(0, 120)}`, 'mention', () => actions.openNotification(n));
  }
}

export async function refreshNotifications() {
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

export function markNotificationsRead(ids) {
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

export function markRoomNotificationsRead(roomId) {
  const ids = [...S.notifications.values()].filter((n) => n.room === roomId && !n.read).map((n) => n.id);
  if (ids.length) markNotificationsRead(ids);
}

export function markAllNotificationsRead() {
  const unread = [...S.notifications.values()].filter((n) => !n.read);
  for (const n of unread) n.read = true;
  if (S.features.notifications && unread.some((n) => !n.local)) api('POST', '/api/notifications/read', { all: true });
  renderNotifications();
}
