//! The admin listener (`[admin] address`, loopback by default): Prometheus
//! metrics, health, the allocation table, ending a user's allocations and
//! signaling sessions, bans (`bans.rs`), drain and reload. With
//! `[admin] token` set, every request but `GET /healthz` presents it as a
//! bearer token.
//!
//! | request                         | answer                                          |
//! |---------------------------------|-------------------------------------------------|
//! | `GET /metrics`                  | Prometheus text, or OpenMetrics if asked for    |
//! | `GET /healthz`                  | 200 `ok`, 503 `draining`                        |
//! | `GET /allocations[?user=U]`     | JSON array of allocations                       |
//! | `DELETE /allocations?user=U`    | ends U's allocations and signaling sessions     |
//! | `GET /sessions[?user=U]`        | JSON array of signaling sessions                |
//! | `POST /drain`                   | refuses new allocations and connections         |
//! | `POST /reload`                  | reloads as SIGHUP does; 200 or 500 with why     |
//! | `GET /bans`                     | JSON array of the bans in force                 |
//! | `POST /bans?user=U[&for=D]`     | bans U for D or until lifted; ends what U has   |
//! | `DELETE /bans?user=U`           | lifts U's ban                                   |
//!
//! A user `U` matches a static user or signaling user `U` and TURN REST
//! usernames `EXPIRY:U`.

mod bans;
mod scrape;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::auth;
use crate::config::AdminConfig;
use crate::drain;
use crate::http::{Query, bearer_token, error, is_one_of, json_response};
use crate::logging::event;
use crate::reloadable::Reloadable;
use crate::server::Server;
use crate::signal::Signaling;
use crate::turn::allocation::{Allocation, Traffic};
use scrape::Format;
pub(crate) use scrape::Sources;

/// A reload asked for over HTTP; the daemon's main loop answers on it.
pub(crate) type ReloadReply = oneshot::Sender<Result<String, String>>;

/// How long a request may take to arrive, and a connection may stay open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_LIMIT: Duration = Duration::from_secs(120);
/// How long POST /reload waits for the main loop's answer.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct AdminListener {
    listener: TcpListener,
    local: SocketAddr,
}

impl AdminListener {
    /// Binds `[admin] address`; warns when it is reachable from elsewhere without a token.
    pub(crate) fn bind(config: &AdminConfig) -> io::Result<Self> {
        let std = std::net::TcpListener::bind(config.address).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot listen on admin {}: {error}", config.address),
            )
        })?;
        std.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std)?;
        let local = listener.local_addr()?;
        log::info!("listening on admin {local}");
        if !local.ip().is_loopback() && config.token.is_none() {
            log::warn!(
                "admin listener {local} is not on loopback and has no admin.token: anyone who \
                 reaches it can end allocations and drain the server"
            );
        }
        Ok(Self { listener, local })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// What the admin routes read and act on.
pub(crate) struct AdminApi {
    server: Arc<Server>,
    signal: Arc<Signaling>,
    registry: Registry,
    /// Where the listener was bound as configured: a reload cannot move it.
    address: SocketAddr,
    token: Reloadable<Option<Vec<u8>>>,
    /// `[admin] max-bans`, as reloaded.
    max_bans: AtomicUsize,
    reload: mpsc::Sender<ReloadReply>,
}

impl AdminApi {
    pub(crate) fn new(
        config: &AdminConfig,
        sources: Sources,
        reload: mpsc::Sender<ReloadReply>,
    ) -> Arc<Self> {
        Arc::new(Self {
            server: sources.server.clone(),
            signal: sources.signal.clone(),
            registry: scrape::registry(sources),
            address: config.address,
            token: Reloadable::new(Arc::new(token_bytes(config))),
            max_bans: AtomicUsize::new(config.max_bans as usize),
            reload,
        })
    }

    /// Takes up a reloaded `[admin]` table: a new token applies to the next
    /// request; a new address is returned as needing a restart.
    pub(crate) fn reconfigure(&self, config: &AdminConfig) -> Option<String> {
        self.token.set(Arc::new(token_bytes(config)));
        self.max_bans
            .store(config.max_bans as usize, Ordering::Relaxed);
        (config.address != self.address).then(|| {
            format!(
                "admin.address {} (still listening on {})",
                config.address, self.address
            )
        })
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let token = self.token.get();
        let Some(token) = token.as_ref() else {
            return true;
        };
        is_one_of(
            bearer_token(request).unwrap_or(""),
            std::slice::from_ref(token),
        )
    }

    async fn route(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let allowed: &[Method] = match path {
            "/metrics" | "/healthz" => &[Method::GET, Method::HEAD],
            "/allocations" => &[Method::GET, Method::HEAD, Method::DELETE],
            "/sessions" => &[Method::GET, Method::HEAD],
            "/drain" | "/reload" => &[Method::POST],
            "/bans" => &[Method::GET, Method::HEAD, Method::POST, Method::DELETE],
            _ => return error(StatusCode::NOT_FOUND, "not-found", "no such resource"),
        };
        if !allowed.contains(request.method()) {
            let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                &format!("use {}", names.join(" or ")),
            );
            if let Ok(value) = HeaderValue::from_str(&names.join(", ")) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            return response;
        }
        if path == "/healthz" {
            return if self.server.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ok\n")
            };
        }
        if !self.authorized(&request) {
            event!(info, "admin-refused", client = peer, reason = "token");
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin token is required (Authorization: Bearer TOKEN)",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"icegate-admin\""),
            );
            return response;
        }
        let query = Query(request.uri().query().unwrap_or(""));
        let user = query.get("user");
        match (request.method(), path) {
            (method, "/bans") => self.bans(method, user, query.get("for"), peer),
            (&Method::DELETE, _) => self.end_user(user, peer),
            (_, "/metrics") => {
                let accept = request
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let format = Format::for_accept(accept);
                let body = scrape::render(&self.registry, format);
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(format.content_type()),
                );
                response
            }
            (_, "/allocations") => {
                let mut list: Vec<Value> = Vec::new();
                self.server.for_each_allocation(|a| {
                    if user.as_deref().is_none_or(|u| user_matches(&a.username, u)) {
                        list.push(describe(a));
                    }
                });
                json_response(StatusCode::OK, &Value::Array(list))
            }
            (_, "/sessions") => {
                json_response(StatusCode::OK, &self.signal.sessions(user.as_deref()))
            }
            (_, "/drain") => {
                drain::start(&self.server, "admin");
                let allocations = self.server.allocation_count();
                json_response(
                    StatusCode::OK,
                    &json!({ "draining": true, "allocations": allocations }),
                )
            }
            _ => self.reload().await,
        }
    }

    /// `DELETE /allocations?user=U`.
    fn end_user(&self, user: Option<String>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let Some(user) = user.filter(|u| !u.is_empty()) else {
            return error(
                StatusCode::BAD_REQUEST,
                "user-required",
                "name the user: DELETE /allocations?user=NAME",
            );
        };
        let (allocations, sessions) = self.end_now(&user);
        event!(
            info,
            "user-ended",
            user = user,
            allocations = allocations,
            signal_sessions = sessions,
            by = peer
        );
        json_response(
            StatusCode::OK,
            &json!({ "user": user, "allocations": allocations, "signal_sessions": sessions }),
        )
    }

    /// Ends `user`'s allocations and signaling sessions; returns how many of each.
    fn end_now(&self, user: &str) -> (usize, usize) {
        let allocations = self
            .server
            .end_allocations(|username| user_matches(username, user));
        (allocations, self.signal.end_user(user))
    }

    /// `POST /reload`: the daemon's main loop reloads and says how it went.
    async fn reload(&self) -> Response<Full<Bytes>> {
        let (reply, answer) = oneshot::channel();
        if self.reload.send(reply).await.is_err() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "stopping",
                "icegate is stopping",
            );
        }
        match tokio::time::timeout(RELOAD_TIMEOUT, answer).await {
            Ok(Ok(Ok(message))) => json_response(
                StatusCode::OK,
                &json!({ "reloaded": true, "message": message }),
            ),
            Ok(Ok(Err(problem))) => {
                error(StatusCode::INTERNAL_SERVER_ERROR, "reload-failed", &problem)
            }
            Ok(Err(_)) | Err(_) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-answer",
                "the reload did not answer",
            ),
        }
    }
}

fn token_bytes(config: &AdminConfig) -> Option<Vec<u8>> {
    config.token.as_ref().map(|t| t.as_bytes().to_vec())
}

/// Whether an allocation's `username` is `user`'s: the name itself, or a
/// TURN REST username for it.
fn user_matches(username: &str, user: &str) -> bool {
    username == user || auth::rest_user_part(username) == Some(user)
}

fn traffic(traffic: Traffic) -> Value {
    json!({ "bytes": traffic.bytes, "packets": traffic.packets })
}

fn describe(allocation: &Allocation) -> Value {
    let five_tuple = &allocation.five_tuple;
    json!({
        "transport": five_tuple.transport.as_str(),
        "client": five_tuple.client.to_string(),
        "server": five_tuple.server.to_string(),
        "relayed": allocation.relayed.to_string(),
        // Both relays of a dual-stack allocation, IPv4 first; one otherwise.
        "relayed_addresses": allocation
            .relayed_addresses()
            .map(|address| address.to_string())
            .collect::<Vec<_>>(),
        // TCP for an RFC 6062 allocation, whose peers are TCP connections.
        "relay_transport": if allocation.tcp_connections.is_some() { "tcp" } else { "udp" },
        "peer_connections": allocation.tcp_connections.as_ref().map_or(0, Vec::len),
        "user": allocation.username,
        "age_seconds": allocation.created.elapsed().as_secs(),
        "expires_in_seconds": allocation
            .ends()
            .saturating_duration_since(Instant::now())
            .as_secs(),
        "to_peer": traffic(allocation.to_peer),
        "from_peer": traffic(allocation.from_peer),
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Accepts admin connections until the process ends.
pub(crate) async fn serve(listener: AdminListener, api: Arc<AdminApi>) {
    loop {
        let (tcp, peer) = match listener.listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                log::warn!("admin listener {} accept error: {error}", listener.local);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let api = api.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.route(request, peer).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            if let Ok(Err(error)) = tokio::time::timeout(CONNECTION_LIMIT, connection).await {
                log::debug!("admin connection from {peer} ended: {error}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_usernames_belong_to_their_user() {
        assert!(user_matches("alice", "alice"));
        assert!(user_matches("1700000000:alice", "alice"));
        assert!(!user_matches("1700000000:alice", "1700000000"));
        assert!(!user_matches("x:alice", "alice"));
        assert!(!user_matches(":alice", "alice"));
        assert!(!user_matches("alice2", "alice"));
    }
}
