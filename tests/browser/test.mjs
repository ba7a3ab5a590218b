// Browser test of the web client: two users chat through real Chromium pages against a real
// nats-server and `chatlog up`; one of them loses the network while the other writes, comes
// back, and must see every missed message exactly once, in order. An EventSource on the room
// resumes with Last-Event-ID after the edge restarts. Then: a removal from a private room, and
// guest names (held by a secret this browser keeps; refused to another browser).
//
//   cd tests/browser && npm ci && node test.mjs
//
// See harness.mjs for the environment variables (CHATLOG_BIN, NATS_SERVER_BIN, CHROMIUM_BIN).

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  blackholeProxy, chromiumArgs, chromiumPath, log, serverLogs, startFunction, startServers, stopServers,
} from './harness.mjs';

const TOTAL_TIMEOUT = 90_000; // the whole run; it normally takes well under a minute
const WAIT = 10_000; // one expectation

const started = Date.now();
const results = [];
let browser;
const pageErrors = [];

function fail(message) {
  throw new Error(message);
}

async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push({ name, ok: false });
    log(`FAIL ${name}: ${e.message}`);
    throw e;
  }
}

/** The messages a page shows, in page order. */
function messages(page) {
  return page.$$eval('#messages li.msg', (els) => els.map((e) => ({
    seq: e.dataset.seq ? Number(e.dataset.seq) : null,
    id: e.dataset.id,
    user: e.dataset.user,
    text: e.querySelector('.text')?.textContent ?? '',
    pending: e.classList.contains('pending'),
  })));
}

async function waitForText(page, text, who) {
  try {
    await page.waitForFunction(
      (t) => [...document.querySelectorAll('#messages li.msg .text')].some((e) => e.textContent === t),
      text, { timeout: WAIT },
    );
  } catch {
    fail(`${who} never showed "${text}"; it shows ${JSON.stringify((await messages(page)).map((m) => m.text))}`);
  }
}

async function waitForConn(page, who, states, minConnects = 0, timeout = WAIT) {
  try {
    await page.waitForFunction(([s, n]) => {
      const el = document.getElementById('conn');
      return s.includes(el.dataset.state) && Number(el.dataset.connects || 0) >= n;
    }, [states, minConnects], { timeout });
  } catch {
    const conn = await page.$eval('#conn', (el) => ({ ...el.dataset }));
    fail(`${who}: connection state ${JSON.stringify(conn)}, wanted one of ${states} after ${minConnects} connects`);
  }
  return page.$eval('#conn', (el) => ({ ...el.dataset }));
}

async function send(page, text) {
  await page.fill('#composer-input', text);
  await page.press('#composer-input', 'Enter');
}

/** Waits until every message `user` wrote on `page` is acked (has a seq, not pending). */
async function waitAcked(page, who) {
  try {
    await page.waitForFunction(() => [...document.querySelectorAll('#messages li.msg')]
      .every((e) => e.dataset.seq && !e.classList.contains('pending')), null, { timeout: WAIT });
  } catch {
    fail(`${who}: messages still not acked: ${JSON.stringify(await messages(page))}`);
  }
}

/** The page shows exactly `expected` (texts), each once, in this order, with increasing seqs. */
async function expectExactly(page, who, expected) {
  const shown = await messages(page);
  const texts = shown.map((m) => m.text);
  for (const t of expected) {
    const n = texts.filter((x) => x === t).length;
    if (n !== 1) fail(`${who} shows "${t}" ${n} times (want once): ${JSON.stringify(texts)}`);
  }
  if (JSON.stringify(texts) !== JSON.stringify(expected)) {
    fail(`${who} shows ${JSON.stringify(texts)}, want ${JSON.stringify(expected)}`);
  }
  for (let i = 1; i < shown.length; i += 1) {
    if (!(shown[i].seq > shown[i - 1].seq)) fail(`${who}: seqs not increasing: ${JSON.stringify(shown.map((m) => m.seq))}`);
  }
  const ids = new Set(shown.map((m) => m.id));
  if (ids.size !== shown.length) fail(`${who}: a message id shows twice`);
}

/** An HTTP call to the API as the user whose token `page` holds; the answer's JSON (or null). */
async function api(page, baseUrl, method, route, body) {
  const token = JSON.parse(await page.evaluate(() => localStorage.getItem('chatlog.token')));
  const res = await fetch(`${baseUrl}${route}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!res.ok) fail(`${method} ${route}: ${res.status} ${await res.text()}`);
  return res.status === 204 ? null : res.json();
}

/** What the page keeps in localStorage under `chatlog.<key>` (parsed), or null. */
async function stored(page, key) {
  const raw = await page.evaluate((k) => localStorage.getItem(`chatlog.${k}`), key);
  return raw === null ? null : JSON.parse(raw);
}

const joinedRooms = (page) => page.$$eval('#joined-rooms [data-room]', (els) => els.map((e) => e.dataset.room));

/** Waits until the login form shows an error matching `expected` (fails with what it shows). */
async function expectLoginError(page, who, expected) {
  try {
    await page.waitForFunction(([source, flags]) => {
      const el = document.getElementById('login-error');
      return !el.hidden && new RegExp(source, flags).test(el.textContent);
    }, [expected.source, expected.flags], { timeout: WAIT });
  } catch {
    const shown = await page.isVisible('#login-error') ? JSON.stringify(await page.textContent('#login-error')) : 'no error';
    fail(`${who}: the login page shows ${shown} (want ${expected}); chat ${await page.isVisible('#chat') ? 'visible' : 'hidden'}`);
  }
}

async function login(context, baseUrl, user) {
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${user}: ${e.message}`));
  page.on('console', (m) => {
    if (process.env.TEST_LOG) console.log(`  ${user} console.${m.type()}: ${m.text()}`);
    // The page's Content-Security-Policy refused something the page does: a bug, not an attack.
    if (m.type() === 'error' && m.text().includes('Content Security Policy')) pageErrors.push(`${user}: ${m.text()}`);
  });
  await page.goto(baseUrl);
  await page.fill('#login-user', user);
  await page.click('#login-guest');
  await waitForConn(page, user, ['connected'], 1);
  await page.waitForFunction(() => document.getElementById('room-name').textContent.includes('lobby'), null, { timeout: WAIT });
  // The room's history has loaded (an empty room says so).
  await page.waitForFunction(() => !document.getElementById('history-note').textContent.includes('Loading'), null, { timeout: WAIT });
  return page;
}

async function main() {
  const watchdog = setTimeout(() => {
    log(`FAIL the test did not finish in ${TOTAL_TIMEOUT / 1000} s`);
    console.log(serverLogs());
    process.exit(1);
  }, TOTAL_TIMEOUT);
  watchdog.unref();

  let servers;
  let proxy;
  await step('nats-server and chatlog start', async () => {
    servers = await startServers();
    // bob reaches the edge through a proxy that can make his network silently hang.
    proxy = await blackholeProxy(servers.httpPort);
    proxyClose = () => proxy.close();
    log(`chatlog on ${servers.baseUrl} (bob through :${proxy.port}), nats on ${servers.natsUrl}`);
  });

  browser = await chromium.launch({
    executablePath: chromiumPath(),
    args: chromiumArgs,
    headless: !process.env.HEADED,
  });
  const viewport = { width: 1280, height: 800 };
  const adaCtx = await browser.newContext({ viewport });
  const bobCtx = await browser.newContext({ viewport });
  let ada;
  let bob;

  await step('ada and bob log in as guests and open lobby', async () => {
    [ada, bob] = await Promise.all([login(adaCtx, servers.baseUrl, 'ada'), login(bobCtx, `http://127.0.0.1:${proxy.port}`, 'bob')]);
    const token = await ada.evaluate(() => localStorage.getItem('chatlog.token'));
    if (!token) fail('the token is not kept in localStorage');
  });

  await step('they chat both ways', async () => {
    await send(ada, 'hello bob');
    await waitForText(bob, 'hello bob', 'bob');
    await send(bob, 'hi ada, good to see you');
    await waitForText(ada, 'hi ada, good to see you', 'ada');
    await waitAcked(ada, 'ada');
    await waitAcked(bob, 'bob');
    const expected = ['hello bob', 'hi ada, good to see you'];
    await expectExactly(ada, 'ada', expected);
    await expectExactly(bob, 'bob', expected);
  });

  const missed = ['missed one', 'missed two', 'missed three'];
  let before;
  await step('bob goes offline and his socket drops; ada writes 3 messages meanwhile', async () => {
    before = await bob.$eval('#conn', (el) => ({ ...el.dataset }));
    await bobCtx.setOffline(true);
    const conn = await waitForConn(bob, 'bob', ['offline', 'reconnecting']);
    log(`bob's connection: ${conn.state} (${conn.reason})`);
    // bob writes too while offline: kept as pending, sent (with its id) once he is back.
    await send(bob, 'written while offline');
    const pending = (await messages(bob)).find((m) => m.text === 'written while offline');
    if (!pending || !pending.pending) fail('a message written offline is not shown as pending');
    for (const t of missed) await send(ada, t);
    await waitAcked(ada, 'ada');
    // Nothing reaches bob while he is offline.
    await bob.waitForTimeout(300);
    const shown = (await messages(bob)).map((m) => m.text);
    if (shown.some((t) => missed.includes(t))) fail(`bob got messages while offline: ${JSON.stringify(shown)}`);
  });

  await step('bob comes back: every missed message once, in order; his offline message is sent once', async () => {
    await bobCtx.setOffline(false);
    const conn = await waitForConn(bob, 'bob', ['connected'], Number(before.connects) + 1);
    log(`bob reconnected (connects: ${conn.connects})`);
    await waitForText(bob, 'missed three', 'bob');
    await waitAcked(bob, 'bob');
    await waitForText(ada, 'written while offline', 'ada');
    // Late duplicates (a catch-up racing the live feed) would show up now.
    await bob.waitForTimeout(700);
    const expected = ['hello bob', 'hi ada, good to see you', ...missed, 'written while offline'];
    await expectExactly(bob, 'bob', expected);
    await expectExactly(ada, 'ada', expected);
  });

  const hung = ['while bob hung one', 'while bob hung two'];
  await step('bob\'s network silently hangs: his own ping timeout notices; he resumes without gaps or duplicates', async () => {
    before = await bob.$eval('#conn', (el) => ({ ...el.dataset }));
    proxy.blackhole();
    for (const t of hung) await send(ada, t);
    await waitAcked(ada, 'ada');
    const conn = await waitForConn(bob, 'bob', ['offline', 'reconnecting'], 0, 15_000);
    if (conn.reason !== 'ping timeout') fail(`bob's socket ended by "${conn.reason}", want the ping timeout`);
    log(`bob noticed the dead socket: ${conn.reason}`);
    proxy.restore();
    await waitForConn(bob, 'bob', ['connected'], Number(before.connects) + 1, 15_000);
    await waitForText(bob, hung[1], 'bob');
    await bob.waitForTimeout(500);
    await expectExactly(bob, 'bob', ['hello bob', 'hi ada, good to see you', ...missed, 'written while offline', ...hung]);
  });

  await step('an EventSource on lobby gets the room\'s events as server-sent events', async () => {
    const token = JSON.parse(await ada.evaluate(() => localStorage.getItem('chatlog.token')));
    await ada.evaluate((t) => {
      window.sseSeen = [];
      const es = new EventSource(`/api/rooms/lobby/stream?token=${t}`);
      es.addEventListener('chat.message.posted', (e) => {
        window.sseSeen.push({ id: Number(e.lastEventId), text: JSON.parse(e.data).data.text });
      });
      window.sse = es;
    }, token);
    await ada.waitForFunction(() => window.sse.readyState === EventSource.OPEN, null, { timeout: WAIT });
    await send(ada, 'seen by the event stream');
    await ada.waitForFunction(() => window.sseSeen.some((e) => e.text === 'seen by the event stream'), null, { timeout: WAIT });
  });

  await step('the edge restarts (close 1001): both resume, a message written meanwhile is sent once', async () => {
    const adaBefore = await ada.$eval('#conn', (el) => ({ ...el.dataset }));
    const bobBefore = await bob.$eval('#conn', (el) => ({ ...el.dataset }));
    await servers.stopChatlog();
    const conn = await waitForConn(ada, 'ada', ['offline', 'reconnecting']);
    log(`ada's connection: ${conn.state} (${conn.reason})`);
    await send(ada, 'written while the edge was down');
    await servers.startChatlog();
    await waitForConn(ada, 'ada', ['connected'], Number(adaBefore.connects) + 1, 20_000);
    await waitForConn(bob, 'bob', ['connected'], Number(bobBefore.connects) + 1, 20_000);
    await waitAcked(ada, 'ada');
    await waitForText(bob, 'written while the edge was down', 'bob');
    await bob.waitForTimeout(500);
    const expected = ['hello bob', 'hi ada, good to see you', ...missed, 'written while offline', ...hung,
      'seen by the event stream', 'written while the edge was down'];
    await expectExactly(bob, 'bob', expected);
    await expectExactly(ada, 'ada', expected);
  });

  await step('the EventSource resumed after the restart with Last-Event-ID: what came meanwhile, once', async () => {
    try {
      await ada.waitForFunction(() => window.sseSeen.some((e) => e.text === 'written while the edge was down'), null, { timeout: 20_000 });
    } catch {
      fail(`the event stream saw ${JSON.stringify(await ada.evaluate(() => window.sseSeen))} (readyState ${await ada.evaluate(() => window.sse.readyState)})`);
    }
    await send(ada, 'after the restart, live');
    await ada.waitForFunction(() => window.sseSeen.some((e) => e.text === 'after the restart, live'), null, { timeout: WAIT });
    const seen = await ada.evaluate(() => { window.sse.close(); return window.sseSeen; });
    const texts = seen.map((e) => e.text);
    const want = ['seen by the event stream', 'written while the edge was down', 'after the restart, live'];
    if (JSON.stringify(texts) !== JSON.stringify(want)) fail(`the event stream saw ${JSON.stringify(texts)}, want ${JSON.stringify(want)}`);
    for (let i = 1; i < seen.length; i += 1) {
      if (!(seen[i].id > seen[i - 1].id)) fail(`event ids not increasing: ${JSON.stringify(seen.map((e) => e.id))}`);
    }
  });

  await step('bob reloads the page: still logged in, same messages once each', async () => {
    await bob.reload();
    await waitForConn(bob, 'bob', ['connected'], 1);
    await waitForText(bob, 'written while the edge was down', 'bob');
    await send(ada, 'after the reload');
    await waitForText(bob, 'after the reload', 'bob');
    await bob.waitForTimeout(300);
    await expectExactly(bob, 'bob', ['hello bob', 'hi ada, good to see you', ...missed, 'written while offline', ...hung,
      'seen by the event stream', 'written while the edge was down', 'after the restart, live', 'after the reload']);
  });

  await step('bob is removed from a private room: his page drops it, says so, and does not join it again', async () => {
    await api(ada, servers.baseUrl, 'POST', '/api/rooms', { id: 'plans', private: true, members: ['ada', 'bob'] });
    await bob.fill('#join-id', 'plans');
    await bob.press('#join-id', 'Enter');
    try {
      // Joined: the server counts him online there.
      await bob.waitForFunction(() => document.getElementById('room-name').textContent.includes('plans')
        && document.getElementById('online-list').textContent.includes('bob (you)'), null, { timeout: WAIT });
    } catch {
      fail(`bob could not open the private room: rooms ${JSON.stringify(await joinedRooms(bob))}`);
    }
    await api(ada, servers.baseUrl, 'DELETE', '/api/rooms/plans/members/bob');
    try {
      await bob.waitForFunction(() => !document.querySelector('#joined-rooms [data-room="plans"]')
        && /removed from #plans/.test(document.getElementById('toasts').textContent), null, { timeout: WAIT });
    } catch {
      fail(`bob's page: rooms ${JSON.stringify(await joinedRooms(bob))}, notices ${JSON.stringify(await bob.textContent('#toasts'))}`);
    }
    if ((await stored(bob, 'joined.bob')).includes('plans')) fail('plans is still among bob\'s saved rooms');
    // A new connection does not join it again.
    const connBefore = await bob.$eval('#conn', (el) => ({ ...el.dataset }));
    await bobCtx.setOffline(true);
    await waitForConn(bob, 'bob', ['offline', 'reconnecting']);
    await bobCtx.setOffline(false);
    await waitForConn(bob, 'bob', ['connected'], Number(connBefore.connects) + 1, 20_000);
    await bob.waitForTimeout(500);
    const rooms = await joinedRooms(bob);
    if (rooms.includes('plans')) fail(`bob joined plans again after reconnecting: ${JSON.stringify(rooms)}`);
    if (!(await bob.textContent('#room-name')).includes('lobby')) fail('bob\'s page did not go back to lobby');
  });

  await step('ada logs out (told her guest name stays hers here), reloads, and is ada again with the kept secret', async () => {
    const secret = await stored(ada, 'guest.ada');
    if (!secret) fail('no secret kept for the guest name ada (localStorage chatlog.guest.ada)');
    await ada.click('#logout');
    await ada.waitForSelector('#login:not([hidden])', { timeout: WAIT });
    const note = await ada.textContent('#login-note');
    if (!(await ada.isVisible('#login-note')) || !/"ada" stays held by you on this browser/.test(note)) {
      fail(`after logging out, the page says ${JSON.stringify(note)}`);
    }
    if (await stored(ada, 'guest.ada') !== secret) fail('logging out lost the guest secret');
    await ada.reload();
    await ada.fill('#login-user', 'ada');
    await ada.click('#login-guest');
    try {
      await waitForConn(ada, 'ada', ['connected'], 1);
    } catch (e) {
      const err = await ada.isVisible('#login-error') ? await ada.textContent('#login-error') : 'none';
      fail(`${e.message}; login error: ${err}`);
    }
    if (await stored(ada, 'guest.ada') !== secret) fail('the guest secret changed on a new login');
    await waitForText(ada, 'after the reload', 'ada');
    await send(ada, 'ada is back');
    await waitForText(bob, 'ada is back', 'bob');
    const back = (await messages(bob)).find((m) => m.text === 'ada is back');
    if (back.user !== 'ada') fail(`bob sees "ada is back" from ${back.user}`);
  });

  await step('another browser trying the guest name ada, or a reserved name, gets a visible error', async () => {
    const eveCtx = await browser.newContext({ viewport });
    const eve = await eveCtx.newPage();
    eve.on('pageerror', (e) => pageErrors.push(`eve: ${e.message}`));
    await eve.goto(servers.baseUrl);
    await eve.fill('#login-user', 'ada');
    await eve.click('#login-guest');
    await expectLoginError(eve, 'eve logging in as ada', /"ada" is held by another guest/);
    if (await eve.isVisible('#chat')) fail('eve got into the chat as ada');
    if (await stored(eve, 'token')) fail('eve\'s page keeps a token for ada');
    await eve.fill('#login-user', 'admin');
    await eve.click('#login-guest');
    await expectLoginError(eve, 'eve logging in as admin', /"admin" cannot be a guest name/);
    // ada, meanwhile, is still in.
    await waitForConn(ada, 'ada', ['connected']);
  });

  await step('a message deleted while bob is offline reaches him deleted (a redacted catch-up), without its text', async () => {
    const before = await bob.$eval('#conn', (el) => ({ ...el.dataset }));
    await bobCtx.setOffline(true);
    await waitForConn(bob, 'bob', ['offline', 'reconnecting']);
    await send(ada, 'a secret to delete');
    await waitAcked(ada, 'ada');
    ada.once('dialog', (d) => d.accept());
    const mine = ada.locator('#messages li.msg', { has: ada.locator('.text', { hasText: 'a secret to delete' }) });
    await mine.hover();
    await mine.locator('[data-action="delete"]').click();
    await ada.waitForSelector('#messages li.msg.deleted', { timeout: WAIT });
    await bobCtx.setOffline(false);
    await waitForConn(bob, 'bob', ['connected'], Number(before.connects) + 1, 20_000);
    try {
      await bob.waitForSelector('#messages li.msg.deleted', { timeout: WAIT });
    } catch {
      fail(`bob shows no deleted message: ${JSON.stringify(await messages(bob))}`);
    }
    if ((await messages(bob)).some((m) => m.text.includes('a secret to delete'))) fail('bob\'s page shows the deleted text');
  });

  // A 1x1 PNG (a real one: the thumbnail must decode).
  const DOT = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==', 'base64');
  const PDF = Buffer.from('%PDF-1.4\n% the minutes\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n');
  const uploadsDone = (page, n) => page.waitForFunction((k) => document.querySelectorAll('#composer-files li.upload.done').length === k
    && !document.querySelector('#composer-files li.upload.uploading'), n, { timeout: WAIT });

  await step('ada attaches an image and a PDF with the button (a progress bar each); bob sees a thumbnail and a card, and downloads the PDF', async () => {
    await ada.evaluate(() => {
      window.sawProgress = false;
      new MutationObserver(() => { if (document.querySelector('#composer-files progress')) window.sawProgress = true; })
        .observe(document.getElementById('composer-files'), { childList: true, subtree: true });
    });
    await ada.setInputFiles('#attach-input', [
      { name: 'dot.png', mimeType: 'image/png', buffer: DOT },
      { name: 'minutes.pdf', mimeType: 'application/pdf', buffer: PDF },
    ]);
    await uploadsDone(ada, 2);
    if (!(await ada.evaluate(() => window.sawProgress))) fail('no progress bar while uploading');
    await send(ada, 'the dot and the minutes');
    await waitForText(bob, 'the dot and the minutes', 'bob');
    if (await ada.$('#composer-files li')) fail('the sent files stay in the composer');
    try {
      await bob.waitForFunction(() => [...document.querySelectorAll('#messages .attachments img.thumb')]
        .some((img) => img.complete && img.naturalWidth === 1 && img.src.startsWith('blob:')), null, { timeout: WAIT });
    } catch {
      fail(`bob shows no decoded thumbnail: ${await bob.$$eval('#messages .attachments', (els) => els.map((e) => e.outerHTML))}`);
    }
    const card = bob.locator('#messages .attachment.card', { hasText: 'minutes.pdf' });
    await card.waitFor({ timeout: WAIT });
    const [download] = await Promise.all([bob.waitForEvent('download', { timeout: WAIT }), card.locator('[data-action="download"]').click()]);
    if (download.suggestedFilename() !== 'minutes.pdf') fail(`downloaded as ${download.suggestedFilename()}`);
    const chunks = [];
    for await (const c of await download.createReadStream()) chunks.push(c);
    if (!Buffer.concat(chunks).equals(PDF)) fail('the downloaded PDF differs from the uploaded one');
  });

  await step('a file pasted into the message box and one dropped on the room upload too, and go as a message of files alone', async () => {
    await ada.evaluate(() => {
      const paste = new DataTransfer();
      paste.items.add(new File(['pasted words\n'], 'pasted.txt', { type: 'text/plain' }));
      document.getElementById('composer-input').dispatchEvent(new ClipboardEvent('paste', { clipboardData: paste, bubbles: true, cancelable: true }));
      const drop = new DataTransfer();
      drop.items.add(new File(['dropped words\n'], 'dropped.txt', { type: 'text/plain' }));
      document.getElementById('room').dispatchEvent(new DragEvent('drop', { dataTransfer: drop, bubbles: true, cancelable: true }));
    });
    await uploadsDone(ada, 2);
    await ada.press('#composer-input', 'Enter');
    try {
      await bob.waitForFunction(() => [...document.querySelectorAll('#messages li.msg')].some((li) => {
        const names = [...li.querySelectorAll('.attachment.card .file-name')].map((e) => e.textContent);
        return names.includes('pasted.txt') && names.includes('dropped.txt') && !li.querySelector('.text');
      }), null, { timeout: WAIT });
    } catch {
      fail(`bob shows no message of the two files: ${JSON.stringify(await messages(bob))}`);
    }
  });

  await step('an uploaded HTML or SVG file is a card, and opened as a link it is downloaded, never run in the page\'s origin', async () => {
    const evil = '<html><body><script>document.title = "pwned"; localStorage.setItem("pwned", "1");</script></body></html>';
    const svg = '<svg xmlns="http://www.w3.org/2000/svg"><script>localStorage.setItem("pwned", "1")</script></svg>';
    await ada.setInputFiles('#attach-input', [
      { name: 'evil.html', mimeType: 'text/html', buffer: Buffer.from(evil) },
      { name: 'evil.svg', mimeType: 'image/svg+xml', buffer: Buffer.from(svg) },
    ]);
    await uploadsDone(ada, 2);
    await send(ada, 'open these');
    await waitForText(bob, 'open these', 'bob');
    const li = bob.locator('#messages li.msg', { has: bob.locator('.text', { hasText: 'open these' }) });
    const cards = await li.locator('.attachment.card .file-name').allTextContents();
    if (cards.sort().join() !== 'evil.html,evil.svg') fail(`cards: ${JSON.stringify(cards)}`);
    if (await li.locator('img').count()) fail('an HTML or SVG file is shown as an image');
    const token = JSON.parse(await bob.evaluate(() => localStorage.getItem('chatlog.token')));
    const page = await api(bob, servers.baseUrl, 'GET', '/api/rooms/lobby/messages?limit=5');
    const sent = page.messages.find((m) => m.text === 'open these');
    if (!sent || sent.attachments.length !== 2) fail(`the message's attachments: ${JSON.stringify(sent)}`);
    for (const a of sent.attachments) {
      const tab = await bobCtx.newPage();
      const downloaded = tab.waitForEvent('download', { timeout: WAIT });
      await tab.goto(`${servers.baseUrl}/api/files/${a.id}?token=${token}`).catch(() => {});
      await downloaded;
      if ((await tab.evaluate(() => document.title)) === 'pwned') fail(`${a.name} ran its script`);
      await tab.close();
    }
    if (await bob.evaluate(() => localStorage.getItem('pwned'))) fail('a file\'s script ran in the page\'s origin');
  });

  await step('a message with a word the moderator lists is removed: both pages say "Removed by moderation."', async () => {
    await startFunction(servers, 'moderator', 'moderator.py', ['--words', 'spam'], ['--type', 'chat.message.posted', '--moderates', 'lobby']);
    await send(ada, 'get cheap spam here');
    for (const [page, who] of [[ada, 'ada'], [bob, 'bob']]) {
      try {
        await page.waitForSelector('#messages li.msg.deleted.moderated', { timeout: WAIT });
      } catch {
        fail(`${who} shows no moderated message: ${JSON.stringify(await messages(page))}`);
      }
      const shown = await page.$eval('#messages li.msg.moderated .text', (el) => el.textContent);
      if (shown !== 'Removed by moderation.') fail(`${who} shows ${JSON.stringify(shown)}`);
      if ((await messages(page)).some((m) => m.text.includes('cheap spam'))) fail(`${who}'s page keeps the removed text`);
    }
  });

  await step('no script errors in the pages', async () => {
    if (pageErrors.length) fail(pageErrors.join('\n'));
  });

  clearTimeout(watchdog);
}

let proxyClose = () => {};
let code = 0;
try {
  await main();
} catch (e) {
  code = 1;
  if (!results.some((r) => !r.ok)) log(`FAIL ${e.stack || e.message}`);
  console.log(serverLogs());
  try {
    if (browser) {
      const dir = path.join(os.tmpdir(), 'chatlog-browser-failure');
      mkdirSync(dir, { recursive: true });
      for (const [i, ctx] of browser.contexts().entries()) {
        for (const [j, p] of ctx.pages().entries()) await p.screenshot({ path: path.join(dir, `context${i}-page${j}.png`) });
      }
      log(`screenshots of the pages in ${dir}`);
    }
  } catch { /* best effort */ }
} finally {
  if (browser) await browser.close().catch(() => {});
  await stopServers();
  proxyClose();
}
const passed = results.filter((r) => r.ok).length;
const failed = results.length - passed + (code && results.every((r) => r.ok) ? 1 : 0);
log(`browser test ${code ? 'FAILED' : 'passed'} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(code);
