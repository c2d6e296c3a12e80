// Drives icegate's demo page (web/index.html, served by the daemon) in
// Debian's Chromium, as two people in two browser profiles would use it,
// and prints ONE JSON line with what each page showed.
//
//   node signaling.mjs --base https://turn.icegate.test:5349 --room standup \
//     --token-a JWT --token-b JWT --turn udp --screenshot /tmp/demo.png
//
// Page a opens BASE/?room=..&token=..&relay=1&turn=.. and joins; then page b
// does, calls a through icegate's signaling and TURN relay, and the two
// chat over the DataChannel: a through the page's API, b by typing into
// the chat box. Then each reports its messages, the welcome it got (TURN
// user names, never passwords), the status area and getStats()'s selected
// candidate pair.
//
// With --base-b, page b opens its page (and so its signaling and TURN) on
// another icegate than page a: two nodes of a cluster.
//
// With --resume, page a goes through a TCP proxy on 127.0.0.1 (TLS stays
// end to end) that then cuts a's connections, as a network change would:
// a reconnects, resumes its session, and a and b signal each other again.
// With --resume-to BASE as well, the proxy sends a's new connections to
// that icegate instead (another node of the cluster) once it has cut them.
//
// Chromium runs with the environment's HOME, whose .pki/nssdb must trust
// the test CA (tests/browser_signaling.rs sets it up). Only --turn-host
// resolves (to 127.0.0.1), as in relay.mjs: nothing leaves the machine.
// Exit 0 with the JSON result; on failure a JSON line with "error" and
// whatever the pages showed, exit 1. Bounded by --timeout-ms plus at most
// 4 s of cleanup.

import { createServer, connect } from 'node:net';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

import { Harness, checkUrls, chromiumArgs, closeBrowser, sleep } from './chromium.mjs';

const { values: opts } = parseArgs({
  options: {
    base: { type: 'string' },
    'base-b': { type: 'string' },
    room: { type: 'string', default: 'standup' },
    'token-a': { type: 'string' },
    'token-b': { type: 'string' },
    turn: { type: 'string', default: 'any' },
    relay: { type: 'string', default: '1' },
    'turn-host': { type: 'string', default: 'turn.icegate.test' },
    screenshot: { type: 'string' },
    resume: { type: 'boolean', default: false },
    'resume-to': { type: 'string' },
    // How long after the resume to watch for a peer-left that must not come.
    'resume-watch-ms': { type: 'string', default: '500' },
    'timeout-ms': { type: 'string', default: '40000' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});

const harness = new Harness(Number(opts['timeout-ms']));
let browser;
let launching;
const pages = {}; // name -> { page, console: [] }
let proxy; // with --resume: a's way to icegate

harness.cleanup = async () => {
  const [b, l] = [browser, launching];
  browser = launching = undefined;
  await closeBrowser(b, l);
  proxy?.close();
};

// A TCP proxy on 127.0.0.1 to `server.target`; cut() ends every
// connection through it at once, without a word to either side.
// `upstreamPorts` lists where each connection went, in order.
function startProxy(target) {
  const sockets = new Set();
  const server = createServer((client) => {
    const { port, hostname } = server.target;
    server.upstreamPorts.push(port);
    const upstream = connect(port, hostname);
    for (const [from, to] of [[client, upstream], [upstream, client]]) {
      sockets.add(from);
      from.pipe(to);
      from.on('error', () => to.destroy());
      from.on('close', () => {
        sockets.delete(from);
        to.destroy();
      });
    }
  });
  server.target = target;
  server.upstreamPorts = [];
  server.cut = () => {
    const n = Math.ceil(sockets.size / 2);
    for (const socket of sockets) socket.resetAndDestroy();
    return n;
  };
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

// Opens the demo page for `token` in a browser context of its own.
async function open(name, token, base = opts.base) {
  const context = await browser.newContext({ viewport: { width: 820, height: 630 } });
  const page = await context.newPage();
  const lines = [];
  page.on('console', (m) => {
    const { url } = m.location();
    lines.push(`${m.type()}: ${m.text()}${url ? ` (${url})` : ''}`);
  });
  page.on('pageerror', (e) => lines.push(`pageerror: ${e}`));
  pages[name] = { page, console: lines };
  const query = new URLSearchParams({ room: opts.room, token, relay: opts.relay, turn: opts.turn });
  await page.goto(`${base}/?${query}`, { timeout: Math.max(1000, harness.left(5000)) });
  return page;
}

// Waits (within the script's deadline) until `fn` is true in `page`.
function until(page, what, fn, arg) {
  return page
    .waitForFunction(fn, arg, { timeout: Math.max(1000, harness.left(5000)), polling: 50 })
    .catch((err) => {
      throw new Error(`${what}: ${err.message.split('\n')[0]}`);
    });
}

// Everything a page shows and knows; credentials left out.
function observe(page) {
  return page.evaluate(async () => {
    const demo = window.icegateDemo;
    const welcome = demo.client?.welcome;
    const text = (id) => document.getElementById(id).textContent;
    return {
      peer: demo.peer,
      remotePeer: demo.remotePeer,
      welcome: welcome && {
        user: welcome.user,
        peer: welcome.peer,
        resumed: welcome.resumed,
        iceServers: welcome.ice_servers.map(({ urls, username }) => ({ urls, username })),
      },
      iceServersUsed: demo.iceServers.map(({ urls }) => urls),
      channel: demo.channel?.readyState ?? null,
      connection: demo.pc?.connectionState ?? null,
      messages: demo.messages.map(({ from, text: t }) => ({ from, text: t })),
      selected: await demo.selectedPair(),
      status: {
        signaling: text('signaling'),
        call: text('call'),
        local: text('local'),
        remote: text('remote'),
      },
      chatLog: [...document.querySelectorAll('#log li')].map((li) => li.textContent),
    };
  });
}

async function report() {
  const out = {};
  for (const [name, { page, console: lines }] of Object.entries(pages)) {
    out[name] = await observe(page).catch((err) => ({ observeError: String(err) }));
    out[name].console = lines;
  }
  return out;
}

// Cuts a's connections, waits for a to be welcomed again, then has a and b
// signal each other; reports what each saw meanwhile.
async function cutAndResume(a, b) {
  const record = () => {
    const seen = (window.seen = { welcomes: [], peerLeft: [], signals: [] });
    const client = window.icegateDemo.client;
    client.addEventListener('welcome', (e) => seen.welcomes.push({ peer: e.detail.peer, resumed: e.detail.resumed }));
    client.addEventListener('peer-left', (e) => seen.peerLeft.push(e.detail));
    client.addEventListener('signal', (e) => seen.signals.push({ from: e.detail.from, data: e.detail.data }));
  };
  await a.evaluate(record);
  await b.evaluate(record);
  const peers = { a: await a.evaluate(() => window.icegateDemo.peer), b: await b.evaluate(() => window.icegateDemo.peer) };
  if (opts['resume-to']) proxy.target = { hostname: '127.0.0.1', port: Number(new URL(opts['resume-to']).port) };
  const before = proxy.upstreamPorts.length;
  const cut = proxy.cut();
  await until(a, 'a is welcomed again', () => window.seen.welcomes.length > 0 && window.icegateDemo.client.connected);
  const send = (page, to, text) =>
    page.evaluate(([room, peer, t]) => window.icegateDemo.client.signal(room, peer, { text: t }), [opts.room, to, text]);
  await send(a, peers.b, 'a after the cut');
  await send(b, peers.a, 'b after the cut');
  const got = (text) => window.seen.signals.some((s) => s.data.text === text);
  await until(a, 'a gets b\'s signal', got, 'b after the cut');
  await until(b, 'b gets a\'s signal', got, 'a after the cut');
  // A peer-left for a would come by then, had the session not resumed.
  await sleep(Number(opts['resume-watch-ms']));
  const seen = { a: await a.evaluate(() => window.seen), b: await b.evaluate(() => window.seen) };
  const upstreamPorts = { beforeCut: proxy.upstreamPorts.slice(0, before), afterCut: proxy.upstreamPorts.slice(before) };
  return { connectionsCut: cut, upstreamPorts, peersBefore: peers, seen };
}

async function main() {
  for (const key of ['base', 'token-a', 'token-b']) {
    if (!opts[key]) return harness.fail(`--${key} is required`);
  }
  const turnHost = opts['turn-host'];
  const baseB = opts['base-b'] ?? opts.base;
  for (const base of [opts.base, baseB, opts['resume-to'] ?? opts.base]) {
    if (new URL(base).hostname !== turnHost) {
      return harness.fail(`--base, --base-b and --resume-to must be on ${turnHost}, the one name Chromium resolves`);
    }
  }
  launching = chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: chromiumArgs(turnHost),
    timeout: 20000,
    // HOME decides which NSS DB (and so which extra CAs) Chromium uses.
    env: { ...process.env },
  });
  browser = await launching;
  launching = undefined;
  if (harness.finished) return harness.cleanup();

  let baseA = opts.base;
  if (opts.resume) {
    const target = new URL(opts.base);
    proxy = await startProxy({ hostname: '127.0.0.1', port: Number(target.port) });
    baseA = `https://${turnHost}:${proxy.address().port}`;
  }
  const a = await open('a', opts['token-a'], baseA);
  await until(a, 'a joins', () => window.icegateDemo?.peer);
  // a has not called anyone yet: check its ICE servers before b may use them.
  checkUrls(await a.evaluate(() => window.icegateDemo.client.iceServers), turnHost);
  const b = await open('b', opts['token-b'], baseB);
  const open_ = () => window.icegateDemo.channel?.readyState === 'open';
  await until(a, 'a: data channel open', open_);
  await until(b, 'b: data channel open', open_);

  await a.evaluate(() => window.icegateDemo.send('hello from a'));
  await b.fill('#text', 'hello from b');
  await b.click('#send');
  const got = (text) => window.icegateDemo.messages.some((m) => m.from !== 'me' && m.text === text);
  await until(a, 'a receives b', got, 'hello from b');
  await until(b, 'b receives a', got, 'hello from a');
  // The status area shows the pair once getStats() has it.
  for (const [name, page] of [['a', a], ['b', b]]) {
    await until(page, `${name} shows the candidate pair`, () => document.getElementById('local').textContent !== '-');
  }
  if (opts.screenshot) await b.screenshot({ path: opts.screenshot });
  const resume = opts.resume ? await cutAndResume(a, b) : undefined;

  const pagesSeen = await report();
  const browserVersion = browser.version();
  await harness.cleanup();
  if (harness.finished) return;
  harness.finished = true;
  harness.print({ browserVersion, pages: pagesSeen, resume });
  process.exit(0);
}

main().catch(async (err) => {
  // Report what the pages showed when it went wrong.
  const seen = await Promise.race([report().catch(() => ({})), sleep(3000).then(() => ({}))]);
  harness.fail(String(err && err.stack ? err.stack : err), { pages: seen });
});
