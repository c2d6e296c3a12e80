//! icegate driven by coturn's client tools (Debian package `coturn`):
//! `turnutils_uclient` relays RTP-like streams, `turnutils_peer` echoes them,
//! `turnutils_stunclient` asks for its reflexive address. coturn's server is
//! never started. Every tool runs under a deadline and is killed on drop.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::TestDaemon;

/// The relay section every uclient test with channels needs: coturn 4.6's
/// uclient picks channel numbers in 0x4000-0x7FFF (RFC 5766).
const RFC5766_CHANNELS: &str = "rfc5766-channel-numbers = true";
/// Messages each uclient session sends.
const MESSAGES: u64 = 50;
/// uclient sessions (`-m`). uclient rounds it up to whole RTP/RTCP pairs
/// and client-to-client quads, so a multiple of 4 means what it says.
const CLIENTS: u64 = 4;
/// Payload bytes per message (`-l`).
const LENGTH: u64 = 120;
/// uclient waits 1-6 s before sending, then 1 s of packets; a lost packet
/// makes it wait 10 s more. Beyond this it is stuck.
const UCLIENT_DEADLINE: Duration = Duration::from_secs(45);
/// stunclient and a failing uclient finish in milliseconds.
const QUICK_DEADLINE: Duration = Duration::from_secs(10);
/// The user name uclient's REST credentials carry after `timestamp:`.
const REST_USER: &str = "bob";

/// The full path of a coturn client tool, or a panic saying how to get it:
/// these tests must fail, not pass silently, where coturn is missing.
fn tool(name: &str) -> PathBuf {
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
struct Tool {
    name: String,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

/// What a tool printed and how it ended.
struct Finished {
    status: ExitStatus,
    output: String,
}

impl Tool {
    fn spawn(name: &str, args: &[String]) -> Self {
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

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the tool exits, killing it and failing the test if it
    /// takes longer than `limit`.
    fn finish(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for tool") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "`{}` still ran after {limit:?}; killed it. Output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipes close with the process; give the readers a moment to
        // drain them, but never wait on them unboundedly.
        let drained = Instant::now() + Duration::from_secs(2);
        while !self.readers.iter().all(JoinHandle::is_finished) && Instant::now() < drained {
            std::thread::sleep(Duration::from_millis(5));
        }
        Finished {
            status,
            output: self.output(),
        }
    }

    /// The first output line containing `needle`, waiting at most `limit`.
    fn wait_for_line(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .output
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.contains(needle))
                .cloned();
            if found.is_some() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
struct EchoPeer {
    port: u16,
    _process: Tool,
}

impl EchoPeer {
    fn start() -> Self {
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

/// Static long-term credentials from the test config.
fn static_user() -> Vec<String> {
    ["-u", common::USER, "-w", common::PASSWORD]
        .map(String::from)
        .into()
}

/// TURN REST credentials: uclient derives `timestamp:bob` and its password
/// from the shared secret.
fn rest_user() -> Vec<String> {
    ["-u", REST_USER, "-W", common::SECRET]
        .map(String::from)
        .into()
}

/// Runs `turnutils_uclient` against `daemon` with `clients` sessions of
/// MESSAGES messages of LENGTH bytes each, and `flags` on top.
fn uclient(
    daemon: &TestDaemon,
    credentials: Vec<String>,
    peer: Option<&EchoPeer>,
    clients: u64,
    flags: &[&str],
    deadline: Duration,
) -> Finished {
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
        daemon.udp.port().to_string(),
        daemon.udp.ip().to_string(),
    ]);
    Tool::spawn("turnutils_uclient", &args).finish(deadline)
}

/// uclient's final tally.
#[derive(Debug, PartialEq)]
struct Tally {
    sent: u64,
    received: u64,
    sent_bytes: u64,
    received_bytes: u64,
    lost: u64,
}

/// Reads the summary uclient prints when done, e.g.
/// `start_mclient: tot_send_msgs=200, tot_recv_msgs=200`,
/// `start_mclient: tot_send_bytes ~ 24000, tot_recv_bytes ~ 24000` and
/// `Total lost packets 0 (0.000000%), ...`. uclient exits 0 even when
/// packets are lost, so this is the verdict.
fn tally(output: &str) -> Tally {
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

/// One `allocation-deleted` log line: who, and what it relayed.
#[derive(Debug)]
struct Deleted {
    user: String,
    /// (bytes, packets) from the client to peers.
    to_peer: (u64, u64),
    /// (bytes, packets) from peers to the client.
    from_peer: (u64, u64),
}

/// Parses lines like `info allocation-deleted user=alice client=...
/// relay=... age=6s to-peer=6000B/50p from-peer=6000B/50p`.
fn deleted_allocations(log: &str) -> Vec<Deleted> {
    log.lines()
        .filter_map(|line| line.strip_prefix("info allocation-deleted "))
        .map(|fields| {
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
                user: field("user=").to_owned(),
                to_peer: traffic("to-peer="),
                from_peer: traffic("from-peer="),
            }
        })
        .collect()
}

/// The daemon's `allocation-deleted` lines, once there are `count` of them
/// (uclient deletes its allocations just before it exits), or after 5 s.
fn wait_for_deleted(daemon: &TestDaemon, count: usize) -> Vec<Deleted> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let deleted = deleted_allocations(&daemon.log());
        if deleted.len() >= count || Instant::now() >= deadline {
            return deleted;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that a uclient run with `sessions` sessions got every message
/// there and back, and that the daemon's log accounts for each one: every
/// session's allocation is deleted having carried MESSAGES packets of LENGTH
/// bytes each way, under a user name `user_ok` accepts.
fn assert_every_packet_relayed(
    daemon: &TestDaemon,
    run: &Finished,
    sessions: u64,
    user_ok: impl Fn(&str) -> bool,
) {
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
    let deleted = wait_for_deleted(daemon, usize::try_from(sessions).unwrap());
    assert_eq!(
        deleted.len(),
        usize::try_from(sessions).unwrap(),
        "one allocation-deleted line per session expected; log:\n{}",
        daemon.log()
    );
    for allocation in &deleted {
        assert!(
            user_ok(&allocation.user),
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
}

fn is_static_user(user: &str) -> bool {
    user == common::USER
}

/// REST user names are `expiry-timestamp:name`.
fn is_rest_user(user: &str) -> bool {
    user.split_once(':').is_some_and(|(expiry, name)| {
        !expiry.is_empty() && expiry.bytes().all(|b| b.is_ascii_digit()) && name == REST_USER
    })
}

/// Exercises: static user, Allocate with EVEN-PORT and RESERVATION-TOKEN for
/// RTP/RTCP pairs (no `-c`), CreatePermission, ChannelBind with RFC 5766
/// channel numbers, ChannelData both ways through an echo peer, Refresh 0.
#[test]
fn uclient_relays_every_packet_over_channels() {
    let daemon = TestDaemon::start(&common::loopback_config(RFC5766_CHANNELS));
    let peer = EchoPeer::start();
    let run = uclient(
        &daemon,
        static_user(),
        Some(&peer),
        CLIENTS,
        &[],
        UCLIENT_DEADLINE,
    );
    assert_every_packet_relayed(&daemon, &run, CLIENTS, is_static_user);
}

/// Exercises: Send indications to the peer and Data indications back (`-s`:
/// uclient binds no channels), RTP/RTCP pairs. Runs on the default config,
/// since an RFC 8656 client without channels needs no compatibility key.
#[test]
fn uclient_relays_every_packet_with_send_indications() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let peer = EchoPeer::start();
    let run = uclient(
        &daemon,
        static_user(),
        Some(&peer),
        CLIENTS,
        &["-s"],
        UCLIENT_DEADLINE,
    );
    assert_every_packet_relayed(&daemon, &run, CLIENTS, is_static_user);
}

/// Exercises: client-to-client (`-y`): each session's peer is another
/// session's relayed address, so packets cross two allocations over
/// channels; RTP/RTCP pairs; no external peer.
#[test]
fn uclient_clients_reach_each_other_over_channels() {
    let daemon = TestDaemon::start(&common::loopback_config(RFC5766_CHANNELS));
    let run = uclient(
        &daemon,
        static_user(),
        None,
        CLIENTS,
        &["-y"],
        UCLIENT_DEADLINE,
    );
    assert_every_packet_relayed(&daemon, &run, CLIENTS, is_static_user);
}

/// Exercises: client-to-client (`-y`) with Send/Data indications (`-s`)
/// instead of channels, on the default config.
#[test]
fn uclient_clients_reach_each_other_with_send_indications() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let run = uclient(
        &daemon,
        static_user(),
        None,
        CLIENTS,
        &["-y", "-s"],
        UCLIENT_DEADLINE,
    );
    assert_every_packet_relayed(&daemon, &run, CLIENTS, is_static_user);
}

/// Exercises: TURN REST credentials (`-W` secret, user `timestamp:bob`),
/// single allocations without an RTCP partner (`-c`: no reservations), over
/// channels to an echo peer.
#[test]
fn uclient_with_rest_secret_relays_every_packet() {
    let daemon = TestDaemon::start(&common::loopback_config(RFC5766_CHANNELS));
    let peer = EchoPeer::start();
    let run = uclient(
        &daemon,
        rest_user(),
        Some(&peer),
        CLIENTS,
        &["-c"],
        UCLIENT_DEADLINE,
    );
    assert_every_packet_relayed(&daemon, &run, CLIENTS, is_rest_user);
}

/// Exercises: REST credentials minted with the wrong secret: every Allocate
/// is refused, uclient gives up, the daemon logs why.
#[test]
fn uclient_with_wrong_rest_secret_gets_no_allocation() {
    let daemon = TestDaemon::start(&common::loopback_config(RFC5766_CHANNELS));
    let credentials = ["-u", REST_USER, "-W", "not-the-integration-secret"]
        .map(String::from)
        .into();
    // uclient insists on a peer address, though it never gets to use one.
    let flags = ["-c", "-e", "127.0.0.1"];
    let run = uclient(&daemon, credentials, None, 1, &flags, QUICK_DEADLINE);
    assert!(!run.status.success(), "uclient succeeded:\n{}", run.output);
    assert!(
        run.output.contains("Cannot complete Allocation"),
        "uclient output:\n{}",
        run.output
    );
    assert!(daemon.wait_for_log("auth-failed reason=wrong-password"));
    assert!(
        !daemon.log().contains("allocation-created"),
        "{}",
        daemon.log()
    );
}

/// Documents the default: without `rfc5766-channel-numbers`, icegate takes
/// only RFC 8656 channels (0x4000-0x4FFF) and answers 400 to uclient's binds
/// in 0x5000-0x7FFF. uclient picks each number at random from 0x4000-0x7FFF
/// and stops at the first error; 16 sessions make 16 binds, so the chance
/// that all land in the allowed quarter is 4^-16.
#[test]
fn uclient_channel_binds_get_400_without_rfc5766_channel_numbers() {
    let mut daemon = TestDaemon::start(&common::loopback_config(""));
    let peer = EchoPeer::start();
    let run = uclient(&daemon, static_user(), Some(&peer), 16, &[], QUICK_DEADLINE);
    assert!(
        run.output.contains("channel bind: error 400"),
        "uclient output:\n{}",
        run.output
    );
    assert!(!run.status.success(), "uclient output:\n{}", run.output);
    // Allocations succeed; only the channels are refused.
    assert!(
        daemon.log().contains("allocation-created user=alice"),
        "{}",
        daemon.log()
    );
    assert!(daemon.is_running());
}

/// Runs `turnutils_stunclient` with `flags` against the daemon, from a
/// socket bound to 127.0.0.1.
fn stunclient(daemon: &TestDaemon, flags: &[&str]) -> Tool {
    let mut args: Vec<String> = flags.iter().map(|flag| (*flag).to_owned()).collect();
    args.extend([
        "-L".into(),
        "127.0.0.1".into(),
        "-p".into(),
        daemon.udp.port().to_string(),
        daemon.udp.ip().to_string(),
    ]);
    Tool::spawn("turnutils_stunclient", &args)
}

/// The address in stunclient's `... UDP reflexive addr: 127.0.0.1:51892`.
fn reflexive(line: &str) -> SocketAddr {
    let (_, addr) = line
        .split_once("UDP reflexive addr: ")
        .unwrap_or_else(|| panic!("no reflexive address in {line:?}"));
    addr.trim()
        .parse()
        .unwrap_or_else(|_| panic!("bad reflexive address in {line:?}"))
}

/// The kernel's ephemeral port range, where an unbound socket's port comes from.
fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some(bounds.next()??..=bounds.next()??)
        })
        .unwrap_or(1024..=u16::MAX)
}

/// The local ports of the UDP sockets process `pid` holds (Linux /proc).
fn udp_ports_of(pid: u32) -> Vec<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st queues timer retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !inodes.contains(*fields.get(9)?) {
                return None;
            }
            u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()
        })
        .collect()
}

/// Exercises: a plain Binding from stunclient. icegate answers with
/// XOR-MAPPED-ADDRESS only (no OTHER-ADDRESS), so stunclient stops after one
/// request. stunclient cannot be given a local port (`-L` takes an address
/// only), so the port is checked against the kernel's ephemeral range here;
/// the RFC 5780 test below ties it to stunclient's actual socket.
#[test]
fn stunclient_is_told_its_loopback_address() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let run = stunclient(&daemon, &[]).finish(QUICK_DEADLINE);
    assert!(run.status.success(), "stunclient output:\n{}", run.output);
    let line = run
        .output
        .lines()
        .find(|line| line.contains("UDP reflexive addr"))
        .unwrap_or_else(|| panic!("no reflexive address:\n{}", run.output));
    let addr = reflexive(line);
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line}");
    assert!(ephemeral_ports().contains(&addr.port()), "{line}");
    assert!(!run.output.contains("RFC 5780"), "{}", run.output);
}

/// Exercises: stunclient's forced RFC 5780 mode (`-f`). Its first Binding is
/// answered; its second carries CHANGE-REQUEST and RESPONSE-PORT = its own
/// port + 1, on which it then waits. icegate does not do RFC 5780: it
/// answers at the request's source port, which stunclient has closed, so
/// stunclient waits for ever and is killed. While it waits, the socket it
/// holds proves the first answer named its real port. Then a Binding with
/// CHANGE-REQUEST from a socket of ours gets 420 when it asks for a change
/// and a normal answer naming the socket when empty, and stunclient's plain
/// mode still gets answers.
#[test]
fn stunclient_rfc5780_mode_gets_plain_answers() {
    let daemon = TestDaemon::start(&common::loopback_config(""));
    let (mut forced, addr) = stunclient_waiting_on_response_port(&daemon);
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{}", forced.output());
    assert!(
        !forced.output().contains("RFC 5780 response"),
        "{}",
        forced.output()
    );
    assert!(forced.is_running(), "{}", forced.output());
    drop(forced);

    // icegate has one address and port, so a CHANGE-REQUEST asking for
    // another is refused with 420; an empty one (classic clients send it)
    // is answered normally, naming the socket exactly.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 1500];
    for (flags, expected_type) in [(0x06, [0x01, 0x11]), (0x00, [0x01, 0x01])] {
        let mut request = vec![
            0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42, // Binding, 8 bytes, cookie
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, flags, // transaction ID
        ];
        request.extend([0x00, 0x03, 0x00, 0x04, 0, 0, 0, flags]); // CHANGE-REQUEST
        socket.send_to(&request, daemon.udp).unwrap();
        let (len, from) = socket
            .recv_from(&mut buf)
            .expect("answer to CHANGE-REQUEST");
        assert_eq!(from, daemon.udp, "answered from the listening address");
        assert_eq!(&buf[..2], expected_type, "flags {flags:#x}");
        assert_eq!(&buf[8..20], &request[8..20], "same transaction");
        if flags == 0 {
            assert_eq!(
                xor_mapped_address(&buf[..len]),
                Some(socket.local_addr().unwrap())
            );
        } else {
            // ERROR-CODE 420 then UNKNOWN-ATTRIBUTES naming CHANGE-REQUEST.
            let message = &buf[..len];
            assert!(
                message.windows(4).any(|w| w == [0, 0, 4, 20]),
                "420 expected: {message:02x?}"
            );
            assert!(
                message
                    .windows(6)
                    .any(|w| w == [0x00, 0x0A, 0x00, 0x02, 0x00, 0x03]),
                "UNKNOWN-ATTRIBUTES listing 0x0003 expected: {message:02x?}"
            );
        }
    }

    let plain = stunclient(&daemon, &[]).finish(QUICK_DEADLINE);
    assert!(
        plain.output.contains("UDP reflexive addr: 127.0.0.1:"),
        "{}",
        plain.output
    );
}

/// Starts stunclient in forced RFC 5780 mode and waits until it has printed
/// the first answer's reflexive address R and sits waiting on the socket it
/// opens at its own port + 1 (its RESPONSE-PORT): that the socket is at
/// R.port + 1 proves R named stunclient's real port. Retries if that port
/// happens to be taken (stunclient then exits).
fn stunclient_waiting_on_response_port(daemon: &TestDaemon) -> (Tool, SocketAddr) {
    for _ in 0..3 {
        let mut forced = stunclient(daemon, &["-f"]);
        let line = forced
            .wait_for_line("UDP reflexive addr", QUICK_DEADLINE)
            .unwrap_or_else(|| panic!("no first answer:\n{}", forced.output()));
        let addr = reflexive(&line);
        let Some(response_port) = addr.port().checked_add(1) else {
            continue;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ports = udp_ports_of(forced.pid());
            if ports == [response_port] && forced.is_running() {
                return (forced, addr);
            }
            if !forced.is_running() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stunclient reported {addr} but waits on ports {ports:?}; output:\n{}",
                forced.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("stunclient -f exited three times before waiting on its port + 1");
}

/// The IPv4 XOR-MAPPED-ADDRESS of a STUN message, if any.
fn xor_mapped_address(message: &[u8]) -> Option<SocketAddr> {
    let mut rest = message.get(20..)?;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if kind == 0x0020 && len == 8 && value[1] == 0x01 {
            let port = u16::from_be_bytes([value[2], value[3]]) ^ 0x2112;
            let ip: [u8; 4] = std::array::from_fn(|i| value[4 + i] ^ message[4 + i]);
            return Some(SocketAddr::from((ip, port)));
        }
        rest = rest.get(4 + len.next_multiple_of(4)..)?;
    }
    None
}
