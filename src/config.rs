//! icegate's configuration: the schema of `/etc/icegate/icegate.toml`, its defaults and its
//! validation.
//!
//! `icegate check-config` must report every problem in a file, each with its dotted key and
//! line. serde stops at the first error, so the file is parsed once into toml's spanned
//! document tree ([`DeTable`]) and then walked table by table: every value is converted on its
//! own and every problem is collected, with the line of the value it concerns.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use crate::certificate::{TlsFile, TlsFiles, load_certified_key};

/// Shortest accepted REST secret; shorter ones are guessable offline from one credential.
const MIN_SECRET_CHARS: usize = 8;
/// RFC 8489 §14.9: REALM must be fewer than 128 characters.
const MAX_REALM_CHARS: usize = 127;
/// RFC 8489 §14.3: USERNAME must be fewer than 513 bytes.
const MAX_USERNAME_BYTES: usize = 512;

const DEFAULT_REALM: &str = "icegate";
const DEFAULT_PORTS: PortRange = PortRange {
    low: 49152,
    high: 65535,
};
const DEFAULT_MAX_ALLOCATIONS: u32 = 10_000;
const DEFAULT_MAX_ALLOCATIONS_PER_USER: u32 = 50;
// RFC 8656 §3.2, §9 and §12: 600 s allocations, 300 s permissions, 600 s channels.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);
const DEFAULT_PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const DEFAULT_CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(600);
const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 64;
const DEFAULT_MAX_QUEUED_BYTES: u32 = 256 * 1024;
const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024;
/// How long SIGTERM waits for allocations to end (systemd's TimeoutStopSec must be longer).
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_ADMIN_ADDRESS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9641);
/// The largest frame the stream format can carry: a STUN header plus a 16-bit length.
const LARGEST_FRAME_BYTES: u32 = 20 + 0xFFFF;

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

// ---------------------------------------------------------------------------------------------
// Public types

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
    pub(crate) http: HttpConfig,
    pub(crate) signal: SignalConfig,
    /// How long a SIGTERM drain waits for allocations to end before exiting.
    pub(crate) shutdown_grace: Duration,
    pub(crate) admin: AdminConfig,
}

/// The `[admin]` table: where `/metrics`, `/healthz`, `/allocations`,
/// `/drain` and `/reload` are served. `Debug` redacts the token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AdminConfig {
    pub(crate) address: SocketAddr,
    /// A bearer token every request but `/healthz` must present.
    pub(crate) token: Option<String>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Limits for TCP and TLS connections, each a defence against a client that
/// would otherwise hold server memory or sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    /// A TLS handshake not finished by then is dropped.
    pub(crate) tls_handshake_timeout: Duration,
    /// A connection without an allocation that sends nothing for this long is closed.
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: u32,
    pub(crate) max_connections_per_ip: u32,
    /// Bytes waiting to be written to one client; beyond it the client is
    /// not reading and its connection is dropped.
    pub(crate) max_queued_bytes: u32,
    /// The largest STUN message or ChannelData frame a client may send.
    pub(crate) max_frame_bytes: u32,
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

/// One socket the server answers STUN/TURN requests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listen {
    pub(crate) address: SocketAddr,
    pub(crate) transport: Transport,
    /// Certificate chain and key (PEM), present exactly when `transport` is tls or https.
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) services: Services,
}

/// What a stream listener serves: TURN (and STUN), HTTP, or both on one
/// port, told apart by the first bytes of each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Services {
    pub(crate) turn: bool,
    pub(crate) http: bool,
}

impl Services {
    pub(crate) const TURN: Self = Self {
        turn: true,
        http: false,
    };
    pub(crate) const HTTP: Self = Self {
        turn: false,
        http: true,
    };
}

/// The `[http]` table: who may fetch ICE servers, and which proxies to believe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpConfig {
    /// Keys for `GET /ice-servers` (`Authorization: Bearer KEY` or `?key=KEY`).
    pub(crate) api_keys: Vec<String>,
    /// Peers whose `X-Forwarded-For` names the real client.
    pub(crate) trusted_proxies: Vec<IpNet>,
}

/// The `[signal]` table: who may use the WebSocket signaling endpoint, and
/// its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignalConfig {
    pub(crate) auth: SignalAuth,
    /// HS256 secrets; the first signs tokens made by `icegate token`.
    pub(crate) jwt_secrets: Vec<String>,
    /// ES256 and RS256 verification keys, read and checked at load time.
    pub(crate) jwt_public_keys: Vec<PublicKey>,
    /// Browser origins accepted besides icegate's own (`*` accepts any).
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) limits: SignalLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignalAuth {
    /// Every connection presents a JWT.
    Jwt,
    /// Anyone may connect (set explicitly; warned about at start).
    None,
    /// No key and no explicit `auth`: `/ws` is not served.
    Off,
}

/// A PEM public key for verifying signaling tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicKey {
    pub(crate) path: PathBuf,
    pub(crate) algorithm: PublicKeyAlgorithm,
    pub(crate) pem: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublicKeyAlgorithm {
    Es256,
    Rs256,
}

/// Limits of the signaling endpoint; each protects the daemon or the other
/// connections from one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SignalLimits {
    pub(crate) max_message_bytes: u32,
    pub(crate) messages_per_second: u32,
    pub(crate) message_burst: u32,
    pub(crate) max_peers_per_room: u32,
    pub(crate) max_rooms_per_connection: u32,
    pub(crate) max_metadata_bytes: u32,
    pub(crate) max_connections: u32,
    pub(crate) max_connections_per_ip: u32,
    /// Bytes waiting to be sent to one connection (or held for a dropped one
    /// until it resumes); beyond it the connection is closed.
    pub(crate) max_queued_bytes: u32,
    pub(crate) handshake_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) resume_grace: Duration,
}

/// Transport of a [`Listen`] socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum Transport {
    #[default]
    Udp,
    Tcp,
    /// TLS over TCP; plain TCP clients on the same port are served too.
    Tls,
    /// Plain HTTP, for running behind a reverse proxy.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Transport {
    /// The spelling used in the file.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Http => "http",
            Transport::Https => "https",
        }
    }

    /// Whether two listeners of these transports compete for the same socket kind.
    fn same_socket_kind(self, other: Self) -> bool {
        (self == Transport::Udp) == (other == Transport::Udp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelayConfig {
    /// Where relay sockets bind: at most one address per family, never empty.
    pub(crate) addresses: Vec<IpAddr>,
    /// Advertised relayed addresses behind a 1:1 NAT: at most one per family, each for a family
    /// that `addresses` has.
    pub(crate) external_addresses: Vec<IpAddr>,
    pub(crate) ports: PortRange,
    pub(crate) allow_peers: Vec<IpNet>,
    pub(crate) deny_peers: Vec<IpNet>,
    pub(crate) max_allocations: u32,
    pub(crate) max_allocations_per_user: u32,
    pub(crate) default_lifetime: Duration,
    /// At least `default_lifetime`.
    pub(crate) max_lifetime: Duration,
    pub(crate) permission_lifetime: Duration,
    pub(crate) channel_lifetime: Duration,
    /// Accept channel numbers 0x5000–0x7FFF as RFC 5766 did (older clients
    /// such as coturn 4.6's turnutils_uclient pick them); RFC 8656 allows 0x4000–0x4FFF.
    pub(crate) rfc5766_channel_numbers: bool,
}

/// An inclusive range of UDP ports, `low..=high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PortRange {
    pub(crate) low: u16,
    pub(crate) high: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub(crate) fn len(&self) -> usize {
        if self.high < self.low {
            0
        } else {
            usize::from(self.high - self.low) + 1
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

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

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigErrors {
    /// The file's path, or [`EMBEDDED_ORIGIN`].
    pub(crate) origin: String,
    /// In file order; problems without a line come last.
    pub(crate) problems: Vec<ConfigProblem>,
}

/// One problem: the dotted key it concerns (empty for a file that is not TOML at all or that
/// cannot be read), the 1-based line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigProblem {
    pub(crate) key: String,
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigProblem {}

/// One line per problem: `<origin>:<line>: <key>: <message>`.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            return write!(f, "{}: invalid configuration", self.origin);
        }
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            f.write_str(&self.origin)?;
            if let Some(line) = problem.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Parse and validate TOML text. `origin` names the file in messages (a path, or
    /// [`EMBEDDED_ORIGIN`]). A relative `auth.secrets-file` is taken relative to the current
    /// directory; [`Config::load`] takes it relative to the config file instead.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        parse_in(text, origin, None)
    }

    /// Read a file and parse it; an unreadable file is an error naming the path.
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let origin = path.display().to_string();
        match fs::read_to_string(path) {
            Ok(text) => parse_in(&text, &origin, path.parent()),
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
}

// ---------------------------------------------------------------------------------------------
// The walk over the document

type Span = Range<usize>;

fn parse_in(text: &str, origin: &str, base_dir: Option<&Path>) -> Result<Config, ConfigErrors> {
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

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// 1-based column (in characters) of a byte offset, 0 when it is not on a char boundary.
fn column_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    let start = text.as_bytes()[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    text.get(start..end).map_or(0, |s| s.chars().count() + 1)
}

/// Problems found so far, and what is needed to turn spans into lines.
struct Ctx<'t> {
    text: &'t str,
    /// Directory a relative `auth.secrets-file` is taken relative to.
    base_dir: Option<&'t Path>,
    problems: Vec<ConfigProblem>,
}

impl Ctx<'_> {
    fn report(&mut self, key: impl Into<String>, span: Option<&Span>, message: impl Into<String>) {
        let line = span.map(|s| line_of(self.text, s.start));
        self.problems.push(ConfigProblem {
            key: key.into(),
            line,
            message: message.into(),
        });
    }
}

/// A value read from the file, or its default. `ok` is false when a problem was reported for
/// it: the value is then a stand-in that keeps the walk going, and later checks that involve
/// it are skipped so as not to pile up follow-on problems. (No [`Config`] is returned once a
/// problem has been reported, so a stand-in never escapes.)
struct Val<T> {
    value: T,
    /// The key's span when the key is in the file.
    span: Option<Span>,
    ok: bool,
}

/// An element of an array, with its own span so that a problem points at its line.
struct Item<T> {
    value: T,
    span: Option<Span>,
}

/// One table of the document, with the dotted path used in messages.
struct Section<'a, 'i> {
    path: String,
    /// Where the table is declared; `None` for the root and for an absent table.
    span: Option<Span>,
    table: Option<&'a DeTable<'i>>,
}

impl<'a, 'i> Section<'a, 'i> {
    /// Open a table, reporting every key not in `known`.
    fn open(
        cx: &mut Ctx<'_>,
        path: String,
        span: Option<Span>,
        table: Option<&'a DeTable<'i>>,
        known: &[&str],
    ) -> Self {
        let section = Section { path, span, table };
        for key in table.into_iter().flat_map(|t| t.keys()) {
            let name: &str = key.get_ref();
            if !known.contains(&name) {
                let normalized = name.to_ascii_lowercase().replace('_', "-");
                let hint = match known.iter().find(|k| **k == normalized) {
                    Some(k) => format!("unknown key; did you mean {k}?"),
                    None => format!("unknown key; expected one of: {}", known.join(", ")),
                };
                cx.report(section.key(name), Some(&key.span()), hint);
            }
        }
        section
    }

    /// Dotted path of a key of this table.
    fn key(&self, name: &str) -> String {
        let name = key_segment(name);
        if self.path.is_empty() {
            name
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn entry(&self, name: &str) -> Option<(&'a Spanned<DeString<'i>>, &'a Spanned<DeValue<'i>>)> {
        self.table?.get_key_value(name)
    }

    /// An optional scalar.
    fn opt<T: Scalar>(&self, cx: &mut Ctx<'_>, name: &str) -> Val<Option<T>> {
        let Some((key, value)) = self.entry(name) else {
            return Val {
                value: None,
                span: None,
                ok: true,
            };
        };
        let span = Some(key.span());
        match T::from_toml(value.get_ref()) {
            Ok(v) => Val {
                value: Some(v),
                span,
                ok: true,
            },
            Err(message) => {
                cx.report(self.key(name), span.as_ref(), message);
                Val {
                    value: None,
                    span,
                    ok: false,
                }
            }
        }
    }

    /// A scalar with a default.
    fn get<T: Scalar>(&self, cx: &mut Ctx<'_>, name: &str, default: T) -> Val<T> {
        let v = self.opt(cx, name);
        Val {
            value: v.value.unwrap_or(default),
            span: v.span,
            ok: v.ok,
        }
    }

    /// An array of scalars with a default; every bad element is reported.
    fn list<T: Scalar>(&self, cx: &mut Ctx<'_>, name: &str, default: Vec<T>) -> Val<Vec<Item<T>>> {
        let Some((key, value)) = self.entry(name) else {
            let value = default
                .into_iter()
                .map(|value| Item { value, span: None })
                .collect();
            return Val {
                value,
                span: None,
                ok: true,
            };
        };
        let span = Some(key.span());
        let DeValue::Array(array) = value.get_ref() else {
            let message = format!("expected an array, got {}", got(value.get_ref()));
            cx.report(self.key(name), span.as_ref(), message);
            return Val {
                value: Vec::new(),
                span,
                ok: false,
            };
        };
        let mut items = Vec::new();
        let mut ok = true;
        for (i, element) in array.iter().enumerate() {
            match T::from_toml(element.get_ref()) {
                Ok(value) => items.push(Item {
                    value,
                    span: Some(element.span()),
                }),
                Err(message) => {
                    ok = false;
                    let key = format!("{}[{i}]", self.key(name));
                    cx.report(key, Some(&element.span()), message);
                }
            }
        }
        Val {
            value: items,
            span,
            ok,
        }
    }

    /// A sub-table such as `[relay]`; absent or of the wrong type, it reads as empty.
    fn section(&self, cx: &mut Ctx<'_>, name: &str, known: &[&str]) -> Section<'a, 'i> {
        let path = self.key(name);
        match self.entry(name) {
            None => Section::open(cx, path, None, None, known),
            Some((_, value)) => match value.get_ref() {
                DeValue::Table(table) => {
                    Section::open(cx, path, Some(value.span()), Some(table), known)
                }
                other => {
                    let message = format!("expected a table like [{path}], got {}", got(other));
                    cx.report(path.clone(), Some(&value.span()), message);
                    Section::open(cx, path, None, None, known)
                }
            },
        }
    }

    /// An array of tables such as `[[listen]]`.
    fn sections(&self, cx: &mut Ctx<'_>, name: &str, known: &[&str]) -> Val<Vec<Section<'a, 'i>>> {
        let path = self.key(name);
        let Some((key, value)) = self.entry(name) else {
            return Val {
                value: Vec::new(),
                span: None,
                ok: true,
            };
        };
        let span = Some(key.span());
        let DeValue::Array(array) = value.get_ref() else {
            let message = format!(
                "expected an array of tables like [[{path}]], got {}",
                got(value.get_ref())
            );
            cx.report(path, Some(&value.span()), message);
            return Val {
                value: Vec::new(),
                span,
                ok: false,
            };
        };
        let mut sections = Vec::new();
        let mut ok = true;
        for (i, element) in array.iter().enumerate() {
            let path = format!("{path}[{i}]");
            match element.get_ref() {
                DeValue::Table(table) => {
                    sections.push(Section::open(
                        cx,
                        path,
                        Some(element.span()),
                        Some(table),
                        known,
                    ));
                }
                other => {
                    ok = false;
                    let message = format!("expected a table, got {}", got(other));
                    cx.report(path, Some(&element.span()), message);
                }
            }
        }
        Val {
            value: sections,
            span,
            ok,
        }
    }
}

/// A key as written in a dotted path: quoted unless it is a bare TOML key.
fn key_segment(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        name.to_owned()
    } else {
        format!("{name:?}")
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
    "http",
    "signal",
    "shutdown-grace",
    "admin",
];
const LOG_KEYS: &[&str] = &["level"];
const LISTEN_KEYS: &[&str] = &[
    "address",
    "transport",
    "certificate",
    "private-key",
    "services",
];
const HTTP_KEYS: &[&str] = &["api-keys", "trusted-proxies"];
const SIGNAL_KEYS: &[&str] = &[
    "auth",
    "jwt-secrets",
    "jwt-public-keys",
    "allowed-origins",
    "max-message-bytes",
    "messages-per-second",
    "message-burst",
    "max-peers-per-room",
    "max-rooms-per-connection",
    "max-metadata-bytes",
    "max-connections",
    "max-connections-per-ip",
    "max-queued-bytes",
    "handshake-timeout",
    "ping-interval",
    "resume-grace",
];
/// HS256 secrets shorter than the hash output are guessable offline from one token.
const MIN_JWT_SECRET_CHARS: usize = 32;
pub(crate) const DEFAULT_SIGNAL_LIMITS: SignalLimits = SignalLimits {
    max_message_bytes: 64 * 1024,
    messages_per_second: 50,
    message_burst: 100,
    max_peers_per_room: 16,
    max_rooms_per_connection: 8,
    max_metadata_bytes: 4096,
    max_connections: 10_000,
    max_connections_per_ip: 64,
    max_queued_bytes: 1024 * 1024,
    handshake_timeout: Duration::from_secs(10),
    ping_interval: Duration::from_secs(30),
    resume_grace: Duration::from_secs(30),
};
/// API keys are bearer secrets: long enough not to be guessed.
const MIN_API_KEY_CHARS: usize = 16;
const CONNECTION_KEYS: &[&str] = &[
    "tls-handshake-timeout",
    "idle-timeout",
    "max-connections",
    "max-connections-per-ip",
    "max-queued-bytes",
    "max-frame-bytes",
];
const RELAY_KEYS: &[&str] = &[
    "addresses",
    "external-addresses",
    "ports",
    "allow-peers",
    "deny-peers",
    "max-allocations",
    "max-allocations-per-user",
    "default-lifetime",
    "max-lifetime",
    "permission-lifetime",
    "channel-lifetime",
    "rfc5766-channel-numbers",
];
const AUTH_KEYS: &[&str] = &[
    "secrets",
    "secrets-file",
    "credential-ttl",
    "nonce-lifetime",
    "users",
];
const USER_KEYS: &[&str] = &["name", "password", "key"];

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

    let listen = read_listen(cx, &top);
    let relay = read_relay(cx, &top);
    let auth = read_auth(cx, &top);
    let connections = read_connections(cx, &top);
    let http = read_http(cx, &top);
    let signal = read_signal(cx, &top);
    let shutdown_grace = top.get(cx, "shutdown-grace", DEFAULT_SHUTDOWN_GRACE);
    let admin = read_admin(cx, &top);

    Config {
        realm: realm.value,
        public_host: public_host.value,
        log: LogConfig { level: level.value },
        listen,
        relay,
        auth,
        connections,
        http,
        signal,
        shutdown_grace: shutdown_grace.value,
        admin,
    }
}

fn read_signal(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> SignalConfig {
    let table = top.section(cx, "signal", SIGNAL_KEYS);
    let auth = table.opt::<String>(cx, "auth");
    let secrets = table.list::<String>(cx, "jwt-secrets", Vec::new());
    for (i, item) in secrets.value.iter().enumerate() {
        let chars = item.value.chars().count();
        if chars < MIN_JWT_SECRET_CHARS {
            let message =
                format!("expected at least {MIN_JWT_SECRET_CHARS} characters, got {chars}");
            let key = format!("{}[{i}]", table.key("jwt-secrets"));
            cx.report(key, item.span.as_ref(), message);
        }
    }
    let key_paths = table.list::<PathBuf>(cx, "jwt-public-keys", Vec::new());
    let mut public_keys = Vec::new();
    for (i, item) in key_paths.value.iter().enumerate() {
        let path = match cx.base_dir {
            Some(base) if item.value.is_relative() => base.join(&item.value),
            _ => item.value.clone(),
        };
        match read_public_key(&path) {
            Ok(key) => public_keys.push(key),
            Err(message) => {
                let key = format!("{}[{i}]", table.key("jwt-public-keys"));
                cx.report(key, item.span.as_ref(), message);
            }
        }
    }
    let origins = table.list::<String>(cx, "allowed-origins", Vec::new());
    for (i, item) in origins.value.iter().enumerate() {
        if !is_origin(&item.value) {
            let message = format!(
                "expected \"*\" or an origin like \"https://app.example.org\" \
                 (scheme, host and optional port; no path), got {:?}",
                item.value
            );
            let key = format!("{}[{i}]", table.key("allowed-origins"));
            cx.report(key, item.span.as_ref(), message);
        }
    }
    let has_keys = !secrets.value.is_empty() || !key_paths.value.is_empty();
    let auth = match auth.value.as_deref() {
        None if has_keys => SignalAuth::Jwt,
        None => SignalAuth::Off,
        Some("jwt") => {
            if !has_keys && secrets.ok && key_paths.ok {
                cx.report(
                    table.key("auth"),
                    auth.span.as_ref(),
                    "auth = \"jwt\" needs signal.jwt-secrets or signal.jwt-public-keys",
                );
            }
            SignalAuth::Jwt
        }
        Some("none") => SignalAuth::None,
        Some(other) => {
            let message = format!("expected \"jwt\" or \"none\", got {other:?}");
            cx.report(table.key("auth"), auth.span.as_ref(), message);
            SignalAuth::Off
        }
    };

    let defaults = DEFAULT_SIGNAL_LIMITS;
    let max_message_bytes = table.get(cx, "max-message-bytes", defaults.max_message_bytes);
    if max_message_bytes.ok && !(256..=MAX_SIGNAL_MESSAGE_BYTES).contains(&max_message_bytes.value)
    {
        let message = format!(
            "expected a size from 256 to {MAX_SIGNAL_MESSAGE_BYTES} bytes, got {}",
            max_message_bytes.value
        );
        cx.report(
            table.key("max-message-bytes"),
            max_message_bytes.span.as_ref(),
            message,
        );
    }
    let limits = SignalLimits {
        max_message_bytes: max_message_bytes.value,
        messages_per_second: table
            .get(cx, "messages-per-second", defaults.messages_per_second)
            .value,
        message_burst: table.get(cx, "message-burst", defaults.message_burst).value,
        max_peers_per_room: table
            .get(cx, "max-peers-per-room", defaults.max_peers_per_room)
            .value,
        max_rooms_per_connection: table
            .get(
                cx,
                "max-rooms-per-connection",
                defaults.max_rooms_per_connection,
            )
            .value,
        max_metadata_bytes: table
            .get(cx, "max-metadata-bytes", defaults.max_metadata_bytes)
            .value,
        max_connections: table
            .get(cx, "max-connections", defaults.max_connections)
            .value,
        max_connections_per_ip: table
            .get(
                cx,
                "max-connections-per-ip",
                defaults.max_connections_per_ip,
            )
            .value,
        max_queued_bytes: table
            .get(cx, "max-queued-bytes", defaults.max_queued_bytes)
            .value,
        handshake_timeout: table
            .get(cx, "handshake-timeout", defaults.handshake_timeout)
            .value,
        ping_interval: table.get(cx, "ping-interval", defaults.ping_interval).value,
        resume_grace: table.get(cx, "resume-grace", defaults.resume_grace).value,
    };
    SignalConfig {
        auth,
        jwt_secrets: values(secrets.value),
        jwt_public_keys: public_keys,
        allowed_origins: values(origins.value),
        limits,
    }
}

/// The largest signaling message accepted at all (16 MiB).
const MAX_SIGNAL_MESSAGE_BYTES: u32 = 16 * 1024 * 1024;

/// `*`, or `scheme://host[:port]` as browsers send it in `Origin`.
fn is_origin(text: &str) -> bool {
    if text == "*" {
        return true;
    }
    let Some(authority) = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !authority.ends_with(']') => (host, Some(port)),
        _ => (authority, None),
    };
    !host.is_empty()
        && port.is_none_or(|port| port.parse::<u16>().is_ok())
        && authority
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'@'))
}

/// Reads a PEM public key and tells ES256 (P-256) from RS256 by trying both.
fn read_public_key(path: &Path) -> Result<PublicKey, String> {
    let pem = fs::read(path).map_err(|e| {
        format!(
            "cannot read {:?}: {}",
            path.display().to_string(),
            io_message(&e)
        )
    })?;
    let algorithm = if jsonwebtoken::DecodingKey::from_ec_pem(&pem).is_ok() {
        PublicKeyAlgorithm::Es256
    } else if jsonwebtoken::DecodingKey::from_rsa_pem(&pem).is_ok() {
        PublicKeyAlgorithm::Rs256
    } else {
        return Err(format!(
            "expected {:?} to hold an EC (P-256) or RSA public key in PEM form",
            path.display().to_string()
        ));
    };
    Ok(PublicKey {
        path: path.to_owned(),
        algorithm,
        pem,
    })
}

fn read_http(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> HttpConfig {
    let table = top.section(cx, "http", HTTP_KEYS);
    let api_keys = table.list::<String>(cx, "api-keys", Vec::new());
    let key = table.key("api-keys");
    for (i, item) in api_keys.value.iter().enumerate() {
        let chars = item.value.chars().count();
        if chars < MIN_API_KEY_CHARS {
            let message = format!("expected at least {MIN_API_KEY_CHARS} characters, got {chars}");
            cx.report(format!("{key}[{i}]"), item.span.as_ref(), message);
        }
    }
    let trusted_proxies = table.list::<IpNet>(cx, "trusted-proxies", Vec::new());
    HttpConfig {
        api_keys: values(api_keys.value),
        trusted_proxies: values(trusted_proxies.value),
    }
}

const ADMIN_KEYS: &[&str] = &["address", "token"];

fn read_admin(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> AdminConfig {
    let table = top.section(cx, "admin", ADMIN_KEYS);
    let address = table.get(cx, "address", DEFAULT_ADMIN_ADDRESS);
    let token = table.opt::<String>(cx, "token");
    if let Some(text) = &token.value {
        // Messages never quote the token.
        let chars = text.chars().count();
        let message = if chars < MIN_API_KEY_CHARS {
            Some(format!(
                "expected at least {MIN_API_KEY_CHARS} characters, got {chars}"
            ))
        } else if !text.bytes().all(|b| b.is_ascii_graphic()) {
            Some("expected printable ASCII without spaces, as a bearer token is sent".to_owned())
        } else {
            None
        };
        if let Some(message) = message {
            cx.report(table.key("token"), token.span.as_ref(), message);
        }
    }
    AdminConfig {
        address: address.value,
        token: token.value,
    }
}

/// What a listener serves: `services` may only be given on a tls listener,
/// where it can add "http" to TURN on one port; others serve what their
/// transport says.
fn read_services(
    cx: &mut Ctx<'_>,
    section: &Section<'_, '_>,
    transport: Transport,
    listed: &Val<Vec<Item<String>>>,
) -> Option<Services> {
    let default = match transport {
        Transport::Udp | Transport::Tcp | Transport::Tls => Services::TURN,
        Transport::Http | Transport::Https => Services::HTTP,
    };
    if listed.span.is_none() {
        return Some(default);
    }
    let key = section.key("services");
    if transport != Transport::Tls {
        let message = format!("only a tls listener takes services, this one is {transport}");
        cx.report(key, listed.span.as_ref(), message);
        return None;
    }
    let mut services = Services {
        turn: false,
        http: false,
    };
    for (i, item) in listed.value.iter().enumerate() {
        match item.value.as_str() {
            "turn" => services.turn = true,
            "http" => services.http = true,
            other => {
                let message = format!("expected \"turn\" or \"http\", got {other:?}");
                cx.report(format!("{key}[{i}]"), item.span.as_ref(), message);
                return None;
            }
        }
    }
    if !services.turn && !services.http {
        cx.report(
            key,
            listed.span.as_ref(),
            "expected [\"turn\"], [\"http\"] or both",
        );
        return None;
    }
    Some(services)
}

fn read_connections(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> ConnectionLimits {
    let table = top.section(cx, "connections", CONNECTION_KEYS);
    let tls_handshake_timeout =
        table.get(cx, "tls-handshake-timeout", DEFAULT_TLS_HANDSHAKE_TIMEOUT);
    let idle_timeout = table.get(cx, "idle-timeout", DEFAULT_IDLE_TIMEOUT);
    let max_connections = table.get(cx, "max-connections", DEFAULT_MAX_CONNECTIONS);
    let max_connections_per_ip =
        table.get(cx, "max-connections-per-ip", DEFAULT_MAX_CONNECTIONS_PER_IP);
    let max_queued_bytes = table.get(cx, "max-queued-bytes", DEFAULT_MAX_QUEUED_BYTES);
    let max_frame_bytes = table.get(cx, "max-frame-bytes", DEFAULT_MAX_FRAME_BYTES);
    if max_frame_bytes.ok && !(64..=LARGEST_FRAME_BYTES).contains(&max_frame_bytes.value) {
        let message = format!(
            "expected a size from 64 to {LARGEST_FRAME_BYTES} bytes, got {}",
            max_frame_bytes.value
        );
        cx.report(
            table.key("max-frame-bytes"),
            max_frame_bytes.span.as_ref(),
            message,
        );
    }
    ConnectionLimits {
        tls_handshake_timeout: tls_handshake_timeout.value,
        idle_timeout: idle_timeout.value,
        max_connections: max_connections.value,
        max_connections_per_ip: max_connections_per_ip.value,
        max_queued_bytes: max_queued_bytes.value,
        max_frame_bytes: max_frame_bytes.value,
    }
}

fn read_listen(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> Vec<Listen> {
    let tables = top.sections(cx, "listen", LISTEN_KEYS);
    if tables.ok && tables.value.is_empty() {
        cx.report(
            "listen",
            tables.span.as_ref(),
            "expected at least one [[listen]] table, e.g. address = \"0.0.0.0:3478\"",
        );
    }
    let mut listen = Vec::new();
    let mut seen: Vec<(SocketAddr, Transport, Option<usize>)> = Vec::new();
    for section in &tables.value {
        let address = section.opt::<SocketAddr>(cx, "address");
        let transport = section.get(cx, "transport", Transport::default());
        let certificate = section.opt::<PathBuf>(cx, "certificate");
        let private_key = section.opt::<PathBuf>(cx, "private-key");
        let services = section.list::<String>(cx, "services", Vec::new());
        let Some(address_value) = address.value else {
            if address.ok {
                cx.report(
                    section.key("address"),
                    section.span.as_ref(),
                    "missing; expected a socket address like \"0.0.0.0:3478\"",
                );
            }
            continue;
        };
        if !transport.ok || !certificate.ok || !private_key.ok || !services.ok {
            continue;
        }
        let Some(services) = read_services(cx, section, transport.value, &services) else {
            continue;
        };
        let resolve = |path: PathBuf| match cx.base_dir {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        };
        let needs_tls = matches!(transport.value, Transport::Tls | Transport::Https);
        let tls = match (needs_tls, &certificate.value, &private_key.value) {
            (true, Some(certificate_path), Some(key_path)) => {
                let files = TlsFiles {
                    certificate: resolve(certificate_path.clone()),
                    private_key: resolve(key_path.clone()),
                };
                if let Err(problem) = load_certified_key(&files) {
                    let (key, span) = match problem.file {
                        TlsFile::Certificate => ("certificate", &certificate.span),
                        TlsFile::PrivateKey => ("private-key", &private_key.span),
                    };
                    cx.report(section.key(key), span.as_ref(), problem.message);
                    continue;
                }
                Some(files)
            }
            (true, certificate, _) => {
                let missing = if certificate.is_none() {
                    "certificate"
                } else {
                    "private-key"
                };
                cx.report(
                    section.key(missing),
                    section.span.as_ref(),
                    format!(
                        "missing; a {} listener needs certificate and private-key (PEM files)",
                        transport.value
                    ),
                );
                continue;
            }
            (_, None, None) => None,
            (false, _, _) => {
                let other = transport.value;
                let (key, span) = if certificate.value.is_some() {
                    ("certificate", certificate.span.as_ref())
                } else {
                    ("private-key", private_key.span.as_ref())
                };
                let message = format!(
                    "only a tls or https listener takes a certificate, this one is {other}"
                );
                cx.report(section.key(key), span, message);
                continue;
            }
        };
        let entry = Listen {
            address: address_value,
            transport: transport.value,
            tls,
            services,
        };
        let line = address.span.as_ref().map(|s| line_of(cx.text, s.start));
        // Port 0 asks the system for a free port: two such listeners never clash.
        let clash = seen.iter().find(|(a, t, _)| {
            *a == entry.address && a.port() != 0 && t.same_socket_kind(entry.transport)
        });
        if let Some((_, first_transport, first_line)) = clash {
            let at = first_line.map_or(String::new(), |l| format!(" (line {l})"));
            let (kind, already) = if entry.transport == Transport::Udp {
                ("udp", String::new())
            } else {
                ("tcp/tls", format!(", already {first_transport}"))
            };
            let message = format!(
                "expected each {kind} address to be listed once, got {} again{already}{at}",
                entry.address
            );
            cx.report(section.key("address"), address.span.as_ref(), message);
        } else {
            seen.push((entry.address, entry.transport, line));
            listen.push(entry);
        }
    }
    listen
}

fn read_relay(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> RelayConfig {
    let relay = top.section(cx, "relay", RELAY_KEYS);

    let addresses = relay.list::<IpAddr>(cx, "addresses", vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
    let addresses_key = relay.key("addresses");
    if addresses.ok && addresses.value.is_empty() {
        cx.report(
            &addresses_key,
            addresses.span.as_ref(),
            "expected at least one address, e.g. [\"0.0.0.0\"]",
        );
    }
    one_per_family(cx, &addresses_key, &addresses.value);

    let external = relay.list::<IpAddr>(cx, "external-addresses", Vec::new());
    let external_key = relay.key("external-addresses");
    one_per_family(cx, &external_key, &external.value);
    for (i, item) in external.value.iter().enumerate() {
        let key = format!("{external_key}[{i}]");
        if item.value.is_unspecified() {
            let message = format!(
                "expected an address that peers can reach, got {}",
                item.value
            );
            cx.report(key, item.span.as_ref(), message);
        } else if addresses.ok
            && !addresses
                .value
                .iter()
                .any(|a| a.value.is_ipv4() == item.value.is_ipv4())
        {
            let message = format!(
                "expected {addresses_key} to have an {} address for {} to stand for, it has none",
                family(&item.value),
                item.value
            );
            cx.report(key, item.span.as_ref(), message);
        }
    }

    let ports = relay.get(cx, "ports", DEFAULT_PORTS);
    let allow_peers = relay.list::<IpNet>(cx, "allow-peers", Vec::new());
    let deny_peers = relay.list::<IpNet>(cx, "deny-peers", Vec::new());
    let max_allocations = relay.get(cx, "max-allocations", DEFAULT_MAX_ALLOCATIONS);
    let max_allocations_per_user = relay.get(
        cx,
        "max-allocations-per-user",
        DEFAULT_MAX_ALLOCATIONS_PER_USER,
    );
    let default_lifetime = relay.get(cx, "default-lifetime", DEFAULT_LIFETIME);
    let max_lifetime = relay.get(cx, "max-lifetime", DEFAULT_MAX_LIFETIME);
    let permission_lifetime = relay.get(cx, "permission-lifetime", DEFAULT_PERMISSION_LIFETIME);
    let channel_lifetime = relay.get(cx, "channel-lifetime", DEFAULT_CHANNEL_LIFETIME);
    let rfc5766_channel_numbers = relay.get(cx, "rfc5766-channel-numbers", false);

    if default_lifetime.ok && max_lifetime.ok && max_lifetime.value < default_lifetime.value {
        // Point at whichever of the two the operator wrote, the maximum first.
        let (key, span, message) = match &max_lifetime.span {
            Some(span) => (
                "max-lifetime",
                Some(span),
                format!(
                    "expected at least relay.default-lifetime ({}), got {}",
                    humantime::format_duration(default_lifetime.value),
                    humantime::format_duration(max_lifetime.value)
                ),
            ),
            None => (
                "default-lifetime",
                default_lifetime.span.as_ref(),
                format!(
                    "expected at most relay.max-lifetime ({}), got {}",
                    humantime::format_duration(max_lifetime.value),
                    humantime::format_duration(default_lifetime.value)
                ),
            ),
        };
        cx.report(relay.key(key), span, message);
    }

    RelayConfig {
        addresses: values(addresses.value),
        external_addresses: values(external.value),
        ports: ports.value,
        allow_peers: values(allow_peers.value),
        deny_peers: values(deny_peers.value),
        max_allocations: max_allocations.value,
        max_allocations_per_user: max_allocations_per_user.value,
        default_lifetime: default_lifetime.value,
        max_lifetime: max_lifetime.value,
        permission_lifetime: permission_lifetime.value,
        channel_lifetime: channel_lifetime.value,
        rfc5766_channel_numbers: rfc5766_channel_numbers.value,
    }
}

fn values<T>(items: Vec<Item<T>>) -> Vec<T> {
    items.into_iter().map(|i| i.value).collect()
}

fn family(address: &IpAddr) -> &'static str {
    if address.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Report every address after the first of its family.
fn one_per_family(cx: &mut Ctx<'_>, key: &str, items: &[Item<IpAddr>]) {
    let mut first_v4: Option<IpAddr> = None;
    let mut first_v6: Option<IpAddr> = None;
    for (i, item) in items.iter().enumerate() {
        let first = if item.value.is_ipv4() {
            &mut first_v4
        } else {
            &mut first_v6
        };
        match first {
            Some(first) => {
                let message = format!(
                    "expected at most one {} address, got {first} and {}",
                    family(&item.value),
                    item.value
                );
                cx.report(format!("{key}[{i}]"), item.span.as_ref(), message);
            }
            None => *first = Some(item.value),
        }
    }
}

fn read_auth(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> AuthConfig {
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
        match read_secrets_file(path) {
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

// ---------------------------------------------------------------------------------------------
// Scalars

/// A value that one TOML value converts to, with a message saying what was expected.
trait Scalar: Sized {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String>;
}

/// How a value is shown after "got": strings quoted, tables and arrays by kind.
fn got(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("{:?}", &**s),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

fn expected(what: &str, value: &DeValue<'_>) -> String {
    format!("expected {what}, got {}", got(value))
}

fn string<'v>(value: &'v DeValue<'_>, what: &str) -> Result<&'v str, String> {
    match value {
        DeValue::String(s) => Ok(&**s),
        other => Err(expected(what, other)),
    }
}

impl Scalar for String {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        string(value, "a string").map(str::to_owned)
    }
}

impl Scalar for PathBuf {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "a file path like \"/etc/icegate/rest-secret\"";
        match string(value, WHAT)? {
            "" => Err(expected(WHAT, value)),
            path => Ok(PathBuf::from(path)),
        }
    }
}

/// Counts: every count in the schema must be at least 1.
impl Scalar for u32 {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "a whole number from 1 to 4294967295";
        let DeValue::Integer(i) = value else {
            return Err(expected(WHAT, value));
        };
        match u32::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(expected(WHAT, value)),
        }
    }
}

impl Scalar for bool {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        match value {
            DeValue::Boolean(b) => Ok(*b),
            other => Err(expected("true or false", other)),
        }
    }
}

impl Scalar for Duration {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        match value {
            DeValue::String(s) => parse_duration(s).map_err(|what| expected(&what, value)),
            DeValue::Integer(_) | DeValue::Float(_) => Err(format!(
                "{}; a unit (s, m, h, d) is required",
                expected(DURATION_WHAT, value)
            )),
            other => Err(expected(DURATION_WHAT, other)),
        }
    }
}

const DURATION_WHAT: &str = "a duration like \"10m\", \"90s\" or \"1h30m\"";

/// A humane duration greater than zero with a unit, as in the config file
/// and on the command line; the error says what was expected.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{DURATION_WHAT}; a unit (s, m, h, d) is required"));
    }
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("a duration greater than zero".to_owned()),
        Ok(d) => Ok(d),
        Err(_) => Err(DURATION_WHAT.to_owned()),
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

impl Scalar for Transport {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "one of \"udp\", \"tcp\", \"tls\", \"http\", \"https\"";
        match string(value, WHAT)? {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            "http" => Ok(Transport::Http),
            "https" => Ok(Transport::Https),
            "dtls" => Err(format!("{} (dtls is not supported)", expected(WHAT, value))),
            _ => Err(expected(WHAT, value)),
        }
    }
}

impl Scalar for SocketAddr {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "a socket address like \"0.0.0.0:3478\" or \"[::]:3478\"";
        string(value, WHAT)?
            .trim()
            .parse()
            .map_err(|_| expected(WHAT, value))
    }
}

impl Scalar for IpAddr {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "an IP address like \"0.0.0.0\" or \"::\"";
        string(value, WHAT)?
            .trim()
            .parse()
            .map_err(|_| expected(WHAT, value))
    }
}

/// A network "10.0.0.0/8", or a bare address meaning /32 or /128.
impl Scalar for IpNet {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "a network like \"10.0.0.0/8\" or an IP address";
        let text = string(value, WHAT)?.trim();
        if !text.contains('/') {
            return text
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| expected(WHAT, value));
        }
        let net: IpNet = text.parse().map_err(|_| expected(WHAT, value))?;
        // "10.0.0.1/8" is most likely a typo: say so rather than silently widening it.
        if net.trunc() != net {
            return Err(format!(
                "expected a network with no host bits set like \"{}\", got {}",
                net.trunc(),
                got(value)
            ));
        }
        Ok(net)
    }
}

impl Scalar for PortRange {
    fn from_toml(value: &DeValue<'_>) -> Result<Self, String> {
        const WHAT: &str = "a port range like \"49152-65535\"";
        let text = string(value, WHAT)?;
        let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
        let Some((low, high)) = text
            .split_once('-')
            .and_then(|(l, h)| Some((port(l)?, port(h)?)))
        else {
            return Err(expected(WHAT, value));
        };
        if low > high {
            return Err(expected(
                "a port range with the low port first, like \"49152-65535\"",
                value,
            ));
        }
        Ok(PortRange { low, high })
    }
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

/// The kind of a value, for messages that must not quote it.
fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn manifest_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// A fresh scratch directory under the system temp dir (no tempfile crate needed).
    fn scratch_dir() -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("icegate-config-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
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

    fn parse_ok(text: &str) -> Config {
        Config::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> ConfigErrors {
        match Config::parse(text, "test.toml") {
            Ok(config) => panic!("expected errors, parsed {config:?}"),
            Err(e) => e,
        }
    }

    const MINIMAL: &str =
        "[[listen]]\naddress = \"0.0.0.0:3478\"\n[auth]\nsecrets = [\"0123456789abcdef\"]\n";

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
                },
                Listen {
                    address: "0.0.0.0:3478".parse().unwrap(),
                    transport: Transport::Tcp,
                    tls: None,
                    services: Services::TURN,
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
    fn admin_listener_and_shutdown_grace() {
        let config = parse_ok(MINIMAL);
        assert_eq!(config.admin.address, "127.0.0.1:9641".parse().unwrap());
        assert_eq!(config.admin.token, None);
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
        let token = "admin-token-0123456789";
        let config = parse_ok(&format!(
            "shutdown-grace = \"2m\"\n{MINIMAL}[admin]\naddress = \"[::1]:9000\"\ntoken = \"{token}\"\n"
        ));
        assert_eq!(config.admin.address, "[::1]:9000".parse().unwrap());
        assert_eq!(config.admin.token.as_deref(), Some(token));
        assert_eq!(config.shutdown_grace, Duration::from_secs(120));
        assert!(
            !format!("{config:?}").contains(token),
            "Debug leaks the token"
        );
    }

    #[test]
    fn signaling_auth_follows_the_keys() {
        let with_key = format!(
            "{MINIMAL}\n[signal]\njwt-secrets = [\"{}\"]\n",
            "k".repeat(32)
        );
        assert_eq!(parse_ok(&with_key).signal.auth, SignalAuth::Jwt);
        let open = format!("{MINIMAL}\n[signal]\nauth = \"none\"\n");
        assert_eq!(parse_ok(&open).signal.auth, SignalAuth::None);
    }

    #[test]
    fn origins() {
        for good in [
            "*",
            "https://app.example.org",
            "http://localhost:8080",
            "https://[::1]:8443",
        ] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "app.example.org",
            "https://",
            "https://a.org/",
            "ftp://a.org",
            "https://a.org:x",
            "https://u@a.org",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
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
                },
                Listen {
                    address: "127.0.0.1:8478".parse().unwrap(),
                    transport: Transport::Http,
                    tls: None,
                    services: Services::HTTP,
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
    fn every_problem_is_reported_with_key_and_line() {
        let text = "\
[[listen]]
address = \"0.0.0.0:3478\"
[relay]
ports = \"70000-80000\"
foo = 1
allow-peers = [\"10.0.0.0/8\", \"10.0.0.300/8\", \"nope\"]
[auth]
secrets = [\"0123456789abcdef\"]
[[auth.users]]
name = \"alice\"
password = \"pw\"
[[auth.users]]
name = \"bob\"
key = \"0xZZ\"
";
        let e = parse_err(text);
        let got: Vec<(&str, Option<usize>)> = e
            .problems
            .iter()
            .map(|p| (p.key.as_str(), p.line))
            .collect();
        assert_eq!(
            got,
            vec![
                ("relay.ports", Some(4)),
                ("relay.foo", Some(5)),
                ("relay.allow-peers[1]", Some(6)),
                ("relay.allow-peers[2]", Some(6)),
                ("auth.users[1].key", Some(14)),
            ]
        );
        let shown = e.to_string();
        assert!(shown.contains(
            "test.toml:4: relay.ports: expected a port range like \"49152-65535\", got \"70000-80000\""
        ), "{shown}");
        assert_eq!(shown.lines().count(), 5);
    }

    #[test]
    fn durations() {
        let d = |s: &str| Duration::from_toml(&DeValue::String(s.into()));
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("1d"), Ok(Duration::from_secs(86_400)));
        assert!(d("0s").unwrap_err().contains("greater than zero"));
        assert!(
            d("600")
                .unwrap_err()
                .contains("a unit (s, m, h, d) is required")
        );
        assert!(
            d("ten minutes")
                .unwrap_err()
                .contains("expected a duration like \"10m\"")
        );
        let e = parse_err(&format!("{MINIMAL}nonce-lifetime = 600\n"));
        assert!(e.to_string().contains("got 600; a unit"), "{e}");
    }

    #[test]
    fn port_ranges() {
        let p = |s: &str| PortRange::from_toml(&DeValue::String(s.into()));
        assert_eq!(
            p("3478-3478"),
            Ok(PortRange {
                low: 3478,
                high: 3478
            })
        );
        assert_eq!(
            p(" 1 - 65535 "),
            Ok(PortRange {
                low: 1,
                high: 65535
            })
        );
        for bad in ["0-10", "10", "10-", "-10", "1-65536", "a-b", "20-10"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        let r = PortRange { low: 10, high: 12 };
        assert_eq!((r.len(), r.to_string()), (3, "10-12".to_owned()));
    }

    #[test]
    fn networks() {
        let n = |s: &str| IpNet::from_toml(&DeValue::String(s.into()));
        assert_eq!(n("10.0.0.1"), Ok("10.0.0.1/32".parse().unwrap()));
        assert_eq!(n("::1"), Ok("::1/128".parse().unwrap()));
        assert_eq!(n("fd00::/8"), Ok("fd00::/8".parse().unwrap()));
        assert!(n("10.0.0.1/8").unwrap_err().contains("\"10.0.0.0/8\""));
        assert!(n("10.0.0.0/33").is_err());
    }

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
    fn unknown_keys_suggest_the_spelling() {
        let e = parse_err(&format!("{MINIMAL}[relay]\nmax_allocations = 5\n"));
        assert_eq!(e.problems[0].key, "relay.max_allocations");
        assert_eq!(
            e.problems[0].message,
            "unknown key; did you mean max-allocations?"
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

    #[test]
    fn relay_address_families() {
        let ok = parse_ok(&format!(
            "{MINIMAL}[relay]\naddresses = [\"0.0.0.0\", \"::\"]\nexternal-addresses = [\"203.0.113.5\", \"2001:db8::5\"]\n"
        ));
        assert_eq!(ok.relay.external_addresses.len(), 2);
        let e = parse_err(&format!(
            "{MINIMAL}[relay]\naddresses = [\"10.0.0.1\", \"10.0.0.2\"]\nexternal-addresses = [\"2001:db8::5\", \"0.0.0.0\"]\n"
        ));
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "relay.addresses[1]",
                "relay.external-addresses[0]",
                "relay.external-addresses[1]"
            ]
        );
    }
}
