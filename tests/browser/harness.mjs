// Starts what a browser test needs: a nats-server with JetStream on a free port and a temporary
// store, and `chatlog up` on another free port; stops both at the end, also on failure or Ctrl-C.
//
// Environment:
//   NATS_SERVER_BIN  nats-server to run (else <repo>/.tools/nats-server-*/bin/nats-server, else PATH)
//   CHATLOG_BIN      chatlog binary (else <repo>/target/debug/chatlog)
//   CHROMIUM_BIN     browser (else /usr/bin/chromium)
//   TEST_LOG=1       stream the servers' logs while the test runs
//   HEADED=1         show the browser windows (needs a display)

import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

const children = new Set();
const spawned = [];
const tmpDirs = new Set();

export function log(...args) {
  const t = ((performance.now()) / 1000).toFixed(1).padStart(5);
  console.log(`[${t}s]`, ...args);
}

function findNatsServer() {
  if (process.env.NATS_SERVER_BIN) return process.env.NATS_SERVER_BIN;
  const tools = path.join(repoRoot, '.tools');
  if (existsSync(tools)) {
    const found = readdirSync(tools)
      .filter((d) => d.startsWith('nats-server-'))
      .sort((a, b) => b.localeCompare(a, undefined, { numeric: true }))
      .map((d) => path.join(tools, d, 'bin', 'nats-server'))
      .find((p) => existsSync(p));
    if (found) return found;
  }
  try {
    return execFileSync('sh', ['-c', 'command -v nats-server'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error('no nats-server: set NATS_SERVER_BIN, or run `make test` once to install it into .tools/');
  }
}

function findChatlog() {
  const bin = process.env.CHATLOG_BIN || path.join(repoRoot, 'target', 'debug', 'chatlog');
  if (!existsSync(bin)) {
    throw new Error(`no chatlog binary at ${bin}: build it (cargo build -p chatlog) or set CHATLOG_BIN`);
  }
  return bin;
}

export function chromiumPath() {
  const bin = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
  if (!existsSync(bin)) throw new Error(`no browser at ${bin}: apt-get install -y chromium, or set CHROMIUM_BIN`);
  return bin;
}

export const chromiumArgs = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function tmpDir(prefix) {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpDirs.add(dir);
  return dir;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Spawns a child whose output is kept (and shown on failure, or streamed with TEST_LOG=1). */
function start(name, bin, args) {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' } });
  const out = [];
  const keep = (chunk) => {
    const text = chunk.toString();
    out.push(text);
    if (out.length > 2000) out.shift();
    if (process.env.TEST_LOG) process.stderr.write(text.replace(/^(?=.)/gm, `${name}| `));
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  child.output = () => out.join('');
  child.label = name;
  children.add(child);
  spawned.push(child);
  child.on('exit', () => children.delete(child));
  return child;
}

async function waitFor(what, fn, timeoutMs, child) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (child && child.exitCode !== null) throw new Error(`${what}: ${child.label} exited with ${child.exitCode}\n${child.output()}`);
    if (await fn().catch(() => false)) return;
    if (Date.now() > until) throw new Error(`${what}: not after ${timeoutMs} ms\n${child ? child.output() : ''}`);
    await sleep(100);
  }
}

function tcpOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/** nats-server + chatlog up. Returns `{ baseUrl, natsUrl, chatlog, nats }`. */
export async function startServers() {
  const natsBin = findNatsServer();
  const chatlogBin = findChatlog();
  const natsPort = await freePort();
  const store = tmpDir('chatlog-browser-nats-');
  const nats = start('nats', natsBin, ['-a', '127.0.0.1', '-p', String(natsPort), '-js', '-sd', store]);
  await waitFor('nats-server', () => tcpOpen(natsPort), 15000, nats);

  const httpPort = await freePort();
  const data = tmpDir('chatlog-browser-data-');
  const natsUrl = `nats://127.0.0.1:${natsPort}`;
  const chatlogArgs = [
    'up', '--http', `127.0.0.1:${httpPort}`, '--nats-url', natsUrl,
    '--data-dir', data, '--views-dir', path.join(data, 'views'), '--functions',
  ];
  const baseUrl = `http://127.0.0.1:${httpPort}`;
  // The streams first, as `make up` does (`chatlog up` waits for them, it does not create them).
  execFileSync(chatlogBin, ['setup', '--nats-url', natsUrl], { stdio: ['ignore', 'ignore', 'inherit'] });
  const servers = {
    baseUrl, natsUrl, httpPort, nats, chatlog: null,
    /** Starts chatlog (again: same port, data and views) and waits until it is ready. */
    async startChatlog() {
      servers.chatlog = start('chatlog', chatlogBin, chatlogArgs);
      await waitFor('chatlog /readyz', async () => (await fetch(`${baseUrl}/readyz`)).status === 200, 30000, servers.chatlog);
    },
    /** Stops chatlog gracefully (SIGTERM: its sockets close with 1001). */
    async stopChatlog() {
      await stop(servers.chatlog);
    },
  };
  await servers.startChatlog();
  const chatlog = servers.chatlog;
  // The history view answers once its handler is up: wait for the room list too. The guest name
  // `probe` is claimed by the first try; the next ones log in with its secret.
  const probe = { user: 'probe' };
  await waitFor('history view', async () => {
    const t = await (await fetch(`${baseUrl}/api/auth/guest`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(probe),
    })).json();
    if (t.secret) probe.secret = t.secret;
    const res = await fetch(`${baseUrl}/api/rooms`, { headers: { authorization: `Bearer ${t.token}` } });
    return res.status === 200 && (await res.json()).some((r) => r.id === 'lobby');
  }, 20000, chatlog);
  return servers;
}

/**
 * Runs `examples/functions/<script>` (with `args`) on a free port and registers it as function
 * `name` with `register` (extra `chatlog functions add` arguments); resolves when it listens.
 */
export async function startFunction(servers, name, script, args, register) {
  const secret = 'the browser test function secret';
  const child = spawn('python3', [path.join(repoRoot, 'examples', 'functions', script), '--port', '0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, CHATLOG_FUNCTION_SECRET: secret, PYTHONDONTWRITEBYTECODE: '1' },
  });
  child.label = name;
  children.add(child);
  spawned.push(child);
  let out = '';
  child.stderr.on('data', (c) => { out += c; });
  child.output = () => out;
  child.on('exit', () => children.delete(child));
  const url = await new Promise((resolve, reject) => {
    let first = '';
    child.stdout.on('data', (c) => {
      first += c;
      const m = /listening on (http:\/\/\S+)/.exec(first);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`${script} exited with ${code}: ${out}`)));
  });
  execFileSync(findChatlog(), ['functions', '--nats-url', servers.natsUrl, 'add', name, '--url', url, ...register], {
    stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, CHATLOG_FUNCTION_SECRET: secret },
  });
  return url;
}

/**
 * A TCP proxy to 127.0.0.1:`target` that can black-hole its traffic: while `blackhole()` holds,
 * every byte either way is dropped and nothing is closed, like a network that silently died
 * (only a client's own timeouts can notice). `restore()` resets the connections that lived
 * through it (as a NAT that forgot them would) and forwards new ones again.
 */
export async function blackholeProxy(target) {
  let holed = false;
  const conns = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(target, '127.0.0.1');
    const conn = { client, upstream, dead: holed };
    conns.add(conn);
    const forward = (from, to) => from.on('data', (chunk) => { if (!holed && !conn.dead) to.write(chunk); });
    forward(client, upstream);
    forward(upstream, client);
    const end = () => { conns.delete(conn); client.destroy(); upstream.destroy(); };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: server.address().port,
    blackhole() {
      holed = true;
      for (const c of conns) c.dead = true;
    },
    restore() {
      holed = false;
      for (const c of [...conns]) if (c.dead) { c.client.resetAndDestroy(); c.upstream.destroy(); }
    },
    close() {
      for (const c of [...conns]) { c.client.destroy(); c.upstream.destroy(); }
      server.close();
    },
  };
}

async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
  await gone;
  clearTimeout(timer);
}

/** Stops every child (chatlog first, then nats) and removes the temporary directories. */
export async function stopServers() {
  const list = [...children];
  for (const c of list.filter((c) => c.label === 'chatlog')) await stop(c);
  for (const c of list.filter((c) => c.label !== 'chatlog')) await stop(c);
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
  tmpDirs.clear();
}

/** Whatever happens (exception, Ctrl-C, SIGTERM), the servers do not outlive the test. */
function killNow() {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  for (const d of tmpDirs) { try { rmSync(d, { recursive: true, force: true }); } catch { /* ignore */ } }
}
process.on('exit', killNow);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => { killNow(); process.exit(130); });
}

export function serverLogs() {
  return spawned.map((c) => `----- ${c.label} (last lines) -----\n${c.output().split('\n').slice(-60).join('\n')}`).join('\n');
}
