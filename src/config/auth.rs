//! The `[auth]` table: TURN REST secrets (inline and from a secrets file), credential and nonce
//! lifetimes, and static long-term users.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeValue;

use super::io_message;
use super::scalars::{Scalar, kind};
use super::walk::{Ctx, Section, line_of, values};

/// Shortest accepted REST secret; shorter ones are guessable offline from one credential.
pub(crate) const MIN_SECRET_CHARS: usize = 8;
/// RFC 8489 §14.3: USERNAME must be fewer than 513 bytes.
pub(crate) const MAX_USERNAME_BYTES: usize = 512;
const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(600);
const AUTH_KEYS: &[&str] = &[
    "secrets",
    "secrets-file",
    "credential-ttl",
    "nonce-lifetime",
    "users",
];
const USER_KEYS: &[&str] = &["name", "password", "key"];

/// Credentials. `Debug` redacts secrets so that logging a config leaks none.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AuthConfig {
    /// TURN REST shared secrets, `auth.secrets` then those of `auth.secrets-file`: the first
    /// mints, all verify.
    pub(crate) secrets: Vec<String>,
    /// The file the secrets were read from, resolved against the config file's directory.
    pub(crate) secrets_file: Option<PathBuf>,
    /// Lifetime of REST credentials minted by `icegate credentials`.
    pub(crate) credential_ttl: Duration,
    /// After it a nonce is stale (error 438).
    pub(crate) nonce_lifetime: Duration,
    /// Static long-term users, names unique.
    pub(crate) users: Vec<User>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("secrets_file", &self.secrets_file)
            .field("credential_ttl", &self.credential_ttl)
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("users", &self.users)
            .finish()
    }
}

/// A static long-term user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) credential: UserCredential,
}

/// A static user's credential. `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum UserCredential {
    Password(String),
    /// MD5(name:realm:password), as coturn's `turnadmin -k` prints it.
    Key([u8; 16]),
}

impl fmt::Debug for UserCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserCredential::Password(_) => f.write_str("Password(<redacted>)"),
            UserCredential::Key(_) => f.write_str("Key(<redacted>)"),
        }
    }
}

pub(super) fn read_auth(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> AuthConfig {
    let auth = top.section(cx, "auth", AUTH_KEYS);

    let listed = auth.list::<String>(cx, "secrets", Vec::new());
    for (i, item) in listed.value.iter().enumerate() {
        if let Some(message) = short_secret(&item.value) {
            cx.report(
                format!("{}[{i}]", auth.key("secrets")),
                item.span.as_ref(),
                message,
            );
        }
    }
    let mut secrets = values(listed.value);

    let file = auth.opt::<PathBuf>(cx, "secrets-file");
    let mut file_ok = file.ok;
    let secrets_file = file.value.map(|path| match cx.base_dir {
        Some(base) if path.is_relative() => base.join(path),
        _ => path,
    });
    if let Some(path) = &secrets_file {
        let key = auth.key("secrets-file");
        match cx
            .may_read(path)
            .map_err(|e| vec![e])
            .and_then(|()| read_secrets_file(path))
        {
            Ok(from_file) => secrets.extend(from_file),
            Err(messages) => {
                file_ok = false;
                for message in messages {
                    cx.report(&key, file.span.as_ref(), message);
                }
            }
        }
    }

    let credential_ttl = auth.get(cx, "credential-ttl", DEFAULT_CREDENTIAL_TTL);
    let nonce_lifetime = auth.get(cx, "nonce-lifetime", DEFAULT_NONCE_LIFETIME);
    let (users, users_ok) = read_users(cx, &auth);

    if listed.ok && file_ok && users_ok && secrets.is_empty() && users.is_empty() {
        cx.report(
            "auth",
            listed.span.as_ref().or(auth.span.as_ref()),
            "no credentials configured: set auth.secrets, auth.secrets-file or add [[auth.users]]",
        );
    }

    AuthConfig {
        secrets,
        secrets_file,
        credential_ttl: credential_ttl.value,
        nonce_lifetime: nonce_lifetime.value,
        users,
    }
}

fn short_secret(secret: &str) -> Option<String> {
    let chars = secret.chars().count();
    (chars < MIN_SECRET_CHARS).then(|| {
        format!("expected a secret of at least {MIN_SECRET_CHARS} characters, got {chars}")
    })
}

/// Secrets of a secrets file: one a non-empty line, `#` starting a comment line. Every problem
/// is returned, none of them quoting a secret.
fn read_secrets_file(path: &Path) -> Result<Vec<String>, Vec<String>> {
    let text = fs::read_to_string(path).map_err(|e| {
        vec![format!(
            "cannot read {:?}: {}",
            path.display().to_string(),
            io_message(&e)
        )]
    })?;
    let mut secrets = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let secret = line.trim();
        if secret.is_empty() || secret.starts_with('#') {
            continue;
        }
        match short_secret(secret) {
            Some(message) => problems.push(format!(
                "{:?} line {}: {message}",
                path.display().to_string(),
                i + 1
            )),
            None => secrets.push(secret.to_owned()),
        }
    }
    if secrets.is_empty() && problems.is_empty() {
        problems.push(format!(
            "expected {:?} to hold at least one secret, it holds none",
            path.display().to_string()
        ));
    }
    if problems.is_empty() {
        Ok(secrets)
    } else {
        Err(problems)
    }
}

fn read_users(cx: &mut Ctx<'_>, auth: &Section<'_, '_>) -> (Vec<User>, bool) {
    let tables = auth.sections(cx, "users", USER_KEYS);
    let mut ok = tables.ok;
    let mut users = Vec::new();
    let mut lines_by_name: HashMap<String, Option<usize>> = HashMap::new();
    for section in &tables.value {
        let problems_before = cx.problems.len();
        let name = section.opt::<String>(cx, "name");
        let password = section.opt::<String>(cx, "password");
        let key = section.opt::<UserKey>(cx, "key");

        match &name.value {
            None if name.ok => cx.report(
                section.key("name"),
                section.span.as_ref(),
                "missing; expected a user name like \"alice\"",
            ),
            Some(n) if n.is_empty() => {
                cx.report(
                    section.key("name"),
                    name.span.as_ref(),
                    "expected a non-empty user name",
                );
            }
            Some(n) if n.len() > MAX_USERNAME_BYTES => {
                let message = format!(
                    "expected at most {MAX_USERNAME_BYTES} bytes, got {}",
                    n.len()
                );
                cx.report(section.key("name"), name.span.as_ref(), message);
            }
            Some(n) => {
                let line = name.span.as_ref().map(|s| line_of(cx.text, s.start));
                if let Some(first) = lines_by_name.get(n) {
                    let at = first.map_or(String::new(), |l| format!(" (line {l})"));
                    let message = format!("expected unique user names, got {n:?} again{at}");
                    cx.report(section.key("name"), name.span.as_ref(), message);
                } else {
                    lines_by_name.insert(n.clone(), line);
                }
            }
            None => {}
        }

        let credential = match (password.value, key.value) {
            (Some(_), Some(_)) => {
                // Point at whichever of the two comes last: the one likely added by mistake.
                let span = match (&password.span, &key.span) {
                    (Some(p), Some(k)) => Some(if p.start > k.start { p } else { k }),
                    (p, k) => p.as_ref().or(k.as_ref()),
                };
                cx.report(
                    &section.path,
                    span,
                    "set exactly one of password or key, not both",
                );
                None
            }
            (None, None) => {
                if password.ok && key.ok {
                    cx.report(
                        &section.path,
                        section.span.as_ref(),
                        "missing a credential: set exactly one of password or key",
                    );
                }
                None
            }
            (Some(p), None) if p.is_empty() => {
                cx.report(
                    section.key("password"),
                    password.span.as_ref(),
                    "expected a non-empty password",
                );
                None
            }
            (Some(p), None) => Some(UserCredential::Password(p)),
            (None, Some(UserKey(k))) => Some(UserCredential::Key(k)),
        };

        if cx.problems.len() != problems_before {
            ok = false;
        }
        if let (Some(name), Some(credential)) = (name.value, credential) {
            users.push(User { name, credential });
        }
    }
    (users, ok)
}

/// A user's long-term key: 32 hex digits, with or without "0x". Messages never quote it.
struct UserKey([u8; 16]);

impl Scalar for UserKey {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "32 hex digits (MD5 of \"name:realm:password\"), with or without 0x";
        let DeValue::String(text) = value else {
            return Err(format!("expected a string of {WHAT}, got {}", kind(value)));
        };
        let hex = text
            .strip_prefix("0x")
            .or_else(|| text.strip_prefix("0X"))
            .unwrap_or(text);
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "expected {WHAT}, got a string with other characters"
            ));
        }
        if hex.len() != 32 {
            return Err(format!("expected {WHAT}, got {} hex digits", hex.len()));
        }
        let mut key = [0u8; 16];
        for (byte, pair) in key.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| format!("expected {WHAT}"))?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| format!("expected {WHAT}"))?;
        }
        Ok(UserKey(key))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::config::Config;
    use crate::config::testing::{MINIMAL, parse_ok, scratch_dir};

    #[test]
    fn user_keys_and_passwords() {
        let key = "0123456789abcdef0123456789ABCDEF";
        let text = format!(
            "{MINIMAL}[[auth.users]]\nname = \"alice\"\npassword = \"secret\"\n\
             [[auth.users]]\nname = \"bob\"\nkey = \"{key}\"\n\
             [[auth.users]]\nname = \"carol\"\nkey = \"0x{key}\"\n"
        );
        let config = parse_ok(&text);
        let expected_key = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(
            config.auth.users,
            vec![
                User {
                    name: "alice".into(),
                    credential: UserCredential::Password("secret".into())
                },
                User {
                    name: "bob".into(),
                    credential: UserCredential::Key(expected_key)
                },
                User {
                    name: "carol".into(),
                    credential: UserCredential::Key(expected_key)
                },
            ]
        );
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("secret\"") && !debug.contains("0123456789abcdef"),
            "{debug}"
        );
    }

    #[test]
    fn users_alone_are_credentials() {
        let text =
            "[[listen]]\naddress = \"[::]:3478\"\n[[auth.users]]\nname = \"a\"\npassword = \"b\"\n";
        let config = parse_ok(text);
        assert_eq!(config.listen[0].address, "[::]:3478".parse().unwrap());
        assert!(config.auth.secrets.is_empty());
    }

    #[test]
    fn secrets_file_is_merged_and_relative_to_the_config() {
        let dir = scratch_dir();
        fs::write(
            dir.join("rest-secret"),
            "# comment\n\n  file-secret-0123456789  \n",
        )
        .unwrap();
        let config_path = dir.join("icegate.toml");
        fs::write(
            &config_path,
            "[[listen]]\naddress = \"0.0.0.0:3478\"\n[auth]\nsecrets = [\"inline-secret-0123\"]\nsecrets-file = \"rest-secret\"\n",
        )
        .unwrap();
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.auth.secrets,
            vec![
                "inline-secret-0123".to_owned(),
                "file-secret-0123456789".to_owned()
            ]
        );
        assert_eq!(config.auth.secrets_file, Some(dir.join("rest-secret")));

        fs::write(dir.join("rest-secret"), "# only a comment\nshort\n").unwrap();
        let e = Config::load(&config_path).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains(":5: auth.secrets-file: "), "{shown}");
        assert!(
            shown.contains("line 2: expected a secret of at least 8 characters, got 5"),
            "{shown}"
        );
        assert!(!shown.contains("no credentials"), "{shown}");
    }
}
