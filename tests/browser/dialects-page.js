// The page side of dialects.mjs, loaded before the bundled libraries: it
// records the signaling frames each WebSocket carries (token-free paths,
// the first 200 frames, each cut to 4000 characters) and gives the script one place to start
// y-webrtc and PeerJS and to read back what they did.
(() => {
  const seen = { frames: [], peerErrors: [], peerEvents: [] };
  const t0 = Date.now();
  const record = (path, dir, data) => {
    if (seen.frames.length >= 200) return;
    const text = typeof data === 'string' ? data : `(${data?.byteLength ?? data?.size ?? '?'} bytes binary)`;
    seen.frames.push({ ms: Date.now() - t0, path, dir, data: text.slice(0, 4000) });
  };

  const NativeWebSocket = window.WebSocket;
  class RecordingWebSocket extends NativeWebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      const path = new URL(url, location.href).pathname;
      this.recordedPath = path;
      record(path, 'connect', '');
      this.addEventListener('open', () => record(path, 'open', ''));
      this.addEventListener('message', (e) => record(path, 'in', e.data));
      this.addEventListener('close', (e) => record(path, 'close', `${e.code} ${e.reason}`));
    }

    send(data) {
      record(this.recordedPath, 'out', data);
      super.send(data);
    }
  }
  window.WebSocket = RecordingWebSocket;

  // getStats()'s selected candidate pair, as web/index.html reports it.
  async function selectedPair(pc) {
    if (!pc) return null;
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) {
      stats.forEach((s) => {
        if (!pair && s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
      });
    }
    if (!pair) return null;
    const candidate = (id) => {
      const c = stats.get(id) || {};
      const { candidateType, protocol, relayProtocol, address, port, url } = c;
      return { candidateType, protocol, relayProtocol, address, port, url };
    };
    const { state, bytesSent, bytesReceived } = pair;
    return { state, bytesSent, bytesReceived, local: candidate(pair.localCandidateId), remote: candidate(pair.remoteCandidateId) };
  }

  async function iceServers(token) {
    const query = token ? `?token=${encodeURIComponent(token)}` : '';
    const response = await fetch(`/ice-servers${query}`);
    const body = await response.text();
    if (!response.ok) throw new Error(`GET /ice-servers: ${response.status} ${body}`);
    return JSON.parse(body).iceServers;
  }

  // --- y-webrtc ---
  let yjs;

  function startYjs(room, signalingUrl, servers) {
    const doc = new window.Y.Doc();
    const provider = new window.WebrtcProvider(room, doc, {
      signaling: [signalingUrl],
      peerOpts: { config: { iceServers: servers, iceTransportPolicy: 'relay' } },
    });
    yjs = { doc, provider, text: doc.getText('t') };
  }

  function yjsInsert(text) {
    yjs.text.insert(yjs.text.length, text);
  }

  function yjsState() {
    const { provider, text } = yjs;
    const room = provider.room;
    return {
      text: text.toString(),
      signaling: provider.signalingConns.map((c) => ({ path: new URL(c.url).pathname, connected: c.connected })),
      webrtcPeers: room
        ? [...room.webrtcConns].map(([id, c]) => ({ id, connected: c.connected, synced: c.synced }))
        : [],
      broadcastPeers: room ? room.bcConns.size : 0,
    };
  }

  async function yjsPairs() {
    const room = yjs.provider.room;
    const out = [];
    for (const [id, c] of room ? room.webrtcConns : []) {
      out.push({ id, pair: await selectedPair(c.peer && c.peer._pc).catch((e) => ({ error: String(e) })) });
    }
    return out;
  }

  // --- PeerJS ---
  const peers = {}; // id -> Peer
  const conns = []; // { owner, peer, open, received, errors, conn }

  function track(owner, conn) {
    const entry = { owner, peer: conn.peer, open: false, closed: false, received: [], errors: [], conn };
    conns.push(entry);
    conn.on('open', () => (entry.open = true));
    conn.on('data', (data) => entry.received.push(data));
    conn.on('error', (e) => entry.errors.push(`${e.type}: ${e.message}`));
    conn.on('close', () => (entry.closed = true));
    return entry;
  }

  // A Peer with `id` (or one the server picks when null); resolves with its id.
  function openPeer(id, options) {
    return new Promise((resolve, reject) => {
      const peer = id ? new window.Peer(id, options) : new window.Peer(options);
      let opened = false;
      peer.on('open', (given) => {
        opened = true;
        peers[given] = peer;
        seen.peerEvents.push({ ms: Date.now() - t0, peer: given, event: 'open' });
        resolve(given);
      });
      peer.on('connection', (conn) => {
        seen.peerEvents.push({ ms: Date.now() - t0, peer: peer.id, event: 'connection', from: conn.peer });
        track(peer.id, conn);
      });
      peer.on('error', (e) => {
        seen.peerErrors.push({ ms: Date.now() - t0, peer: peer.id ?? id, type: e.type, message: e.message });
        if (!opened) reject(new Error(`peer ${id ?? '(server-given id)'}: ${e.type}: ${e.message}`));
      });
      peer.on('disconnected', () => seen.peerEvents.push({ ms: Date.now() - t0, peer: peer.id, event: 'disconnected' }));
    });
  }

  function connect(owner, to) {
    track(owner, peers[owner].connect(to, { reliable: true }));
  }

  function find(owner, peer) {
    return conns.find((c) => c.owner === owner && c.peer === peer);
  }

  function send(owner, peer, text) {
    find(owner, peer).conn.send(text);
  }

  function connState(owner, peer) {
    const c = find(owner, peer);
    return c ? { open: c.open, closed: c.closed, received: c.received, errors: c.errors } : null;
  }

  function connPair(owner, peer) {
    const c = find(owner, peer);
    return selectedPair(c && c.conn.peerConnection);
  }

  function peerState() {
    return {
      peers: Object.keys(peers),
      connections: conns.map((c) => ({ owner: c.owner, peer: c.peer, open: c.open, closed: c.closed, received: c.received, errors: c.errors })),
    };
  }

  window.dialect = {
    seen, selectedPair, iceServers,
    startYjs, yjsInsert, yjsState, yjsPairs,
    openPeer, connect, send, connState, connPair, peerState,
  };
})();
