//! Entry points of the fuzz targets in `fuzz/`: one function per target,
//! taking the fuzzer's bytes, so the targets reach the parsers without the
//! crate's internals being public. Each checks what must hold whatever the
//! input (replies parse, cutting frames does not depend on how the bytes
//! arrive, what the server writes is JSON) besides not panicking.
//!
//! The tests below write the seed corpora (`fuzz/seeds/`, an ignored test)
//! and replay the seeds and every kept crash (`fuzz/regressions/`).

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::auth::{CredentialStore, LongTermKey, long_term_key};
use crate::config::{Config, Transport};
use crate::coturn_convert::{self, Environment};
use crate::policy::PeerPolicy;
use crate::reject::RejectCounters;
use crate::signal::protocol::{self, Incoming, Request};
use crate::signal::token::TokenVerifier;
use crate::signal::websocket::{self, Decoder, FrameError, Received};
use crate::transport::stream::{FramingLost, cut_frames};
use crate::turn::core::{Action, Core, Now};
use crate::turn::shared::Shared;
use crate::turn::{AllocId, FiveTuple, RelaySockets};
use crate::wire::{self, ChannelData, Class, Kind, Message, MessageBuilder, StreamFrame, attr};

/// A fuzz target: its name and the function it calls with each input.
pub type Target = (&'static str, fn(&[u8]));

/// The fuzz targets, by name: the directories under `fuzz/seeds/` and
/// `fuzz/regressions/`, and the files under `fuzz/fuzz_targets/`.
pub const TARGETS: [Target; 8] = [
    ("stun_core", stun_core),
    ("channel_data", channel_data),
    ("stream_framing", stream_framing),
    ("signaling_message", signaling_message),
    ("websocket_frames", websocket_frames),
    ("token", token),
    ("config", config),
    ("coturn_config", coturn_config),
];

// ---------------------------------------------------------------------------------------------
// The TURN core

/// Wall-clock seconds when a run starts: fixed, so nonces and REST expiry
/// are the same on every run of an input.
const UNIX: u64 = 1_800_000_000;
const REALM: &str = "example.org";
const SECRET: &str = "rest-secret-value";
/// The REST user's username expires an hour into the run.
const REST_USERNAME: &str = "1800003600:carol";

/// The core's config and the tighter one a reload applies, with their
/// credential stores: parsed once, as every input starts from them.
struct Setup {
    config: Config,
    credentials: Arc<CredentialStore>,
    tighter: Config,
    tighter_credentials: Arc<CredentialStore>,
    clients: [Client; 4],
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let store =
            |config: &Config| Arc::new(CredentialStore::new(&config.realm, &config.auth, [1; 32]));
        let config = core_config(r#"["127.0.0.0/8", "::1/128"]"#);
        let tighter = core_config(r#"["127.0.0.2/32"]"#);
        Setup {
            credentials: store(&config),
            tighter_credentials: store(&tighter),
            config,
            tighter,
            clients: clients(),
        }
    })
}

/// Small quotas and a small port range, so that a few messages reach the
/// caps, port exhaustion and the login backoff.
fn core_config(allow_peers: &str) -> Config {
    let text = format!(
        r#"realm = "{REALM}"
[[listen]]
address = "127.0.0.1:3478"
[relay]
addresses = ["127.0.0.1", "::1"]
allow-peers = {allow_peers}
ports = "50000-50005"
max-allocations = 4
max-allocations-per-user = 2
max-permissions-per-allocation = 4
max-channels-per-allocation = 3
[throttle]
login-failures = 3
[auth]
secrets = ["{SECRET}"]
[[auth.users]]
name = "alice"
password = "pw"
[[auth.users]]
name = "bob"
password = "pw-of-bob"
"#
    );
    Config::parse(&text, "fuzz").unwrap_or_else(|e| panic!("{e}"))
}

/// A client the input can speak as: its 5-tuple and the key it signs with.
struct Client {
    five_tuple: FiveTuple,
    username: &'static str,
    key: LongTermKey,
}

fn clients() -> [Client; 4] {
    let tuple = |client: &str, server: &str, transport| FiveTuple {
        client: client.parse().expect("a client address"),
        server: server.parse().expect("a server address"),
        transport,
    };
    let rest_password = crate::auth::rest_password(SECRET.as_bytes(), REST_USERNAME);
    [
        Client {
            five_tuple: tuple("127.0.0.1:40000", "127.0.0.1:3478", Transport::Udp),
            username: "alice",
            key: long_term_key("alice", REALM, "pw"),
        },
        Client {
            five_tuple: tuple("127.0.0.1:40001", "127.0.0.1:3478", Transport::Tcp),
            username: "alice",
            key: long_term_key("alice", REALM, "pw"),
        },
        Client {
            five_tuple: tuple("[::1]:40002", "[::1]:3478", Transport::Udp),
            username: "bob",
            key: long_term_key("bob", REALM, "pw-of-bob"),
        },
        Client {
            five_tuple: tuple("127.0.0.2:40003", "127.0.0.1:3478", Transport::Tls),
            username: REST_USERNAME,
            key: long_term_key(REST_USERNAME, REALM, &rest_password),
        },
    ]
}

/// Relay sockets that always bind, except the port every seventh bind asks
/// for (another program holds it), so the core's retry is reached too.
#[derive(Default)]
struct Sockets {
    binds: u32,
}

impl RelaySockets for Sockets {
    fn open(&mut self, _: AllocId, _: SocketAddr, _: bool) -> std::io::Result<()> {
        self.binds += 1;
        if self.binds.is_multiple_of(7) {
            return Err(std::io::ErrorKind::AddrInUse.into());
        }
        Ok(())
    }

    fn open_tcp(&mut self, id: AllocId, address: SocketAddr) -> std::io::Result<()> {
        self.open(id, address, false)
    }
}

/// Seconds the clock moves before a record, by the record's high nibble;
/// the last one reloads a tighter peer policy instead.
const TIME_STEPS: [u64; 16] = [0, 0, 0, 0, 0, 0, 1, 2, 5, 30, 60, 299, 301, 601, 3601, 0];
const RELOAD: u8 = 15;

/// One core with its clock, as the shell drives it.
struct Rig {
    core: Core,
    credentials: &'static CredentialStore,
    sockets: Sockets,
    clients: &'static [Client; 4],
    start: Instant,
    elapsed: u64,
    out: Vec<u8>,
}

/// A core that is the only shard, with its own counters, ports and no bans.
fn one_shard_core(config: &Config, credentials: Arc<CredentialStore>, start: Instant) -> Core {
    Core::new(
        config,
        credentials,
        Arc::new(RejectCounters::default()),
        Arc::new(Shared::new(
            config.relay.ports,
            start,
            Arc::new(crate::bans::Bans::in_memory()),
        )),
        (0, 1),
    )
}

impl Rig {
    fn new() -> Self {
        let Setup {
            config,
            credentials,
            clients,
            ..
        } = setup();
        let start = Instant::now();
        let mut core = one_shard_core(config, credentials.clone(), start);
        core.set_listeners(&["127.0.0.1:3478".parse().expect("an address")]);
        Self {
            core,
            credentials,
            sockets: Sockets::default(),
            clients,
            start,
            elapsed: 0,
            out: Vec::new(),
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: self.start + Duration::from_secs(self.elapsed),
            unix: UNIX + self.elapsed,
        }
    }

    /// Applies the time step or reload a record's control byte asks for.
    fn advance(&mut self, control: u8) {
        let step = control >> 4;
        if step == RELOAD {
            let setup = setup();
            let now = self.now();
            self.core
                .reconfigure(&setup.tighter, setup.tighter_credentials.clone(), now);
            return;
        }
        let secs = TIME_STEPS[usize::from(step)];
        if secs > 0 {
            self.elapsed += secs;
            self.core.handle_timeout(self.now().instant);
        }
        // The shell closes the sockets of ended allocations (and of ended
        // relays of dual-stack ones); here they are forgotten.
        self.core.take_ended();
        self.core.take_ended_relays();
    }

    /// `message` rebuilt as `client` signs it, with a nonce valid now:
    /// USERNAME, REALM, NONCE, MESSAGE-INTEGRITY and FINGERPRINT of the
    /// original are dropped, the rest kept in order.
    fn sign(&self, message: &Message<'_>, client: usize, fingerprint: bool) -> Vec<u8> {
        let client = &self.clients[client];
        let nonce = self
            .credentials
            .nonce(client.five_tuple.client, self.now().unix);
        let mut buf = Vec::new();
        let mut builder =
            MessageBuilder::new(&mut buf, message.method, message.class, message.transaction);
        for attribute in message.attributes() {
            if ![
                attr::USERNAME,
                attr::REALM,
                attr::NONCE,
                attr::MESSAGE_INTEGRITY,
                attr::FINGERPRINT,
            ]
            .contains(&attribute.kind)
            {
                builder.add(attribute.kind, attribute.value);
            }
        }
        builder
            .add(attr::USERNAME, client.username.as_bytes())
            .add(attr::REALM, REALM.as_bytes())
            .add(attr::NONCE, nonce.as_bytes())
            .add_integrity(client.key.as_bytes());
        if fingerprint {
            builder.add_fingerprint();
        }
        buf
    }

    /// One record: a STUN message or ChannelData from the client the control
    /// byte names, handled as the shell would; the reply, if any.
    fn step(&mut self, control: u8, bytes: &[u8]) -> Option<Vec<u8>> {
        self.advance(control);
        let client = usize::from(control & 3);
        // Re-signing adds under 200 bytes; a message near 64 KiB stays as it is.
        let signed = (control & 4 != 0 && bytes.len() < 60_000)
            .then(|| Message::parse(bytes).ok())
            .flatten()
            .map(|message| self.sign(&message, client, control & 8 != 0));
        let bytes = signed.as_deref().unwrap_or(bytes);
        let five_tuple = self.clients[client].five_tuple;
        let now = self.now();
        match bytes.first().map(|&b| wire::classify(b)) {
            Some(Kind::ChannelData) => {
                let frame = ChannelData::parse(bytes)?;
                let route = self.core.route_channel_data(
                    now.instant,
                    &five_tuple,
                    frame.channel,
                    frame.data.len(),
                );
                if let Ok((id, peer)) = route {
                    // The peer answers at once.
                    self.core
                        .route_from_peer(id, peer, now.instant, frame.data.len());
                }
                None
            }
            Some(Kind::Stun) => {
                let message = Message::parse(bytes).ok()?;
                let mut out = std::mem::take(&mut self.out);
                let action =
                    self.core
                        .handle_stun(now, &five_tuple, &message, &mut self.sockets, &mut out);
                let reply = match action {
                    Action::None => None,
                    Action::Reply | Action::ReplyVia { .. } | Action::ReplyAndStartRelay(_) => {
                        if let Err(error) = Message::parse(&out) {
                            panic!("the reply does not parse: {error}");
                        }
                        Some(out.clone())
                    }
                    Action::ToPeer { relay, peer, data } => {
                        assert!(
                            data.len() < bytes.len(),
                            "data to a peer comes from the indication"
                        );
                        self.core
                            .route_from_peer(relay, peer, now.instant, data.len());
                        None
                    }
                    Action::ReplyAndJoinPeer(connection) => {
                        if let Err(error) = Message::parse(&out) {
                            panic!("the reply does not parse: {error}");
                        }
                        // Half the joined pairs hang up at once.
                        if connection % 2 == 0 {
                            self.core.peer_connection_closed(connection);
                        }
                        Some(out.clone())
                    }
                    Action::ConnectToPeer { connection, .. } => {
                        // The peer answers at once; every third one refuses.
                        let connected = connection % 3 != 0;
                        let mut answer = Vec::new();
                        self.core
                            .connect_finished(connection, connected, now.instant, &mut answer);
                        if !answer.is_empty()
                            && let Err(error) = Message::parse(&answer)
                        {
                            panic!("the Connect answer does not parse: {error}");
                        }
                        None
                    }
                };
                self.out = out;
                reply
            }
            _ => None,
        }
    }
}

/// Splits `data` into records: a control byte, a 2-byte big-endian length
/// and that many bytes (fewer for the last, if the input ends first).
fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&control, rest) = data.split_first()?;
        let (len, rest) = match rest {
            [high, low, rest @ ..] => (usize::from(u16::from_be_bytes([*high, *low])), rest),
            _ => (0, &[][..]),
        };
        let (record, rest) = rest.split_at(len.min(rest.len()));
        data = rest;
        Some((control, record))
    })
}

/// STUN messages and ChannelData through the TURN core, several per input
/// (see [`records`]). The control byte of each: bits 0–1 the client (alice
/// over UDP, alice over TCP, bob over IPv6, a TURN REST user over TLS); bit
/// 2 re-signs the message as that client with a valid nonce, bit 3 adds a
/// FINGERPRINT to it; bits 4–7 move the clock first ([`TIME_STEPS`]) or
/// reload a tighter peer policy. Every reply must parse.
pub fn stun_core(data: &[u8]) {
    let mut rig = Rig::new();
    for (control, bytes) in records(data) {
        rig.step(control, bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// ChannelData

/// alice's allocation with permissions for two peers and a channel to each,
/// made by signed requests as a client would.
fn channel_rig() -> (Rig, [SocketAddr; 2]) {
    let mut rig = Rig::new();
    let peers: [SocketAddr; 2] = [
        "127.0.0.1:5000".parse().expect("an address"),
        "127.0.0.2:6000".parse().expect("an address"),
    ];
    for request in setup_requests(&peers) {
        let reply = rig.step(4, &request).expect("a reply");
        let reply = Message::parse(&reply).expect("the reply parses");
        assert_eq!(reply.class, Class::Success, "setting up the channels");
    }
    (rig, peers)
}

fn transaction(n: u8) -> wire::TransactionId {
    let mut id = [n; 16];
    id[..4].copy_from_slice(&wire::MAGIC_COOKIE.to_be_bytes());
    wire::TransactionId(id)
}

/// Unsigned requests (the rig signs them): Allocate, CreatePermission for
/// both peers, ChannelBind 0x4000 and 0x4FFF.
fn setup_requests(peers: &[SocketAddr; 2]) -> Vec<Vec<u8>> {
    let mut requests = Vec::new();
    let mut request = |n: u8, method, add: &dyn Fn(&mut MessageBuilder<'_>)| {
        let mut buf = Vec::new();
        add(&mut MessageBuilder::new(
            &mut buf,
            method,
            Class::Request,
            transaction(n),
        ));
        requests.push(buf);
    };
    request(1, wire::Method::ALLOCATE, &|b| {
        b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0]);
    });
    request(2, wire::Method::CREATE_PERMISSION, &|b| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peers[0])
            .add_xor_address(attr::XOR_PEER_ADDRESS, peers[1]);
    });
    request(3, wire::Method::CHANNEL_BIND, &|b| {
        b.add_u32(attr::CHANNEL_NUMBER, 0x4000 << 16)
            .add_xor_address(attr::XOR_PEER_ADDRESS, peers[0]);
    });
    request(4, wire::Method::CHANNEL_BIND, &|b| {
        b.add_u32(attr::CHANNEL_NUMBER, 0x4FFF << 16)
            .add_xor_address(attr::XOR_PEER_ADDRESS, peers[1]);
    });
    requests
}

/// ChannelData framing of one datagram: parsed, written back (padded and
/// not) and parsed again, it must be the same frame.
fn channel_data_round_trip(datagram: &[u8]) {
    let Some(frame) = ChannelData::parse(datagram) else {
        return;
    };
    let declared = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    assert_eq!(frame.data.len(), declared);
    for padded in [false, true] {
        let mut written = Vec::new();
        wire::push_channel_data(&mut written, frame.channel, frame.data, padded);
        let again = ChannelData::parse(&written).expect("what was written parses");
        assert_eq!((again.channel, again.data), (frame.channel, frame.data));
        if padded && wire::classify(datagram[0]) == Kind::ChannelData {
            assert_eq!(
                wire::stream_frame(&written),
                StreamFrame::Complete {
                    message: 4 + declared,
                    total: written.len()
                }
            );
        }
    }
}

/// Records (see [`records`]) as datagrams to a core where alice has
/// channels 0x4000 and 0x4FFF bound. Control byte: bits 0–1 the client,
/// whose datagram goes through ChannelData framing
/// ([`channel_data_round_trip`]) and the core's routing; or with bit 2 a
/// datagram from a peer to alice's relay instead (bit 3 picks the peer);
/// bits 4–7 the clock as in [`stun_core`]. A route must lead to a bound peer.
pub fn channel_data(data: &[u8]) {
    let (mut rig, peers) = channel_rig();
    let alice = rig
        .core
        .allocations()
        .next()
        .map(|allocation| allocation.id)
        .expect("alice's allocation");
    for (control, bytes) in records(data) {
        rig.advance(control);
        let now = rig.now().instant;
        if control & 4 != 0 {
            let peer = peers[usize::from(control >> 3 & 1)];
            rig.core.route_from_peer(alice, peer, now, bytes.len());
            continue;
        }
        channel_data_round_trip(bytes);
        let Some(frame) = ChannelData::parse(bytes) else {
            continue;
        };
        let five_tuple = rig.clients[usize::from(control & 3)].five_tuple;
        if let Ok((id, peer)) =
            rig.core
                .route_channel_data(now, &five_tuple, frame.channel, frame.data.len())
        {
            assert_eq!(id, alice, "only alice has channels");
            assert!(peers.contains(&peer), "routed to {peer}, not a bound peer");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TCP/TLS stream framing

/// How [`cut_frames`] left a stream: the frames it handed on, and the bytes
/// left waiting or why framing was lost.
type Cutting = (Vec<Vec<u8>>, Result<usize, FramingLost>);

/// Cuts `stream` as a connection reading it in `chunks` does: each read
/// appended to the buffer, whole frames cut, their bytes drained.
/// The sizes of the reads a stream arrives in, from a seed: mostly 1 to 8
/// bytes, some up to about 100.
fn read_sizes(seed: u8) -> impl Iterator<Item = usize> {
    let mut state = u32::from(seed) | 0x100;
    std::iter::from_fn(move || {
        // xorshift
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let small = state >> 8 & 7;
        let large = if state >> 12 & 1 == 1 { state % 97 } else { 0 };
        Some(1 + usize::from(u8::try_from(small + large).unwrap_or(u8::MAX)))
    })
}

fn cut_in_chunks(stream: &[u8], max_frame: usize, chunks: impl Iterator<Item = usize>) -> Cutting {
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let mut rest = stream;
    let mut chunks = chunks.chain(std::iter::repeat(usize::MAX));
    loop {
        let take = chunks
            .next()
            .unwrap_or(usize::MAX)
            .clamp(1, rest.len().max(1));
        let (read, after) = rest.split_at(take.min(rest.len()));
        buf.extend_from_slice(read);
        rest = after;
        match cut_frames(&buf, max_frame, |frame| {
            frames.push(frame.to_vec());
            ControlFlow::Continue(())
        }) {
            Ok(consumed) => {
                buf.drain(..consumed);
            }
            Err(lost) => return (frames, Err(lost)),
        }
        if rest.is_empty() {
            return (frames, Ok(buf.len()));
        }
    }
}

/// TCP/TLS framing: bytes 0–1 the frame limit, byte 2 seeds the read sizes,
/// the rest is the stream. Cut in reads of those sizes, it must give the
/// same frames and the same end as cut in one read, each frame a whole STUN
/// or ChannelData message within the limit.
pub fn stream_framing(data: &[u8]) {
    let [high, low, seed, stream @ ..] = data else {
        return;
    };
    let max_frame = usize::from(u16::from_be_bytes([*high, *low])) + 4;
    let whole = cut_in_chunks(stream, max_frame, std::iter::empty());
    let chunked = cut_in_chunks(stream, max_frame, read_sizes(*seed));
    assert_eq!(whole, chunked, "the frames depend on how the bytes arrived");
    let byte_by_byte = cut_in_chunks(stream, max_frame, std::iter::repeat(1));
    assert_eq!(
        whole, byte_by_byte,
        "the frames depend on how the bytes arrived"
    );
    for frame in &whole.0 {
        assert!(frame.len() <= max_frame, "a frame over the limit");
        match wire::classify(frame[0]) {
            Kind::ChannelData => {
                let parsed = ChannelData::parse(frame).expect("a cut ChannelData frame parses");
                assert_eq!(parsed.data.len() + 4, frame.len());
            }
            Kind::Stun => {
                // Whether it parses is the handler's business; it must not panic.
                let _ = Message::parse(frame);
            }
            Kind::Other => panic!("a frame that is neither STUN nor ChannelData"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Signaling

/// What a client's bytes decode to: each frame as the connection sees it,
/// then the protocol error that ended it, if one did.
type Decoded = (Vec<String>, Option<FrameError>);

fn decode_in_chunks(
    stream: &[u8],
    max_message: usize,
    chunks: impl Iterator<Item = usize>,
) -> Decoded {
    let hard_limit = max_message * 4;
    let mut decoder = Decoder::new(max_message, hard_limit);
    let mut seen = Vec::new();
    let mut rest = stream;
    let mut chunks = chunks.chain(std::iter::repeat(usize::MAX));
    while !rest.is_empty() {
        let take = chunks.next().unwrap_or(usize::MAX).clamp(1, rest.len());
        let (read, after) = rest.split_at(take);
        rest = after;
        let mut read = read.to_vec();
        let flow = decoder.feed(&mut read, |received| {
            if let Received::Text(text) = received {
                assert!(text.len() <= max_message, "a text over the limit");
            }
            let closed = matches!(received, Received::Close(_));
            seen.push(format!("{received:?}"));
            if closed {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        match flow {
            Ok(ControlFlow::Break(())) => return (seen, None),
            Ok(ControlFlow::Continue(())) => {}
            Err(error) => return (seen, Some(error)),
        }
        // A frame is kept until it has arrived (and a fragmented message
        // until its end), and no longer.
        assert!(
            decoder.buffered() <= hard_limit + 14 + max_message,
            "{} bytes kept for a frame",
            decoder.buffered()
        );
    }
    (seen, None)
}

/// WebSocket framing of `/ws` (`signal::websocket::Decoder`): byte 0 seeds
/// the read sizes, bytes 1–2 the message limit, the rest is what a client
/// sends. In reads of those sizes, or byte by byte, it must decode to the
/// same frames and the same error as in one read, each text within the limit.
pub fn websocket_frames(data: &[u8]) {
    let [seed, high, low, stream @ ..] = data else {
        return;
    };
    let max_message = usize::from(u16::from_be_bytes([*high, *low])) + 1;
    let whole = decode_in_chunks(stream, max_message, std::iter::empty());
    let chunked = decode_in_chunks(stream, max_message, read_sizes(*seed));
    assert_eq!(whole, chunked, "the frames depend on how the bytes arrived");
    let byte_by_byte = decode_in_chunks(stream, max_message, std::iter::repeat(1));
    assert_eq!(
        whole, byte_by_byte,
        "the frames depend on how the bytes arrived"
    );
}

fn assert_json_frame(frame: &[u8]) {
    match std::str::from_utf8(websocket::payload(frame)) {
        Ok(text) => assert_json(text),
        Err(error) => panic!("the server would send a text frame that is not UTF-8: {error}"),
    }
}

fn assert_json(text: &str) {
    if let Err(error) = serde_json::from_str::<serde_json::Value>(text) {
        panic!("the server would send invalid JSON ({error}): {text}");
    }
}

/// One client frame (text, so UTF-8) through the signaling parser, and what
/// the server writes in answer or forwards: all of it must be JSON.
pub fn signaling_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let incoming = Incoming::parse(text);
    match &incoming.request {
        Ok(Request::Join {
            room,
            peer,
            metadata,
        }) => {
            let peer = peer.as_deref().unwrap_or("p1");
            let empty = protocol::empty_object();
            let metadata = metadata.unwrap_or(&empty);
            assert_json(&protocol::peer_joined(room, peer, metadata));
            let entries = [protocol::PeerEntry { peer, metadata }];
            assert_json(&protocol::joined(room, peer, &entries));
        }
        Ok(Request::Leave { room }) => {
            assert_json(&protocol::peer_left(
                room,
                "p1",
                protocol::LeaveReason::Left,
            ));
        }
        Ok(Request::Signal { room, to, data }) => {
            assert_json_frame(&protocol::signal(room, to, data, false));
        }
        Ok(Request::Broadcast { room, data }) => {
            assert_json_frame(&protocol::signal(room, "p1", data, true));
        }
        Ok(Request::Ping) => assert_json(&protocol::pong(incoming.id)),
        Err(problem) => {
            assert_json(&protocol::error(
                problem,
                incoming.kind.as_deref(),
                incoming.id,
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

const JWT_SECRET: &str = "fuzz-jwt-secret-0123456789abcdef";

/// A verifier with the HS256 secret and the sandbox's ES256 and RS256 keys,
/// built from config text as the daemon builds it.
fn verifier() -> &'static TokenVerifier {
    static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let text = format!(
            "[[listen]]\naddress = \"127.0.0.1:3478\"\n[auth]\nsecrets = [\"{SECRET}\"]\n\
             [signal]\njwt-secrets = [\"{JWT_SECRET}\"]\n\
             jwt-public-keys = [\"ec.pub.pem\", \"rsa.pub.pem\"]\n"
        );
        let config = Config::parse_sandboxed(&text, sandbox()).unwrap_or_else(|e| panic!("{e}"));
        TokenVerifier::new(&config.signal)
    })
}

/// `header.claims` signed: HS256 with the configured secret, or ES256 with
/// the sandbox's key, as `alg` says.
fn signed_token(header: &[u8], claims: &[u8], es256: bool) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    static ES256: OnceLock<jsonwebtoken::EncodingKey> = OnceLock::new();
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let (key, algorithm) = if es256 {
        let key = ES256.get_or_init(|| {
            jsonwebtoken::EncodingKey::from_ec_pem(EC_PRIVATE_KEY).expect("the sandbox's EC key")
        });
        (key, jsonwebtoken::Algorithm::ES256)
    } else {
        static HS256: OnceLock<jsonwebtoken::EncodingKey> = OnceLock::new();
        let key =
            HS256.get_or_init(|| jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()));
        (key, jsonwebtoken::Algorithm::HS256)
    };
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, algorithm)
        .expect("signing with a valid key");
    format!("{message}.{signature}")
}

/// A signaling token through verification. First byte even: the rest is
/// the token as a client sends it. Odd: the rest is a JWT header and claims
/// (JSON, split at the first newline) that get a valid signature (HS256, or
/// ES256 with bit 1 set), so the claims are decoded past the signature.
/// A token that verifies has not expired.
pub fn token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let (header, claims) = rest.split_at(split);
        signed_token(header, claims.get(1..).unwrap_or_default(), mode & 2 != 0)
    };
    if let Ok(claims) = verifier().verify(Some(&text)) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        assert!(
            claims.exp.saturating_add(60) >= now,
            "an expired token verified"
        );
        let _ = claims.may_join("room");
    }
}

// ---------------------------------------------------------------------------------------------
// The config loader

const EC_PRIVATE_KEY: &[u8] = include_bytes!("../fuzz/keys/ec.pem");

/// The files a fuzzed config may name (relative to this directory): a TLS
/// certificate and its key, JWT public keys, a REST secrets file. Written
/// once per process; the loader reads no file outside it.
fn sandbox() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("icegate-fuzz-sandbox");
        std::fs::create_dir_all(&dir).expect("create the sandbox");
        // Renamed into place: other fuzzing processes may be reading them.
        let part = dir.join(format!(".part-{}", std::process::id()));
        let files: [(&str, &[u8]); 6] = [
            ("cert.pem", include_bytes!("../fuzz/keys/cert.pem")),
            ("key.pem", EC_PRIVATE_KEY),
            ("ec.pub.pem", include_bytes!("../fuzz/keys/ec.pub.pem")),
            ("rsa.pub.pem", include_bytes!("../fuzz/keys/rsa.pub.pem")),
            (
                "rest-secret",
                b"# made at install time\n0123456789abcdef0123456789abcdef\n",
            ),
            ("short-secret", b"short\n"),
        ];
        for (name, bytes) in files {
            std::fs::write(&part, bytes).expect("write a sandbox file");
            std::fs::rename(&part, dir.join(name)).expect("move a sandbox file into place");
        }
        dir.canonicalize().expect("the sandbox exists")
    })
}

/// A short session on a core made from `config`, so the limits the text
/// sets (rates, caps, lifetimes, bandwidth) are used, not only read: a
/// Binding, an unsigned and a signed Allocate (a static user's key, else
/// minted REST credentials), a permission, a channel, data both ways and an
/// hour of expiry. Every reply must parse.
fn exercise_core(config: &Config, credentials: Arc<CredentialStore>) {
    use crate::config::UserCredential;
    let start = Instant::now();
    let now = |secs: u64| Now {
        instant: start + Duration::from_secs(secs),
        unix: UNIX + secs,
    };
    let (username, key) = match config.auth.users.first() {
        Some(user) => match &user.credential {
            UserCredential::Password(password) => (
                user.name.clone(),
                long_term_key(&user.name, &config.realm, password),
            ),
            UserCredential::Key(key) => (user.name.clone(), LongTermKey::Md5(*key)),
        },
        None => match credentials.mint("fuzz", Duration::from_secs(3600), UNIX) {
            Some((username, password)) => {
                let key = long_term_key(&username, &config.realm, &password);
                (username, key)
            }
            None => return,
        },
    };
    let mut core = one_shard_core(config, credentials.clone(), start);
    let Some(listen) = config.listen.first() else {
        return;
    };
    let client = if listen.address.is_ipv4() {
        "127.0.0.1:40000"
    } else {
        "[::1]:40000"
    };
    let five_tuple = FiveTuple {
        client: client.parse().expect("an address"),
        server: listen.address,
        transport: Transport::Udp,
    };
    let peer = SocketAddr::new(five_tuple.client.ip(), 5000);
    let nonce = credentials.nonce(five_tuple.client, UNIX);
    let mut sockets = Sockets::default();
    let mut send = |core: &mut Core,
                    n: u8,
                    method,
                    class,
                    sign: bool,
                    add: &dyn Fn(&mut MessageBuilder<'_>)| {
        let mut request = Vec::new();
        let mut builder = MessageBuilder::new(&mut request, method, class, transaction(n));
        add(&mut builder);
        if sign {
            builder
                .add(attr::USERNAME, username.as_bytes())
                .add(attr::REALM, config.realm.as_bytes())
                .add(attr::NONCE, nonce.as_bytes())
                .add_integrity(key.as_bytes());
        }
        let message = Message::parse(&request).expect("a built request parses");
        let mut out = Vec::new();
        let action = core.handle_stun(now(0), &five_tuple, &message, &mut sockets, &mut out);
        if let Action::Reply | Action::ReplyAndStartRelay(_) = action
            && let Err(error) = Message::parse(&out)
        {
            panic!("the reply does not parse: {error}");
        }
        if let Action::ToPeer { relay, peer, data } = action {
            core.route_from_peer(relay, peer, now(0).instant, data.len());
        }
    };
    let udp = |b: &mut MessageBuilder<'_>| {
        b.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0]);
    };
    send(
        &mut core,
        1,
        wire::Method::BINDING,
        Class::Request,
        false,
        &|_| {},
    );
    send(
        &mut core,
        2,
        wire::Method::ALLOCATE,
        Class::Request,
        false,
        &udp,
    );
    send(
        &mut core,
        3,
        wire::Method::ALLOCATE,
        Class::Request,
        true,
        &udp,
    );
    send(
        &mut core,
        4,
        wire::Method::CREATE_PERMISSION,
        Class::Request,
        true,
        &|b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        },
    );
    send(
        &mut core,
        5,
        wire::Method::CHANNEL_BIND,
        Class::Request,
        true,
        &|b| {
            b.add_u32(attr::CHANNEL_NUMBER, 0x4000 << 16)
                .add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        },
    );
    send(
        &mut core,
        6,
        wire::Method::SEND,
        Class::Indication,
        false,
        &|b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
                .add(attr::DATA, &[0; 1200]);
        },
    );
    for secs in [0, 1, 3600] {
        if let Ok((id, peer)) =
            core.route_channel_data(now(secs).instant, &five_tuple, 0x4000, 1200)
        {
            core.route_from_peer(id, peer, now(secs).instant, 1200);
        }
        core.handle_timeout(now(secs).instant);
    }
}

/// Config text through the loader, in a directory with real certificate,
/// key and secret files (see [`sandbox`]). A config that validates must
/// also be one the daemon can build its parts from and run a session on
/// ([`exercise_core`]); one that does not must say why in text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse_sandboxed(text, sandbox()) {
        Ok(config) => {
            let credentials = CredentialStore::new(&config.realm, &config.auth, [0; 32]);
            let _ = PeerPolicy::new(&config.relay.allow_peers, &config.relay.deny_peers);
            let _ = TokenVerifier::new(&config.signal);
            exercise_core(&config, Arc::new(credentials));
        }
        Err(errors) => {
            assert!(!errors.problems.is_empty(), "refused without a problem");
            let _ = errors.to_string();
        }
    }
}

/// A coturn `turnserver.conf` through `icegate convert-coturn`'s conversion, with
/// certificates that never load (so no file is read): whatever the input, the output must
/// load as an icegate config, as the converter promises.
pub fn coturn_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let never_loads = |_: &Path, _: &Path| Err("not in the fuzz target".to_owned());
    let env = Environment {
        source: "turnserver.conf",
        config_dir: sandbox(),
        fresh_secret: "fresh-secret-0123456789abcdef",
        check_tls: &never_loads,
    };
    let converted = coturn_convert::convert(&text, &env);
    if let Err(errors) = Config::parse_sandboxed(&converted, sandbox()) {
        panic!("the conversion does not load: {errors}\n--- converted:\n{converted}");
    }
}

#[cfg(test)]
mod tests;
