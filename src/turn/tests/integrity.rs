//! RFC 8489 integrity: the nonce cookie and PASSWORD-ALGORITHMS in
//! challenges, MESSAGE-INTEGRITY-SHA256 answered in kind, USERHASH, and the
//! bid-down check; SHA-1 clients unchanged.

use super::{Client, Harness, REALM, Reply, SECRET, alice, rest_client, udp_transport};
use crate::auth::{LongTermKey, NONCE_COOKIE, PasswordAlgorithm, long_term_key_for, userhash};
use crate::reject::Reject;
use crate::turn::core::Now;
use crate::wire::{Class, MessageBuilder, Method, attr};

/// PASSWORD-ALGORITHMS as the server sends it: SHA-256, then MD5.
const OFFERED: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];
const SHA256: [u8; 4] = [0, 2, 0, 0];
const MD5: [u8; 4] = [0, 1, 0, 0];

/// PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM as a request sends them.
type Algorithms<'k> = Option<(&'k [u8], &'k [u8])>;

/// How a request names its user, which algorithms it names, and how it signs.
struct Signed<'k> {
    userhash: bool,
    algorithms: Algorithms<'k>,
    key: &'k LongTermKey,
    sha256: bool,
}

impl<'k> Signed<'k> {
    /// An RFC 8489 client that chose SHA-256 from the server's list.
    fn sha256(key: &'k LongTermKey) -> Self {
        Self {
            userhash: false,
            algorithms: Some((&OFFERED, &SHA256)),
            key,
            sha256: true,
        }
    }
}

fn sha256_key(username: &str, password: &str) -> LongTermKey {
    long_term_key_for(PasswordAlgorithm::Sha256, username, REALM, password)
}

/// The nonce of a 401 to an unsigned Allocate from `client`.
fn challenge(harness: &mut Harness, client: &Client, now: Now) -> Reply {
    let request = harness.unsigned(Method::ALLOCATE, udp_transport);
    let reply = harness.send(now, &client.five_tuple, &request);
    reply.assert_error(401, "unsigned Allocate");
    reply
}

fn send_signed(
    harness: &mut Harness,
    client: &Client,
    now: Now,
    method: Method,
    nonce: &str,
    signed: &Signed<'_>,
) -> Reply {
    let mut buf = Vec::new();
    let transaction = harness.transaction();
    let mut builder = MessageBuilder::new(&mut buf, method, Class::Request, transaction);
    if method == Method::ALLOCATE {
        udp_transport(&mut builder);
    }
    if signed.userhash {
        builder.add(attr::USERHASH, &userhash(&client.username, REALM));
    } else {
        builder.add(attr::USERNAME, client.username.as_bytes());
    }
    builder
        .add(attr::REALM, REALM.as_bytes())
        .add(attr::NONCE, nonce.as_bytes());
    if let Some((offered, chosen)) = signed.algorithms {
        builder
            .add(attr::PASSWORD_ALGORITHMS, offered)
            .add(attr::PASSWORD_ALGORITHM, chosen);
    }
    if signed.sha256 {
        builder.add_integrity_sha256(signed.key.as_bytes());
    } else {
        builder.add_integrity(signed.key.as_bytes());
    }
    harness.send(now, &client.five_tuple, &buf)
}

#[track_caller]
fn assert_signed_sha256(reply: &Reply, key: &LongTermKey, what: &str) {
    let message = reply.message();
    assert!(message.integrity_sha256_matches(key.as_bytes()), "{what}");
    assert!(
        message.get(attr::MESSAGE_INTEGRITY).is_none(),
        "{what}: SHA-256 only"
    );
}

#[test]
fn challenges_carry_the_nonce_cookie_and_the_algorithms() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let reply = challenge(&mut harness, &alice(), now);
    assert!(reply.nonce().starts_with(NONCE_COOKIE), "{}", reply.nonce());
    assert_eq!(reply.get(attr::PASSWORD_ALGORITHMS), Some(&OFFERED[..]));

    // A nonce without the cookie is stale; the 438 offers the same.
    let client = alice();
    let bare = reply.nonce()[NONCE_COOKIE.len()..].to_owned();
    let request = harness.request_with_nonce(&client, &bare, Method::ALLOCATE, udp_transport);
    let stale = harness.send(now, &client.five_tuple, &request);
    stale.assert_error(438, "nonce with the cookie cut off");
    assert!(stale.nonce().starts_with(NONCE_COOKIE));
    assert_eq!(stale.get(attr::PASSWORD_ALGORITHMS), Some(&OFFERED[..]));
}

#[test]
fn sha256_client_allocates_and_gets_sha256_answers() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let nonce = challenge(&mut harness, &client, now).nonce();
    let key = sha256_key("alice", "pw");
    let signed = Signed::sha256(&key);
    let reply = send_signed(
        &mut harness,
        &client,
        now,
        Method::ALLOCATE,
        &nonce,
        &signed,
    );
    reply.started();
    assert_signed_sha256(&reply, &key, "Allocate");

    let reply = send_signed(&mut harness, &client, now, Method::REFRESH, &nonce, &signed);
    reply.assert_success("Refresh");
    assert_signed_sha256(&reply, &key, "Refresh");

    // The allocation keeps its SHA-256 key: an MD5 one does not refresh it.
    let md5 = Signed {
        algorithms: Some((&OFFERED, &MD5)),
        key: &client.key,
        ..Signed::sha256(&key)
    };
    let reply = send_signed(&mut harness, &client, now, Method::REFRESH, &nonce, &md5);
    reply.assert_error(401, "another algorithm than the allocation's");
}

#[test]
fn rest_user_signs_with_its_sha256_key() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = rest_client(40010, "carol", now.unix + 3600);
    let password = crate::auth::rest_password(SECRET.as_bytes(), &client.username);
    let key = sha256_key(&client.username, &password);
    let nonce = harness.nonce(&client, now);
    let reply = send_signed(
        &mut harness,
        &client,
        now,
        Method::ALLOCATE,
        &nonce,
        &Signed::sha256(&key),
    );
    reply.started();
    assert_signed_sha256(&reply, &key, "REST Allocate");
}

#[test]
fn sha256_integrity_with_the_md5_key_is_answered_in_kind() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let nonce = harness.nonce(&client, now);
    let signed = Signed {
        algorithms: Some((&OFFERED, &MD5)),
        ..Signed::sha256(&client.key)
    };
    let reply = send_signed(
        &mut harness,
        &client,
        now,
        Method::ALLOCATE,
        &nonce,
        &signed,
    );
    reply.started();
    assert_signed_sha256(&reply, &client.key, "MD5 key, SHA-256 integrity");
}

#[test]
fn userhash_client_allocates() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let nonce = harness.nonce(&client, now);
    let key = sha256_key("alice", "pw");
    let signed = Signed {
        userhash: true,
        ..Signed::sha256(&key)
    };
    let reply = send_signed(
        &mut harness,
        &client,
        now,
        Method::ALLOCATE,
        &nonce,
        &signed,
    );
    reply.started();
    assert_signed_sha256(&reply, &key, "Allocate by USERHASH");
    let names: Vec<&str> = harness
        .core
        .allocations()
        .map(|a| a.username.as_str())
        .collect();
    assert_eq!(names, ["alice"]);
    let reply = send_signed(&mut harness, &client, now, Method::REFRESH, &nonce, &signed);
    reply.assert_success("Refresh by USERHASH");

    // A REST username cannot be found from its hash.
    let rest = rest_client(40011, "carol", now.unix + 3600);
    let password = crate::auth::rest_password(SECRET.as_bytes(), &rest.username);
    let key = sha256_key(&rest.username, &password);
    let nonce = harness.nonce(&rest, now);
    let signed = Signed {
        userhash: true,
        ..Signed::sha256(&key)
    };
    let reply = send_signed(&mut harness, &rest, now, Method::ALLOCATE, &nonce, &signed);
    reply.assert_error(401, "REST user by USERHASH");
    assert_eq!(harness.rejected(Reject::UnknownUser), 1);
}

#[test]
fn altered_or_missing_algorithms_are_a_bid_down_and_get_400() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let nonce = harness.nonce(&client, now);
    let md5_only = [0, 1, 0, 0];
    let unknown = [0, 3, 0, 0];
    let cases: [(&str, Algorithms<'_>); 4] = [
        ("list cut to MD5", Some((&md5_only, &MD5))),
        ("algorithm not offered", Some((&OFFERED, &unknown))),
        (
            "algorithm with parameters",
            Some((&OFFERED, &[0, 2, 0, 4, 1, 2, 3, 4])),
        ),
        ("list reordered", Some((&[0, 1, 0, 0, 0, 2, 0, 0], &SHA256))),
    ];
    let key = sha256_key("alice", "pw");
    for (what, algorithms) in cases {
        let signed = Signed {
            algorithms,
            ..Signed::sha256(&key)
        };
        send_signed(
            &mut harness,
            &client,
            now,
            Method::ALLOCATE,
            &nonce,
            &signed,
        )
        .assert_error(400, what);
    }
    // PASSWORD-ALGORITHM without the list it was chosen from.
    let mut buf = Vec::new();
    let transaction = harness.transaction();
    MessageBuilder::new(&mut buf, Method::ALLOCATE, Class::Request, transaction)
        .add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0])
        .add(attr::USERNAME, b"alice")
        .add(attr::REALM, REALM.as_bytes())
        .add(attr::NONCE, nonce.as_bytes())
        .add(attr::PASSWORD_ALGORITHM, &SHA256)
        .add_integrity_sha256(key.as_bytes());
    harness
        .send(now, &client.five_tuple, &buf)
        .assert_error(400, "no PASSWORD-ALGORITHMS");
    assert_eq!(harness.rejected(Reject::PasswordAlgorithmMismatch), 5);
    assert!(!harness.core.has_allocation(&client.five_tuple));
}

#[test]
fn sha1_client_still_allocates_and_gets_sha1_answers() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let nonce = challenge(&mut harness, &client, now).nonce();
    let request = harness.request_with_nonce(&client, &nonce, Method::ALLOCATE, udp_transport);
    let reply = harness.send(now, &client.five_tuple, &request);
    reply.started();
    let message = reply.message();
    assert!(message.integrity_matches(client.key.as_bytes()));
    assert!(message.get(attr::MESSAGE_INTEGRITY_SHA256).is_none());
}

#[test]
fn wrong_sha256_mac_gets_401() {
    let mut harness = Harness::new();
    let now = harness.at(0);
    let client = alice();
    let nonce = harness.nonce(&client, now);
    let wrong = sha256_key("alice", "not-alice-password");
    let reply = send_signed(
        &mut harness,
        &client,
        now,
        Method::ALLOCATE,
        &nonce,
        &Signed::sha256(&wrong),
    );
    reply.assert_error(401, "wrong SHA-256 key");
    assert!(reply.nonce().starts_with(NONCE_COOKIE));
    // The MD5 key under a SHA-256 PASSWORD-ALGORITHM is wrong too.
    let reply = send_signed(
        &mut harness,
        &client,
        now,
        Method::ALLOCATE,
        &nonce,
        &Signed::sha256(&client.key),
    );
    reply.assert_error(401, "MD5 key, SHA-256 named");
    assert_eq!(harness.rejected(Reject::WrongPassword), 2);
    assert!(!harness.core.has_allocation(&client.five_tuple));
}
