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
// address, so nothing leaves the machine (see resolverRules in chromium.mjs).
//
// Exit 0 with the JSON result; on failure a JSON line with "error" and exit 1.
// The whole run is bounded by --timeout-ms (default 40000) plus at most 4 s
// of cleanup; the browser is closed on every path.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

import { Harness, checkUrls, chromiumArgs, closeBrowser } from './chromium.mjs';

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

const harness = new Harness(Number(opts['timeout-ms']));
let browser; // the persistent BrowserContext; closing it ends Chromium
let launching; // the launch, while it is under way
let userDataDir;

harness.cleanup = async () => {
  const [b, l] = [browser, launching];
  browser = launching = undefined;
  await closeBrowser(b, l);
  if (userDataDir) {
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
  }
};
const fail = (message) => harness.fail(message);

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
  const args = chromiumArgs(turnHost, opts['resolver-rules']);
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
  if (harness.finished) return harness.cleanup();
  const page = browser.pages()[0] ?? (await browser.newPage());
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e}`));
  await page.setContent('<!doctype html><title>icegate relay test</title>');
  const left = harness.left(3000);
  let result;
  if (opts.mode === 'connect') {
    result = await page.evaluate(connectInPage, { iceServers, connectTimeoutMs: Math.max(1000, left - 2000) });
  } else {
    result = await page.evaluate(gatherInPage, { iceServers, gatherMs: Math.min(Number(opts['gather-ms']), left) });
  }
  const browserVersion = browser.browser()?.version();
  await harness.cleanup();
  if (harness.finished) return;
  harness.finished = true;
  // A failure inside the page still reports everything it saw.
  const error = result.pageError ? { error: result.pageError } : {};
  harness.print({ mode: opts.mode, browserVersion, console: consoleLines, ...result, ...error });
  process.exit(result.pageError ? 1 : 0);
}

main().catch((err) => fail(String(err && err.stack ? err.stack : err)));
