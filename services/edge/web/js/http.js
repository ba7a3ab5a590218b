// The HTTP API: one function for every call, which never throws.

import { S } from './state.js';

const HTTP_TIMEOUT = 15000; // an HTTP request not answered by then failed

/** Called when the server refuses the token of the session (a 401 on an authenticated call). */
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

/** `{ok, status, data}`; never throws. A 401 on an authenticated call ends the session. */
export async function api(method, path, body) {
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
  if (res.status === 401 && token && S.token === token && !path.startsWith('/api/auth/')) onUnauthorized();
  return { ok: res.ok, status: res.status, data };
}

export const errText = (r) => (r.data && r.data.message) || (r.status ? `HTTP ${r.status}` : 'network error');

/** A route this server does not have (yet), or a view that is not running. */
export const missing = (r) => r.status === 404 || r.status === 501 || r.status === 503 || r.status === 405;
