//! coturn's client tools (Debian package `coturn`) as the tests drive them:
//! `turnutils_uclient` relays RTP-like streams, `turnutils_peer` echoes
//! them, and what uclient prints and the daemon logs is read back. coturn's
//! server is never started. Every tool runs under a deadline and is killed
//! on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{PASSWORD, SECRET, TestDaemon, USER, wait_for_line_in, wait_within};

/// Messages each uclient session sends.
pub const MESSAGES: u64 = 50;
/// uclient sessions (`-m`). uclient rounds it up to whole RTP/RTCP pairs
/// and client-to-client quads, so a multiple of 4 means what it says.
pub const CLIENTS: u64 = 4;
/// Payload bytes per message (`-l`).
pub const LENGTH: u64 = 120;
/// uclient waits 1-6 s before sending, then 1 s of packets; a lost packet
/// makes it wait 10 s more. Beyond this it is stuck.
pub const UCLIENT_DEADLINE: Duration = Duration::from_secs(45);
/// The user name uclient's REST credentials carry after `timestamp:`.
pub const REST_USER: &str = "bob";

/// The full path of a coturn client tool, or a panic saying how to get it:
/// these tests must fail, not pass silently, where coturn is missing.
pub fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} not found in PATH: these tests need coturn's client tools; \
                 run `apt-get install coturn` (its server is never started)"
            )
        })
}

/// A child process with its stdout and stderr collected line by line,
/// killed when dropped.
pub struct Tool {
    name: String,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

/// What a tool printed (stdout and stderr, line by line as they came) and
/// how it ended.
pub struct Exited {
    pub status: ExitStatus,
    pub output: String,
}

impl Tool {
    pub fn spawn(name: &str, args: &[String]) -> Self {
        let mut child = Command::new(tool(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![
            collect_lines(stdout, output.clone()),
            collect_lines(stderr, output.clone()),
        ];
        Self {
            name: format!("{name} {}", args.join(" ")),
            child,
            output,
            readers,
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the tool exits, killing it and failing the test if it
    /// takes longer than `limit`.
    pub fn finish(mut self, limit: Duration) -> Exited {
        let Some(status) = wait_within(&mut self.child, limit) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "`{}` still ran after {limit:?}; killed it. Output:\n{}",
                self.name,
                self.output()
            );
        };
        // The pipes close with the process; give the readers a moment to
        // drain them, but never wait on them unboundedly.
        let drained = Instant::now() + Duration::from_secs(2);
        while !self.readers.iter().all(JoinHandle::is_finished) && Instant::now() < drained {
            std::thread::sleep(Duration::from_millis(5));
        }
        Exited {
            status,
            output: self.output(),
        }
    }

    /// The first output line containing `needle`, waiting at most `limit`.
    pub fn wait_for_line(&self, needle: &str, limit: Duration) -> Option<String> {
        wait_for_line_in(&self.output, needle, limit)
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(
    stream: impl Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    })
}

/// `turnutils_peer`: echoes every UDP datagram on `port` and `port + 1`
/// (uclient sends RTP to the first and RTCP to the second).
pub struct EchoPeer {
    pub port: u16,
    _process: Tool,
}

impl EchoPeer {
    pub fn start() -> Self {
        for _ in 0..5 {
            let port = free_port_pair();
            let process = Tool::spawn(
                "turnutils_peer",
                &[
                    "-p".into(),
                    port.to_string(),
                    "-L".into(),
                    "127.0.0.1".into(),
                ],
            );
            // The peer does not say when it is listening, and retries forever
            // if a port is taken: it is ready once both ports echo.
            if echoes(port) && echoes(port + 1) {
                return Self {
                    port,
                    _process: process,
                };
            }
        }
        panic!("turnutils_peer did not echo on any of 5 free port pairs");
    }
}

/// A port the kernel just had free on 127.0.0.1, with the next one free too.
fn free_port_pair() -> u16 {
    loop {
        let first = UdpSocket::bind("127.0.0.1:0").expect("bind probe socket");
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Whether 127.0.0.1:`port` sends a datagram straight back, within 2 s.
fn echoes(port: u16) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind probe socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let _ = socket.send_to(b"icegate-echo-probe", ("127.0.0.1", port));
        if let Ok((len, from)) = socket.recv_from(&mut buf)
            && from.port() == port
            && &buf[..len] == b"icegate-echo-probe"
        {
            return true;
        }
    }
    false
}

/// Whom a uclient run's sessions send to.
#[derive(Clone, Copy, Debug)]
pub enum Peers {
    /// An echo peer (`turnutils_peer`) started for the run.
    Echo,
    /// Each other (`-y`, client to client): each session's peer is another
    /// session's relayed address, so packets cross two allocations.
    EachOther,
}

impl Peers {
    /// The echo peer the run needs, started, if it needs one.
    pub fn start(self) -> Option<EchoPeer> {
        match self {
            Self::Echo => Some(EchoPeer::start()),
            Self::EachOther => None,
        }
    }

    /// The uclient flag this takes, if any.
    pub fn flag(self) -> Option<&'static str> {
        match self {
            Self::Echo => None,
            Self::EachOther => Some("-y"),
        }
    }
}

/// Whom uclient authenticates as.
#[derive(Clone, Copy, Debug)]
pub enum User {
    /// The static long-term user from the test config (`-u alice -w ...`).
    Static,
    /// TURN REST credentials (`-u bob -W SECRET`): uclient derives the user
    /// name `timestamp:bob` and its password from the shared secret.
    Rest,
}

impl User {
    /// uclient's credential arguments.
    pub fn args(self) -> Vec<String> {
        match self {
            Self::Static => ["-u", USER, "-w", PASSWORD],
            Self::Rest => ["-u", REST_USER, "-W", SECRET],
        }
        .map(String::from)
        .into()
    }

    /// Whether `name`, a user name the daemon logs, is this user's. REST
    /// user names are `expiry-timestamp:name`.
    pub fn owns(self, name: &str) -> bool {
        match self {
            Self::Static => name == USER,
            Self::Rest => name.split_once(':').is_some_and(|(expiry, name)| {
                !expiry.is_empty()
                    && expiry.bytes().all(|b| b.is_ascii_digit())
                    && name == REST_USER
            }),
        }
    }
}

/// Runs `turnutils_uclient` against `server` with `clients` sessions of
/// MESSAGES messages of LENGTH bytes each, sending to `peer` if given, and
/// `flags` on top (transport flags such as `-t` among them).
pub fn uclient(
    server: SocketAddr,
    credentials: Vec<String>,
    peer: Option<&EchoPeer>,
    clients: u64,
    flags: &[&str],
    deadline: Duration,
) -> Exited {
    let mut args = credentials;
    if let Some(peer) = peer {
        args.extend([
            "-e".into(),
            "127.0.0.1".into(),
            "-r".into(),
            peer.port.to_string(),
        ]);
    }
    args.extend([
        "-n".into(),
        MESSAGES.to_string(),
        "-m".into(),
        clients.to_string(),
        "-l".into(),
        LENGTH.to_string(),
    ]);
    args.extend(flags.iter().map(|flag| (*flag).to_owned()));
    args.extend([
        "-p".into(),
        server.port().to_string(),
        server.ip().to_string(),
    ]);
    Tool::spawn("turnutils_uclient", &args).finish(deadline)
}

/// uclient's final tally.
#[derive(Debug, PartialEq)]
pub struct Tally {
    pub sent: u64,
    pub received: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub lost: u64,
}

/// Reads the summary uclient prints when done, e.g.
/// `start_mclient: tot_send_msgs=200, tot_recv_msgs=200`,
/// `start_mclient: tot_send_bytes ~ 24000, tot_recv_bytes ~ 24000` and
/// `Total lost packets 0 (0.000000%), ...`. uclient exits 0 even when
/// packets are lost, so this is the verdict.
pub fn tally(output: &str) -> Tally {
    // Per-second progress lines carry `msz=`; the summary does not.
    let last = |needle: &str| {
        output
            .lines()
            .rfind(|line| line.contains(needle) && !line.contains("msz="))
            .unwrap_or_else(|| panic!("uclient printed no `{needle}` summary:\n{output}"))
    };
    let msgs = last("start_mclient: tot_send_msgs=");
    let bytes = last("start_mclient: tot_send_bytes ~");
    let lost = last("Total lost packets ");
    Tally {
        sent: number_after(msgs, "tot_send_msgs="),
        received: number_after(msgs, "tot_recv_msgs="),
        sent_bytes: number_after(bytes, "tot_send_bytes ~ "),
        received_bytes: number_after(bytes, "tot_recv_bytes ~ "),
        lost: number_after(lost, "Total lost packets "),
    }
}

fn number_after(line: &str, key: &str) -> u64 {
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("no `{key}` in {line:?}"))
        + key.len();
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after `{key}` in {line:?}"))
}

/// One `allocation-deleted` or `allocation-deleted-with-connection` log
/// line: who, what it relayed, and how it ended.
#[derive(Debug)]
pub struct Deleted {
    /// Ended with its connection (TCP, TLS), not by a Refresh with lifetime 0.
    pub with_connection: bool,
    pub user: String,
    /// (bytes, packets) from the client to peers.
    pub to_peer: (u64, u64),
    /// (bytes, packets) from peers to the client.
    pub from_peer: (u64, u64),
}

impl Deleted {
    /// Whether the allocation relayed anything either way.
    pub fn carried(&self) -> bool {
        self.to_peer != (0, 0) || self.from_peer != (0, 0)
    }
}

/// Parses lines like `info allocation-deleted user=alice client=...
/// relay=... age=6s to-peer=6000B/50p from-peer=6000B/50p`, and the same
/// as `info allocation-deleted-with-connection ...`: an allocation over
/// TCP/TLS ends with a Refresh of lifetime 0 or with its connection,
/// whichever comes first.
pub fn deleted_allocations(log: &str) -> Vec<Deleted> {
    log.lines()
        .filter_map(|line| {
            line.strip_prefix("info allocation-deleted ")
                .map(|fields| (false, fields))
                .or_else(|| {
                    line.strip_prefix("info allocation-deleted-with-connection ")
                        .map(|fields| (true, fields))
                })
        })
        .map(|(with_connection, fields)| {
            let field = |key: &str| {
                fields
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix(key))
                    .unwrap_or_else(|| panic!("no {key} in allocation-deleted {fields}"))
            };
            let traffic = |key: &str| {
                let value = field(key);
                let (bytes, packets) = value
                    .strip_suffix('p')
                    .and_then(|value| value.split_once("B/"))
                    .unwrap_or_else(|| panic!("bad {key}{value}"));
                (bytes.parse().unwrap(), packets.parse().unwrap())
            };
            Deleted {
                with_connection,
                user: field("user=").to_owned(),
                to_peer: traffic("to-peer="),
                from_peer: traffic("from-peer="),
            }
        })
        .collect()
}

/// The daemon's deleted allocations once `done` says they are complete
/// (uclient deletes its allocations just before it exits), or after 5 s.
pub fn wait_for_deleted(daemon: &TestDaemon, done: impl Fn(&[Deleted]) -> bool) -> Vec<Deleted> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let deleted = deleted_allocations(&daemon.log());
        if done(&deleted) || Instant::now() >= deadline {
            return deleted;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that uclient succeeded and that its `sessions` sessions got
/// every message there and back.
#[track_caller]
pub fn assert_uclient_tally(run: &Exited, sessions: u64) {
    assert!(run.status.success(), "uclient failed:\n{}", run.output);
    let packets = sessions * MESSAGES;
    assert_eq!(
        tally(&run.output),
        Tally {
            sent: packets,
            received: packets,
            sent_bytes: packets * LENGTH,
            received_bytes: packets * LENGTH,
            lost: 0,
        },
        "uclient output:\n{}",
        run.output
    );
}

/// Asserts that a session's `allocation` carried MESSAGES packets of LENGTH
/// bytes each way, under a user name of `user`'s.
#[track_caller]
pub fn assert_carried_every_message(allocation: &Deleted, user: User) {
    assert!(
        user.owns(&allocation.user),
        "unexpected user in {allocation:?}"
    );
    assert_eq!(
        allocation.to_peer,
        (MESSAGES * LENGTH, MESSAGES),
        "{allocation:?}"
    );
    assert_eq!(
        allocation.from_peer,
        (MESSAGES * LENGTH, MESSAGES),
        "{allocation:?}"
    );
}
