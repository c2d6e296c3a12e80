// What the browser test scripts share: Chromium's flags (host names resolve
// only to loopback), the check that ICE server URLs stay on the machine, and
// a harness that bounds a script in time and prints its one JSON line.

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

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
export function resolverRules(host) {
  return [
    `MAP ${host} 127.0.0.1`,
    `MAP ${host}. 127.0.0.1`,
    'MAP * ~NOTFOUND',
    'EXCLUDE localhost',
    'EXCLUDE 127.0.0.1',
  ].join(', ');
}

// Chromium's command line: headless, nothing in the background, and only
// `host` (mapped to 127.0.0.1) resolving; `disabledFeatures` are turned off
// besides the usual ones.
export function chromiumArgs(host, rules = resolverRules(host), disabledFeatures = []) {
  return [
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
    `--host-resolver-rules=${rules}`,
    // Chromium keeps only the last --disable-features, so this one repeats
    // what playwright-core puts in its own (1.65.1) besides ours.
    `--disable-features=${[...PLAYWRIGHT_DISABLED_FEATURES, 'WebRtcHideLocalIpsWithMdns', ...disabledFeatures].join(',')}`,
  ];
}

// Every TURN/STUN URL must name the test host or a loopback address, so
// that nothing a script does can reach beyond the machine.
export function checkUrls(iceServers, host) {
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

// Closes what a launch gave (a Browser, or a persistent BrowserContext),
// or will give if `launching` is still under way; never waits long
// (closing normally takes well under a second).
export async function closeBrowser(browser, launching) {
  if (!browser && launching) {
    browser = await Promise.race([launching.catch(() => undefined), sleep(3000)]);
  }
  if (browser) await Promise.race([browser.close().catch(() => {}), sleep(3000)]);
}

// A script's life: it prints ONE JSON line (with "error" on failure, then
// exit 1) and ends within timeoutMs plus at most 4 s of `cleanup`, which
// the script sets to close what it opened.
export class Harness {
  constructor(timeoutMs) {
    this.started = Date.now();
    this.timeoutMs = timeoutMs;
    this.finished = false;
    this.cleanup = async () => {};
    // The watchdog: whatever hangs, the script ends in time.
    setTimeout(() => {
      this.fail(`timed out after ${timeoutMs} ms`);
      // If cleanup itself hangs, still exit; Chromium dies with its pipe.
      setTimeout(() => process.exit(1), 4000).unref();
    }, timeoutMs).unref();
    process.on('SIGTERM', () => this.fail('terminated (SIGTERM)'));
    process.on('SIGINT', () => this.fail('interrupted (SIGINT)'));
  }

  /** Milliseconds left before the watchdog, less `margin`. */
  left(margin = 0) {
    return this.timeoutMs - (Date.now() - this.started) - margin;
  }

  print(obj) {
    process.stdout.write(`${JSON.stringify({ elapsedMs: Date.now() - this.started, ...obj })}\n`);
  }

  async fail(message, extra = {}) {
    if (this.finished) return;
    this.finished = true;
    this.print({ error: message, ...extra });
    await this.cleanup();
    process.exit(1);
  }
}
