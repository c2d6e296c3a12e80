//! The credential store: long-term credentials (RFC 8489 §9.2) for static
//! users and TURN REST usernames, and stateless nonces.
//!
//! A nonce is `expiry || HMAC(server key, expiry || client address)`, so
//! strangers cost no memory: nothing is stored until a request authenticates.
//! It starts with the RFC 8489 nonce cookie, which tells clients that know
//! it that PASSWORD-ALGORITHMS is offered; to others it is opaque text.
//!
//! Long-term keys exist per password algorithm (RFC 8489 §9.2.2): MD5 for
//! every client so far, SHA-256 for clients that choose it. Static users
//! have both precomputed (a user configured by its MD5 key has only that
//! one), and are found by USERHASH too.
//!
//! A node that sends a client to a sibling (300 Try Alternate) hands it a
//! sibling nonce, the cookie and `s.` then `expiry || HMAC(REST secret,
//! expiry || client IP)`, which every node sharing the secret accepts:
//! browsers take the nonce of the 300 to the sibling and give up on a 438
//! there.
//!
//! REST usernames are `expiry:user` (or `user:expiry`, as coturn also accepts)
//! with password base64(HMAC-SHA1(secret, username)); every configured
//! secret verifies, the first one mints. Static users are looked up first so
//! a static name that looks like a REST username still works.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, UserCredential};
use crate::reject::Reject;

/// The password algorithms of RFC 8489 §18.5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PasswordAlgorithm {
    Md5,
    Sha256,
}

/// A long-term key: the algorithm's hash of username ":" realm ":" password.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LongTermKey {
    Md5([u8; 16]),
    Sha256([u8; 32]),
}

impl LongTermKey {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Md5(key) => key,
            Self::Sha256(key) => key,
        }
    }

    pub(crate) fn algorithm(&self) -> PasswordAlgorithm {
        match self {
            Self::Md5(_) => PasswordAlgorithm::Md5,
            Self::Sha256(_) => PasswordAlgorithm::Sha256,
        }
    }
}

/// "obMatJos2" and the security features in 4 base64 characters: 24 bits,
/// bit 0 (the most significant) for password algorithms (RFC 8489 §9.2).
pub(crate) const NONCE_COOKIE: &str = "obMatJos2gAAA";

const NONCE_MAC_LEN: usize = 12;

/// A static user's keys; no SHA-256 one when the config gives the MD5 key.
#[derive(Clone, Copy)]
struct StaticKeys {
    md5: [u8; 16],
    sha256: Option<[u8; 32]>,
}

#[derive(Clone)]
pub(crate) struct CredentialStore {
    realm: String,
    users: HashMap<String, StaticKeys>,
    /// USERHASH → static user name (RFC 8489 §14.4). REST usernames are not
    /// here: a hash cannot be turned back into `EXPIRY:NAME`, so a REST user
    /// sending USERHASH is unknown and gets a 401.
    userhashes: HashMap<[u8; 32], String>,
    secrets: Vec<Vec<u8>>,
    nonce_key: [u8; 32],
    nonce_lifetime: Duration,
    credential_ttl: Duration,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

/// The keys a username may authenticate with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Keys {
    Static(LongTermKey),
    /// One candidate per configured secret, first secret first.
    Rest(Vec<LongTermKey>),
}

impl Keys {
    /// Whose quota an allocation made with `username` counts against: a
    /// static user's name, or a REST username's user part, so that minting
    /// a fresh REST username does not make a fresh user.
    pub(crate) fn owner<'a>(&self, username: &'a str) -> &'a str {
        match self {
            Self::Static(_) => username,
            Self::Rest(_) => rest_user_part(username).unwrap_or(username),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &LongTermKey> {
        match self {
            Self::Static(key) => std::slice::from_ref(key).iter(),
            Self::Rest(keys) => keys.iter(),
        }
    }
}

impl CredentialStore {
    pub(crate) fn new(realm: &str, auth: &AuthConfig, nonce_key: [u8; 32]) -> Self {
        let users = auth
            .users
            .iter()
            .map(|user| {
                let keys = match &user.credential {
                    UserCredential::Password(password) => StaticKeys {
                        md5: md5_key(&user.name, realm, password),
                        sha256: Some(sha256_key(&user.name, realm, password)),
                    },
                    UserCredential::Key(key) => StaticKeys {
                        md5: *key,
                        sha256: None,
                    },
                };
                (user.name.clone(), keys)
            })
            .collect();
        let userhashes = auth
            .users
            .iter()
            .map(|user| (userhash(&user.name, realm), user.name.clone()))
            .collect();
        Self {
            realm: realm.to_owned(),
            users,
            userhashes,
            secrets: auth.secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            nonce_key,
            nonce_lifetime: auth.nonce_lifetime,
            credential_ttl: auth.credential_ttl,
        }
    }

    pub(crate) fn realm(&self) -> &str {
        &self.realm
    }

    pub(crate) fn credential_ttl(&self) -> Duration {
        self.credential_ttl
    }

    /// The static user whose USERHASH is `hash`.
    pub(crate) fn user_by_hash(&self, hash: &[u8]) -> Option<&str> {
        let hash: [u8; 32] = hash.try_into().ok()?;
        self.userhashes.get(&hash).map(String::as_str)
    }

    /// The keys for `algorithm` that `username` may have used, or why it
    /// cannot be a user at all.
    pub(crate) fn keys(
        &self,
        username: &str,
        algorithm: PasswordAlgorithm,
        unix_now: u64,
    ) -> Result<Keys, Reject> {
        if let Some(keys) = self.users.get(username) {
            return match algorithm {
                PasswordAlgorithm::Md5 => Ok(Keys::Static(LongTermKey::Md5(keys.md5))),
                // Configured by its MD5 key: the password a SHA-256 key
                // needs is not known, so only MD5 can authenticate it.
                PasswordAlgorithm::Sha256 => keys
                    .sha256
                    .map(|key| Keys::Static(LongTermKey::Sha256(key)))
                    .ok_or(Reject::WrongPassword),
            };
        }
        let expiry = rest_expiry(username).ok_or(Reject::UnknownUser)?;
        if self.secrets.is_empty() {
            return Err(Reject::UnknownUser);
        }
        if expiry < unix_now {
            return Err(Reject::ExpiredCredentials);
        }
        Ok(Keys::Rest(
            self.secrets
                .iter()
                .map(|secret| {
                    let password = rest_password(secret, username);
                    long_term_key_for(algorithm, username, &self.realm, &password)
                })
                .collect(),
        ))
    }

    /// Mints REST credentials with the first secret: (username, password).
    pub(crate) fn mint(
        &self,
        user: &str,
        ttl: Duration,
        unix_now: u64,
    ) -> Option<(String, String)> {
        let secret = self.secrets.first()?;
        let username = format!("{}:{user}", unix_now + ttl.as_secs());
        let password = rest_password(secret, &username);
        Some((username, password))
    }

    /// A nonce valid for `nonce-lifetime`, bound to the client's address.
    pub(crate) fn nonce(&self, client: SocketAddr, unix_now: u64) -> String {
        let expiry = unix_now + self.nonce_lifetime.as_secs();
        let mut raw = [0u8; 8 + NONCE_MAC_LEN];
        raw[..8].copy_from_slice(&expiry.to_be_bytes());
        raw[8..].copy_from_slice(&self.nonce_mac(expiry, client));
        format!("{NONCE_COOKIE}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// A nonce for the sibling a client is sent to, which accepts it if it
    /// shares the first REST secret: bound to the client's IP only, since a
    /// client that must reconnect (over TCP) comes from another port.
    pub(crate) fn sibling_nonce(&self, client: SocketAddr, unix_now: u64) -> Option<String> {
        let secret = self.secrets.first()?;
        let expiry = unix_now + self.nonce_lifetime.as_secs();
        let mut raw = [0u8; 8 + NONCE_MAC_LEN];
        raw[..8].copy_from_slice(&expiry.to_be_bytes());
        raw[8..].copy_from_slice(&sibling_mac(secret, expiry, client));
        Some(format!(
            "{NONCE_COOKIE}{SIBLING_NONCE}{}",
            URL_SAFE_NO_PAD.encode(raw)
        ))
    }

    /// Ok for a nonce this server issued to `client` that has not expired.
    /// One without the cookie (from before it was sent, or with the cookie
    /// stripped to bid the algorithm down, RFC 8489 §9.2.1) is stale: the
    /// 438 hands the client one with the cookie.
    pub(crate) fn check_nonce(
        &self,
        nonce: &[u8],
        client: SocketAddr,
        unix_now: u64,
    ) -> Result<(), Reject> {
        let nonce = nonce
            .strip_prefix(NONCE_COOKIE.as_bytes())
            .ok_or(Reject::StaleNonce)?;
        let (sibling, nonce) = match nonce.strip_prefix(SIBLING_NONCE.as_bytes()) {
            Some(rest) => (true, rest),
            None => (false, nonce),
        };
        let mut raw = [0u8; 8 + NONCE_MAC_LEN];
        match URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
            Ok(len) if len == raw.len() => {}
            _ => return Err(Reject::StaleNonce),
        }
        let mut expiry = [0u8; 8];
        expiry.copy_from_slice(&raw[..8]);
        let expiry = u64::from_be_bytes(expiry);
        let matches = |mac: [u8; NONCE_MAC_LEN]| bool::from(mac.ct_eq(&raw[8..]));
        let issued = if sibling {
            // Any secret: siblings rotate theirs at their own pace.
            self.secrets
                .iter()
                .any(|secret| matches(sibling_mac(secret, expiry, client)))
        } else {
            matches(self.nonce_mac(expiry, client))
        };
        if !issued || expiry < unix_now {
            return Err(Reject::StaleNonce);
        }
        Ok(())
    }

    fn nonce_mac(&self, expiry: u64, client: SocketAddr) -> [u8; NONCE_MAC_LEN] {
        let mut mac =
            Hmac::<Sha1>::new_from_slice(&self.nonce_key).expect("hmac accepts keys of any length");
        mac.update(&expiry.to_be_bytes());
        match client.ip() {
            std::net::IpAddr::V4(ip) => mac.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&client.port().to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; NONCE_MAC_LEN];
        out.copy_from_slice(&full[..NONCE_MAC_LEN]);
        out
    }
}

/// What starts a sibling nonce: a server's own nonces are base64url, which
/// has no `.`.
const SIBLING_NONCE: &str = "s.";

fn sibling_mac(secret: &[u8], expiry: u64, client: SocketAddr) -> [u8; NONCE_MAC_LEN] {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("hmac accepts keys of any length");
    mac.update(b"icegate sibling nonce");
    mac.update(&expiry.to_be_bytes());
    match client.ip() {
        std::net::IpAddr::V4(ip) => mac.update(&ip.octets()),
        std::net::IpAddr::V6(ip) => mac.update(&ip.octets()),
    }
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; NONCE_MAC_LEN];
    out.copy_from_slice(&full[..NONCE_MAC_LEN]);
    out
}

/// The MD5 long-term key, the one every client before RFC 8489 uses.
#[cfg(any(test, fuzzing))]
pub(crate) fn long_term_key(username: &str, realm: &str, password: &str) -> LongTermKey {
    LongTermKey::Md5(md5_key(username, realm, password))
}

pub(crate) fn long_term_key_for(
    algorithm: PasswordAlgorithm,
    username: &str,
    realm: &str,
    password: &str,
) -> LongTermKey {
    match algorithm {
        PasswordAlgorithm::Md5 => LongTermKey::Md5(md5_key(username, realm, password)),
        PasswordAlgorithm::Sha256 => LongTermKey::Sha256(sha256_key(username, realm, password)),
    }
}

fn md5_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    hash_joined::<Md5>(&[username, realm, password]).into()
}

fn sha256_key(username: &str, realm: &str, password: &str) -> [u8; 32] {
    hash_joined::<Sha256>(&[username, realm, password]).into()
}

/// USERHASH: SHA-256(username ":" realm) (RFC 8489 §14.4).
pub(crate) fn userhash(username: &str, realm: &str) -> [u8; 32] {
    hash_joined::<Sha256>(&[username, realm]).into()
}

/// The hash of `parts` joined by ':'.
fn hash_joined<D: Digest>(parts: &[&str]) -> md5::digest::Output<D> {
    let mut hash = D::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash.update(b":");
        }
        hash.update(part.as_bytes());
    }
    hash.finalize()
}

/// base64(HMAC-SHA1(secret, username)), the TURN REST password.
pub(crate) fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("hmac accepts keys of any length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The expiry of a REST username: all digits before the first `:`, or after
/// the last one, or the whole name.
fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The user part of a TURN REST username, `expiry:user` or `user:expiry`.
pub(crate) fn rest_user_part(username: &str) -> Option<&str> {
    match username.split_once(':') {
        Some((head, tail)) if all_digits(head) => Some(tail),
        Some(_) => username
            .rsplit_once(':')
            .filter(|(_, tail)| all_digits(tail))
            .map(|(head, _)| head),
        None => None,
    }
}

fn rest_expiry(username: &str) -> Option<u64> {
    let candidate = match username.split_once(':') {
        Some((head, _)) if all_digits(head) => head,
        Some(_) => username.rsplit_once(':').map(|(_, tail)| tail)?,
        None => username,
    };
    if all_digits(candidate) {
        candidate.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::User;

    const NOW: u64 = 1_800_000_000;

    fn store(secrets: &[&str], users: Vec<User>) -> CredentialStore {
        let auth = AuthConfig {
            secrets: secrets.iter().map(|s| (*s).to_owned()).collect(),
            secrets_file: None,
            credential_ttl: Duration::from_secs(86_400),
            nonce_lifetime: Duration::from_secs(600),
            users,
        };
        CredentialStore::new("example.org", &auth, [9; 32])
    }

    #[test]
    fn rest_username_verifies_with_any_secret_and_expires() {
        let old = store(&["old-secret-value"], vec![]);
        let both = store(&["new-secret-value", "old-secret-value"], vec![]);
        let (username, password) = old.mint("alice", Duration::from_secs(60), NOW).unwrap();
        let expected = long_term_key(&username, "example.org", &password);
        let Keys::Rest(keys) = both.keys(&username, PasswordAlgorithm::Md5, NOW).unwrap() else {
            panic!("rest keys expected");
        };
        assert!(keys.contains(&expected));
        assert_eq!(
            both.keys(&username, PasswordAlgorithm::Md5, NOW + 61),
            Err(Reject::ExpiredCredentials)
        );
        assert_eq!(
            both.keys("alice", PasswordAlgorithm::Md5, NOW),
            Err(Reject::UnknownUser)
        );
    }

    #[test]
    fn static_user_that_looks_like_rest_username_is_found() {
        let users = vec![User {
            name: "1000:bob".into(),
            credential: UserCredential::Password("pw".into()),
        }];
        let store = store(&["secret-value-123"], users);
        assert_eq!(
            store.keys("1000:bob", PasswordAlgorithm::Md5, NOW),
            Ok(Keys::Static(long_term_key("1000:bob", "example.org", "pw")))
        );
    }

    #[test]
    fn rest_expiry_accepts_both_orders_and_bare_timestamps() {
        assert_eq!(rest_expiry("1700:alice"), Some(1700));
        assert_eq!(rest_expiry("alice:1700"), Some(1700));
        assert_eq!(rest_expiry("1700"), Some(1700));
        assert_eq!(rest_expiry("alice"), None);
        assert_eq!(rest_expiry("a:b:c"), None);
        assert_eq!(rest_expiry(":"), None);
    }

    #[test]
    fn nonce_is_bound_to_client_and_expires() {
        let store = store(&["secret-value-123"], vec![]);
        let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let other: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let nonce = store.nonce(client, NOW);
        assert_eq!(
            store.check_nonce(nonce.as_bytes(), client, NOW + 600),
            Ok(())
        );
        assert_eq!(
            store.check_nonce(nonce.as_bytes(), client, NOW + 601),
            Err(Reject::StaleNonce)
        );
        assert_eq!(
            store.check_nonce(nonce.as_bytes(), other, NOW),
            Err(Reject::StaleNonce)
        );
        assert_eq!(
            store.check_nonce(b"garbage", client, NOW),
            Err(Reject::StaleNonce)
        );
        let bare = nonce.strip_prefix(NONCE_COOKIE).unwrap();
        assert_eq!(
            store.check_nonce(bare.as_bytes(), client, NOW),
            Err(Reject::StaleNonce),
            "a nonce without the cookie is stale"
        );
    }

    #[test]
    fn static_users_have_a_key_per_algorithm_and_are_found_by_userhash() {
        let users = vec![
            User {
                name: "carol".into(),
                credential: UserCredential::Password("pw".into()),
            },
            User {
                name: "dave".into(),
                credential: UserCredential::Key(md5_key("dave", "example.org", "pw")),
            },
        ];
        let store = store(&["secret-value-123"], users);
        assert_eq!(
            store.keys("carol", PasswordAlgorithm::Sha256, NOW),
            Ok(Keys::Static(long_term_key_for(
                PasswordAlgorithm::Sha256,
                "carol",
                "example.org",
                "pw"
            )))
        );
        assert_eq!(
            store.keys("dave", PasswordAlgorithm::Sha256, NOW),
            Err(Reject::WrongPassword),
            "no password, no SHA-256 key"
        );
        assert_eq!(
            store.user_by_hash(&userhash("carol", "example.org")),
            Some("carol")
        );
        assert_eq!(
            store.user_by_hash(&userhash("dave", "example.org")),
            Some("dave")
        );
        assert_eq!(store.user_by_hash(&userhash("carol", "other.org")), None);
        assert_eq!(store.user_by_hash(b"short"), None);
    }

    #[test]
    fn rest_keys_follow_the_algorithm() {
        let store = store(&["secret-value-123"], vec![]);
        let (username, password) = store.mint("erin", Duration::from_secs(60), NOW).unwrap();
        let expected = long_term_key_for(
            PasswordAlgorithm::Sha256,
            &username,
            "example.org",
            &password,
        );
        assert_eq!(
            store.keys(&username, PasswordAlgorithm::Sha256, NOW),
            Ok(Keys::Rest(vec![expected]))
        );
    }

    #[test]
    fn rfc8489_userhash_and_sha256_key() {
        // RFC 8489 Appendix B.1: the username is unchanged by OpaqueString,
        // the password is "TheMatrIX" after it.
        let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
        assert_eq!(
            hex(&userhash(username, "example.org")),
            "4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704"
        );
        assert_eq!(
            long_term_key_for(PasswordAlgorithm::Md5, username, "example.org", "TheMatrIX"),
            long_term_key(username, "example.org", "TheMatrIX")
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_sibling_nonce_holds_on_every_node_sharing_the_secret() {
        let here = store(&["shared-secret-0123"], vec![]);
        let mut sibling = store(&["new-secret-4567", "shared-secret-0123"], vec![]);
        sibling.nonce_key = [7; 32];
        let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let nonce = here.sibling_nonce(client, NOW).expect("a REST secret");
        assert_eq!(sibling.check_nonce(nonce.as_bytes(), client, NOW), Ok(()));
        // From another port, as a client reconnecting over TCP.
        let reconnected = "192.0.2.7:40001".parse().unwrap();
        assert_eq!(
            sibling.check_nonce(nonce.as_bytes(), reconnected, NOW),
            Ok(())
        );
        let stranger = "192.0.2.8:40000".parse().unwrap();
        let refused = Err(Reject::StaleNonce);
        assert_eq!(
            sibling.check_nonce(nonce.as_bytes(), stranger, NOW),
            refused
        );
        assert_eq!(
            sibling.check_nonce(nonce.as_bytes(), client, NOW + 601),
            refused
        );
        let other = store(&["another-secret-89"], vec![]);
        assert_eq!(other.check_nonce(nonce.as_bytes(), client, NOW), refused);
        assert!(store(&[], vec![]).sibling_nonce(client, NOW).is_none());
    }
}
