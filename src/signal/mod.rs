//! WebSocket signaling (`GET /ws`): rooms of peers that exchange offers,
//! answers and candidates through icegate, with TURN credentials from the
//! same credential store as the relay. The protocol is `docs/signaling.md`.

mod dialect;
mod held;
mod hub;
mod outbox;
pub(crate) mod protocol;
mod session;
mod span;
pub(crate) mod token;
pub(crate) mod websocket;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::{self, ClusterConfig, Config, SignalAuth, SignalConfig, SignalLimits};
use crate::ice;
use crate::logging::event;
use crate::metrics::Limit;
use crate::reloadable::Reloadable;
use crate::server::{Server, unix_now};
pub(crate) use dialect::peerjs_id;
use dialect::{Dialect, PeerJs, YWebrtc, valid_peerjs_id};
use hub::Hub;
use span::Span;
use token::{Claims, TokenError, TokenVerifier};

/// How often held signals are checked for expiry: `expired` comes at most
/// this late.
const HELD_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// Frames larger than this many times `max-message-bytes` are not even read.
const HARD_SIZE_FACTOR: usize = 4;

/// The signaling endpoint's shared state.
pub(crate) struct Signaling {
    hub: Arc<Hub>,
    settings: Reloadable<Settings>,
    server: Arc<Server>,
    /// The other nodes, with `[cluster] redis`.
    span: OnceLock<Arc<Span>>,
}

/// What the config says about signaling; replaced whole on reload.
struct Settings {
    verifier: TokenVerifier,
    config: SignalConfig,
    /// The whole config with the listeners' bound addresses, for ICE URLs.
    turn_config: Config,
    /// `config.dialects`, shared with every HTTP request that routes by it.
    dialects: Arc<config::Dialects>,
}

impl Settings {
    /// A browser may connect from icegate's own pages or a listed origin.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let listed = self
            .config
            .allowed_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin));
        if listed {
            return true;
        }
        match self.config.auth {
            // With no token to check, an Origin equal to the Host proves
            // nothing: a page whose name an attacker rebinds to this address
            // sends both. Only pages on a loopback address are icegate's own.
            SignalAuth::None => is_loopback_origin(origin),
            SignalAuth::Off | SignalAuth::Jwt => {
                let authority = origin
                    .split_once("://")
                    .map_or(origin, |(_, authority)| authority);
                host.is_some_and(|host| host.eq_ignore_ascii_case(authority))
            }
        }
    }

    fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            verifier: TokenVerifier::new(&config.signal),
            config: config.signal.clone(),
            turn_config: config.clone(),
            dialects: Arc::new(config.signal.dialects.clone()),
        })
    }
}

/// What a connection being upgraded brings to its session.
struct Opening {
    user: String,
    claims: Option<Claims>,
    client: IpAddr,
    origin: String,
    asked: Asked,
    limits: SignalLimits,
    slot: hub::ConnectionSlot,
}

/// The protocol a WebSocket connection asks for, by its path and query.
pub(crate) enum Asked {
    /// `/ws`, maybe resuming a session.
    Native { resume: Option<String> },
    /// y-webrtc's signaling (`signal.y-webrtc-path`).
    YWebrtc,
    /// PeerJS's `{peerjs-path}/peerjs?key=…&id=…&token=…`.
    PeerJs {
        key: Option<String>,
        id: Option<String>,
    },
}

impl Asked {
    fn resume(&self) -> Option<&str> {
        match self {
            Self::Native { resume } => resume.as_deref(),
            _ => None,
        }
    }
}

/// An HTTP answer that refuses the upgrade.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl Signaling {
    pub(crate) fn new(server: Arc<Server>, config: &Config) -> Arc<Self> {
        Arc::new(Self {
            hub: Hub::new(config.signal.limits, server.metrics.clone()),
            settings: Reloadable::new(Settings::new(config)),
            server,
            span: OnceLock::new(),
        })
    }

    /// Joins the other nodes of `[cluster]` (at start, on the runtime): rooms
    /// span them from now on. Fails only on a Redis setting the client
    /// refuses; Redis itself may come later.
    pub(crate) fn join_cluster(&self, config: &ClusterConfig) -> Result<(), String> {
        let span = Span::start(config, &self.hub, self.server.metrics.clone())?;
        let _ = self.span.set(span);
        Ok(())
    }

    /// Leaves the other nodes cleanly, at shutdown: this node's peers are
    /// gone from every room at once, rather than after `node-ttl`.
    pub(crate) async fn leave_cluster(&self) {
        if let Some(span) = self.span.get() {
            span.shutdown().await;
        }
    }

    /// Takes up the config (at start, with the bound addresses, and on each
    /// reload): keys, origins and limits apply to new connections; sessions
    /// already open keep going.
    pub(crate) fn reconfigure(&self, config: &Config) {
        match config.signal.auth {
            SignalAuth::Off => {
                if config.listen.iter().any(|l| l.services.http) {
                    log::info!(
                        "signaling is off: set signal.jwt-secrets, signal.jwt-public-keys \
                         or signal.auth = \"none\" to serve /ws"
                    );
                }
            }
            SignalAuth::None => log::warn!(
                "signal.auth = \"none\": anyone who can reach /ws may use signaling \
                 and get TURN credentials"
            ),
            SignalAuth::Jwt => {}
        }
        self.hub.set_limits(config.signal.limits);
        self.settings.set(Settings::new(config));
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings.get()
    }

    /// Whether `/ws` is served: `[signal]` has keys or `auth = "none"`.
    pub(crate) fn enabled(&self) -> bool {
        self.settings().config.auth != SignalAuth::Off
    }

    /// Checks a token the way `/ws` does, for other routes that accept it.
    pub(crate) fn verify(&self, token: Option<&str>) -> Result<Claims, TokenError> {
        self.settings().verifier.verify(token)
    }

    /// Closes every connection with 1001.
    pub(crate) fn stop(&self) {
        self.hub.stop();
    }

    /// ICE servers for `user`: STUN URLs, and TURN URLs with REST
    /// credentials when a REST secret is configured.
    pub(crate) fn ice_servers_for(&self, user: &str) -> Value {
        let settings = self.settings();
        let minted = {
            let credentials = self.server.credentials();
            credentials.mint(
                &ice::rest_user(user),
                credentials.credential_ttl(),
                unix_now(),
            )
        };
        match minted {
            Some((username, password)) => {
                ice::ice_servers(&settings.turn_config, &username, &password)["iceServers"].take()
            }
            None => {
                let (stun, _) = ice::urls(&settings.turn_config);
                if stun.is_empty() {
                    json!([])
                } else {
                    json!([{ "urls": stun }])
                }
            }
        }
    }

    /// Answers `GET /ws`: refuses it with a reason, or switches protocols and
    /// runs the session on the upgraded connection.
    pub(crate) fn upgrade(
        self: &Arc<Self>,
        request: Request<Incoming>,
        client: IpAddr,
        token: Option<String>,
        asked: Asked,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        let settings = self.settings();
        let headers = request.headers();
        let key = websocket_key(headers)?;
        if self.server.is_draining() {
            event!(info, "signal-refused", client = client, reason = "draining");
            return Err(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "draining",
                message: "this server is draining; connect to another one".to_owned(),
            });
        }
        let origin = header_text(headers, header::ORIGIN);
        if let Some(origin) = origin.as_deref()
            && !settings.origin_allowed(origin, header_text(headers, header::HOST).as_deref())
        {
            event!(
                info,
                "signal-refused",
                client = client,
                reason = "origin",
                origin = origin
            );
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                code: "origin-not-allowed",
                message: format!("origin {origin} is not in signal.allowed-origins"),
            });
        }
        let claims = match settings.config.auth {
            SignalAuth::None => None,
            _ => match settings.verifier.verify(token.as_deref()) {
                Ok(claims) => Some(claims),
                Err(error) => {
                    event!(
                        info,
                        "signal-refused",
                        client = client,
                        reason = error.name()
                    );
                    return Err(Refusal {
                        status: StatusCode::UNAUTHORIZED,
                        code: error.name(),
                        message: error.message().to_owned(),
                    });
                }
            },
        };
        if let Some(claims) = &claims
            && self.server.bans().is_banned(&claims.sub, unix_now())
        {
            event!(
                info,
                "signal-refused",
                client = client,
                reason = "user-banned",
                user = claims.sub
            );
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                code: "user-banned",
                message: format!("{} is banned", claims.sub),
            });
        }
        let slot = self
            .hub
            .admit(crate::source::source_of(client))
            .map_err(|limit| {
                if let Some(limit) = Limit::signal(limit) {
                    self.server.metrics.limit_hit(limit);
                }
                event!(info, "signal-limit", limit = limit, client = client);
                Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "too-many-connections",
                    message: format!("signaling is at its {limit} limit; try again later"),
                }
            })?;
        let user = claims
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), |c| c.sub.clone());
        let origin = origin.unwrap_or_else(|| "-".to_owned());

        // Taken here, not in the task: the request's headers are not kept
        // for the session's life.
        let on_upgrade = hyper::upgrade::on(request);
        let limits = settings.config.limits;
        let opening = Box::new(Opening {
            user,
            claims,
            client,
            origin,
            asked,
            limits,
            slot,
        });
        let this = self.clone();
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    log::debug!("signaling upgrade from {client} failed: {error}");
                    return;
                }
            };
            // A resume token this node does not know may be another node's.
            let moved = match (opening.asked.resume(), this.span.get()) {
                (Some(token), Some(span)) if !this.hub.knows_resume(token) => {
                    Box::pin(span.take_over(token, &opening.user)).await
                }
                _ => None,
            };
            let session = this.open_session(TokioIo::new(upgraded), opening, moved);
            drop(this);
            session.await;
        });

        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
                .unwrap_or_else(|_| unreachable!("base64 is a valid header value")),
        );
        Ok(response)
    }

    /// Starts or resumes the session of an upgraded connection, welcomes it,
    /// and returns the connection's task.
    fn open_session<S>(
        &self,
        io: S,
        opening: Box<Opening>,
        moved: Option<span::Moved>,
    ) -> impl Future<Output = ()> + use<S>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let Opening {
            user,
            claims,
            client,
            origin,
            asked,
            limits,
            slot,
        } = *opening;
        let opened = match moved {
            Some(moved) => self
                .hub
                .open_moved(&user, moved.peer, moved.rooms, unix_now()),
            None => self.hub.open(&user, asked.resume(), unix_now()),
        };
        let dialect = self.dialect_for(asked);
        // The other protocols have no welcome: their clients fetch ICE
        // servers from /ice-servers, and nothing is minted for them here.
        let welcome = if dialect.is_native() {
            protocol::welcome(&protocol::WelcomeFields {
                user: &user,
                peer: &opened.peer,
                resumed: opened.resumed,
                resume_token: &opened.resume_token,
                resume_seconds: limits.resume_grace.as_secs(),
                ice_servers: &self.ice_servers_for(&user),
            })
        } else {
            r#"{"type":"welcome"}"#.to_owned()
        };
        self.server.metrics.signal_connected(dialect.name());
        event!(
            info,
            "signal-connect",
            user = user,
            client = client,
            origin = origin,
            protocol = dialect.name(),
            resumed = opened.resumed
        );
        self.hub.attach(&opened, welcome);
        // A PeerJS client is in its key's room under its id from the start.
        if let Dialect::PeerJs(peerjs) = &dialect
            && !peerjs.is_refused()
            && let Err(problem) = self.hub.join(
                opened.id,
                None,
                peerjs.room(),
                Some(peerjs.id().to_owned()),
                None,
                None,
            )
        {
            opened.outbox.push(websocket::text(&protocol::error(
                &problem,
                Some("join"),
                None,
            )));
        }
        session::run(
            io,
            session::Connection {
                hub: self.hub.clone(),
                id: opened.id,
                attachment: opened.attachment,
                outbox: opened.outbox,
                user,
                claims,
                client,
                limits,
                slot,
                dialect,
            },
        )
    }

    /// The dialect a connection speaks, as it asked; a PeerJS client whose
    /// key or id cannot be served is told why and closed, as the PeerJS
    /// server does.
    fn dialect_for(&self, asked: Asked) -> Dialect {
        match asked {
            Asked::Native { .. } => Dialect::Native,
            Asked::YWebrtc => Dialect::YWebrtc(YWebrtc::default()),
            Asked::PeerJs { key, id } => {
                let settings = self.settings();
                let keys = &settings.config.dialects.peerjs_keys;
                let peerjs = match (key, id) {
                    (Some(key), Some(id)) if keys.contains(&key) => {
                        if valid_peerjs_id(&id) {
                            PeerJs::new(&key, id)
                        } else {
                            PeerJs::refused(&format!("Invalid id {id:?}"))
                        }
                    }
                    (Some(_), Some(_)) => PeerJs::refused("Invalid key provided"),
                    _ => PeerJs::refused("No id, token, or key supplied to websocket server"),
                };
                Dialect::PeerJs(peerjs)
            }
        }
    }

    /// Where the other protocols are served, as configured now.
    pub(crate) fn dialects(&self) -> Arc<config::Dialects> {
        self.settings().dialects.clone()
    }

    /// The PeerJS ids connected under `key` here, for `{path}/{key}/peers`.
    pub(crate) fn peerjs_peers(&self, key: &str) -> Vec<String> {
        self.hub.peers_of(&dialect::peerjs_room(key))
    }

    /// Expires held signals while icegate runs; what a sweep finds is
    /// answered with `expired` to its sender.
    pub(crate) async fn sweep_held(self: Arc<Self>) {
        let mut every = tokio::time::interval(HELD_SWEEP_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.hub.expire_held(tokio::time::Instant::now().into_std());
        }
    }

    /// Signals held for peers on their way right now.
    pub(crate) fn held_count(&self) -> usize {
        self.hub.held_count()
    }

    /// Every signaling session, or `user`'s, as the admin API lists them.
    pub(crate) fn sessions(&self, user: Option<&str>) -> Value {
        let now = unix_now();
        let list = self
            .hub
            .sessions(user)
            .into_iter()
            .map(|s| {
                let rooms: Vec<Value> = s
                    .rooms
                    .iter()
                    .map(|(room, peer)| json!({ "room": room, "peer": peer }))
                    .collect();
                json!({
                    "user": &*s.user,
                    "peer": s.peer,
                    "rooms": rooms,
                    "state": if s.held { "held" } else { "connected" },
                    "node": s.node,
                    "since": s.since,
                    "age_seconds": now.saturating_sub(s.since),
                })
            })
            .collect();
        Value::Array(list)
    }

    /// Sessions and rooms right now.
    pub(crate) fn counts(&self) -> (usize, usize) {
        self.hub.counts()
    }

    /// Connections, sessions (held ones included) and rooms right now.
    pub(crate) fn connection_counts(&self) -> (u32, usize, usize) {
        self.hub.connection_counts()
    }

    /// Ends every signaling session of `user`; returns how many.
    pub(crate) fn end_user(&self, user: &str) -> usize {
        self.hub.end_user(user)
    }
}

/// An `http` or `https` origin whose host is `localhost` or a loopback
/// address literal, such as `http://127.0.0.1:8478` or `http://[::1]:8478`.
fn is_loopback_origin(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, rest)) => (host, rest),
            None => return false,
        },
        None => authority.split_at(authority.find(':').unwrap_or(authority.len())),
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok
        && (host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Key` of a well-formed upgrade request (RFC 6455 §4.2.1).
fn websocket_key(headers: &HeaderMap) -> Result<String, Refusal> {
    let upgrade_required = |message: &str| Refusal {
        status: StatusCode::UPGRADE_REQUIRED,
        code: "websocket-required",
        message: message.to_owned(),
    };
    if !has_token(headers, header::UPGRADE, "websocket")
        || !has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(upgrade_required(
            "/ws speaks WebSocket: send Upgrade: websocket",
        ));
    }
    if header_text(headers, header::SEC_WEBSOCKET_VERSION).as_deref() != Some("13") {
        return Err(upgrade_required("only WebSocket version 13 is spoken"));
    }
    header_text(headers, header::SEC_WEBSOCKET_KEY)
        .filter(|key| !key.is_empty())
        .ok_or(Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "bad-request",
            message: "Sec-WebSocket-Key is missing".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::is_loopback_origin;

    #[test]
    fn loopback_origins() {
        for good in [
            "http://127.0.0.1:8478",
            "https://127.0.0.1",
            "http://127.5.6.7:80",
            "http://localhost:8478",
            "HTTP://LocalHost",
            "http://[::1]:8478",
            "https://[::1]",
        ] {
            assert!(is_loopback_origin(good), "{good}");
        }
        for bad in [
            "http://evil.example:8478",
            "http://localhost.evil.example",
            "http://evil.localhost:8478",
            "http://192.0.2.1:8478",
            "http://[2001:db8::1]:8478",
            "http://127.0.0.1:8478/path",
            "http://127.0.0.1:",
            "http://[::1",
            "ws://127.0.0.1:8478",
            "file://localhost",
            "null",
            "127.0.0.1:8478",
            "http://127.0.0.1@evil.example",
        ] {
            assert!(!is_loopback_origin(bad), "{bad}");
        }
    }
}
