// icegate.js: a browser client for icegate's signaling protocol, version 1
// (docs/signaling.md). One ES module, no dependencies: copy it into your
// application or import it from the icegate that serves it (/icegate.js).
//
//   import { IcegateClient } from '/icegate.js';
//
//   const client = new IcegateClient('wss://turn.example.org/ws', { token: jwt });
//   client.addEventListener('signal', (e) => console.log(e.detail.from, e.detail.data));
//   await client.connect();                       // resolves with the welcome
//   const pc = new RTCPeerConnection({ iceServers: client.iceServers });
//   const joined = await client.join('standup', { metadata: { name: 'Alice' } });
//   for (const { peer } of joined.peers) client.signal('standup', peer, { hello: true });
//
// Events (each a CustomEvent; `detail` is the server's message unless noted):
//   welcome      every welcome, the first and those after a reconnect
//                (`detail.resumed` says whether rooms and peer ids were kept)
//   joined       every joined: answers to join(), and one per room after a resume
//   peer-joined  another peer entered a room
//   peer-left    another peer left (`detail.reason`: left, closed, timeout)
//   signal       data from a peer (`detail.broadcast` is true for a broadcast)
//   error        a server error no pending join() took (`detail.code`,
//                `detail.in_reply_to`), or a failed rejoin after a reconnect
//   close        the WebSocket closed: detail {code, reason, reconnecting};
//                reconnecting is false once the client has given up or close()
//                was called
//
// After a connection is lost the client reconnects by itself, with growing
// delays, and presents the resume token of the last welcome: within the
// server's grace period it keeps its peer ids and rooms and nobody sees it
// leave. When the server starts a new session instead, the client joins its
// rooms again, asking for the same peer ids.

/** An `error` from the server, as the rejection of a request. */
export class IcegateError extends Error {
  constructor(message) {
    super(message.message || message.code);
    this.name = 'IcegateError';
    this.code = message.code; // stable: see the table in docs/signaling.md
    this.inReplyTo = message.in_reply_to;
  }
}

const DEFAULTS = {
  reconnect: true, // reconnect (and resume) after a lost connection
  minDelayMs: 500, // first reconnect delay; doubles each attempt...
  maxDelayMs: 15000, // ...up to this, with jitter
  maxAttempts: Infinity, // consecutive failed attempts before giving up
  requestTimeoutMs: 10000, // how long join() waits for its answer
  pingIntervalMs: 20000, // an application ping this often (0: never)...
  pongTimeoutMs: 10000, // ...and a connection without a pong by then is dead
  maxQueued: 256, // messages kept while reconnecting
};

// The page's own origin's /ws, as a WebSocket URL.
function defaultUrl() {
  const { protocol, host } = globalThis.location;
  return `${protocol === 'https:' ? 'wss:' : 'ws:'}//${host}/ws`;
}

export class IcegateClient extends EventTarget {
  #url;
  #token; // a string, or a function returning one (or a promise of one)
  #options;
  #ws = null; // the current WebSocket, if any
  #live = null; // the WebSocket that got the last welcome
  #down = false; // lost the connection, reconnecting
  #welcome = null; // the last welcome
  #rooms = new Map(); // room -> { peer, metadata }: what to rejoin
  #pending = new Map(); // request id -> { room, resolve, reject, timer }
  #queue = []; // messages sent while reconnecting
  #nextId = 1;
  #connecting = null; // connect()'s promise, until it settles
  #stopped = false; // close() was called
  #attempts = 0; // consecutive failed reconnects
  #retryTimer = null;
  #pingTimer = null;
  #pongTimer = null;
  #onOnline = () => this.#retryNow();

  /**
   * @param {string} [url] wss://host:port/ws; defaults to this page's origin.
   * @param {object} [options] `token`: the JWT (or a function returning
   *   one, called before every connection, so expired tokens can be
   *   renewed); any key of DEFAULTS above.
   */
  constructor(url, { token, ...options } = {}) {
    super();
    this.#url = url || defaultUrl();
    this.#token = token;
    this.#options = { ...DEFAULTS, ...options };
  }

  /** ICE servers for RTCPeerConnection, with TURN credentials for this user. */
  get iceServers() {
    return this.#welcome ? this.#welcome.ice_servers : [];
  }

  /** The last welcome (user, peer, resumed, resume_token, ice_servers...). */
  get welcome() {
    return this.#welcome;
  }

  /** Whether a connection is open and welcomed. */
  get connected() {
    return this.#ws !== null && this.#ws === this.#live && this.#ws.readyState === WebSocket.OPEN;
  }

  /** The rooms joined, each with this client's peer id and metadata. */
  get rooms() {
    return new Map(this.#rooms);
  }

  /** Opens the connection; resolves with the first welcome. */
  connect() {
    if (this.#connecting) return this.#connecting;
    if (this.connected) return Promise.resolve(this.#welcome);
    this.#stopped = false;
    this.#connecting = new Promise((resolve, reject) => {
      this.#open(null, resolve, reject);
    }).finally(() => {
      this.#connecting = null;
    });
    globalThis.addEventListener?.('online', this.#onOnline);
    return this.#connecting;
  }

  /** Enters `room`; resolves with the `joined` message, rejects with an IcegateError. */
  join(room, { peer, metadata } = {}) {
    return this.#request({ type: 'join', room, peer, metadata }, room);
  }

  /** Leaves `room`. */
  leave(room) {
    this.#rooms.delete(room);
    return this.#send({ type: 'leave', room });
  }

  /** Sends `data` to one peer of `room`; returns the message id (errors name it). */
  signal(room, to, data) {
    return this.#send({ type: 'signal', room, to, data });
  }

  /** Sends `data` to every other peer of `room`; returns the message id. */
  broadcast(room, data) {
    return this.#send({ type: 'broadcast', room, data });
  }

  /** Closes for good: the server tells the other peers at once, no reconnect. */
  close() {
    this.#stopped = true;
    this.#down = false;
    clearTimeout(this.#retryTimer);
    globalThis.removeEventListener?.('online', this.#onOnline);
    this.#queue = [];
    this.#rooms.clear();
    this.#failPending(new Error('client closed'));
    const ws = this.#ws;
    if (ws) {
      ws.close(1000, 'bye');
    } else {
      this.#emit('close', { code: 1000, reason: 'client closed', reconnecting: false });
    }
  }

  // --- internals ----------------------------------------------------------

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // Opens a WebSocket, presenting `resume` if given. `resolve` and `reject`
  // settle connect() (first connection only).
  async #open(resume, resolve, reject) {
    let ws;
    try {
      const token = typeof this.#token === 'function' ? await this.#token() : this.#token;
      const url = new URL(this.#url, globalThis.location?.href);
      if (token) url.searchParams.set('token', token);
      if (resume) url.searchParams.set('resume', resume);
      if (this.#stopped) throw new Error('client closed');
      ws = new WebSocket(url);
    } catch (err) {
      if (reject) {
        reject(err);
      } else {
        this.#attempts += 1;
        this.#lost(1006, String(err));
      }
      return;
    }
    this.#ws = ws;
    let welcomed = false;
    ws.onmessage = (e) => {
      let msg;
      try {
        msg = JSON.parse(e.data);
      } catch {
        return; // the server sends only JSON; ignore anything else
      }
      if (msg.type === 'welcome') {
        welcomed = true;
        this.#welcomed(msg);
        if (resolve) resolve(msg);
        resolve = reject = null;
      } else {
        this.#receive(msg);
      }
    };
    ws.onclose = (e) => {
      if (this.#ws !== ws) return; // a socket given up on (no pong)
      this.#ws = null;
      this.#stopPing();
      if (reject) {
        // Never welcomed: a refused token (HTTP 401) looks like this too,
        // browsers do not tell WebSocket scripts the HTTP status.
        reject(new Error(`could not connect to ${this.#url} (close code ${e.code})`));
        this.#emit('close', { code: e.code, reason: e.reason, reconnecting: false });
        return;
      }
      if (!welcomed) this.#attempts += 1;
      this.#lost(e.code, e.reason);
    };
  }

  #welcomed(welcome) {
    const first = this.#welcome === null;
    this.#welcome = welcome;
    this.#live = this.#ws;
    this.#down = false;
    this.#attempts = 0;
    this.#startPing();
    this.#emit('welcome', welcome);
    if (!first && !welcome.resumed) {
      // A new session: our rooms are gone on the server; join them again.
      for (const [room, { peer, metadata }] of this.#rooms) this.#rejoin(room, peer, metadata);
    }
    // What was sent while disconnected goes now, after any rejoin: the
    // server handles one connection's messages in order.
    const queued = this.#queue.splice(0);
    for (const msg of queued) this.#ws.send(JSON.stringify(msg));
  }

  async #rejoin(room, peer, metadata) {
    try {
      await this.join(room, { peer, metadata });
    } catch (err) {
      if (err.code === 'peer-id-taken') {
        // The old session still holds the id: take any other.
        await this.join(room, { metadata }).catch((e) => this.#rejoinFailed(room, e));
      } else {
        this.#rejoinFailed(room, err);
      }
    }
  }

  #rejoinFailed(room, err) {
    this.#rooms.delete(room);
    this.#emit('error', { type: 'error', code: err.code || 'rejoin-failed', message: err.message, room });
  }

  #receive(msg) {
    switch (msg.type) {
      case 'joined': {
        const entry = [...this.#pending].find(([, p]) => p.room === msg.room);
        const metadata = entry ? entry[1].metadata : this.#rooms.get(msg.room)?.metadata;
        this.#rooms.set(msg.room, { peer: msg.peer, metadata });
        if (entry) this.#settle(entry[0]).resolve(msg);
        this.#emit('joined', msg);
        break;
      }
      case 'error': {
        const id = msg.in_reply_to && msg.in_reply_to.id;
        if (this.#pending.has(id)) this.#settle(id).reject(new IcegateError(msg));
        else this.#emit('error', msg);
        break;
      }
      case 'pong':
        clearTimeout(this.#pongTimer);
        break;
      case 'peer-joined':
      case 'peer-left':
      case 'signal':
        this.#emit(msg.type, msg);
        break;
      default:
        break; // newer servers may say more; ignore what we do not know
    }
  }

  // Sends `msg` with a fresh id (returned), or queues it while reconnecting.
  #send(msg) {
    const id = this.#nextId++;
    msg = { ...msg, id };
    if (this.connected) {
      this.#ws.send(JSON.stringify(msg));
    } else if (this.#down && this.#queue.length < this.#options.maxQueued) {
      this.#queue.push(msg);
    } else {
      throw new Error('icegate: not connected');
    }
    return id;
  }

  // Sends `msg` and waits for the answer to it: `joined` for `room`, or an
  // `error` in reply to its id.
  #request(msg, room) {
    return new Promise((resolve, reject) => {
      const id = this.#send(msg);
      const timer = setTimeout(
        () => this.#settle(id)?.reject(new Error(`icegate: no answer to ${msg.type} ${room}`)),
        this.#options.requestTimeoutMs,
      );
      this.#pending.set(id, { room, metadata: msg.metadata, resolve, reject, timer });
    });
  }

  #settle(id) {
    const pending = this.#pending.get(id);
    if (!pending) return undefined;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    return pending;
  }

  #failPending(err) {
    for (const id of [...this.#pending.keys()]) this.#settle(id).reject(err);
  }

  // The connection is gone: reconnect later, or give up.
  #lost(code, reason) {
    // Requests in flight may or may not have reached the server; after a
    // resume the server sends `joined` for every room it kept anyway.
    this.#failPending(new Error('icegate: connection lost'));
    const { reconnect, minDelayMs, maxDelayMs, maxAttempts } = this.#options;
    const again = !this.#stopped && reconnect && this.#attempts < maxAttempts;
    this.#down = again;
    this.#emit('close', { code, reason, reconnecting: again });
    if (!again) {
      this.#queue = [];
      globalThis.removeEventListener?.('online', this.#onOnline);
      return;
    }
    const backoff = Math.min(maxDelayMs, minDelayMs * 2 ** this.#attempts);
    const delay = backoff / 2 + Math.random() * (backoff / 2);
    this.#retryTimer = setTimeout(() => this.#retryNow(), delay);
  }

  #retryNow() {
    if (this.#stopped || this.#ws || !this.#welcome) return;
    clearTimeout(this.#retryTimer);
    this.#open(this.#welcome.resume_token, null, null);
  }

  // An application-level ping: a connection whose pong does not come back
  // (a sleeping laptop, a dead Wi-Fi) is abandoned and replaced at once,
  // rather than when the browser notices minutes later.
  #startPing() {
    const { pingIntervalMs, pongTimeoutMs } = this.#options;
    this.#stopPing();
    if (!pingIntervalMs) return;
    const ws = this.#ws;
    this.#pingTimer = setInterval(() => {
      ws.send(JSON.stringify({ type: 'ping', id: this.#nextId++ }));
      clearTimeout(this.#pongTimer);
      this.#pongTimer = setTimeout(() => {
        if (this.#ws !== ws) return;
        this.#ws = null;
        this.#stopPing();
        ws.close(4000, 'no pong');
        this.#attempts += 1;
        this.#lost(1006, 'no pong');
      }, pongTimeoutMs);
    }, pingIntervalMs);
  }

  #stopPing() {
    clearInterval(this.#pingTimer);
    clearTimeout(this.#pongTimer);
  }
}

/**
 * Fetches ready-made ICE servers from icegate's `GET /ice-servers`. `token`
 * is a signaling JWT (the credentials name its user) or an API key from
 * `[http] api-keys` (keep those on your server, never in a page; `username`
 * then names the user). Resolves with the array for RTCPeerConnection's
 * `iceServers`.
 */
export async function fetchIceServers(baseUrl, token, { username } = {}) {
  const url = new URL('/ice-servers', baseUrl);
  if (username) url.searchParams.set('username', username);
  const response = await fetch(url, { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    throw new Error(`icegate: GET ${url.pathname} answered ${response.status}`);
  }
  return (await response.json()).iceServers;
}
