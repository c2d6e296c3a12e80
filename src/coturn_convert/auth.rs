//! coturn's credentials as `[auth]`: REST secrets, static users and the nonce lifetime.

use super::settings::{Credential, Settings};
use super::writer::{TomlWriter, array, quoted};

/// Writes `[auth]` and its `[[auth.users]]`.
pub(super) fn write_auth(w: &mut TomlWriter, s: &Settings, fresh_secret: &str) {
    w.table("[auth]");
    if !s.secrets.is_empty() {
        let from = if s.use_auth_secret {
            "use-auth-secret, static-auth-secret"
        } else {
            "static-auth-secret"
        };
        w.key("secrets", array(&s.secrets), from);
    } else if s.use_auth_secret {
        w.comment(
            "use-auth-secret without static-auth-secret: coturn kept the secrets in its database.\n\
             Put them in secrets (the first one mints credentials).",
        );
    }
    if s.secrets.is_empty() && s.users.is_empty() {
        w.comment(
            "The coturn file has no credentials icegate can take, and icegate needs some:\n\
             a fresh REST secret. Share it with the application server that mints credentials.",
        );
        w.key(
            "secrets",
            array(&[fresh_secret]),
            "none (icegate needs credentials)",
        );
    }
    if let Some(secs) = s.stale_nonce {
        w.key("nonce-lifetime", quoted(&format!("{secs}s")), "stale-nonce");
    }
    if s.users.iter().any(|(_, c)| matches!(c, Credential::Key(_))) && s.realm.is_none() {
        w.comment(
            "The keys below hash the realm coturn used; this file sets none, so set realm to it.",
        );
    }
    for (name, credential) in &s.users {
        w.table("[[auth.users]]");
        w.key("name", quoted(name), "user");
        match credential {
            Credential::Password(password) => w.key("password", quoted(password), "user"),
            Credential::Key(key) => w.key("key", quoted(key), "user"),
        }
    }
}
