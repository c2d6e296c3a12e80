//! icegate's configuration: the schema of `/etc/icegate/icegate.toml`, its defaults and its
//! validation.
//!
//! `icegate check-config` must report every problem in a file, each with its dotted key and
//! line. serde stops at the first error, so the file is parsed once into toml's spanned
//! document tree ([`DeTable`]) and then walked table by table: every value is converted on its
//! own and every problem is collected, with the line of the value it concerns.
//!
//! One module per table: [`listen`], [`relay`], [`auth`], [`connections`], [`http`],
//! [`signal`], [`cluster`] and [`admin`] each hold their table's types, defaults and checks. [`walk`] opens
//! the tables and collects the problems; [`scalars`] converts single values. [`hints`] words
//! the problem of an unknown key, naming icegate's key for a coturn option from
//! [`coturn_options`], the table `icegate convert-coturn` follows too.

use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

mod admin;
mod auth;
mod cluster;
mod connections;
mod coturn_options;
mod hints;
mod http;
mod listen;
mod rate;
mod relay;
mod scalars;
mod signal;
#[cfg(test)]
mod testing;
mod throttle;
mod walk;

pub(crate) use self::admin::AdminConfig;
#[cfg(test)]
pub(crate) use self::auth::User;
pub(crate) use self::auth::{AuthConfig, MAX_USERNAME_BYTES, MIN_SECRET_CHARS, UserCredential};
pub(crate) use self::cluster::{CaFile, ClusterConfig, MAX_NODE_NAME_CHARS, is_node_name};
pub(crate) use self::connections::ConnectionLimits;
#[cfg(test)]
pub(crate) use self::coturn_options::COTURN_OPTIONS;
pub(crate) use self::coturn_options::{Equivalent, coturn_option};
use self::http::HttpConfig;
pub(crate) use self::listen::{Listen, Services, Transport};
pub(crate) use self::rate::ByteRate;
pub(crate) use self::relay::{Alternates, BandwidthCaps, DEFAULT_LIFETIME, RelayConfig};
pub(crate) use self::scalars::{MAX_DURATION, PortRange, parse_duration};
use self::scalars::{Scalar, expected, string};
#[cfg(test)]
pub(crate) use self::signal::DEFAULT_SIGNAL_LIMITS;
pub(crate) use self::signal::{
    Dialects, PublicKeyAlgorithm, SignalAuth, SignalConfig, SignalLimits,
};
pub(crate) use self::throttle::{DEFAULT_THROTTLE, ThrottleConfig};
use self::walk::{ConfigErrors, ConfigProblem, Ctx, Section, column_of, line_of};

/// RFC 8489 §14.9: REALM must be fewer than 128 characters.
pub(crate) const MAX_REALM_CHARS: usize = 127;

const DEFAULT_REALM: &str = "icegate";
/// How long SIGTERM waits for allocations to end (systemd's TimeoutStopSec must be longer).
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Where state lives without `state-directory` or `$STATE_DIRECTORY`; the package makes it.
const DEFAULT_STATE_DIRECTORY: &str = "/var/lib/icegate";

/// The origin named in messages about [`Config::embedded_default`].
pub(crate) const EMBEDDED_ORIGIN: &str = "<embedded default>";

/// The configuration of `icegate run` without `--config`: development on one machine only.
/// [`Config::embedded_default`] replaces the placeholder secret with a fresh one.
const EMBEDDED_DEFAULT: &str = r#"
realm = "icegate"
public-host = "127.0.0.1"

[[listen]]
address = "127.0.0.1:3478"
transport = "udp"

# The demo page and signaling, for browser tabs on this machine.
[[listen]]
address = "127.0.0.1:8478"
transport = "http"

[relay]
addresses = ["127.0.0.1"]
allow-peers = ["127.0.0.0/8", "::1/128"]

[auth]
secrets = ["replaced-by-embedded-default"]

[signal]
auth = "none"
"#;

/// A validated icegate configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// STUN/TURN REALM sent to clients and hashed into long-term keys.
    pub(crate) realm: String,
    /// Host name or IP address used in `stun:`/`turn:`/`turns:` URLs.
    pub(crate) public_host: Option<String>,
    pub(crate) log: LogConfig,
    /// Never empty, unique per transport.
    pub(crate) listen: Vec<Listen>,
    pub(crate) relay: RelayConfig,
    pub(crate) auth: AuthConfig,
    pub(crate) connections: ConnectionLimits,
    /// Per-source and per-user rate limits on unauthenticated traffic.
    pub(crate) throttle: ThrottleConfig,
    pub(crate) http: HttpConfig,
    pub(crate) signal: SignalConfig,
    /// Signaling across nodes through Redis; a single node without `redis`.
    pub(crate) cluster: ClusterConfig,
    /// How long a SIGTERM drain waits for allocations to end before exiting.
    pub(crate) shutdown_grace: Duration,
    pub(crate) admin: AdminConfig,
    /// Where state that outlives a restart (the bans) is kept.
    pub(crate) state_directory: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogConfig {
    pub(crate) level: LogLevel,
}

/// Verbosity of the daemon's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    const ALL: [LogLevel; 5] = [
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];

    /// The spelling used in the file.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

impl Scalar for LogLevel {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "one of \"error\", \"warn\", \"info\", \"debug\", \"trace\"";
        let text = string(value, WHAT)?;
        LogLevel::ALL
            .into_iter()
            .find(|l| l.as_str() == text)
            .ok_or_else(|| expected(WHAT, value))
    }
}

impl Config {
    /// Parse and validate TOML text. `origin` names the file in messages (a path, or
    /// [`EMBEDDED_ORIGIN`]). A relative `auth.secrets-file` is taken relative to the current
    /// directory; [`Config::load`] takes it relative to the config file instead.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        parse_in(text, origin, None, None)
    }

    /// Read a file and parse it; an unreadable file is an error naming the path.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        match fs::read_to_string(path) {
            Ok(text) => parse_in(&text, &origin, path.parent(), None),
            Err(e) => Err(ConfigErrors {
                origin,
                problems: vec![ConfigProblem {
                    key: String::new(),
                    line: None,
                    message: format!("cannot read the configuration file: {}", io_message(&e)),
                }],
            }),
        }
    }

    /// The configuration of `icegate run` without `--config`: UDP on 127.0.0.1:3478, relay on
    /// 127.0.0.1, peers limited to loopback, realm "icegate", public host 127.0.0.1, and
    /// `secret` (freshly generated by the caller, so not length-checked) as the only REST
    /// secret.
    pub(crate) fn embedded_default(secret: &str) -> Config {
        // The text is a constant, so this cannot fail at run time; a unit test parses it.
        let mut config = Config::parse(EMBEDDED_DEFAULT, EMBEDDED_ORIGIN)
            .unwrap_or_else(|e| panic!("the embedded default configuration is invalid:\n{e}"));
        config.auth.secrets = vec![secret.to_owned()];
        config
    }

    /// Parses `text` as [`Config::load`] would a file in `dir`, reading only
    /// small regular files inside `dir` (canonical), whatever paths the text
    /// names: the fuzz target's view of the loader.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn parse_sandboxed(text: &str, dir: &Path) -> Result<Config, ConfigErrors> {
        parse_in(text, "fuzz.toml", Some(dir), Some(dir))
    }
}

fn parse_in(
    text: &str,
    origin: &str,
    base_dir: Option<&Path>,
    sandbox: Option<&Path>,
) -> Result<Config, ConfigErrors> {
    let errors = |problems| ConfigErrors {
        origin: origin.to_owned(),
        problems,
    };
    // Only the first syntax error: after one, toml's recovery reports a cascade of errors on
    // lines that are fine.
    let root = DeTable::parse(text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) => (Some(line_of(text, span.start)), column_of(text, span.start)),
            None => (None, 0),
        };
        let at = if column > 0 {
            format!(" at column {column}")
        } else {
            String::new()
        };
        errors(vec![ConfigProblem {
            key: String::new(),
            line,
            message: format!("toml syntax error{at}: {}", e.message().replace('\n', "; ")),
        }])
    })?;
    let mut cx = Ctx {
        text,
        base_dir,
        sandbox,
        problems: Vec::new(),
    };
    let config = read_config(&mut cx, root.get_ref());
    if cx.problems.is_empty() {
        Ok(config)
    } else {
        let mut problems = cx.problems;
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(errors(problems))
    }
}

const ROOT_KEYS: &[&str] = &[
    "realm",
    "public-host",
    "log",
    "listen",
    "relay",
    "auth",
    "connections",
    "throttle",
    "http",
    "signal",
    "cluster",
    "shutdown-grace",
    "admin",
    "state-directory",
];
const LOG_KEYS: &[&str] = &["level"];

fn read_config(cx: &mut Ctx<'_>, root: &DeTable<'_>) -> Config {
    let top = Section::open(cx, String::new(), None, Some(root), ROOT_KEYS);

    let realm = top.get(cx, "realm", DEFAULT_REALM.to_owned());
    if realm.ok {
        let chars = realm.value.chars().count();
        if chars == 0 {
            cx.report(
                "realm",
                realm.span.as_ref(),
                "expected a non-empty realm like \"turn.example.org\"",
            );
        } else if chars > MAX_REALM_CHARS {
            let message = format!("expected at most {MAX_REALM_CHARS} characters, got {chars}");
            cx.report("realm", realm.span.as_ref(), message);
        }
    }

    let public_host = top.opt::<String>(cx, "public-host");
    if let Some(host) = &public_host.value
        && !is_host(host)
    {
        let message = format!(
            "expected a host name or IP address like \"turn.example.org\" \
             (no scheme, port or brackets), got {host:?}"
        );
        cx.report("public-host", public_host.span.as_ref(), message);
    }

    let log = top.section(cx, "log", LOG_KEYS);
    let level = log.get(cx, "level", LogLevel::default());

    let listen = listen::read_listen(cx, &top);
    let relay = relay::read_relay(cx, &top);
    let auth = auth::read_auth(cx, &top);
    let connections = connections::read_connections(cx, &top);
    let throttle = throttle::read_throttle(cx, &top);
    let http = http::read_http(cx, &top);
    let signal = signal::read_signal(cx, &top);
    let cluster = cluster::read_cluster(cx, &top);
    let shutdown_grace = top.get(cx, "shutdown-grace", DEFAULT_SHUTDOWN_GRACE);
    let admin = admin::read_admin(cx, &top);
    let state_directory = match top.opt::<PathBuf>(cx, "state-directory").value {
        Some(path) => match cx.base_dir {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        },
        None => default_state_directory(std::env::var_os("STATE_DIRECTORY")),
    };

    Config {
        realm: realm.value,
        public_host: public_host.value,
        log: LogConfig { level: level.value },
        listen,
        relay,
        auth,
        connections,
        throttle,
        http,
        signal,
        cluster,
        shutdown_grace: shutdown_grace.value,
        admin,
        state_directory,
    }
}

/// systemd's `$STATE_DIRECTORY` (the first, if StateDirectory= names
/// several), else [`DEFAULT_STATE_DIRECTORY`].
fn default_state_directory(from_systemd: Option<std::ffi::OsString>) -> PathBuf {
    from_systemd
        .and_then(|dirs| {
            let first = dirs.to_str()?.split(':').next()?.to_owned();
            (!first.is_empty()).then(|| PathBuf::from(first))
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIRECTORY))
}

/// A host name (letters, digits and hyphens in dot-separated labels) or an IP address.
fn is_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An io error as a lower-case message without the "(os error N)" suffix.
fn io_message(e: &io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error ").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    use ipnet::IpNet;

    use super::*;
    use crate::config::testing::{MINIMAL, parse_err, parse_ok, scratch_dir};

    fn manifest_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn toml_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|entry| entry.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
    }

    const INSTALLED_SECRETS_FILE: &str = "/etc/icegate/rest-secret";

    /// The text of a shipped file, with the installed secrets file (absent on a dev machine)
    /// replaced by a scratch one.
    fn shipped_text(path: &Path) -> String {
        let text = fs::read_to_string(path).expect("read shipped config");
        let quoted = format!("{INSTALLED_SECRETS_FILE:?}");
        if !text.contains(&quoted) {
            return text;
        }
        let secret = scratch_dir().join("rest-secret");
        fs::write(
            &secret,
            "# generated at install time\n0123456789abcdef0123456789abcdef\n",
        )
        .expect("write secret");
        let replacement = toml::Value::String(secret.display().to_string()).to_string();
        text.replace(&quoted, &replacement)
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = manifest_dir().join("config");
        let mut files = toml_files(&dir);
        files.extend(toml_files(&dir.join("examples")));
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap_or(p).display().to_string())
            .collect();
        for wanted in [
            "icegate.toml",
            "examples/rest-secrets.toml",
            "examples/static-users.toml",
            "examples/dev-loopback.toml",
        ] {
            assert!(names.iter().any(|n| n == wanted), "missing config/{wanted}");
        }
        for path in &files {
            let text = shipped_text(path);
            if let Err(e) = Config::parse(&text, &path.display().to_string()) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn installed_config_is_safe_for_the_internet() {
        let path = manifest_dir().join("config/icegate.toml");
        let raw = fs::read_to_string(&path).expect("read icegate.toml");
        assert!(raw.contains(&format!("secrets-file = {INSTALLED_SECRETS_FILE:?}")));
        let config = parse_ok(&shipped_text(&path));
        assert_eq!(
            config.listen,
            vec![
                Listen {
                    address: "0.0.0.0:3478".parse().unwrap(),
                    transport: Transport::Udp,
                    tls: None,
                    services: Services::TURN,
                    other_address: None,
                },
                Listen {
                    address: "0.0.0.0:3478".parse().unwrap(),
                    transport: Transport::Tcp,
                    tls: None,
                    services: Services::TURN,
                    other_address: None,
                }
            ]
        );
        assert_eq!(
            config.relay.addresses,
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        );
        assert!(config.relay.allow_peers.is_empty());
        assert!(config.auth.users.is_empty());
        assert_eq!(
            config.auth.secrets,
            vec!["0123456789abcdef0123456789abcdef".to_owned()]
        );
    }

    /// Each bad file must fail, and every non-empty line of its .expected file must appear in
    /// the output (origin is the bare file name, so expectations can name lines).
    #[test]
    fn bad_configs_report_expected_problems() {
        let dir = manifest_dir().join("tests/data/bad");
        let files = toml_files(&dir);
        assert!(files.len() >= 13, "only {} bad configs", files.len());
        let mut failures = Vec::new();
        for path in &files {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let text = fs::read_to_string(path).expect("read bad config");
            let expected_path = path.with_extension("expected");
            let expected = fs::read_to_string(&expected_path)
                .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
            let output = match Config::parse(&text, &name) {
                Ok(_) => {
                    failures.push(format!("{name}: parsed without error"));
                    continue;
                }
                Err(e) => e.to_string(),
            };
            for want in expected.lines().filter(|l| !l.trim().is_empty()) {
                if !output.contains(want) {
                    failures.push(format!("{name}: output lacks {want:?}; output:\n{output}"));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse_ok(MINIMAL);
        assert_eq!(config.signal.auth, SignalAuth::Off);
        assert_eq!(config.signal.limits, DEFAULT_SIGNAL_LIMITS);
        assert_eq!(config.realm, "icegate");
        assert_eq!(config.public_host, None);
        assert_eq!(config.log.level, LogLevel::Info);
        assert_eq!(
            log::LevelFilter::from(config.log.level),
            log::LevelFilter::Info
        );
        let relay = &config.relay;
        assert_eq!(relay.addresses, vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
        assert!(relay.external_addresses.is_empty());
        assert_eq!(
            relay.ports,
            PortRange {
                low: 49152,
                high: 65535
            }
        );
        assert_eq!(relay.ports.len(), 16384);
        assert!(relay.allow_peers.is_empty() && relay.deny_peers.is_empty());
        assert_eq!(relay.max_allocations, 10_000);
        assert_eq!(relay.max_allocations_per_user, 50);
        assert_eq!(relay.default_lifetime, Duration::from_secs(600));
        assert_eq!(relay.max_lifetime, Duration::from_secs(3600));
        assert_eq!(relay.permission_lifetime, Duration::from_secs(300));
        assert_eq!(relay.channel_lifetime, Duration::from_secs(600));
        let auth = &config.auth;
        assert_eq!(auth.secrets, vec!["0123456789abcdef".to_owned()]);
        assert_eq!(auth.secrets_file, None);
        assert_eq!(auth.credential_ttl, Duration::from_secs(86_400));
        assert_eq!(auth.nonce_lifetime, Duration::from_secs(600));
        assert!(auth.users.is_empty());
    }

    #[test]
    fn embedded_default_is_loopback_only() {
        let config = Config::embedded_default("fresh-secret-0123456789");
        assert_eq!(config.realm, "icegate");
        assert_eq!(config.public_host.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            config.listen,
            vec![
                Listen {
                    address: "127.0.0.1:3478".parse().unwrap(),
                    transport: Transport::Udp,
                    tls: None,
                    services: Services::TURN,
                    other_address: None,
                },
                Listen {
                    address: "127.0.0.1:8478".parse().unwrap(),
                    transport: Transport::Http,
                    tls: None,
                    services: Services::HTTP,
                    other_address: None,
                }
            ]
        );
        assert_eq!(config.signal.auth, SignalAuth::None);
        assert_eq!(
            config.relay.addresses,
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        let loopback: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert_eq!(config.relay.allow_peers, loopback);
        assert_eq!(
            config.auth.secrets,
            vec!["fresh-secret-0123456789".to_owned()]
        );
        assert!(
            !format!("{config:?}").contains("fresh-secret"),
            "Debug leaks the secret"
        );
    }

    #[test]
    fn state_directory_is_systemds_or_the_packaged_one_or_as_configured() {
        assert_eq!(
            default_state_directory(None),
            PathBuf::from("/var/lib/icegate")
        );
        assert_eq!(
            default_state_directory(Some("/var/lib/icegate-2:/var/lib/other".into())),
            PathBuf::from("/var/lib/icegate-2")
        );
        assert_eq!(
            default_state_directory(Some("".into())),
            PathBuf::from("/var/lib/icegate")
        );
        let config = parse_ok(&format!("state-directory = \"/srv/icegate\"\n{MINIMAL}"));
        assert_eq!(config.state_directory, PathBuf::from("/srv/icegate"));
        let dir = scratch_dir();
        let path = dir.join("icegate.toml");
        fs::write(&path, format!("state-directory = \"state\"\n{MINIMAL}")).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.state_directory, dir.join("state"));
    }

    #[test]
    fn unreadable_config_names_the_path() {
        let path = scratch_dir().join("absent.toml");
        let e = Config::load(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: cannot read the configuration file: no such file or directory",
                path.display()
            )
        );
    }

    #[test]
    fn empty_file_lacks_listen_and_credentials() {
        let e = parse_err("");
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["listen", "auth"]);
        assert!(e.problems.iter().all(|p| p.line.is_none()));
        assert!(
            e.to_string()
                .starts_with("test.toml: listen: expected at least one [[listen]]")
        );
    }
}
