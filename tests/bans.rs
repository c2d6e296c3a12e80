//! Bans, as an operator makes them with `icegate ctl` and as the banned
//! user's clients see them: allocations and signaling sessions end, new
//! ones are refused (static and TURN REST credentials, signaling tokens)
//! until the ban ends by itself or is lifted, through reloads and restarts.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::{Scrape, request};
use common::signal::{Event, SignalClient, signal_config, token_for};
use common::stun_client::{
    Credentials, Session, alice, assert_error, assert_success, error_of, loopback_peer, peer,
    rest_user,
};
use common::turn::TurnAllocation;
use common::{Finished, PASSWORD, TestConfig, TestDaemon, USER, run_bounded, unix_now};
use stun::message::{METHOD_CREATE_PERMISSION, METHOD_REFRESH};

fn ctl(daemon: &TestDaemon, args: &[&str]) -> Finished {
    run_bounded(
        Command::new(env!("CARGO_BIN_EXE_icegate"))
            .arg("ctl")
            .arg("--admin")
            .arg(format!("http://{}", daemon.admin))
            .args(args),
        Duration::from_secs(20),
    )
}

#[track_caller]
fn ctl_ok(daemon: &TestDaemon, args: &[&str]) -> String {
    let done = ctl(daemon, args);
    assert!(
        done.status.success(),
        "icegate ctl {} failed ({}): {}",
        args.join(" "),
        done.status,
        done.stderr
    );
    done.stdout
}

/// REST credentials for `user`, valid for an hour.
fn rest(user: &str) -> Credentials {
    rest_user(user, unix_now() + 3600)
}

/// An Allocate from a fresh client with `credentials` must get 403.
#[track_caller]
fn refused(daemon: &TestDaemon, credentials: Credentials, what: &str) {
    let response = Session::open(daemon.udp, credentials).try_allocate();
    assert_error(&response, 403, what);
}

/// An Allocate from a fresh client with `credentials` must succeed.
#[track_caller]
fn allocates(daemon: &TestDaemon, credentials: Credentials) -> (Session, SocketAddr) {
    let session = Session::open(daemon.udp, credentials);
    let relayed = session.allocate();
    (session, relayed)
}

/// What `client` receives within half a second of `peer` sending to `relayed`.
fn relayed_to_client(session: &Session, peer: &UdpSocket, relayed: SocketAddr) -> bool {
    peer.send_to(b"are you there", relayed).expect("peer sends");
    session
        .client
        .recv_within(Duration::from_millis(500))
        .is_some()
}

#[test]
fn a_ban_ends_the_users_allocations_and_refuses_its_credentials_until_unbanned() {
    let daemon = TestDaemon::start(&TestConfig::default().render());
    let relay_peer = loopback_peer(Duration::from_secs(2));
    let (session, relayed) = allocates(&daemon, alice());
    let (rest_session, rest_relayed) = allocates(&daemon, rest("alice"));
    let (bob, bob_relayed) = allocates(&daemon, rest("bob"));
    // Data reaches a client once it permits the peer.
    for s in [&session, &rest_session, &bob] {
        let response = s.request(
            METHOD_CREATE_PERMISSION,
            vec![peer(relay_peer.local_addr().unwrap())],
        );
        assert_success(&response, "CreatePermission");
    }
    assert!(relayed_to_client(&session, &relay_peer, relayed));

    let banned = ctl_ok(&daemon, &["ban", USER]);
    assert_eq!(
        banned,
        format!("banned {USER} until unbanned; ended 2 allocations and 0 signaling sessions\n")
    );
    assert!(daemon.wait_for_log(&format!("user-banned user={USER} until=permanent")));
    // The allocations are gone: nothing is relayed and a Refresh is refused.
    assert!(!relayed_to_client(&session, &relay_peer, relayed));
    assert!(!relayed_to_client(&rest_session, &relay_peer, rest_relayed));
    let refresh = session.request(METHOD_REFRESH, vec![]);
    assert_error(&refresh, 403, "Refresh of the ended allocation");
    // New ones are refused, whichever credential.
    refused(&daemon, alice(), "the static user");
    refused(&daemon, rest("alice"), "a freshly minted REST username");
    // The turn crate's client gets no allocation either.
    let turn_client = tokio_runtime().block_on(TurnAllocation::make(daemon.udp, USER, PASSWORD));
    assert!(turn_client.is_err(), "the turn crate's client allocated");
    // Another user is not touched.
    assert!(relayed_to_client(&bob, &relay_peer, bob_relayed));
    assert!(daemon.wait_for_log("turn-refused reason=user-banned"));

    assert_eq!(
        ctl_ok(&daemon, &["unban", USER]),
        format!("unbanned {USER}\n")
    );
    assert!(daemon.wait_for_log(&format!("user-unbanned user={USER}")));
    allocates(&daemon, alice());
    allocates(&daemon, rest("alice"));
    let again = ctl(&daemon, &["unban", USER]);
    assert!(!again.status.success());
    assert!(again.stderr.contains("404"), "{}", again.stderr);
    // kill stays what it was: the user may come straight back.
    ctl_ok(&daemon, &["kill", USER]);
    allocates(&daemon, alice());
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_ban_for_a_while_ends_by_itself() {
    let daemon = TestDaemon::start(&TestConfig::default().render());
    let started = Instant::now();
    let banned = ctl_ok(&daemon, &["ban", USER, "--for", "2s"]);
    assert!(
        banned.starts_with(&format!("banned {USER} until 20")),
        "{banned}"
    );
    refused(&daemon, alice(), "during the ban");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = Session::open(daemon.udp, alice()).try_allocate();
        if error_of(&response).is_none() {
            break;
        }
        assert_error(&response, 403, "until the ban ends");
        assert!(Instant::now() < deadline, "the 2 s ban held for 10 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the ban ended after {:?}",
        started.elapsed()
    );
    assert!(daemon.wait_for_log(&format!("user-unbanned user={USER} reason=expired")));
    assert_eq!(ctl_ok(&daemon, &["bans"]), "no bans\n");

    let bad = ctl(&daemon, &["ban", USER, "--for", "soon"]);
    assert!(!bad.status.success());
    let bad = request(daemon.admin, "POST", "/bans?user=alice&for=soon", None, &[]);
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["error"]["code"], "bad-duration");
    let bad = request(daemon.admin, "POST", "/bans", None, &[]);
    assert_eq!(bad.status, 400, "{}", bad.body);
}

fn state_config(dir: &Path) -> String {
    TestConfig {
        state_directory: Some(dir),
        ..TestConfig::default()
    }
    .render()
}

#[test]
fn bans_survive_a_reload_and_a_restart() {
    let state = tempfile::tempdir().expect("temp dir");
    let config = state_config(state.path());
    let mut daemon = TestDaemon::start(&config);
    ctl_ok(&daemon, &["ban", USER]);
    ctl_ok(&daemon, &["ban", "bob", "--for", "1h"]);
    assert!(state.path().join("bans.json").exists());

    daemon.signal("HUP");
    assert!(daemon.wait_for_log("reload result=ok"), "{}", daemon.log());
    refused(&daemon, alice(), "after a reload");
    refused(&daemon, rest("bob"), "after a reload");
    daemon.stop();

    let daemon = TestDaemon::start(&config);
    assert!(daemon.wait_for_log("2 bans loaded"));
    refused(&daemon, alice(), "after a restart");
    refused(&daemon, rest("bob"), "after a restart");
    let listed = ctl_ok(&daemon, &["bans"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    assert!(lines[0].starts_with("USER"), "{listed}");
    assert!(
        lines[1].starts_with(USER) && lines[1].contains("permanent"),
        "{listed}"
    );
    assert!(
        lines[2].starts_with("bob") && !lines[2].contains("permanent"),
        "{listed}"
    );
}

#[test]
fn a_corrupt_ban_file_is_set_aside_and_the_daemon_starts_without_bans() {
    let state = tempfile::tempdir().expect("temp dir");
    std::fs::write(state.path().join("bans.json"), "{ not json").expect("write");
    let daemon = TestDaemon::start(&state_config(state.path()));
    assert!(daemon.wait_for_log("bans.json.corrupt"));
    assert!(state.path().join("bans.json.corrupt").exists());
    allocates(&daemon, alice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_users_token_is_refused_by_ws_and_ice_servers_and_the_ban_is_listed_and_counted() {
    let config = signal_config("").replace(
        "[admin]\naddress = \"127.0.0.1:0\"\n",
        "[admin]\naddress = \"127.0.0.1:0\"\nmax-bans = 1\n",
    );
    assert!(config.contains("max-bans = 1"));
    let daemon = TestDaemon::start(&config);
    let http = daemon.listener("http");
    let (mut carol, _) = SignalClient::join_server(http, &token_for("carol")).await;
    carol.join("room", "c").await;
    let (mut dave, _) = SignalClient::join_server(http, &token_for("dave")).await;
    dave.join("room", "d").await;

    let banned = tokio::task::block_in_place(|| ctl_ok(&daemon, &["ban", "carol", "--for", "1h"]));
    assert!(
        banned.ends_with("ended 0 allocations and 1 signaling sessions\n"),
        "{banned}"
    );
    loop {
        if let Event::Closed(_) = carol.next_event().await {
            break;
        }
    }
    assert_eq!(dave.expect("peer-left").await["peer"], "c");
    dave.assert_usable().await;

    let refused = SignalClient::connect_with(http, &format!("token={}", token_for("carol")), &[])
        .await
        .err()
        .expect("a banned user's token is refused");
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("user-banned"), "{}", refused.body);
    let ice = |user: &str| {
        let token = token_for(user);
        tokio::task::block_in_place(|| request(http, "GET", "/ice-servers", Some(&token), &[]))
    };
    let answer = ice("carol");
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "user-banned");
    assert_eq!(ice("dave").status, 200);

    tokio::task::block_in_place(|| {
        let listed = ctl_ok(&daemon, &["bans"]);
        assert!(
            listed
                .lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("carol ")),
            "{listed}"
        );
        let full = ctl(&daemon, &["ban", "dave"]);
        assert!(!full.status.success());
        assert!(full.stderr.contains("507"), "{}", full.stderr);
        let scrape = Scrape::of(&daemon, None);
        assert_eq!(scrape.get("icegate_bans", &[]), 1.0);
        assert_eq!(
            scrape.get("icegate_limit_hits_total", &[("limit", "admin.max-bans")]),
            1.0
        );
        assert_eq!(
            scrape.get("icegate_refusals_total", &[("reason", "user-banned")]),
            0.0
        );
        ctl_ok(&daemon, &["unban", "carol"]);
        assert_eq!(Scrape::of(&daemon, None).get("icegate_bans", &[]), 0.0);
    });
    let (_carol, _) = SignalClient::join_server(http, &token_for("carol")).await;
}
