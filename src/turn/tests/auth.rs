//! Long-term credentials and nonces: 401, 438 and 441.

use super::{Harness, Reply, alice, bob, rest_client, udp_transport};
use crate::reject::Reject;
use crate::wire::{Method, attr};

/// A 401 or 438 names our realm and carries a nonce this client may use now.
#[track_caller]
fn assert_challenge(reply: &Reply, code: u16, what: &str) {
    reply.assert_error(code, what);
    assert_eq!(
        reply.get(attr::REALM),
        Some(super::REALM.as_bytes()),
        "{what}"
    );
    assert!(
        reply.get(attr::MESSAGE_INTEGRITY).is_none(),
        "{what}: no key to sign with"
    );
}

#[test]
fn request_without_integrity_is_challenged_with_realm_and_a_usable_nonce() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let request = harness.unsigned(Method::ALLOCATE, udp_transport);
    let reply = harness.send(now, &client.five_tuple, &request);
    assert_challenge(&reply, 401, "Allocate without credentials");
    assert_eq!(harness.rejected(Reject::Challenge), 1);
    let nonce = reply.nonce();
    assert!(
        harness
            .core
            .credentials()
            .check_nonce(nonce.as_bytes(), client.five_tuple.client, now.unix)
            .is_ok(),
        "the challenge's nonce is valid for this client"
    );
    let request = harness.request_with_nonce(&client, &nonce, Method::ALLOCATE, udp_transport);
    harness.send(now, &client.five_tuple, &request).started();
}

#[test]
fn integrity_without_username_realm_or_nonce_is_a_bad_request() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let request = harness.unsigned(Method::ALLOCATE, |b| {
        udp_transport(b);
        b.add(attr::USERNAME, b"alice")
            .add_integrity(client.key.as_bytes());
    });
    harness
        .send(now, &client.five_tuple, &request)
        .assert_error(400, "no REALM, no NONCE");
}

#[test]
fn wrong_password_unknown_user_and_expired_rest_username_get_401() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let cases = [
        (
            super::Client::new(40000, "alice", "not-alice-password"),
            Reject::WrongPassword,
        ),
        (
            super::Client::new(40001, "mallory", "pw"),
            Reject::UnknownUser,
        ),
        (
            rest_client(40002, "carol", now.unix - 60),
            Reject::ExpiredCredentials,
        ),
    ];
    for (client, reject) in cases {
        let reply = harness.allocate(&client, now);
        assert_challenge(&reply, 401, reject.name());
        assert_eq!(harness.rejected(reject), 1, "{}", reject.name());
    }
    assert_eq!(harness.core.allocation_count(), 0);
    assert!(harness.sockets.open.is_empty());
    // The same computation with an expiry ahead works: the 401 was the expiry.
    let valid = rest_client(40003, "carol", now.unix + 3600);
    harness.allocated(&valid, now);
}

#[test]
fn allocation_keeps_its_key_after_its_rest_username_expires() {
    let mut harness = Harness::new();
    let client = rest_client(40000, "carol", harness.at(0).unix + 100);
    harness.allocated(&client, harness.at(0));
    let later = harness.at(200);
    harness
        .refresh(&client, later, 600)
        .assert_success("refresh after the username expired");
    let other = client.on_port(40001);
    harness
        .allocate(&other, later)
        .assert_error(401, "a new allocation with the expired username");
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce_that_works() {
    let mut harness = Harness::new();
    let client = alice();
    let issued = harness.nonce(&client, harness.at(0));
    let stale_at = harness.at(601);
    let request = harness.request_with_nonce(&client, &issued, Method::ALLOCATE, udp_transport);
    let reply = harness.send(stale_at, &client.five_tuple, &request);
    assert_challenge(&reply, 438, "nonce older than its lifetime");
    assert_eq!(harness.rejected(Reject::StaleNonce), 1);
    let fresh = reply.nonce();
    assert_ne!(fresh, issued, "438 carries a new nonce");
    let request = harness.request_with_nonce(&client, &fresh, Method::ALLOCATE, udp_transport);
    harness
        .send(stale_at, &client.five_tuple, &request)
        .started();
}

#[test]
fn nonce_issued_to_another_client_address_is_stale() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let theirs = harness.nonce(&client.on_port(40009), now);
    let request = harness.request_with_nonce(&client, &theirs, Method::ALLOCATE, udp_transport);
    let reply = harness.send(now, &client.five_tuple, &request);
    assert_challenge(&reply, 438, "someone else's nonce");
    let request =
        harness.request_with_nonce(&client, "not-a-nonce", Method::ALLOCATE, udp_transport);
    assert_challenge(
        &harness.send(now, &client.five_tuple, &request),
        438,
        "garbage nonce",
    );
}

#[test]
fn request_on_an_allocation_of_another_user_gets_441() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let alice = alice();
    harness.allocated(&alice, now);
    // Bob's valid credentials, from the 5-tuple alice allocated on.
    let intruder = super::Client {
        five_tuple: alice.five_tuple,
        ..bob()
    };
    for (method, what) in [
        (Method::REFRESH, "Refresh"),
        (Method::CREATE_PERMISSION, "CreatePermission"),
        (Method::ALLOCATE, "Allocate"),
    ] {
        harness
            .call(&intruder, now, method, |b| {
                b.add_xor_address(attr::XOR_PEER_ADDRESS, super::peer("127.0.0.1:9"));
                udp_transport(b);
            })
            .assert_error(441, what);
    }
    assert_eq!(harness.rejected(Reject::WrongCredentials), 3);
    harness
        .refresh(&alice, now, 600)
        .assert_success("alice's own refresh");
}

#[test]
fn wrong_password_on_an_existing_allocation_gets_401() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    harness.allocated(&alice(), now);
    let guesser = super::Client::new(40000, "alice", "guess");
    let reply = harness.refresh(&guesser, now, 0);
    assert_challenge(&reply, 401, "Refresh with a wrong password");
    assert_eq!(harness.core.allocation_count(), 1, "not deleted");
}
