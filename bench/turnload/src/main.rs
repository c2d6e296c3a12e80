//! turnload: load generator for a TURN server on loopback, written for
//! bench/turn.sh. It plays the clients (one UDP socket and allocation each) and
//! the UDP echo peer, moves datagrams in batches (sendmmsg/recvmmsg) on two
//! threads so that it costs less than the server it measures, reads the
//! server's CPU and memory from /proc, and prints one `key=value` line on
//! stdout (a readable summary on stderr). bench/README.md explains the fields.

mod net;
mod setup;
mod stats;
mod stun;
mod traffic;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use setup::{Alloc, Bind, Engine};
use stats::Window;
use traffic::{Flow, Pace, Shared};

const USAGE: &str = "\
turnload --scenario NAME --server 127.0.0.1:PORT --pid SERVER_PID [options]
scenarios (defaults in brackets can be changed with the options below):
  small-chan   [10 clients, 170 B, ChannelData, window 32 per client]
  big-chan     [10 clients, 1200 B, ChannelData, window 32]
  small-send   [10 clients, 170 B, Send/Data indications, window 32]
  audio-100    [100 clients x 50 pkt/s, 170 B, ChannelData: --rate 5000]
  alloc        [2000 allocations, 16 at a time, each Allocate (401, then with
               credentials) + CreatePermission; hold; Refresh lifetime 0]
options:
  --user U --password P   long-term credentials (bench / bench)
  --clients N             clients, each with its own socket and allocation
  --payload B             payload bytes per datagram (21..1400)
  --method chan|send      ChannelData or Send indications
  --window W              datagrams in flight per client (flood scenarios)
  --rate R                datagrams per second sent by all clients together,
                          paced; replaces the window (0: use the window)
  --warmup S --secs S     traffic before the measured window (1), its length (5)
  --drain S               time for late echoes after sending stops (0.5)
  --peers P               echo peer sockets, one thread each (1)
  --allocs N --conc C     alloc: allocations (2000), set up at once (16)
  --hold S                alloc: seconds held before memory is read (1)
  --label TEXT            words put first on the result line (server=... rep=...)
  --name NAME             scenario name on the result line (default: --scenario)
  --deadline S            the run exits by itself after this (120)";

struct Opts {
    scenario: String,
    server: SocketAddrV4,
    pid: u32,
    user: String,
    password: String,
    clients: usize,
    payload: usize,
    send: bool,
    window: u64,
    rate: f64,
    warmup: f64,
    secs: f64,
    drain: f64,
    peers: usize,
    allocs: usize,
    conc: usize,
    hold: f64,
    label: String,
    name: String,
    deadline: f64,
}

fn parse_opts() -> Opts {
    let fail = |msg: String| -> ! {
        eprintln!("turnload: {msg}\n{USAGE}");
        std::process::exit(2)
    };
    let mut given: BTreeMap<String, String> = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let Some(key) = arg.strip_prefix("--") else {
            fail(format!("unexpected argument {arg:?}"))
        };
        let Some(value) = args.next() else {
            fail(format!("--{key} needs a value"))
        };
        given.insert(key.to_owned(), value);
    }
    let scenario = given.remove("scenario").unwrap_or_default();
    // Scenario defaults: clients, payload, Send indications, rate (0 = window).
    let (clients, payload, send, rate) = match scenario.as_str() {
        "small-chan" => (10, 170, false, 0.0),
        "big-chan" => (10, 1200, false, 0.0),
        "small-send" => (10, 170, true, 0.0),
        "audio-100" => (100, 170, false, 5000.0),
        "alloc" => (0, 170, false, 0.0),
        other => fail(format!("unknown scenario {other:?}")),
    };
    let mut take = |key: &str, default: String| given.remove(key).unwrap_or(default);
    fn num<T: std::str::FromStr>(key: &str, v: String) -> T {
        v.parse().unwrap_or_else(|_| {
            eprintln!("turnload: --{key} {v:?} is not a number");
            std::process::exit(2)
        })
    }
    let method = take("method", if send { "send" } else { "chan" }.into());
    let server: SocketAddrV4 = take("server", String::new())
        .parse()
        .unwrap_or_else(|_| fail("--server 127.x.x.x:PORT is required".into()));
    let o = Opts {
        server,
        pid: num("pid", take("pid", "0".into())),
        user: take("user", "bench".into()),
        password: take("password", "bench".into()),
        clients: num("clients", take("clients", clients.to_string())),
        payload: num("payload", take("payload", payload.to_string())),
        send: method == "send",
        window: num("window", take("window", "32".into())),
        rate: num("rate", take("rate", rate.to_string())),
        warmup: num("warmup", take("warmup", "1".into())),
        secs: num("secs", take("secs", "5".into())),
        drain: num("drain", take("drain", "0.5".into())),
        peers: num("peers", take("peers", "1".into())),
        allocs: num("allocs", take("allocs", "2000".into())),
        conc: num("conc", take("conc", "16".into())),
        hold: num("hold", take("hold", "1".into())),
        label: take("label", String::new()),
        name: take("name", scenario.clone()),
        deadline: num("deadline", take("deadline", "120".into())),
        scenario,
    };
    if let Some(key) = given.keys().next() {
        fail(format!("unknown option --{key}"));
    }
    if method != "chan" && method != "send" {
        fail(format!("--method {method:?}: chan or send"));
    }
    // Loopback only: this tool floods whatever it is pointed at.
    if !o.server.ip().is_loopback() {
        fail(format!(
            "--server {}: only 127.0.0.0/8 is allowed",
            o.server
        ));
    }
    if !(traffic::HEAD..=1400).contains(&o.payload) {
        fail(format!("--payload {}: {}..1400", o.payload, traffic::HEAD));
    }
    if o.scenario != "alloc"
        && (o.clients == 0 || o.clients > 4096 || o.peers == 0 || o.window == 0)
    {
        fail("--clients 1..4096, --peers and --window above 0 please".into());
    }
    if o.secs <= 0.0 || o.deadline <= 0.0 || o.allocs > 60_000 {
        fail("--secs and --deadline above 0, --allocs at most 60000 please".into());
    }
    o
}

/// `key=value` pairs in order, for the result line.
struct Line(String);

impl Line {
    fn put(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Line {
        let _ = write!(self.0, " {key}={value}");
        self
    }
    fn opt(&mut self, key: &str, value: Option<String>) -> &mut Line {
        self.put(key, value.unwrap_or_else(|| "-".into()))
    }
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}

fn f2(x: f64) -> String {
    format!("{x:.2}")
}

fn main() {
    let o = parse_opts();
    let deadline = Instant::now() + Duration::from_secs_f64(o.deadline);
    net::raise_fd_limit((o.allocs.max(o.clients) + 256) as u64);
    let mut line = Line(o.label.trim().to_owned());
    line.put("scenario", &o.name);
    if o.pid != 0 {
        line.put(
            "srv_threads",
            thread_count(o.pid).map_or("-".into(), |t| t.to_string()),
        );
    }
    let ok = if o.scenario == "alloc" {
        alloc(&o, deadline, &mut line)
    } else {
        flow(&o, deadline, &mut line)
    };
    println!("{}", line.0.trim_start());
    std::process::exit(if ok { 0 } else { 1 });
}

fn thread_count(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

fn make_allocs(o: &Opts, n: usize, peers: &[SocketAddrV4]) -> Option<Vec<Alloc>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        match Alloc::new(o.server, &o.user, peers[i % peers.len()]) {
            Ok(a) => v.push(a),
            Err(e) => {
                eprintln!("turnload: client socket {i}: {e}");
                return None;
            }
        }
    }
    Some(v)
}

/// The alloc scenario: setup rate, server CPU per allocation, memory per held allocation.
fn alloc(o: &Opts, deadline: Instant, line: &mut Line) -> bool {
    // The peer only needs an address for CreatePermission; nothing is relayed.
    let Ok(peer) = net::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), None) else {
        return false;
    };
    let peer_addr = net::local_v4(&peer).expect("bound");
    let Some(mut allocs) = make_allocs(o, o.allocs, &[peer_addr]) else {
        return false;
    };
    let rss0 = stats::rss_kb(o.pid);
    let mut engine = Engine::new(&o.password, Bind::Permission, o.conc, deadline);
    let w = Window::start(o.pid);
    let up = engine.set_up(&mut allocs);
    let spent = w.read();
    std::thread::sleep(Duration::from_secs_f64(o.hold));
    let rss1 = stats::rss_kb(o.pid);
    let w2 = Window::start(o.pid);
    let down = engine.release(&mut allocs);
    let spent2 = w2.read();
    let per =
        |us: Option<f64>, n: usize| us.filter(|_| n > 0).map(|u| format!("{:.0}", u / n as f64));
    let kb_per_1000 = match (rss0, rss1) {
        (Some(a), Some(b)) if up.ok > 0 => Some(format!(
            "{:.0}",
            (b as f64 - a as f64) * 1000.0 / up.ok as f64
        )),
        _ => None,
    };
    line.put("allocs", up.ok)
        .put("alloc_errors", up.failed)
        .put("alloc_why", up.why_text())
        .put("conc", o.conc)
        .put("setup_s", format!("{:.3}", up.seconds))
        .put(
            "allocs_per_s",
            format!("{:.0}", up.ok as f64 / up.seconds.max(1e-9)),
        )
        .opt("us_per_alloc", per(spent.srv_us, up.ok))
        .opt("rss_base_kb", rss0.map(|v| v.to_string()))
        .opt("rss_held_kb", rss1.map(|v| v.to_string()))
        .opt("kb_per_1000_allocs", kb_per_1000)
        .put("deallocs", down.ok)
        .put("dealloc_errors", down.failed)
        .put(
            "deallocs_per_s",
            format!("{:.0}", down.ok as f64 / down.seconds.max(1e-9)),
        )
        .opt("us_per_dealloc", per(spent2.srv_us, down.ok))
        .opt("srv_cores", spent.srv_us.map(|u| f2(spent.cores(u))))
        .put("gen_cores", f2(spent.cores(spent.gen_us)))
        .put("bg_cores", f2(spent.bg_cores()));
    eprintln!(
        "alloc: {} allocations in {:.2} s ({:.0}/s), {} failed ({}); server {} µs CPU each; RSS {} -> {} kB; released {} in {:.2} s",
        up.ok,
        up.seconds,
        up.ok as f64 / up.seconds.max(1e-9),
        up.failed,
        up.why_text(),
        per(spent.srv_us, up.ok).unwrap_or_else(|| "-".into()),
        rss0.unwrap_or(0),
        rss1.unwrap_or(0),
        down.ok,
        down.seconds
    );
    up.ok > 0
}

/// Flood and paced scenarios: relayed datagrams per second, loss, delay, server CPU per datagram.
fn flow(o: &Opts, deadline: Instant, line: &mut Line) -> bool {
    let mut peer_socks = Vec::new();
    for _ in 0..o.peers {
        match net::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), None) {
            Ok(s) => peer_socks.push(s),
            Err(e) => {
                eprintln!("turnload: peer socket: {e}");
                return false;
            }
        }
    }
    let peers: Vec<SocketAddrV4> = peer_socks
        .iter()
        .map(|s| net::local_v4(s).expect("bound"))
        .collect();
    let Some(mut allocs) = make_allocs(o, o.clients, &peers) else {
        return false;
    };
    let bind = if o.send {
        Bind::Permission
    } else {
        Bind::Channel
    };
    let mut engine = Engine::new(&o.password, bind, 16, deadline);
    let up = engine.set_up(&mut allocs);
    if up.ok == 0 {
        eprintln!(
            "turnload: no allocation could be set up ({})",
            up.why_text()
        );
        line.put("clients", 0)
            .put("alloc_errors", up.failed)
            .put("alloc_why", up.why_text());
        return false;
    }
    let flows: Vec<Flow> = allocs
        .iter()
        .filter(|a| a.ready())
        .map(|a| {
            let channel = if o.send { None } else { a.channel };
            let prefix = stun::data_prefix(channel, a.peer, o.payload);
            Flow {
                fd: a.sock.as_raw_fd(),
                len: stun::data_len(channel, prefix.len(), o.payload),
                prefix,
                send_indication: o.send,
            }
        })
        .collect();
    let pace = if o.rate > 0.0 {
        Pace::Rate(o.rate)
    } else {
        Pace::Window(o.window)
    };
    let shared = Shared::default();
    shared.phase.store(traffic::WARMUP, Relaxed);
    let epoch = Instant::now();
    let snap = |s: &Shared| {
        (
            s.c_tx.load(Relaxed),
            s.c_rx.load(Relaxed),
            s.p_rx.load(Relaxed),
        )
    };
    let (report, spent, (tx0, rx0, prx0), (tx1, rx1, prx1)) = std::thread::scope(|scope| {
        for p in &peer_socks {
            let (fd, shared) = (p.as_raw_fd(), &shared);
            scope.spawn(move || traffic::run_peer(fd, shared, deadline));
        }
        let clients =
            scope.spawn(|| traffic::run_clients(&flows, o.payload, pace, &shared, epoch, deadline));
        std::thread::sleep(Duration::from_secs_f64(o.warmup));
        let w = Window::start(o.pid);
        let a = snap(&shared);
        shared.phase.store(traffic::MEASURE, Relaxed);
        std::thread::sleep(Duration::from_secs_f64(o.secs));
        shared.phase.store(traffic::DRAIN, Relaxed);
        let spent = w.read();
        let b = snap(&shared);
        std::thread::sleep(Duration::from_secs_f64(o.drain));
        shared.phase.store(traffic::STOP, Relaxed);
        let report = clients.join().expect("client thread");
        (report, spent, a, b)
    });
    let down = engine.release(&mut allocs);
    let relayed = (rx1 - rx0) + (prx1 - prx0);
    let pps = relayed as f64 / spent.wall;
    let (m_tx, m_prx, m_rx) = (
        shared.m_tx.load(Relaxed),
        shared.m_prx.load(Relaxed),
        shared.m_rx.load(Relaxed),
    );
    let pct = |lost: u64, of: u64| {
        if of == 0 {
            "-".to_string()
        } else {
            format!("{:.3}", lost as f64 * 100.0 / of as f64)
        }
    };
    let us_per_pkt = spent
        .srv_us
        .filter(|_| relayed > 0)
        .map(|u| f2(u / relayed as f64));
    let q = |x: f64| report.rtt.quantile(x).map(|v| v.to_string());
    line.put("clients", flows.len())
        .put("payload", o.payload)
        .put("method", if o.send { "send" } else { "chan" })
        .put(
            "pace",
            match pace {
                Pace::Rate(r) => format!("rate{r:.0}"),
                Pace::Window(w) => format!("window{w}"),
            },
        )
        .put("secs", f2(spent.wall))
        .put("pps", format!("{pps:.0}"))
        .put("mbps", f1(pps * o.payload as f64 * 8.0 / 1e6))
        .put(
            "offered_pps",
            format!("{:.0}", (tx1 - tx0) as f64 / spent.wall),
        )
        .put("loss_pct", pct(m_tx.saturating_sub(m_rx), m_tx))
        .put("loss_out_pct", pct(m_tx.saturating_sub(m_prx), m_tx))
        .opt("us_per_pkt", us_per_pkt)
        .opt("rtt_p50_us", q(0.5))
        .opt("rtt_p99_us", q(0.99))
        .opt("rtt_max_us", q(1.0))
        .opt("jitter_ms", report.jitter_ms.map(|j| format!("{j:.3}")))
        .opt("srv_cores", spent.srv_us.map(|u| f2(spent.cores(u))))
        .put("gen_cores", f2(spent.cores(spent.gen_us)))
        .put("bg_cores", f2(spent.bg_cores()))
        .put("sent", m_tx)
        .put("echoed", m_rx)
        .put("send_drops", shared.drops.load(Relaxed))
        .put("behind", shared.behind.load(Relaxed))
        .put("alloc_errors", up.failed)
        .put("dealloc_errors", down.failed)
        .opt("rss_kb", stats::rss_kb(o.pid).map(|v| v.to_string()));
    eprintln!(
        "{}: {} clients, {:.0} relayed pkt/s ({:.1} Mbit/s payload), loss {} %, server {} µs/pkt, RTT p50 {} µs p99 {} µs, generator {:.2} cores, background {:.2} cores",
        o.scenario,
        flows.len(),
        pps,
        pps * o.payload as f64 * 8.0 / 1e6,
        pct(m_tx.saturating_sub(m_rx), m_tx),
        spent
            .srv_us
            .filter(|_| relayed > 0)
            .map_or("-".into(), |u| f2(u / relayed as f64)),
        q(0.5).unwrap_or_else(|| "-".into()),
        q(0.99).unwrap_or_else(|| "-".into()),
        spent.cores(spent.gen_us),
        spent.bg_cores(),
    );
    relayed > 0
}
