//! icegate driven by coturn's client tools (Debian package `coturn`):
//! `turnutils_uclient` relays RTP-like streams, `turnutils_peer` echoes them,
//! `turnutils_stunclient` asks for its reflexive address. coturn's server is
//! never started. Every tool runs under a deadline and is killed on drop
//! (see `common::coturn`).

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::coturn::{
    CLIENTS, EchoPeer, Exited, Peers, REST_USER, Tool, UCLIENT_DEADLINE, User,
    assert_carried_every_message, assert_uclient_tally, uclient, wait_for_deleted,
};
use common::{TestConfig, TestDaemon, xor_mapped_address};

/// stunclient and a failing uclient finish in milliseconds.
const QUICK_DEADLINE: Duration = Duration::from_secs(10);

/// Asserts that a uclient run with `sessions` sessions got every message
/// there and back, and that the daemon's log accounts for each one: every
/// session's allocation is deleted having carried MESSAGES packets of LENGTH
/// bytes each way, under a user name of `user`'s.
fn assert_every_packet_relayed(daemon: &TestDaemon, run: &Exited, sessions: u64, user: User) {
    assert_uclient_tally(run, sessions);
    let sessions = usize::try_from(sessions).unwrap();
    let deleted = wait_for_deleted(daemon, |deleted| deleted.len() >= sessions);
    assert_eq!(
        deleted.len(),
        sessions,
        "one allocation-deleted line per session expected; log:\n{}",
        daemon.log()
    );
    for allocation in &deleted {
        assert_carried_every_message(allocation, user);
    }
}

/// Starts a daemon whose `[relay]` gets `relay_extra`, runs CLIENTS uclient
/// sessions as `user` to `peers` with `flags` on top, and asserts that
/// every packet is relayed.
fn assert_uclient_relays_every_packet(relay_extra: &str, user: User, peers: Peers, flags: &[&str]) {
    let daemon = TestDaemon::start(&common::loopback_config(relay_extra));
    let peer = peers.start();
    let flags: Vec<&str> = peers
        .flag()
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    let run = uclient(
        daemon.udp,
        user.args(),
        peer.as_ref(),
        CLIENTS,
        &flags,
        UCLIENT_DEADLINE,
    );
    assert_every_packet_relayed(&daemon, &run, CLIENTS, user);
}

/// Exercises: static user, Allocate with EVEN-PORT and RESERVATION-TOKEN for
/// RTP/RTCP pairs (no `-c`), CreatePermission, ChannelBind with RFC 5766
/// channel numbers, ChannelData both ways through an echo peer, Refresh 0.
#[test]
fn uclient_relays_every_packet_over_channels() {
    assert_uclient_relays_every_packet("", User::Static, Peers::Echo, &[]);
}

/// Exercises: Send indications to the peer and Data indications back (`-s`:
/// uclient binds no channels), RTP/RTCP pairs.
#[test]
fn uclient_relays_every_packet_with_send_indications() {
    assert_uclient_relays_every_packet("", User::Static, Peers::Echo, &["-s"]);
}

/// Exercises: client-to-client (`-y`): each session's peer is another
/// session's relayed address, so packets cross two allocations over
/// channels; RTP/RTCP pairs; no external peer.
#[test]
fn uclient_clients_reach_each_other_over_channels() {
    assert_uclient_relays_every_packet("", User::Static, Peers::EachOther, &[]);
}

/// Exercises: client-to-client (`-y`) with Send/Data indications (`-s`)
/// instead of channels, on the default config.
#[test]
fn uclient_clients_reach_each_other_with_send_indications() {
    assert_uclient_relays_every_packet("", User::Static, Peers::EachOther, &["-s"]);
}

/// Exercises: TURN REST credentials (`-W` secret, user `timestamp:bob`),
/// single allocations without an RTCP partner (`-c`: no reservations), over
/// channels to an echo peer.
#[test]
fn uclient_with_rest_secret_relays_every_packet() {
    assert_uclient_relays_every_packet("", User::Rest, Peers::Echo, &["-c"]);
}

/// Exercises: REST credentials minted with the wrong secret: every Allocate
/// is refused, uclient gives up, the daemon logs why.
#[test]
fn uclient_with_wrong_rest_secret_gets_no_allocation() {
    // uclient retries a refused login many times before it gives up; past
    // `login-failures` those retries would go unanswered and it would wait
    // out its timeouts instead. The backoff itself is tested in the core.
    let daemon = TestDaemon::start(
        &TestConfig {
            tables: "[throttle]\nlogin-failures = 1000\n",
            ..TestConfig::default()
        }
        .render(),
    );
    let credentials = ["-u", REST_USER, "-W", "not-the-integration-secret"]
        .map(String::from)
        .into();
    // uclient insists on a peer address, though it never gets to use one.
    let flags = ["-c", "-e", "127.0.0.1"];
    let run = uclient(daemon.udp, credentials, None, 1, &flags, QUICK_DEADLINE);
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

/// The strict mode, `rfc5766-channel-numbers = false`: icegate takes only
/// RFC 8656 channels (0x4000-0x4FFF) and answers 400 to uclient's binds in
/// 0x5000-0x7FFF. uclient picks each number at random from 0x4000-0x7FFF
/// and stops at the first error; 16 sessions make 16 binds, so the chance
/// that all land in the allowed quarter is 4^-16.
#[test]
fn uclient_channel_binds_get_400_with_strict_channel_numbers() {
    let mut daemon = TestDaemon::start(&common::loopback_config("rfc5766-channel-numbers = false"));
    let peer = EchoPeer::start();
    let run = uclient(
        daemon.udp,
        User::Static.args(),
        Some(&peer),
        16,
        &[],
        QUICK_DEADLINE,
    );
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

/// A port free on both 127.0.0.1 and 127.0.0.2 just now.
fn port_free_on_both() -> u16 {
    loop {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind probe socket");
        let port = probe.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.2", port)).is_ok() {
            return port;
        }
    }
}

/// RFC 5780 NAT behaviour discovery with coturn's `turnutils_natdiscovery`:
/// icegate on 127.0.0.1 and 127.0.0.2, each on two ports, answers from the
/// address each test asks for, so the tool finds loopback's mapping and
/// filtering endpoint independent (no NAT), as it does against coturn.
#[test]
fn natdiscovery_finds_mapping_and_filtering_behaviour() {
    let (first, second) = (port_free_on_both(), port_free_on_both());
    let config = common::loopback_config("").replacen(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"127.0.0.1:{first}\"\nother-address = \"127.0.0.2:{second}\""),
        1,
    );
    let daemon = TestDaemon::start(&config);
    for address in [
        format!("127.0.0.2:{second}"),
        format!("127.0.0.1:{second}"),
        format!("127.0.0.2:{first}"),
    ] {
        assert!(daemon.wait_for_log(&format!("listening on udp {address}")));
    }
    let args: Vec<String> = [
        "-m",
        "-f",
        "-P",
        "-p",
        &first.to_string(),
        "-L",
        "127.0.0.1",
    ]
    .into_iter()
    .chain(["127.0.0.1"])
    .map(String::from)
    .collect();
    let run = Tool::spawn("turnutils_natdiscovery", &args).finish(QUICK_DEADLINE);
    assert!(run.status.success(), "natdiscovery:\n{}", run.output);
    for expected in [
        "NAT with Endpoint Independent Mapping!",
        "NAT with Endpoint Independent Filtering!",
        &format!("Response origin: : 127.0.0.2:{second}"),
        &format!("Other addr: : 127.0.0.2:{second}"),
    ] {
        assert!(
            run.output.contains(expected),
            "no {expected:?} in natdiscovery's output:\n{}",
            run.output
        );
    }
    // Without an other-address the same requests get 420, as before.
    let plain = TestDaemon::start(&common::loopback_config(""));
    let args: Vec<String> = [
        "-f",
        "-p",
        &plain.udp.port().to_string(),
        "-L",
        "127.0.0.1",
        "127.0.0.1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let run = Tool::spawn("turnutils_natdiscovery", &args).finish(QUICK_DEADLINE);
    assert!(
        !run.output.contains("Endpoint Independent Filtering"),
        "natdiscovery:\n{}",
        run.output
    );
}
