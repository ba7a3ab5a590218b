// Files: what the composer uploads (a button, drag and drop, paste) with a progress bar each, and
// the attachments of messages, fetched with the session's token in a header (never in a URL) and
// shown as thumbnails (raster images) or cards (name, size, a download).
//
// An upload goes to `POST /api/rooms/{room}/files` as it is picked, so the bytes are on the
// server by the time the message is sent; the message then names them (`attachments: [ids]`).

import { S } from './state.js';

export const MAX_FILE_BYTES = 25 * 1024 * 1024;
export const MAX_ATTACHMENTS = 10;
const INLINE = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);
const CACHED_URLS = 200; // object URLs of attachments kept for redraws (the oldest revoked)

/** Whether the server shows attachment `a` inline: a raster image (never SVG). */
export const isImage = (a) => INLINE.has(a.content_type);

/** `n` bytes for people: 812 B, 4.2 KB, 25 MB. */
export function fmtSize(n) {
  if (n < 1000) return `${n} B`;
  const units = ['KB', 'MB', 'GB'];
  let v = n;
  let u = -1;
  while (v >= 1000 && u < units.length - 1) { v /= 1000; u += 1; }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[u]}`;
}

// ------------------------------------------------------------------ the composer's uploads

let pending = []; // {key, room, name, size, loaded, state: uploading|done|failed, error, result, xhr}
let nextKey = 0;
let changed = () => {};

/** `fn()` runs whenever the uploads change (added, progress, done, failed, removed). */
export function onUploadsChange(fn) { changed = fn; }

/** The composer's uploads for room `roomId`, in the order picked. */
export const uploadsOf = (roomId) => pending.filter((u) => u.room === roomId);

/**
 * Starts uploading `files` (a FileList or array) to room `roomId`; answers an error to show when
 * some were refused here (too many, too large), else null.
 */
export function addFiles(roomId, files) {
  let refused = null;
  for (const file of files) {
    if (uploadsOf(roomId).length >= MAX_ATTACHMENTS) {
      refused = `A message carries at most ${MAX_ATTACHMENTS} files.`;
      break;
    }
    if (file.size > MAX_FILE_BYTES) {
      refused = `${file.name || 'That file'} is larger than 25 MB.`;
      continue;
    }
    const u = {
      key: ++nextKey, room: roomId, name: file.name || 'pasted file', size: file.size, loaded: 0,
      state: 'uploading', error: null, result: null, xhr: null,
    };
    pending.push(u);
    upload(u, file);
  }
  changed();
  return refused;
}

function upload(u, file) {
  const xhr = new XMLHttpRequest();
  u.xhr = xhr;
  xhr.open('POST', `/api/rooms/${encodeURIComponent(u.room)}/files?name=${encodeURIComponent(u.name)}`);
  if (S.token) xhr.setRequestHeader('authorization', `Bearer ${S.token}`);
  xhr.setRequestHeader('content-type', file.type || 'application/octet-stream');
  xhr.upload.onprogress = (e) => { u.loaded = e.loaded; changed(); };
  const fail = (why) => { u.state = 'failed'; u.error = why; u.xhr = null; changed(); };
  xhr.onload = () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch { /* answered below */ }
    if (xhr.status === 201 && body && typeof body.id === 'string') {
      u.state = 'done';
      u.loaded = u.size;
      u.result = { id: body.id, name: body.name, size: body.size, content_type: body.content_type };
      u.xhr = null;
      changed();
    } else {
      fail((body && body.message) || `HTTP ${xhr.status}`);
    }
  };
  xhr.onerror = () => fail('network error');
  xhr.onabort = () => {};
  xhr.send(file);
}

/** Drops upload `key` (stopping it if it is under way). */
export function removeUpload(key) {
  const u = pending.find((p) => p.key === key);
  if (!u) return;
  if (u.xhr) u.xhr.abort();
  pending = pending.filter((p) => p !== u);
  changed();
}

/**
 * What a message sent to `roomId` now attaches: `{busy}` while one is still uploading, else
 * `{attachments}` (those uploaded; the failed ones stay listed until removed).
 */
export function readyFor(roomId) {
  const mine = uploadsOf(roomId);
  if (mine.some((u) => u.state === 'uploading')) return { busy: true, attachments: [] };
  return { busy: false, attachments: mine.filter((u) => u.state === 'done').map((u) => u.result) };
}

/** The uploads of `roomId` were sent with a message: they leave the composer. */
export function clearSent(roomId) {
  pending = pending.filter((u) => u.room !== roomId || u.state !== 'done');
  changed();
}

/** Logging out: every upload stops. */
export function clearUploads() {
  for (const u of pending) if (u.xhr) u.xhr.abort();
  pending = [];
  changed();
}

// ------------------------------------------------------------------ attachments shown

const urls = new Map(); // file id -> Promise<object URL | null>

/** An object URL of file `id`'s bytes (fetched once, with the token), or null when refused. */
export function fileUrl(id) {
  let url = urls.get(id);
  if (!url) {
    url = fetch(`/api/files/${encodeURIComponent(id)}`, {
      headers: S.token ? { authorization: `Bearer ${S.token}` } : {},
    }).then((res) => (res.ok ? res.blob() : null))
      .then((blob) => (blob ? URL.createObjectURL(blob) : null))
      .catch(() => null);
    urls.set(id, url);
    url.then((u) => { if (!u) urls.delete(id); });
    if (urls.size > CACHED_URLS) {
      const [oldest, p] = urls.entries().next().value;
      urls.delete(oldest);
      p.then((u) => u && URL.revokeObjectURL(u));
    }
  }
  return url;
}

/** Saves attachment `a` under its name. */
export async function download(a) {
  const url = await fileUrl(a.id);
  if (!url) return false;
  const link = document.createElement('a');
  link.href = url;
  link.download = a.name;
  document.body.append(link);
  link.click();
  link.remove();
  return true;
}
