// Drives Debian's Chromium (through playwright-core) to relay WebRTC traffic
// through icegate, and prints ONE JSON line with what the page observed.
//
//   node relay.mjs --ice-servers '[{"urls":"turn:turn.icegate.test:3478?transport=udp",
//                                   "username":"alice","credential":"alice-password"}]'
//
// Modes:
//   --mode connect (default): two RTCPeerConnections with iceTransportPolicy
//     "relay" in one page, signalled in-page, a DataChannel between them,
//     messages both ways (text and 64 KiB binary), then getStats() on both.
//   --mode gather: one RTCPeerConnection gathers candidates for at most
//     --gather-ms and reports candidates and icecandidateerror events.
//
// Chromium runs with the environment's HOME: to trust a test CA for turns:,
// point HOME at a directory whose .pki/nssdb trusts it (tests/browser.rs
// does). Host names resolve only through --host-resolver-rules: the TURN
// host (--turn-host, default turn.icegate.test) maps to 127.0.0.1, every
// other name fails, and ICE server URLs must name that host or a loopback
// address, so nothing leaves the machine (see resolverRules below).
//
// Exit 0 with the JSON result; on failure a JSON line with "error" and exit 1.
// The whole run is bounded by --timeout-ms (default 40000) plus at most 4 s
// of cleanup; the browser is closed on every path.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const { values: opts } = parseArgs({
  options: {
    'ice-servers': { type: 'string' },
    mode: { type: 'string', default: 'connect' },
    'turn-host': { type: 'string', default: 'turn.icegate.test' },
    'gather-ms': { type: 'string', default: '5000' },
    'timeout-ms': { type: 'string', default: '40000' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    'resolver-rules': { type: 'string' },
  },
});

const started = Date.now();
const timeoutMs = Number(opts['timeout-ms']);
let browser; // the persistent BrowserContext; closing it ends Chromium
let launching; // the launch, while it is under way
let userDataDir;
let finished = false;

function print(obj) {
  process.stdout.write(`${JSON.stringify({ elapsedMs: Date.now() - started, ...obj })}\n`);
}

async function cleanup() {
  if (!browser && launching) {
    // Timed out while Chromium was starting: wait for it a little, to close it.
    browser = await Promise.race([launching.catch(() => undefined), sleep(3000)]);
  }
  launching = undefined;
  if (browser) {
    const b = browser;
    browser = undefined;
    // browser.close() normally takes well under a second; never wait long.
    await Promise.race([b.close().catch(() => {}), sleep(3000)]);
  }
  if (userDataDir) {
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

async function fail(message, extra = {}) {
  if (finished) return;
  finished = true;
  print({ error: message, ...extra });
  await cleanup();
  process.exit(1);
}

// The watchdog: whatever hangs, the script ends within timeoutMs + 4 s.
setTimeout(() => {
  fail(`timed out after ${timeoutMs} ms`);
  // If cleanup itself hangs, still exit; Chromium dies with its pipe.
  setTimeout(() => process.exit(1), 4000).unref();
}, timeoutMs).unref();
process.on('SIGTERM', () => fail('terminated (SIGTERM)'));
process.on('SIGINT', () => fail('interrupted (SIGINT)'));

// playwright-core 1.65.1's own --disable-features list (chromiumSwitches.ts),
// less the Windows- and Edge-only entries.
const PLAYWRIGHT_DISABLED_FEATURES = [
  'AvoidUnnecessaryBeforeUnloadCheckSync',
  'DestroyProfileOnBrowserClose',
  'HttpsUpgrades',
  'HttpsFirstBalancedModeAutoEnable',
  'LensOverlay',
  'MediaRouter',
  'PaintHolding',
  'ThirdPartyStoragePartitioning',
  'AvoidCorsURLLoaderRestartOnRedirect',
  'OptimizationHints',
  'NetworkTimeServiceQuerying',
  'AimEnabled',
  'PreconnectToSearch',
];

// What Chromium was seen to do (156): WebRTC's UDP TURN/STUN host lookup
// goes to the network service's resolver with the name as an FQDN, trailing
// dot included ("turn.icegate.test."), so a rule for the bare name does not
// apply to it; without "MAP * ~NOTFOUND" that lookup then goes out as a real
// DNS query. TCP and TLS TURN connect by the bare name. And "MAP *" also
// catches IP literals such as 127.0.0.1 in a TCP connect, hence the EXCLUDE.
function resolverRules(host) {
  return [
    `MAP ${host} 127.0.0.1`,
    `MAP ${host}. 127.0.0.1`,
    'MAP * ~NOTFOUND',
    'EXCLUDE localhost',
    'EXCLUDE 127.0.0.1',
  ].join(', ');
}

// Every TURN/STUN URL must name the test host or a loopback address, so
// that nothing this script does can reach beyond the machine.
function checkUrls(iceServers, host) {
  for (const server of iceServers) {
    for (const url of [].concat(server.urls)) {
      const m = /^(?:stuns?|turns?):(\[[^\]]*\]|[^:?]+)/.exec(url);
      const h = m && m[1];
      if (!h || !(h === host || /^127\.\d+\.\d+\.\d+$/.test(h) || h === '[::1]')) {
        throw new Error(`ICE server URL ${url} is not on ${host}, 127.0.0.0/8 or [::1]`);
      }
    }
  }
}

// Runs inside the page: two peers, relay only, signalled directly in JS.
async function connectInPage({ iceServers, connectTimeoutMs }) {
  const log = [];
  const note = (msg) => log.push(`${(performance.now() / 1000).toFixed(3)} ${msg}`);
  const config = { iceServers, iceTransportPolicy: 'relay' };
  const peers = { a: new RTCPeerConnection(config), b: new RTCPeerConnection(config) };
  const candidates = { a: [], b: [] };
  const candidateErrors = { a: [], b: [] };
  const addErrors = [];
  const remoteReady = { a: false, b: false };
  const pending = { a: [], b: [] };
  const other = { a: 'b', b: 'a' };
  // One deadline for connecting and messaging together.
  const deadline = performance.now() + connectTimeoutMs;
  const withTimeout = (promise, what) =>
    Promise.race([
      promise,
      new Promise((_, reject) =>
        setTimeout(
          () => reject(new Error(`${what}: not done within ${connectTimeoutMs} ms of the start`)),
          Math.max(0, deadline - performance.now()),
        ),
      ),
    ]);

  for (const name of ['a', 'b']) {
    const pc = peers[name];
    pc.onicecandidate = (e) => {
      if (!e.candidate) {
        note(`${name}: gathering done`);
        return;
      }
      candidates[name].push(e.candidate.candidate);
      const to = other[name];
      if (remoteReady[to]) {
        peers[to].addIceCandidate(e.candidate).catch((err) => addErrors.push(`${to}: ${err}`));
      } else {
        pending[to].push(e.candidate);
      }
    };
    pc.onicecandidateerror = (e) => {
      candidateErrors[name].push({
        errorCode: e.errorCode,
        errorText: e.errorText,
        url: e.url,
        address: e.address,
        port: e.port,
      });
    };
    pc.oniceconnectionstatechange = () => note(`${name}: ice ${pc.iceConnectionState}`);
    pc.onconnectionstatechange = () => note(`${name}: connection ${pc.connectionState}`);
  }
  const flush = async (name) => {
    remoteReady[name] = true;
    for (const c of pending[name].splice(0)) {
      await peers[name].addIceCandidate(c).catch((err) => addErrors.push(`${name}: ${err}`));
    }
  };

  const result = { candidates, candidateErrors, addErrors, log };
  try {
    const dcA = peers.a.createDataChannel('icegate', { ordered: true });
    const dcBPromise = new Promise((resolve) => {
      peers.b.ondatachannel = (e) => resolve(e.channel);
    });
    const offer = await peers.a.createOffer();
    await peers.a.setLocalDescription(offer);
    await peers.b.setRemoteDescription(offer);
    await flush('b');
    const answer = await peers.b.createAnswer();
    await peers.b.setLocalDescription(answer);
    await peers.a.setRemoteDescription(answer);
    await flush('a');

    const opened = (dc) =>
      dc.readyState === 'open' ? Promise.resolve() : new Promise((resolve) => dc.addEventListener('open', resolve, { once: true }));
    const dcB = await withTimeout(dcBPromise, 'data channel at b');
    await withTimeout(Promise.all([opened(dcA), opened(dcB)]), 'data channels open');
    note('data channels open');

    const channels = { a: dcA, b: dcB };
    // A 32-bit FNV-1a of the bytes (crypto.subtle needs a secure context,
    // which a setContent page is not), plus an exact comparison below.
    const fnv1a = (bytes) => {
      let h = 0x811c9dc5;
      for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193);
      return (h >>> 0).toString(16).padStart(8, '0');
    };
    // 64 KiB per sender, deterministic and non-repeating (a xorshift stream).
    const big = {};
    for (const [name, seed] of [['a', 0x1ce6a7e], ['b', 0x7e57ab1e]]) {
      const buf = new Uint8Array(65536);
      let x = seed;
      for (let i = 0; i < buf.length; i++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        buf[i] = x & 0xff;
      }
      big[name] = buf;
    }
    const sent = { a: [], b: [] };
    const received = { a: [], b: [] };
    const allReceived = {};
    for (const name of ['a', 'b']) {
      const dc = channels[name];
      dc.binaryType = 'arraybuffer';
      allReceived[name] = new Promise((resolve) => {
        dc.onmessage = (e) => {
          if (typeof e.data === 'string') {
            received[name].push({ kind: 'text', text: e.data });
            // The channel is ordered: "done" comes after everything else.
            if (e.data === 'done') resolve();
            return;
          }
          const bytes = new Uint8Array(e.data);
          const expected = big[other[name]];
          const equalsSent = bytes.length === expected.length && bytes.every((v, i) => v === expected[i]);
          received[name].push({ kind: 'binary', bytes: bytes.length, fnv1a: fnv1a(bytes), equalsSent });
        };
      });
    }
    const sendText = (name, text) => {
      channels[name].send(text);
      sent[name].push({ kind: 'text', text });
    };
    const sendBinary = (name) => {
      channels[name].send(big[name]);
      sent[name].push({ kind: 'binary', bytes: big[name].length, fnv1a: fnv1a(big[name]) });
    };
    result.sent = sent;
    result.received = received;
    sendText('a', 'hello from a');
    sendText('b', 'hello from b');
    sendBinary('a');
    sendBinary('b');
    sendText('a', 'a: after the big one');
    sendText('b', 'b: after the big one');
    sendText('a', 'done');
    sendText('b', 'done');
    await withTimeout(Promise.all([allReceived.a, allReceived.b]), 'messages');
    note('messages received');
  } catch (err) {
    result.pageError = String(err);
  }

  // Whatever happened, report what each side selected.
  result.selected = {};
  result.state = {};
  for (const name of ['a', 'b']) {
    const pc = peers[name];
    result.state[name] = {
      connection: pc.connectionState,
      ice: pc.iceConnectionState,
      gathering: pc.iceGatheringState,
    };
    try {
      const stats = await pc.getStats();
      let pair;
      stats.forEach((s) => {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
      });
      if (!pair) {
        stats.forEach((s) => {
          if (!pair && s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
        });
      }
      if (!pair) {
        result.selected[name] = null;
        continue;
      }
      const local = stats.get(pair.localCandidateId) || {};
      const remote = stats.get(pair.remoteCandidateId) || {};
      result.selected[name] = {
        pairState: pair.state,
        nominated: pair.nominated,
        bytesSent: pair.bytesSent,
        bytesReceived: pair.bytesReceived,
        local: {
          candidateType: local.candidateType,
          relayProtocol: local.relayProtocol,
          protocol: local.protocol,
          address: local.address,
          port: local.port,
          url: local.url,
        },
        remote: {
          candidateType: remote.candidateType,
          protocol: remote.protocol,
          address: remote.address,
          port: remote.port,
        },
      };
    } catch (err) {
      result.selected[name] = { statsError: String(err) };
    }
  }
  peers.a.close();
  peers.b.close();
  return result;
}

// Runs inside the page: one peer gathers for at most gatherMs.
async function gatherInPage({ iceServers, gatherMs }) {
  const pc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
  const candidates = [];
  const candidateErrors = [];
  const done = new Promise((resolve) => {
    pc.onicecandidate = (e) => {
      if (e.candidate) candidates.push(e.candidate.candidate);
      else resolve('complete');
    };
  });
  pc.onicecandidateerror = (e) => {
    candidateErrors.push({ errorCode: e.errorCode, errorText: e.errorText, url: e.url, address: e.address, port: e.port });
  };
  pc.createDataChannel('icegate');
  await pc.setLocalDescription(await pc.createOffer());
  const how = await Promise.race([done, new Promise((resolve) => setTimeout(() => resolve('timeout'), gatherMs))]);
  // Errors may trail the end of gathering by a moment.
  if (how === 'complete') await new Promise((resolve) => setTimeout(resolve, 500));
  const gathering = pc.iceGatheringState;
  pc.close();
  return { gatherEnded: how, gathering, candidates, candidateErrors };
}

async function main() {
  if (!opts['ice-servers']) return fail('--ice-servers JSON is required');
  let iceServers;
  try {
    iceServers = JSON.parse(opts['ice-servers']);
  } catch (err) {
    return fail(`--ice-servers is not JSON: ${err.message}`);
  }
  if (!['connect', 'gather'].includes(opts.mode)) return fail(`unknown --mode ${opts.mode}`);
  const turnHost = opts['turn-host'];
  checkUrls(iceServers, turnHost);
  userDataDir = await mkdtemp(join(tmpdir(), 'icegate-chromium-'));
  const args = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-domain-reliability',
    '--no-pings',
    '--no-proxy-server',
    // Only the test's TURN host resolves (to loopback); every other name
    // fails, so nothing leaves the machine.
    `--host-resolver-rules=${opts['resolver-rules'] ?? resolverRules(turnHost)}`,
    // Chromium keeps only the last --disable-features, so this one repeats
    // what playwright-core puts in its own (1.65.1) besides ours.
    `--disable-features=${[...PLAYWRIGHT_DISABLED_FEATURES, 'WebRtcHideLocalIpsWithMdns'].join(',')}`,
  ];
  // A persistent context over a fresh temp dir: Chromium's --user-data-dir.
  launching = chromium.launchPersistentContext(userDataDir, {
    executablePath: opts.chromium,
    headless: true,
    args,
    timeout: 20000,
    // HOME decides which NSS DB (and so which extra CAs) Chromium uses.
    env: { ...process.env },
  });
  browser = await launching;
  launching = undefined;
  if (finished) return cleanup();
  const page = browser.pages()[0] ?? (await browser.newPage());
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e}`));
  await page.setContent('<!doctype html><title>icegate relay test</title>');
  const left = timeoutMs - (Date.now() - started) - 3000;
  let result;
  if (opts.mode === 'connect') {
    result = await page.evaluate(connectInPage, { iceServers, connectTimeoutMs: Math.max(1000, left - 2000) });
  } else {
    result = await page.evaluate(gatherInPage, { iceServers, gatherMs: Math.min(Number(opts['gather-ms']), left) });
  }
  const browserVersion = browser.browser()?.version();
  await cleanup();
  if (finished) return;
  finished = true;
  // A failure inside the page still reports everything it saw.
  const error = result.pageError ? { error: result.pageError } : {};
  print({ mode: opts.mode, browserVersion, console: consoleLines, ...result, ...error });
  process.exit(result.pageError ? 1 : 0);
}

main().catch((err) => fail(String(err && err.stack ? err.stack : err)));
