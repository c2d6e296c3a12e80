// Runs the signaling libraries icegate speaks as their own servers would:
// yjs documents synced by y-webrtc, and PeerJS DataConnections, each page
// in Debian's Chromium, relay-only through icegate's TURN server with the
// credentials `GET /ice-servers?token=JWT` hands out. Prints ONE JSON line.
//
//   node dialects.mjs --scenario yjs --base-a http://127.0.0.1:8080 \
//     --ws-a ws://127.0.0.1:8080/y-webrtc --token-a JWT --token-b JWT
//   node dialects.mjs --scenario peerjs --base-a http://127.0.0.1:8080 \
//     --token-a JWT --token-b JWT
//
// Each page (a, b; two browser contexts) is a blank page at
// BASE/__dialects/page.html, answered by this script rather than by icegate
// (Playwright's page.route), so that the page is of icegate's own origin and
// fetches /ice-servers and opens its WebSockets there as an application
// served by icegate would. The page loads yjs, y-webrtc and peerjs from
// node_modules, bundled by esbuild when the script starts (dialects-libs.js),
// and dialects-page.js, which records every signaling frame.
//
// --scenario yjs: each page makes a Y.Doc and a WebrtcProvider for --room
// with one signaling URL (--ws-a, --ws-b: page b may use another icegate
// node, with --base-b for its page). a appends to the shared text 't', b
// sees it, b appends, a sees it. Reports the texts, the providers' state
// and each side's selected candidate pair.
//
// --scenario peerjs: page a opens Peer 'alice1', page b a Peer whose id
// the server gives; b connects to alice1 and the two exchange a message each
// way. Then b connects to 'late1', which page a opens only --late-after-ms
// later: the server holds b's offer until then. Last, b connects to
// 'ghost1', which never comes: PeerJS reports peer-unavailable when the
// server answers EXPIRE. Reports the messages, pairs, and errors.
//
// Only --turn-host (to 127.0.0.1) resolves in Chromium; every other name
// fails, and the ICE server URLs must be on the machine. Exit 0 with the
// JSON result; on failure a JSON line with "error" and what the pages
// showed, exit 1. Bounded by --timeout-ms plus at most 4 s of cleanup.

import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

import * as esbuild from 'esbuild';
import { chromium } from 'playwright-core';

import { Harness, checkUrls, chromiumArgs, closeBrowser, sleep } from './chromium.mjs';

const { values: opts } = parseArgs({
  options: {
    scenario: { type: 'string' },
    'base-a': { type: 'string' },
    'base-b': { type: 'string' },
    'ws-a': { type: 'string' },
    'ws-b': { type: 'string' },
    'token-a': { type: 'string' },
    'token-b': { type: 'string' },
    room: { type: 'string', default: 'dialects' },
    'peerjs-path': { type: 'string', default: '/peerjs' },
    'peerjs-key': { type: 'string', default: 'peerjs' },
    'late-after-ms': { type: 'string', default: '2000' },
    'turn-host': { type: 'string', default: 'turn.icegate.test' },
    'timeout-ms': { type: 'string', default: '45000' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});

const harness = new Harness(Number(opts['timeout-ms']));
let browser;
let launching;
const pages = {}; // name -> { page, console: [] }
const PAGE_DIR = '/__dialects/';

harness.cleanup = async () => {
  const [b, l] = [browser, launching];
  browser = launching = undefined;
  await closeBrowser(b, l);
};

// The page's files: a blank page, the recorder, and the libraries.
async function pageFiles() {
  const built = await esbuild.build({
    entryPoints: [new URL('./dialects-libs.js', import.meta.url).pathname],
    bundle: true,
    write: false,
    format: 'iife',
    platform: 'browser',
    logLevel: 'silent',
  });
  const html = `<!doctype html><html><head><meta charset="utf-8"><title>dialects</title>
<script src="page.js"></script><script src="libs.js"></script></head><body></body></html>`;
  return {
    'page.html': ['text/html; charset=utf-8', html],
    'page.js': ['text/javascript', await readFile(new URL('./dialects-page.js', import.meta.url), 'utf8')],
    'libs.js': ['text/javascript', built.outputFiles[0].text],
  };
}

// Opens BASE/__dialects/page.html in a browser context of its own.
async function open(name, base, files) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const lines = [];
  page.on('console', (m) => {
    const { url } = m.location();
    lines.push(`${m.type()}: ${m.text()}${url ? ` (${url})` : ''}`.slice(0, 500));
  });
  page.on('pageerror', (e) => lines.push(`pageerror: ${e}`));
  pages[name] = { page, console: lines };
  const origin = new URL(base).origin;
  await page.route(
    (url) => url.origin === origin && url.pathname.startsWith(PAGE_DIR),
    (route) => {
      const file = files[new URL(route.request().url()).pathname.slice(PAGE_DIR.length)];
      if (!file) return route.fulfill({ status: 404, body: 'not here' });
      return route.fulfill({ status: 200, contentType: file[0], body: file[1] });
    },
  );
  await page.goto(`${origin}${PAGE_DIR}page.html`, { timeout: Math.max(1000, harness.left(5000)) });
  await until(page, `${name} loads the libraries`, () => window.dialect && window.Y && window.WebrtcProvider && window.Peer);
  return page;
}

// Waits (within the script's deadline) until `fn` is true in `page`.
function until(page, what, fn, arg, timeout = harness.left(5000)) {
  return page
    .waitForFunction(fn, arg, { timeout: Math.max(1000, timeout), polling: 50 })
    .catch((err) => {
      throw new Error(`${what}: ${err.message.split('\n')[0]}`);
    });
}

// The page's ICE servers from icegate, checked to stay on the machine.
async function iceServers(page, token) {
  const servers = await page.evaluate((t) => window.dialect.iceServers(t), token);
  checkUrls(servers, opts['turn-host']);
  return servers;
}

function withToken(url, token) {
  const u = new URL(url);
  if (token) u.searchParams.set('token', token);
  return u.toString();
}

async function yjs(a, b) {
  const wsA = opts['ws-a'];
  const wsB = opts['ws-b'] ?? wsA;
  if (!wsA) throw new Error('--ws-a is required for --scenario yjs');
  for (const [page, ws, token] of [[a, wsA, opts['token-a']], [b, wsB, opts['token-b']]]) {
    const servers = await iceServers(page, token);
    await page.evaluate(([room, url, s]) => window.dialect.startYjs(room, url, s), [opts.room, withToken(ws, token), servers]);
  }
  const signaled = () => window.dialect.yjsState().signaling.every((s) => s.connected);
  await until(a, 'a: y-webrtc signaling connected', signaled);
  await until(b, 'b: y-webrtc signaling connected', signaled);
  await a.evaluate(() => window.dialect.yjsInsert('hello from a'));
  const has = (text) => window.dialect.yjsState().text.includes(text);
  await until(b, 'b sees a\'s text', has, 'hello from a');
  await b.evaluate(() => window.dialect.yjsInsert(', hello from b'));
  await until(a, 'a sees b\'s text', has, 'hello from b');
  const paired = () => window.dialect.yjsPairs().then((p) => p.length > 0 && p.every((x) => x.pair && x.pair.local));
  await until(a, 'a: selected candidate pair', paired);
  await until(b, 'b: selected candidate pair', paired);
  const out = {};
  for (const [name, page] of [['a', a], ['b', b]]) {
    out[name] = { ...(await page.evaluate(() => window.dialect.yjsState())), pairs: await page.evaluate(() => window.dialect.yjsPairs()) };
  }
  return out;
}

async function peerjs(a, b) {
  const options = async (page, token) => {
    const base = new URL(page.url());
    return {
      host: base.hostname,
      port: Number(base.port || (base.protocol === 'https:' ? 443 : 80)),
      path: opts['peerjs-path'],
      key: opts['peerjs-key'],
      secure: base.protocol === 'https:',
      ...(token ? { token } : {}),
      debug: 2,
      config: { iceServers: await iceServers(page, token), iceTransportPolicy: 'relay' },
    };
  };
  const optsA = await options(a, opts['token-a']);
  const optsB = await options(b, opts['token-b']);
  const openPeer = (page, id, o) => page.evaluate(([i, x]) => window.dialect.openPeer(i, x), [id, o]);
  const alice = await openPeer(a, 'alice1', optsA);
  const bob = await openPeer(b, null, optsB);

  // 1. A DataConnection, a message each way.
  const connOpen = ([owner, peer]) => window.dialect.connState(owner, peer)?.open;
  const received = ([owner, peer, text]) => window.dialect.connState(owner, peer)?.received.includes(text);
  await b.evaluate(([from, to]) => window.dialect.connect(from, to), [bob, alice]);
  await until(a, 'a: connection from b open', connOpen, [alice, bob]);
  await until(b, 'b: connection to a open', connOpen, [bob, alice]);
  await b.evaluate(([o, p]) => window.dialect.send(o, p, 'hello from b'), [bob, alice]);
  await a.evaluate(([o, p]) => window.dialect.send(o, p, 'hello from a'), [alice, bob]);
  await until(a, 'a receives b', received, [alice, bob, 'hello from b']);
  await until(b, 'b receives a', received, [bob, alice, 'hello from a']);
  const pairOf = (page, owner, peer) => page.evaluate(([o, p]) => window.dialect.connPair(o, p), [owner, peer]);
  const paired = ([o, p]) => window.dialect.connPair(o, p).then((x) => x && x.local);
  await until(a, 'a: selected candidate pair', paired, [alice, bob]);
  await until(b, 'b: selected candidate pair', paired, [bob, alice]);
  const direct = {
    a: { id: alice, connection: await a.evaluate(([o, p]) => window.dialect.connState(o, p), [alice, bob]), pair: await pairOf(a, alice, bob) },
    b: { id: bob, connection: await b.evaluate(([o, p]) => window.dialect.connState(o, p), [bob, alice]), pair: await pairOf(b, bob, alice) },
  };

  // 2. An offer to a peer that connects later: held, then delivered.
  const lateAfter = Number(opts['late-after-ms']);
  const heldFrom = Date.now();
  await b.evaluate(([from, to]) => window.dialect.connect(from, to), [bob, 'late1']);
  await sleep(lateAfter);
  const late = await openPeer(a, 'late1', optsA);
  const lateOpenedMs = Date.now() - heldFrom;
  await until(a, 'late1: connection from b open', connOpen, [late, bob]);
  await until(b, 'b: connection to late1 open', connOpen, [bob, late]);
  await b.evaluate(([o, p]) => window.dialect.send(o, p, 'b to late1'), [bob, late]);
  await a.evaluate(([o, p]) => window.dialect.send(o, p, 'late1 to b'), [late, bob]);
  await until(a, 'late1 receives b', received, [late, bob, 'b to late1']);
  await until(b, 'b receives late1', received, [bob, late, 'late1 to b']);
  const held = {
    lateAfterMs: lateAfter,
    lateOpenedMs,
    connectedMs: Date.now() - heldFrom,
    late: await a.evaluate(([o, p]) => window.dialect.connState(o, p), [late, bob]),
    b: await b.evaluate(([o, p]) => window.dialect.connState(o, p), [bob, late]),
  };

  // 3. An offer to a peer that never comes: EXPIRE, peer-unavailable.
  const expireFrom = Date.now();
  await b.evaluate(([from, to]) => window.dialect.connect(from, to), [bob, 'ghost1']);
  const unavailable = (id) =>
    window.dialect.seen.peerErrors.some((e) => e.type === 'peer-unavailable' && e.message.includes(id));
  await until(b, 'b: peer-unavailable for ghost1', unavailable, 'ghost1');
  const expired = {
    afterMs: Date.now() - expireFrom,
    error: await b.evaluate(() => window.dialect.seen.peerErrors.find((e) => e.message.includes('ghost1'))),
  };
  return { direct, held, expired };
}

async function report() {
  const out = {};
  for (const [name, { page, console: lines }] of Object.entries(pages)) {
    out[name] = await page
      .evaluate(() => ({
        frames: window.dialect?.seen.frames,
        peerErrors: window.dialect?.seen.peerErrors,
        peerEvents: window.dialect?.seen.peerEvents,
      }))
      .catch((err) => ({ observeError: String(err) }));
    out[name].console = lines;
  }
  return out;
}

async function main() {
  const scenario = { yjs, peerjs }[opts.scenario];
  if (!scenario) return harness.fail('--scenario yjs or --scenario peerjs is required');
  if (!opts['base-a']) return harness.fail('--base-a is required');
  const baseB = opts['base-b'] ?? opts['base-a'];
  const turnHost = opts['turn-host'];
  for (const url of [opts['base-a'], baseB, opts['ws-a'], opts['ws-b']].filter(Boolean)) {
    const host = new URL(url).hostname;
    if (host !== turnHost && !/^127\.\d+\.\d+\.\d+$/.test(host)) {
      return harness.fail(`${url} is not on ${turnHost} or 127.0.0.0/8`);
    }
  }
  const files = await pageFiles();
  launching = chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    // A page that page.route() answers comes from no address, so Chromium
    // counts it as a public one and would keep it from 127.0.0.1
    // (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS on the WebSocket).
    args: chromiumArgs(turnHost, undefined, ['LocalNetworkAccessChecks']),
    timeout: 20000,
    env: { ...process.env },
  });
  browser = await launching;
  launching = undefined;
  if (harness.finished) return harness.cleanup();

  const a = await open('a', opts['base-a'], files);
  const b = await open('b', baseB, files);
  const result = await scenario(a, b);
  const seen = await report();
  const browserVersion = browser.version();
  await harness.cleanup();
  if (harness.finished) return;
  harness.finished = true;
  harness.print({ scenario: opts.scenario, browserVersion, result, pages: seen });
  process.exit(0);
}

main().catch(async (err) => {
  const seen = await Promise.race([report().catch(() => ({})), sleep(3000).then(() => ({}))]);
  harness.fail(String(err && err.stack ? err.stack : err), { pages: seen });
});
