//! sigload: load generator for icegate's WebSocket signaling (docs/signaling.md),
//! loopback only. N clients join rooms of 2 to 8 peers, then: idle (server
//! memory per connection), signals at a fixed rate (delivery and delay), signals
//! in a closed loop (highest rate), close. Prints one `key=value` line on stdout
//! and a summary on stderr; bench/README.md explains the fields.
//!
//! With `--proto ywebrtc` or `--proto peerjs` it speaks y-webrtc's or PeerJS's
//! signaling protocol instead, to icegate's endpoints for them (or those
//! libraries' own servers): a room is a y-webrtc topic whose every publish
//! reaches all its subscribers, the sender too, or a PeerJS client sends
//! `OFFER`s to the other ids of its room.
//!
//! Given several ports (nodes of one cluster), the members of each room take the
//! ports in turn, so that every room has peers on more than one node; the server
//! figures then add up the PIDs given.
//!
//! One thread (tokio current_thread): the generator must stay below one core
//! while the server under test uses its own.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{LocalSet, spawn_local};
use tokio::time::{sleep, timeout_at};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

type Ws = WebSocketStream<TcpStream>;
type Shared = Rc<RefCell<State>>;

const USAGE: &str = "\
sigload --port PORT[,PORT...] --pid SERVER_PID[,PID...] [options]
  --port P1,P2      several nodes of a cluster: each room's members take the
                    ports in turn (first member P1, second P2, ...)
  --pid A,B         server CPU, memory and threads are the sum over these PIDs
                    (the nodes, and the Redis server they share)
  --n N             clients (1000)
  --rooms MIN-MAX   room sizes, cycling MIN, MIN+1, ..., MAX (2-8)
  --rate R          fixed-rate phase: signals per second (2000)
  --secs S          fixed-rate phase length (10)
  --window W        closed-loop phase: signals in flight (256)
  --max-secs S      closed-loop phase length (10)
  --payload B       bytes of one signal frame as sent (600)
  --conc C          WebSocket handshakes in flight (64)
  --settle S        idle phase before RSS is read (3)
  --connect-secs S  limit for one client to be welcomed and joined (15)
  --proto P         native, ywebrtc or peerjs (native)
  --path P          WebSocket path (/ws; ywebrtc: /y-webrtc; peerjs: /peerjs/peerjs)
  --token JWT       sent as ?token= (none: the server has auth = \"none\")
  --label TEXT      words put first on the result line
  --deadline S      the run exits by itself after this (300)
  --broadcast 1     send each signal as a `broadcast` to the sender's whole room:
                    every other member's copy counts as a delivery (0)";

#[derive(Clone)]
struct Opts {
    ports: Vec<u16>,
    pids: Vec<u32>,
    n: usize,
    room_min: usize,
    room_max: usize,
    rate: u64,
    secs: u64,
    window: usize,
    max_secs: u64,
    payload: usize,
    conc: usize,
    settle: u64,
    connect_secs: u64,
    path: String,
    token: Option<String>,
    label: String,
    deadline: u64,
    broadcast: bool,
    proto: Proto,
}

/// The signaling protocol spoken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    Native,
    /// y-webrtc's: each signal is a publish that every subscriber gets, the sender too.
    YWebrtc,
    /// PeerJS's: each signal is an OFFER to one id.
    PeerJs,
}

fn parse_opts() -> Opts {
    let fail = |msg: String| -> ! {
        eprintln!("sigload: {msg}\n{USAGE}");
        std::process::exit(2)
    };
    let mut given: BTreeMap<String, String> = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let Some(key) = arg.strip_prefix("--") else { fail(format!("unexpected argument {arg:?}")) };
        let Some(value) = args.next() else { fail(format!("--{key} needs a value")) };
        given.insert(key.to_owned(), value);
    }
    let mut take = |key: &str, default: &str| given.remove(key).unwrap_or_else(|| default.to_owned());
    fn num<T: std::str::FromStr>(key: &str, v: String) -> T {
        v.parse().unwrap_or_else(|_| {
            eprintln!("sigload: --{key} {v:?} is not a number");
            std::process::exit(2)
        })
    }
    fn list<T: std::str::FromStr>(key: &str, v: String) -> Vec<T> {
        v.split(',').map(|item| num(key, item.trim().to_owned())).collect()
    }
    let proto = match take("proto", "native").as_str() {
        "native" => Proto::Native,
        "ywebrtc" => Proto::YWebrtc,
        "peerjs" => Proto::PeerJs,
        other => fail(format!("--proto {other:?}: native, ywebrtc or peerjs")),
    };
    let default_path = match proto {
        Proto::Native => "/ws",
        Proto::YWebrtc => "/y-webrtc",
        Proto::PeerJs => "/peerjs/peerjs",
    };
    let rooms = take("rooms", "2-8");
    let (lo, hi) = rooms.split_once('-').unwrap_or((&rooms, &rooms));
    let o = Opts {
        ports: list("port", take("port", "0")),
        pids: list("pid", take("pid", "0")),
        n: num("n", take("n", "1000")),
        room_min: num("rooms", lo.to_owned()),
        room_max: num("rooms", hi.to_owned()),
        rate: num("rate", take("rate", "2000")),
        secs: num("secs", take("secs", "10")),
        window: num("window", take("window", "256")),
        max_secs: num("max-secs", take("max-secs", "10")),
        payload: num("payload", take("payload", "600")),
        conc: num("conc", take("conc", "64")),
        settle: num("settle", take("settle", "3")),
        connect_secs: num("connect-secs", take("connect-secs", "15")),
        path: take("path", default_path),
        token: given.remove("token"),
        label: given.remove("label").unwrap_or_default(),
        deadline: num("deadline", given.remove("deadline").unwrap_or_else(|| "300".into())),
        // A y-webrtc publish goes to the whole topic.
        broadcast: proto == Proto::YWebrtc
            || num::<u8>("broadcast", given.remove("broadcast").unwrap_or_else(|| "0".into())) != 0,
        proto,
    };
    if let Some(key) = given.keys().next() {
        fail(format!("unknown option --{key}"));
    }
    if o.ports.contains(&0) || o.pids.contains(&0) {
        fail("--port and --pid are required".into());
    }
    if o.ports.len() > usize::from(u8::MAX) {
        fail("at most 255 ports".into());
    }
    if o.room_min < 2 || o.room_max < o.room_min {
        fail(format!("--rooms {rooms}: rooms need at least 2 peers, MIN <= MAX"));
    }
    if o.n < 2 || o.conc == 0 || o.window == 0 || o.rate == 0 {
        fail("--n >= 2, --conc, --window and --rate > 0 please".into());
    }
    o
}

// ---------- /proc ----------

/// Linux reports utime and stime in USER_HZ ticks, 100 a second.
const TICK_US: f64 = 10_000.0;

/// CPU time (user + system) of a process ("self" or a PID), in µs.
fn cpu_us(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces and parentheses; the fields follow the last ')'.
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // after ')': state(0) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(11) stime(12)
    (tick(11) + tick(12)) * TICK_US
}

/// CPU time of the server's processes together, in µs.
fn srv_cpu_us(pids: &[u32]) -> f64 {
    pids.iter().map(|pid| cpu_us(&pid.to_string())).sum()
}

/// A `kB` line of /proc/PID/status (VmRSS, VmHWM), or 0 once the process is gone.
fn status_kb(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// [`status_kb`] summed over the server's processes.
fn status_kb_sum(pids: &[u32], key: &str) -> u64 {
    pids.iter().map(|&pid| status_kb(pid, key)).sum()
}

/// Busy time of the whole machine (every CPU), in µs.
fn machine_busy_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
    let v: Vec<f64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0.0)).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum::<f64>() * TICK_US
}

/// CPU counters at the start of a measured interval.
struct Clock {
    at: Instant,
    srv: f64,
    gen_: f64,
    busy: f64,
}

struct Spent {
    wall: f64,
    srv_us: f64,
    gen_us: f64,
    bg_us: f64,
}

impl Clock {
    fn start(pids: &[u32]) -> Clock {
        Clock { at: Instant::now(), srv: srv_cpu_us(pids), gen_: cpu_us("self"), busy: machine_busy_us() }
    }
    fn read(&self, pids: &[u32]) -> Spent {
        let (srv_us, gen_us) = (srv_cpu_us(pids) - self.srv, cpu_us("self") - self.gen_);
        let bg_us = machine_busy_us() - self.busy - srv_us - gen_us;
        Spent { wall: self.at.elapsed().as_secs_f64(), srv_us, gen_us, bg_us }
    }
}

impl Spent {
    fn cores(&self, us: f64) -> f64 {
        us / 1e6 / self.wall
    }
}

// ---------- state ----------

struct Client {
    room: u32,
    /// Index of the port (node) it connects to.
    node: u8,
    tx: Option<mpsc::UnboundedSender<Message>>,
    ready: bool,
}

/// Clients `first .. first + len` share room `bench-K`.
struct Room {
    first: u32,
    len: u32,
}

/// One phase of signals; a signal is identified by its sequence number.
struct Phase {
    first_seq: u64,
    closed_loop: bool,
    end_us: u64,
    sent: u64,
    /// Copies the server should deliver: one per signal, one per other room member per broadcast.
    expected: u64,
    delivered: u64,
    delivered_by_end: u64,
    /// Per signal of this phase (index seq - first_seq): copies still on their way.
    in_flight: Vec<u8>,
    delay_us: Vec<u32>,
}

#[derive(Default)]
struct Counts {
    drops: u64,
    read_errors: u64,
    misrouted: u64,
    duplicates: u64,
    late: u64,
    /// `error` messages from the server, by code.
    server_errors: BTreeMap<String, u64>,
    /// Clients that could not join, by reason.
    join_failures: BTreeMap<String, u64>,
    /// Per joined client, µs from its TCP connect to `welcome`, and from `join` sent to `joined`.
    welcome_us: Vec<u32>,
    joined_us: Vec<u32>,
}

struct State {
    o: Opts,
    t0: Instant,
    clients: Vec<Client>,
    rooms: Vec<Room>,
    /// (sender, receiver) pairs taken round robin.
    pairs: Vec<(u32, u32)>,
    next_pair: usize,
    next_seq: u64,
    phase: Option<Phase>,
    sdp: String,
    closing: bool,
    readers: usize,
    counts: Counts,
}

impl State {
    fn now_us(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn signal_text(&self, from: u32, to: u32, seq: u64, ts: u64) -> String {
        let room = self.clients[from as usize].room;
        match self.o.proto {
            Proto::YWebrtc => {
                return format!(
                    "{{\"type\":\"publish\",\"topic\":\"bench-{room}\",\"data\":{{\"bseq\":{seq},\"bts\":{ts},\"bto\":{room},\"to\":\"c{to}\",\"signal\":{{\"type\":\"offer\",\"sdp\":\"{}\"}}}}}}",
                    self.sdp
                );
            }
            Proto::PeerJs => {
                return format!(
                    "{{\"type\":\"OFFER\",\"dst\":\"c{to}\",\"payload\":{{\"bseq\":{seq},\"bts\":{ts},\"bto\":{to},\"sdp\":{{\"type\":\"offer\",\"sdp\":\"{}\"}}}}}}",
                    self.sdp
                );
            }
            Proto::Native => {}
        }
        if self.o.broadcast {
            // bto is the room: every member but the sender gets it.
            return format!(
                "{{\"type\":\"broadcast\",\"room\":\"bench-{room}\",\"data\":{{\"bseq\":{seq},\"bts\":{ts},\"bto\":{room},\"sdp\":{{\"type\":\"offer\",\"sdp\":\"{}\"}}}}}}",
                self.sdp
            );
        }
        // bseq, bts and bto lead `data` as sent; the receiver finds them wherever the server puts them.
        format!(
            "{{\"type\":\"signal\",\"room\":\"bench-{room}\",\"to\":\"c{to}\",\"data\":{{\"bseq\":{seq},\"bts\":{ts},\"bto\":{to},\"sdp\":{{\"type\":\"offer\",\"sdp\":\"{}\"}}}}}}",
            self.sdp
        )
    }

    /// Sends the next signal of the current phase.
    fn send_next(&mut self) {
        let (from, to) = self.pairs[self.next_pair % self.pairs.len()];
        self.next_pair += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        let text = self.signal_text(from, to, seq, self.now_us());
        let copies = if self.o.broadcast {
            let room = &self.rooms[self.clients[from as usize].room as usize];
            let ready = (room.first..room.first + room.len).filter(|&c| self.clients[c as usize].ready).count();
            // y-webrtc's publish comes back to its sender too.
            let others = if self.o.proto == Proto::YWebrtc { ready } else { ready.saturating_sub(1) };
            u8::try_from(others).unwrap_or(u8::MAX)
        } else {
            1
        };
        let phase = self.phase.as_mut().expect("a phase is running");
        phase.sent += 1;
        phase.expected += u64::from(copies);
        phase.in_flight.push(copies);
        if let Some(tx) = &self.clients[from as usize].tx {
            let _ = tx.send(Message::text(text));
        }
    }
}

/// An SDP-like text, JSON-escaped, that makes a signal frame `payload` bytes long.
fn make_sdp(st: &State) -> String {
    const LINES: &[&str] = &[
        "v=0",
        "o=- 7301529384610027715 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:q3Zr",
        "a=ice-pwd:Hk1vXbN7pWm2cE5tYs8uLd0a",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9:0A:1B:2C:3D:4E:5F:60:71:82:93:A4:B5:C6:D7:E8:F9",
        "a=setup:actpass",
        "a=mid:0",
        "a=sctp-port:5000",
        "a=max-message-size:262144",
    ];
    let bare = st.signal_text(0, 1, 1_000_000, 10_000_000).len();
    let want = st.o.payload.saturating_sub(bare);
    let mut sdp = String::new();
    for line in LINES.iter().cycle() {
        if sdp.len() >= want {
            break;
        }
        sdp.push_str(line);
        sdp.push_str("\\r\\n");
    }
    // Cut back to the size, never inside an escape.
    while sdp.len() > want || sdp.ends_with('\\') {
        sdp.pop();
    }
    sdp
}

// ---------- receiving ----------

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The unsigned integer after `key` (e.g. `"bseq":`) anywhere in the frame.
fn number_after(frame: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(frame, key)? + key.len();
    let digits = &frame[at..];
    let start = digits.iter().position(|b| *b != b' ')?;
    let len = digits[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[start..start + len]).ok()?.parse().ok()
}

fn on_text(s: &Shared, me: u32, frame: &[u8]) {
    let Some(seq) = number_after(frame, b"\"bseq\":") else {
        on_control(s, frame);
        return;
    };
    let mut st = s.borrow_mut();
    let now = st.now_us();
    let (Some(ts), Some(to)) = (number_after(frame, b"\"bts\":"), number_after(frame, b"\"bto\":")) else {
        st.counts.misrouted += 1;
        return;
    };
    let addressee = if st.o.broadcast { u64::from(st.clients[me as usize].room) } else { u64::from(me) };
    if to != addressee {
        st.counts.misrouted += 1;
        return;
    }
    let State { phase, counts, .. } = &mut *st;
    let Some(ph) = phase.as_mut().filter(|ph| seq >= ph.first_seq) else {
        counts.late += 1; // a signal of an earlier phase
        return;
    };
    match usize::try_from(seq - ph.first_seq).ok().and_then(|i| ph.in_flight.get_mut(i)) {
        Some(waiting) if *waiting > 0 => *waiting -= 1,
        _ => {
            counts.duplicates += 1;
            return;
        }
    }
    ph.delivered += 1;
    if now <= ph.end_us {
        ph.delivered_by_end += 1;
    }
    ph.delay_us.push(u32::try_from(now.saturating_sub(ts)).unwrap_or(u32::MAX));
    let whole = ph.in_flight[usize::try_from(seq - ph.first_seq).unwrap_or(0)] == 0;
    // A broadcast is done, and the next one goes, when its last copy arrives.
    if whole && ph.closed_loop && now < ph.end_us {
        st.send_next();
    }
}

/// Anything but a benchmark signal: only `error` matters here.
fn on_control(s: &Shared, frame: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(frame) else {
        *s.borrow_mut().counts.server_errors.entry("unparsable-frame".into()).or_default() += 1;
        return;
    };
    if v["type"] == "error" || v["type"] == "ERROR" || v["type"] == "EXPIRE" {
        let code = v["code"].as_str().unwrap_or("no-code").to_owned();
        *s.borrow_mut().counts.server_errors.entry(code).or_default() += 1;
    }
}

async fn read_loop(s: Shared, me: u32, mut rd: SplitStream<Ws>) {
    let mut failed = false;
    while let Some(m) = rd.next().await {
        match m {
            Ok(Message::Text(t)) => on_text(&s, me, t.as_bytes()),
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    let mut st = s.borrow_mut();
    if !st.closing {
        st.counts.drops += 1;
        if failed {
            st.counts.read_errors += 1;
        }
    }
    st.clients[me as usize].ready = false;
    st.readers -= 1;
}

/// Writes whatever is queued, one flush per batch; a close handshake once the sender is dropped.
async fn write_loop(mut wr: SplitSink<Ws, Message>, mut rx: mpsc::UnboundedReceiver<Message>) {
    while let Some(m) = rx.recv().await {
        if wr.feed(m).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if wr.feed(m).await.is_err() {
                return;
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.close().await;
}

// ---------- connecting ----------

fn failure_kind(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => format!("http-{}", resp.status().as_u16()),
        WsError::Io(io) => format!("io-{:?}", io.kind()).to_lowercase(),
        _ => "handshake".into(),
    }
}

/// Reads until a message of `want` type; an `error` or the end fails.
async fn await_type(ws: &mut Ws, want: &str) -> Result<(), String> {
    while let Some(m) = ws.next().await {
        let m = m.map_err(|e| failure_kind(&e))?;
        let Message::Text(t) = m else { continue };
        let v: serde_json::Value = serde_json::from_str(&t).map_err(|_| "bad-json-from-server".to_owned())?;
        match v["type"].as_str() {
            Some(t) if t == want => return Ok(()),
            Some("error") => return Err(format!("error-{}", v["code"].as_str().unwrap_or("?"))),
            Some(refused @ ("ERROR" | "ID-TAKEN")) => return Err(refused.to_lowercase()),
            _ => {}
        }
    }
    Err(format!("closed-before-{want}"))
}

/// Connects client `me`, waits for `welcome`, joins its room and waits for `joined`;
/// also returns how long each of the two steps took.
async fn join_one(o: &Opts, me: u32, room: u32, port: u16) -> Result<(Ws, Duration, Duration), String> {
    let started = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect-{:?}", e.kind()).to_lowercase())?;
    tcp.set_nodelay(true).map_err(|_| "nodelay".to_owned())?;
    let token = o.token.clone();
    let query = match o.proto {
        Proto::PeerJs => format!("?key=peerjs&id=c{me}&token={}", token.as_deref().unwrap_or("t")),
        _ => token.map(|t| format!("?token={t}")).unwrap_or_default(),
    };
    let url = format!("ws://127.0.0.1:{port}{}{query}", o.path);
    // tungstenite zeroes its whole read buffer (128 KiB by default) before each read: a
    // small one keeps the generator's CPU per frame low. Frames here are below 1 KiB.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (mut ws, _) = client_async_with_config(url, tcp, Some(config)).await.map_err(|e| failure_kind(&e))?;
    match o.proto {
        Proto::Native => {}
        // No welcome: subscribed once the ping behind the subscribe is answered.
        Proto::YWebrtc => {
            let welcomed = Instant::now();
            let subscribe = serde_json::json!({"type": "subscribe", "topics": [format!("bench-{room}")]});
            ws.send(Message::text(subscribe.to_string())).await.map_err(|e| failure_kind(&e))?;
            ws.send(Message::text(r#"{"type":"ping"}"#)).await.map_err(|e| failure_kind(&e))?;
            await_type(&mut ws, "pong").await?;
            return Ok((ws, welcomed - started, welcomed.elapsed()));
        }
        // OPEN says the id is this client's.
        Proto::PeerJs => {
            await_type(&mut ws, "OPEN").await?;
            let opened = Instant::now();
            return Ok((ws, opened - started, Duration::ZERO));
        }
    }
    await_type(&mut ws, "welcome").await?;
    let welcomed = Instant::now();
    let join = serde_json::json!({"type": "join", "id": me, "room": format!("bench-{room}"), "peer": format!("c{me}")});
    ws.send(Message::text(join.to_string())).await.map_err(|e| failure_kind(&e))?;
    await_type(&mut ws, "joined").await?;
    Ok((ws, welcomed - started, welcomed.elapsed()))
}

async fn connect_all(s: &Shared) -> usize {
    let o = s.borrow().o.clone();
    let gate = Rc::new(Semaphore::new(o.conc));
    // Bounded in all: every client gets connect_secs, the phase 2 × that plus N / 100 s.
    let phase_end = tokio::time::Instant::now() + Duration::from_secs(2 * o.connect_secs + o.n as u64 / 100);
    let mut handles = Vec::with_capacity(o.n);
    for me in 0..o.n as u32 {
        let (s, o, gate) = (s.clone(), o.clone(), gate.clone());
        handles.push(spawn_local(async move {
            let Ok(_permit) = gate.acquire().await else { return false };
            let (room, node) = {
                let c = &s.borrow().clients[me as usize];
                (c.room, c.node)
            };
            let port = o.ports[usize::from(node)];
            let limit = (tokio::time::Instant::now() + Duration::from_secs(o.connect_secs)).min(phase_end);
            let (ws, to_welcome, to_joined) = match timeout_at(limit, join_one(&o, me, room, port)).await {
                Ok(Ok(joined)) => joined,
                Ok(Err(why)) => return fail(&s, why),
                Err(_) => return fail(&s, "timeout".into()),
            };
            let (wr, rd) = ws.split();
            let (tx, rx) = mpsc::unbounded_channel();
            {
                let mut st = s.borrow_mut();
                let c = &mut st.clients[me as usize];
                c.tx = Some(tx);
                c.ready = true;
                st.readers += 1;
                st.counts.welcome_us.push(micros(to_welcome));
                st.counts.joined_us.push(micros(to_joined));
            }
            spawn_local(write_loop(wr, rx));
            spawn_local(read_loop(s, me, rd));
            true
        }));
    }
    let mut ok = 0;
    for h in handles {
        if h.await.unwrap_or(false) {
            ok += 1;
        }
    }
    ok
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn fail(s: &Shared, why: String) -> bool {
    *s.borrow_mut().counts.join_failures.entry(why).or_default() += 1;
    false
}

// ---------- phases ----------

/// The result line, shared with the deadline thread so that an aborted run still reports.
type Out = Arc<Mutex<Vec<(String, String)>>>;

fn put(out: &Out, key: &str, value: impl Display) {
    out.lock().unwrap().push((key.to_owned(), value.to_string()));
}

fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn begin_phase(st: &mut State, closed_loop: bool, secs: u64) {
    let end_us = st.now_us() + secs * 1_000_000;
    st.phase = Some(Phase {
        first_seq: st.next_seq,
        closed_loop,
        end_us,
        sent: 0,
        expected: 0,
        delivered: 0,
        delivered_by_end: 0,
        in_flight: Vec::new(),
        delay_us: Vec::new(),
    });
}

/// Waits (at most 3 s) until every signal of the phase has arrived.
async fn drain(s: &Shared) {
    let stop = Instant::now() + Duration::from_secs(3);
    while Instant::now() < stop {
        let done = s.borrow().phase.as_ref().is_none_or(|p| p.delivered >= p.expected);
        if done {
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
}

fn put_delays(out: &Out, prefix: &str, delays: &mut [u32]) {
    delays.sort_unstable();
    let at = |q: f64| {
        if delays.is_empty() {
            f64::NAN
        } else {
            let i = ((q * delays.len() as f64) as usize).min(delays.len() - 1);
            f64::from(delays[i]) / 1000.0
        }
    };
    put(out, &format!("{prefix}p50_ms"), format!("{:.3}", at(0.50)));
    put(out, &format!("{prefix}p99_ms"), format!("{:.3}", at(0.99)));
    put(out, &format!("{prefix}max_ms"), format!("{:.3}", delays.last().map_or(f64::NAN, |&d| f64::from(d) / 1000.0)));
}

async fn run(s: Shared, out: Out) {
    let o = s.borrow().o.clone();
    let spid = &o.pids[..];
    let rss0 = status_kb_sum(spid, "VmRSS");
    let avg_room = o.n as f64 / s.borrow().rooms.len() as f64;
    put(&out, "n", o.n);
    put(&out, "rooms", s.borrow().rooms.len());
    put(&out, "room_avg", format!("{avg_room:.2}"));
    put(&out, "payload_b", o.payload);
    put(&out, "mode", if o.broadcast { "broadcast" } else { "signal" });
    put(&out, "nodes", o.ports.len());
    put(&out, "rss0_kb", rss0);
    put(&out, "srv_threads", status_kb_sum(spid, "Threads"));

    // connect: handshake, welcome, join, joined
    let clock = Clock::start(spid);
    let ok = connect_all(&s).await;
    let spent = clock.read(spid);
    put(&out, "conn_ok", ok);
    put(&out, "conn_fail", o.n - ok);
    put(&out, "conn_s", format!("{:.2}", spent.wall));
    put(&out, "conn_per_s", fmt(ok as f64 / spent.wall));
    put(&out, "conn_cpu_us", fmt(spent.srv_us / ok.max(1) as f64));
    put(&out, "conn_gen_cores", format!("{:.2}", spent.cores(spent.gen_us)));
    {
        let st = s.borrow();
        let why: Vec<String> = st.counts.join_failures.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        put(&out, "conn_fail_why", if why.is_empty() { "-".into() } else { why.join(",") });
    }
    {
        let mut st = s.borrow_mut();
        let c = &mut st.counts;
        put_delays(&out, "conn_welcome_", &mut c.welcome_us);
        put_delays(&out, "conn_joined_", &mut c.joined_us);
    }
    eprintln!("sigload: {ok}/{} clients joined in {:.1} s", o.n, spent.wall);

    // idle: memory per connection, CPU of an idle server (its keep-alive timers)
    let clock = Clock::start(spid);
    sleep(Duration::from_secs(o.settle)).await;
    let idle = clock.read(spid);
    let idle_cores = idle.cores(idle.srv_us);
    let rss_n = status_kb_sum(spid, "VmRSS");
    put(&out, "rssN_kb", rss_n);
    put(&out, "rss_kb_per_conn", format!("{:.2}", (rss_n as f64 - rss0 as f64) / ok.max(1) as f64));
    put(&out, "idle_cpu_pct", format!("{:.1}", idle_cores * 100.0));

    // who signals whom: every joined client to the next joined peer of its room
    {
        let mut st = s.borrow_mut();
        let mut pairs = Vec::new();
        for room in &st.rooms {
            let members: Vec<u32> = (room.first..room.first + room.len).filter(|&c| st.clients[c as usize].ready).collect();
            if members.len() >= 2 {
                pairs.extend(members.iter().zip(members.iter().cycle().skip(1)).map(|(&a, &b)| (a, b)));
            }
        }
        if pairs.is_empty() {
            put(&out, "aborted", "no_room_with_two_peers");
            return;
        }
        // Rooms of an odd size have one pair on the same node (the last member to the first).
        let node = |c: u32| st.clients[c as usize].node;
        let cross = pairs.iter().filter(|&&(a, b)| node(a) != node(b)).count();
        put(&out, "cross_node_pct", format!("{:.1}", 100.0 * cross as f64 / pairs.len() as f64));
        // Interleave the rooms so that consecutive signals go to different rooms.
        let stride = pairs.len() / 7 + 1;
        let mut spread = Vec::with_capacity(pairs.len());
        for start in 0..stride {
            spread.extend(pairs.iter().skip(start).step_by(stride));
        }
        st.pairs = spread;
    }

    // fixed rate, open loop: what is due every millisecond
    let clock = Clock::start(spid);
    begin_phase(&mut s.borrow_mut(), false, o.secs);
    let total = o.rate * o.secs;
    let started = Instant::now();
    let give_up = started + Duration::from_secs(o.secs + 5);
    loop {
        let due = total.min((o.rate as f64 * started.elapsed().as_secs_f64()) as u64);
        {
            let mut st = s.borrow_mut();
            while st.phase.as_ref().is_some_and(|p| p.sent < due) {
                st.send_next();
            }
        }
        if due >= total || Instant::now() > give_up {
            break;
        }
        sleep(Duration::from_millis(1)).await;
    }
    let send_secs = started.elapsed().as_secs_f64();
    drain(&s).await;
    let spent = clock.read(spid);
    {
        let mut st = s.borrow_mut();
        let ph = st.phase.as_mut().unwrap();
        let delivered = ph.delivered as f64;
        put(&out, "f_rate", o.rate);
        put(&out, "f_secs", o.secs);
        put(&out, "f_sent", ph.sent);
        put(&out, "f_send_per_s", fmt(ph.sent as f64 / send_secs));
        put(&out, "f_delivered", ph.delivered);
        put(&out, "f_deliv_pct", format!("{:.2}", 100.0 * delivered / ph.expected.max(1) as f64));
        put_delays(&out, "f_", &mut ph.delay_us);
        put(&out, "f_cpu_us_per_msg", fmt(spent.srv_us / delivered));
        put(&out, "f_net_us_per_msg", fmt((spent.srv_us - idle_cores * 1e6 * spent.wall) / delivered));
        put(&out, "f_srv_cores", format!("{:.2}", spent.cores(spent.srv_us)));
        put(&out, "f_gen_cores", format!("{:.2}", spent.cores(spent.gen_us)));
        put(&out, "f_bg_cores", format!("{:.2}", spent.cores(spent.bg_us)));
        eprintln!("sigload: fixed rate: {}/{} delivered", ph.delivered, ph.expected);
    }

    // closed loop: `window` signals in flight; each arrival sends the next
    let clock = Clock::start(spid);
    {
        let mut st = s.borrow_mut();
        begin_phase(&mut st, true, o.max_secs);
        for _ in 0..o.window {
            st.send_next();
        }
    }
    sleep(Duration::from_secs(o.max_secs)).await;
    let spent = clock.read(spid);
    let (sent_by_end, delivered_by_end) = {
        let st = s.borrow();
        let ph = st.phase.as_ref().unwrap();
        (ph.sent, ph.delivered_by_end)
    };
    drain(&s).await;
    {
        let mut st = s.borrow_mut();
        let mut ph = st.phase.take().unwrap();
        let rate = delivered_by_end as f64 / spent.wall;
        put(&out, "m_window", o.window);
        put(&out, "m_secs", o.max_secs);
        put(&out, "m_sent_per_s", fmt(sent_by_end as f64 / spent.wall));
        put(&out, "m_msgs_per_s", fmt(rate));
        put(&out, "m_lost", ph.expected - ph.delivered);
        put(&out, "m_srv_cores", format!("{:.2}", spent.cores(spent.srv_us)));
        put(&out, "m_gen_cores", format!("{:.2}", spent.cores(spent.gen_us)));
        put(&out, "m_bg_cores", format!("{:.2}", spent.cores(spent.bg_us)));
        put(&out, "m_cpu_us_per_msg", fmt(spent.srv_us / delivered_by_end as f64));
        put_delays(&out, "m_", &mut ph.delay_us);
        eprintln!("sigload: closed loop: {} delivered/s", fmt(rate));
    }
    put(&out, "rss_end_kb", status_kb_sum(spid, "VmRSS"));
    put(&out, "rss_peak_kb", status_kb_sum(spid, "VmHWM"));
}

/// Closes every client (close handshake) and reads the server's RSS 2 s later.
async fn close_all(s: &Shared, out: &Out) {
    let pids = {
        let mut st = s.borrow_mut();
        st.closing = true;
        for c in &mut st.clients {
            c.tx = None; // the writer sends Close and ends
        }
        st.o.pids.clone()
    };
    let stop = Instant::now() + Duration::from_secs(5);
    while s.borrow().readers > 0 && Instant::now() < stop {
        sleep(Duration::from_millis(20)).await;
    }
    put(out, "close_left", s.borrow().readers);
    sleep(Duration::from_secs(2)).await;
    put(out, "rss_closed_kb", status_kb_sum(&pids, "VmRSS"));
}

fn rooms_for(o: &Opts) -> Vec<Room> {
    let mut rooms = Vec::new();
    let (mut first, mut k) = (0usize, 0usize);
    let span = o.room_max - o.room_min + 1;
    while first < o.n {
        let len = (o.room_min + k % span).min(o.n - first);
        if len < o.room_min && !rooms.is_empty() {
            // too few left for a room of their own: the last room takes them
            let last: &mut Room = rooms.last_mut().unwrap();
            last.len += len as u32;
        } else {
            rooms.push(Room { first: first as u32, len: len as u32 });
        }
        first += len;
        k += 1;
    }
    rooms
}

fn line(label: &str, out: &Out) -> String {
    let mut words: Vec<String> = label.split_whitespace().map(str::to_owned).collect();
    words.extend(out.lock().unwrap().iter().map(|(k, v)| format!("{k}={v}")));
    words.join(" ")
}

fn main() {
    let o = parse_opts();
    let out: Out = Arc::new(Mutex::new(Vec::new()));
    {
        let (out, label, secs) = (out.clone(), o.label.clone(), o.deadline);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            put(&out, "aborted", "deadline");
            println!("{}", line(&label, &out));
            std::process::exit(3);
        });
    }
    let rooms = rooms_for(&o);
    let mut clients = Vec::with_capacity(o.n);
    for (k, r) in rooms.iter().enumerate() {
        // Members take the ports in turn: with two, neighbours in a room are on different nodes.
        let nodes = o.ports.len() as u32;
        clients.extend((0..r.len).map(|i| Client { room: k as u32, node: (i % nodes) as u8, tx: None, ready: false }));
    }
    let label = o.label.clone();
    let mut st = State {
        o,
        t0: Instant::now(),
        clients,
        rooms,
        pairs: Vec::new(),
        next_pair: 0,
        next_seq: 0,
        phase: None,
        sdp: String::new(),
        closing: false,
        readers: 0,
        counts: Counts::default(),
    };
    st.sdp = make_sdp(&st);
    let s: Shared = Rc::new(RefCell::new(st));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    LocalSet::new().block_on(&rt, async {
        run(s.clone(), out.clone()).await;
        close_all(&s, &out).await;
    });
    {
        let st = s.borrow();
        let c = &st.counts;
        let errs: Vec<String> = c.server_errors.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        put(&out, "drops", c.drops);
        put(&out, "read_errors", c.read_errors);
        put(&out, "misrouted", c.misrouted);
        put(&out, "duplicates", c.duplicates);
        put(&out, "late", c.late);
        put(&out, "srv_errors", if errs.is_empty() { "-".into() } else { errs.join(",") });
    }
    println!("{}", line(&label, &out));
    summary(&out);
    let aborted = out.lock().unwrap().iter().any(|(k, _)| k == "aborted");
    std::process::exit(i32::from(aborted));
}

/// The result line in words, on stderr.
fn summary(out: &Out) {
    let kv: BTreeMap<String, String> = out.lock().unwrap().iter().cloned().collect();
    let g = |k: &str| kv.get(k).map_or("-", String::as_str);
    eprintln!(
        "\n  clients      {} joined of {} ({} rooms, {} peers on average), {} joins/s, server {} µs/join; failures: {}",
        g("conn_ok"),
        g("n"),
        g("rooms"),
        g("room_avg"),
        g("conn_per_s"),
        g("conn_cpu_us"),
        g("conn_fail_why")
    );
    eprintln!(
        "               connect to welcome p50 {} ms, p99 {} ms; join to joined p50 {} ms, p99 {} ms",
        g("conn_welcome_p50_ms"),
        g("conn_welcome_p99_ms"),
        g("conn_joined_p50_ms"),
        g("conn_joined_p99_ms")
    );
    eprintln!(
        "  memory       RSS {} KB before clients, {} KB with them idle: {} KB per connection; {} KB after close; idle CPU {} %",
        g("rss0_kb"),
        g("rssN_kb"),
        g("rss_kb_per_conn"),
        g("rss_closed_kb"),
        g("idle_cpu_pct")
    );
    eprintln!(
        "  fixed rate   {} signals/s × {} s: {} % delivered, delay p50 {} ms, p99 {} ms, max {} ms; server {} µs per delivered signal ({} net of idle)",
        g("f_send_per_s"),
        g("f_secs"),
        g("f_deliv_pct"),
        g("f_p50_ms"),
        g("f_p99_ms"),
        g("f_max_ms"),
        g("f_cpu_us_per_msg"),
        g("f_net_us_per_msg")
    );
    eprintln!(
        "  closed loop  window {}: {} delivered/s, delay p50 {} ms, p99 {} ms; server {} cores, {} µs per signal; generator {} cores; lost {}",
        g("m_window"),
        g("m_msgs_per_s"),
        g("m_p50_ms"),
        g("m_p99_ms"),
        g("m_srv_cores"),
        g("m_cpu_us_per_msg"),
        g("m_gen_cores"),
        g("m_lost")
    );
    eprintln!(
        "  trouble      drops {}, read errors {}, misrouted {}, duplicates {}, server errors {}",
        g("drops"),
        g("read_errors"),
        g("misrouted"),
        g("duplicates"),
        g("srv_errors")
    );
}
