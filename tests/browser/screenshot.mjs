// Takes the README's screenshot: two users having a real conversation in the web client (a few
// messages, a reply, reactions, an edit, a mention), through the UI, at a desktop size.
//
//   cd tests/browser && npm ci && node screenshot.mjs [out.png]     (default: <repo>/docs/screenshot.png)

import { chromium } from 'playwright-core';
import path from 'node:path';
import {
  chromiumArgs, chromiumPath, log, repoRoot, serverLogs, startServers, stopServers,
} from './harness.mjs';

const out = path.resolve(process.argv[2] || path.join(repoRoot, 'docs', 'screenshot.png'));
const WAIT = 10_000;

async function api(baseUrl, token, method, route, body) {
  const res = await fetch(`${baseUrl}${route}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${await res.text()}`);
  return res.status === 204 ? null : res.json();
}

/** Claims guest name `user` over HTTP: `{token, secret}` (the secret holds the name). */
async function guest(baseUrl, user) {
  const res = await fetch(`${baseUrl}/api/auth/guest`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user }),
  });
  return res.json();
}

/** `user` logs in as a guest through the page; `secret`: the one of a name claimed over HTTP. */
async function login(browser, baseUrl, user, secret) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 760 }, deviceScaleFactor: 1 });
  if (secret) {
    // The page keeps guest secrets in localStorage under chatlog.guest.<user>.
    await context.addInitScript(([u, s]) => localStorage.setItem(`chatlog.guest.${u}`, JSON.stringify(s)), [user, secret]);
  }
  const page = await context.newPage();
  page.on('pageerror', (e) => { throw e; });
  await page.goto(baseUrl);
  await page.fill('#login-user', user);
  await page.click('#login-guest');
  await page.waitForFunction(() => document.getElementById('conn').dataset.state === 'connected', null, { timeout: WAIT });
  return page;
}

async function openRoom(page, id) {
  await page.click(`.room-item[data-room="${id}"]`);
  await page.waitForFunction((r) => document.querySelector('.room-item[aria-current="page"]')?.dataset.room === r, id, { timeout: WAIT });
  await page.waitForFunction(() => !document.getElementById('history-note').textContent.includes('Loading'), null, { timeout: WAIT });
}

async function say(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
  await page.waitForFunction((t) => [...document.querySelectorAll('#messages li.msg')]
    .some((e) => e.querySelector('.text')?.textContent === t && e.dataset.seq && !e.classList.contains('pending')), text, { timeout: WAIT });
}

async function seen(page, text) {
  await page.waitForFunction((t) => [...document.querySelectorAll('#messages li.msg .text')].some((e) => e.textContent.startsWith(t)), text, { timeout: WAIT });
}

const msg = (page, text) => page.locator('#messages li.msg', { has: page.locator('.text', { hasText: text }) }).last();

async function react(page, text, emoji) {
  const m = msg(page, text);
  await m.hover();
  await m.locator('[data-action="react"]').click();
  await m.locator(`[data-action="pick:${emoji}"]`).click();
  await page.waitForFunction(([t, e]) => [...document.querySelectorAll('#messages li.msg')]
    .some((el) => el.querySelector('.text')?.textContent.startsWith(t) && el.querySelector(`.reaction[data-action="reaction:${e}"]`)), [text, emoji], { timeout: WAIT });
}

async function reply(page, text, answer) {
  const m = msg(page, text);
  await m.hover();
  await m.locator('[data-action="reply"]').click();
  await say(page, answer);
}

let browser;
let code = 0;
try {
  const servers = await startServers();
  const { baseUrl } = servers;

  // Rooms for the sidebar, created over HTTP.
  const adaGuest = await guest(baseUrl, 'ada');
  const adaToken = adaGuest.token;
  const grace = (await guest(baseUrl, 'grace')).token;
  await api(baseUrl, adaToken, 'POST', '/api/rooms', { id: 'dev', name: 'dev', topic: 'Builds, reviews and the event log' });
  await api(baseUrl, adaToken, 'POST', '/api/rooms', { id: 'random', name: 'random', topic: 'Anything goes' });
  await api(baseUrl, adaToken, 'POST', '/api/rooms', { id: 'design', name: 'design', private: true, members: ['ada', 'bob', 'grace'] });
  await api(baseUrl, grace, 'POST', '/api/rooms', { id: 'ops', name: 'ops', topic: 'Deploys and pager' });

  browser = await chromium.launch({ executablePath: chromiumPath(), args: chromiumArgs });
  const ada = await login(browser, baseUrl, 'ada', adaGuest.secret);
  const bob = await login(browser, baseUrl, 'bob');
  for (const p of [ada, bob]) {
    await openRoom(p, 'random');
    await openRoom(p, 'design');
    await openRoom(p, 'dev');
  }

  await say(bob, 'Is main green again after last night\'s NATS upgrade?');
  await seen(ada, 'Is main green');
  await say(ada, 'Yes, CI passed an hour ago ✅');
  await seen(bob, 'Yes, CI passed');
  await say(ada, 'Morning! I rebuilt the history view from the log: same checksum as the live one 🎉');
  await seen(bob, 'Morning!');
  await say(bob, 'Nice. Did the replay pick up the edits and reactions too?');
  await seen(ada, 'Nice.');
  await say(ada, 'Yes, all folded in. Try it:\nchatlog views rebuild history');
  await seen(bob, 'Yes, all folded in');
  await react(bob, 'Morning!', '🎉');
  await react(ada, 'Morning!', '🎉');
  await react(bob, 'Yes, all folded in', '👍');
  await reply(bob, 'Morning!', 'Ship it 🚀 I will tag the release after lunch');
  await seen(ada, 'Ship it');
  await react(ada, 'Ship it', '❤️');
  await say(bob, '@ada can you review the web client PR? It reconnects with since now, so nothing is lost on a flaky network');
  await seen(ada, '@ada can you review');
  // ada fixes a typo: edited messages say so.
  await say(ada, 'On it, looking now');
  const mine = msg(ada, 'On it, looking now');
  await mine.hover();
  await mine.locator('[data-action="edit"]').click();
  await ada.fill('#composer-input', 'On it, looking at it now 👀');
  await ada.press('#composer-input', 'Enter');
  await ada.waitForSelector('#messages li.msg .edited', { timeout: WAIT });
  // Unread messages elsewhere, for the sidebar badges.
  await api(baseUrl, grace, 'POST', '/api/rooms/random/messages', { text: 'Anyone up for lunch?' });
  await api(baseUrl, grace, 'POST', '/api/rooms/random/messages', { text: 'The new place on 5th has ramen' });
  await api(baseUrl, grace, 'POST', '/api/rooms/design/messages', { text: 'New mockups are up, @ada' });
  await ada.waitForFunction(() => document.querySelector('.room-item[data-room="design"] .badge'), null, { timeout: WAIT });

  // bob starts typing: ada sees it (when the server serves presence).
  await bob.type('#composer-input', 'Thanks, merging', { delay: 20 });
  await ada.waitForFunction(() => document.getElementById('typing').textContent.includes('bob'), null, { timeout: 5000 })
    .catch(() => log('no typing indicator (presence not served?)'));

  await ada.evaluate(() => document.getElementById('toasts').replaceChildren());
  await ada.mouse.move(5, 700);
  await ada.evaluate(() => { document.activeElement?.blur(); document.getElementById('scroller').scrollTop = 1e9; });
  await ada.waitForTimeout(300);
  await ada.screenshot({ path: out });
  log(`screenshot saved to ${out}`);
} catch (e) {
  code = 1;
  console.error(e);
  console.log(serverLogs());
} finally {
  if (browser) await browser.close().catch(() => {});
  await stopServers();
}
process.exit(code);
