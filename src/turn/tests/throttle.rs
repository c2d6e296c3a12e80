//! Per-source budgets for unauthenticated answers and Binding answers,
//! per-user backoff after failed logins, and the summarised auth-failed line.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Client, Harness, Outcome, alice, udp_transport};
use crate::reject::Reject;
use crate::turn::FiveTuple;
use crate::turn::throttle::AuthLog;
use crate::wire::Method;

fn from(address: &str) -> FiveTuple {
    let client: SocketAddr = address.parse().unwrap();
    let server = if client.is_ipv4() {
        "127.0.0.1:3478"
    } else {
        "[::1]:3478"
    };
    FiveTuple {
        client,
        server: server.parse().unwrap(),
        transport: crate::config::Transport::Udp,
    }
}

/// Sends an Allocate without credentials; true if it was answered.
fn challenged(harness: &mut Harness, secs: u64, five_tuple: &FiveTuple) -> bool {
    let request = harness.unsigned(Method::ALLOCATE, udp_transport);
    let reply = harness.send(harness.at(secs), five_tuple, &request);
    match reply.outcome {
        Outcome::Reply => {
            reply.assert_error(401, "challenge");
            true
        }
        Outcome::Nothing => {
            assert!(reply.bytes.is_empty(), "a dropped request gets no bytes");
            false
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn answered(harness: &mut Harness, secs: u64, five_tuple: &FiveTuple, times: usize) -> usize {
    (0..times)
        .filter(|_| challenged(harness, secs, five_tuple))
        .count()
}

#[test]
fn unauthenticated_requests_get_401_up_to_the_burst_then_nothing_until_refilled() {
    let mut harness = Harness::with_relay(
        "[throttle]\nunauthenticated-per-second = 2\nunauthenticated-burst = 4\n",
    );
    let attacker = from("198.51.100.7:5000");
    assert_eq!(answered(&mut harness, 0, &attacker, 10), 4);
    assert_eq!(harness.rejected(Reject::UnauthenticatedThrottled), 6);
    assert_eq!(harness.rejected(Reject::Challenge), 4);
    // Another source is not affected, nor another port of the first one helped.
    assert_eq!(answered(&mut harness, 0, &from("198.51.100.8:5000"), 4), 4);
    assert_eq!(answered(&mut harness, 0, &from("198.51.100.7:5001"), 1), 0);
    // Refilled at the configured rate.
    assert_eq!(answered(&mut harness, 1, &attacker, 10), 2);
    assert_eq!(answered(&mut harness, 3, &attacker, 10), 4);
}

#[test]
fn an_ipv6_64_is_one_source() {
    let mut harness = Harness::with_relay(
        "[throttle]\nunauthenticated-per-second = 1\nunauthenticated-burst = 2\n",
    );
    assert_eq!(
        answered(&mut harness, 0, &from("[2001:db8:1:2::1]:5000"), 1),
        1
    );
    assert_eq!(
        answered(&mut harness, 0, &from("[2001:db8:1:2:ffff::9]:6000"), 3),
        1
    );
    assert_eq!(
        answered(&mut harness, 0, &from("[2001:db8:1:3::1]:5000"), 3),
        2
    );
}

#[test]
fn wrong_passwords_for_a_user_back_off_growing_and_a_correct_login_resets() {
    let mut harness = Harness::with_relay("[throttle]\nlogin-failures = 3\n");
    let wrong = Client::new(40002, "alice", "guess");
    let right = alice();
    let t = |harness: &Harness, secs| harness.at(secs);
    for _ in 0..3 {
        harness
            .allocate(&wrong, t(&harness, 0))
            .assert_error(401, "wrong password");
    }
    // The third failure starts a 1 s backoff: even the right password waits.
    assert_eq!(
        harness.allocate(&wrong, t(&harness, 0)).outcome,
        Outcome::Nothing
    );
    assert_eq!(
        harness.allocate(&right, t(&harness, 0)).outcome,
        Outcome::Nothing
    );
    assert_eq!(harness.rejected(Reject::LoginBackoff), 2);
    // Bob is not held up by alice's failures.
    harness.allocated(&super::bob(), t(&harness, 0));
    // After it, one more failure backs off for 2 s.
    harness
        .allocate(&wrong, t(&harness, 1))
        .assert_error(401, "wrong password");
    assert_eq!(
        harness.allocate(&right, t(&harness, 2)).outcome,
        Outcome::Nothing
    );
    // Once it is over, the right password allocates and the count starts afresh.
    harness.allocated(&right, t(&harness, 3));
    for _ in 0..2 {
        harness
            .allocate(&wrong, t(&harness, 3))
            .assert_error(401, "wrong password");
    }
    assert!(
        !harness
            .core
            .shared
            .throttle
            .user_blocked("alice", t(&harness, 3).instant)
    );
    assert_eq!(harness.rejected(Reject::LoginBackoff), 3);
}

#[test]
fn backoff_doubles_up_to_its_cap_and_a_quiet_window_forgets_it() {
    let harness = Harness::with_relay(
        "[throttle]\nlogin-failures = 1\nlogin-backoff-max = \"4s\"\nlogin-failure-window = \"1m\"\n",
    );
    let throttle = &harness.core.shared.throttle;
    let mut secs = 0;
    let mut periods = Vec::new();
    for _ in 0..5 {
        let backoff = throttle
            .user_failed("carol", harness.at(secs).instant)
            .unwrap();
        periods.push(backoff.period.as_secs());
        secs += backoff.period.as_secs();
    }
    assert_eq!(periods, vec![1, 2, 4, 4, 4]);
    let quiet = harness.at(secs + 60).instant;
    assert_eq!(
        throttle.user_failed("carol", quiet).unwrap().period,
        Duration::from_secs(1)
    );
}

#[test]
fn a_client_with_an_allocation_keeps_refreshing_while_its_user_backs_off() {
    let mut harness = Harness::with_relay("[throttle]\nlogin-failures = 2\n");
    let right = alice();
    harness.allocated(&right, harness.at(0));
    let wrong = Client::new(40002, "alice", "guess");
    for _ in 0..3 {
        harness.allocate(&wrong, harness.at(1));
    }
    assert!(
        harness
            .core
            .shared
            .throttle
            .user_blocked("alice", harness.at(1).instant)
    );
    harness
        .refresh(&right, harness.at(1), 600)
        .assert_success("refresh on the allocation");
}

#[test]
fn auth_failed_lines_are_folded_per_source_and_interval() {
    let mut harness = Harness::with_relay("[throttle]\nauth-log-interval = \"10s\"\n");
    let wrong = Client::new(40002, "alice", "guess");
    for _ in 0..5 {
        harness
            .allocate(&wrong, harness.at(0))
            .assert_error(401, "wrong password");
    }
    let throttle = &harness.core.shared.throttle;
    assert_eq!(throttle.folded_total(), 4, "one line written, four folded");
    let source = "127.0.0.1".parse().unwrap();
    assert_eq!(
        throttle.auth_log(source, harness.at(10).instant),
        AuthLog::Write { repeated: 4 }
    );
    assert_eq!(
        throttle.auth_log(source, harness.at(11).instant),
        AuthLog::Fold
    );
}

#[test]
fn binding_answers_per_source_are_bounded() {
    let mut harness =
        Harness::with_relay("[throttle]\nbinding-per-second = 1\nbinding-burst = 3\n");
    let client = from("198.51.100.7:5000");
    let bind = |harness: &mut Harness, secs| {
        let request = harness.unsigned(Method::BINDING, |_| {});
        harness.send(harness.at(secs), &client, &request).outcome
    };
    let outcomes: Vec<Outcome> = (0..5).map(|_| bind(&mut harness, 0)).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Reply).count(), 3);
    assert_eq!(harness.rejected(Reject::BindingThrottled), 2);
    assert_eq!(bind(&mut harness, 1), Outcome::Reply);
    assert_eq!(bind(&mut harness, 1), Outcome::Nothing);
}

#[test]
fn tracked_sources_are_capped_and_swept_once_their_buckets_are_full() {
    let mut harness = Harness::with_relay(
        "[throttle]\nmax-tracked = 2\nunauthenticated-per-second = 1\nunauthenticated-burst = 2\nauth-log-interval = \"1s\"\n",
    );
    for last in 1..=4 {
        challenged(&mut harness, 0, &from(&format!("198.51.100.{last}:5000")));
    }
    assert_eq!(harness.core.shared.throttle.tracked().0, 2);
    // The untracked sources share one overflow bucket: two answers between them.
    assert_eq!(harness.rejected(Reject::UnauthenticatedThrottled), 0);
    assert!(!challenged(&mut harness, 0, &from("198.51.100.5:5000")));
    harness.core.handle_timeout(harness.at(5).instant);
    assert_eq!(harness.core.shared.throttle.tracked().0, 0);
    assert!(challenged(&mut harness, 5, &from("198.51.100.5:5000")));
}

#[test]
fn clients_that_log_in_get_their_challenge_back() {
    let mut harness = Harness::with_relay(
        "[throttle]\nunauthenticated-per-second = 1\nunauthenticated-burst = 2\n",
    );
    // Many clients behind one address, each challenged and then allocating.
    for port in 41000..41010 {
        let client = alice().on_port(port);
        assert!(
            challenged(&mut harness, 0, &client.five_tuple),
            "port {port}"
        );
        harness.allocated(&client, harness.at(0));
    }
    assert_eq!(harness.rejected(Reject::UnauthenticatedThrottled), 0);
}

#[test]
fn a_reload_applies_new_limits_to_the_buckets() {
    let mut harness = Harness::new();
    let source = from("198.51.100.7:5000");
    assert_eq!(answered(&mut harness, 0, &source, 3), 3);
    let config = super::config_with_relay(
        "[throttle]\nunauthenticated-per-second = 1\nunauthenticated-burst = 4\n",
    );
    let now = harness.at(0);
    super::reload(&mut harness, &config, now);
    // 17 tokens left from the default burst of 20, now capped at 4.
    assert_eq!(answered(&mut harness, 0, &source, 10), 4);
}
