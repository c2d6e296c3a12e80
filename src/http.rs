//! HTTP routes: `GET /ice-servers` hands applications ready-made ICE
//! servers with fresh TURN REST credentials, so no long-term password ever
//! reaches a browser; `GET /ws` is the signaling endpoint (`signal`); `GET /`
//! and `GET /icegate.js` serve the demo page and its client library.
//!
//! The answer carries both shapes consumers use: the RTCConfiguration-ready
//! `iceServers` array and the draft TURN REST API fields (`username`,
//! `password`, `ttl`, `uris`).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::Config;
use crate::ice;
use crate::logging::event;
use crate::reloadable::Reloadable;
use crate::server::{Server, unix_now};
use crate::signal::{Asked, Signaling, peerjs_id};

/// The demo page and the client library it uses, built into the binary.
const DEMO_PAGE: &str = include_str!("../web/index.html");
const CLIENT_LIBRARY: &str = include_str!("../web/icegate.js");

/// What the HTTP side needs.
pub(crate) struct HttpApi {
    server: Arc<Server>,
    signal: Arc<Signaling>,
    settings: Reloadable<HttpSettings>,
}

/// The part of the config the routes use; replaced whole on reload.
struct HttpSettings {
    /// With the listeners' bound addresses, for ICE URLs.
    config: Config,
    api_keys: Vec<Vec<u8>>,
    trusted_proxies: Vec<IpNet>,
    handshake_timeout: Duration,
}

impl HttpSettings {
    fn new(config: &Config) -> Arc<Self> {
        Arc::new(Self {
            handshake_timeout: config.signal.limits.handshake_timeout,
            config: config.clone(),
            api_keys: config
                .http
                .api_keys
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
            trusted_proxies: config.http.trusted_proxies.clone(),
        })
    }

    fn key_is_valid(&self, presented: &str) -> bool {
        is_one_of(presented, &self.api_keys)
    }

    /// The client a request came from: the peer, or the last address in
    /// `X-Forwarded-For` when the peer is a trusted proxy.
    fn client_of(&self, request: &Request<Incoming>, peer: SocketAddr) -> IpAddr {
        if !self
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer.ip()))
        {
            return peer.ip();
        }
        // The last entry is the one the trusted proxy itself added.
        request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.rsplit(','))
            .find_map(|part| part.trim().parse::<IpAddr>().ok())
            .unwrap_or(peer.ip())
    }
}

impl HttpApi {
    pub(crate) fn new(server: Arc<Server>, signal: Arc<Signaling>, config: &Config) -> Arc<Self> {
        Arc::new(Self {
            server,
            signal,
            settings: Reloadable::new(HttpSettings::new(config)),
        })
    }

    /// Takes up a reloaded config (with the listeners' bound addresses).
    pub(crate) fn reconfigure(&self, config: &Config) {
        self.settings.set(HttpSettings::new(config));
    }

    fn settings(&self) -> Arc<HttpSettings> {
        self.settings.get()
    }

    fn route(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let settings = self.settings();
        let path = request.uri().path();
        let upgrade = request
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let dialect = DialectRoute::of(path, &self.signal.dialects(), upgrade);
        if dialect.is_none() && !matches!(path, "/ice-servers" | "/ws" | "/" | "/icegate.js") {
            return error(StatusCode::NOT_FOUND, "not-found", "no such resource");
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "use GET",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/" if dialect.is_none() => {
                return static_response(DEMO_PAGE, "text/html; charset=utf-8");
            }
            "/icegate.js" => {
                return static_response(CLIENT_LIBRARY, "text/javascript; charset=utf-8");
            }
            _ => {}
        }
        let query = Query(request.uri().query().unwrap_or(""));
        let bearer = bearer_token(&request).map(str::to_owned);
        let client = settings.client_of(&request, peer);
        let asked = match dialect {
            Some(
                DialectRoute::PeerJsId(_) | DialectRoute::PeerJsPeers(_) | DialectRoute::PeerJsInfo,
            ) => {
                return self.peerjs_http(dialect, client);
            }
            Some(DialectRoute::YWebrtc) => Some(Asked::YWebrtc),
            Some(DialectRoute::PeerJsSocket) => Some(Asked::PeerJs {
                key: query.get("key"),
                id: query.get("id"),
            }),
            None if path == "/ws" => Some(Asked::Native {
                resume: query.get("resume"),
            }),
            None => None,
        };
        if let Some(asked) = asked {
            let signal = &self.signal;
            if !signal.enabled() {
                return error(
                    StatusCode::NOT_FOUND,
                    "signaling-off",
                    "signaling is not configured ([signal] in the config)",
                );
            }
            let token = query.get("token").or(bearer);
            return signal
                .upgrade(request, client, token, asked)
                .unwrap_or_else(|refusal| {
                    let mut response = error(refusal.status, refusal.code, &refusal.message);
                    let headers = response.headers_mut();
                    if refusal.status == StatusCode::UPGRADE_REQUIRED {
                        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                        headers.insert(
                            header::SEC_WEBSOCKET_VERSION,
                            HeaderValue::from_static("13"),
                        );
                    }
                    if refusal.status == StatusCode::UNAUTHORIZED {
                        headers.insert(header::WWW_AUTHENTICATE, bearer_challenge());
                    }
                    response
                });
        }
        let presented = bearer.or_else(|| query.get("key"));
        let token_user = || {
            let token = presented.clone().or_else(|| query.get("token"));
            if !self.signal.enabled() {
                return None;
            }
            let claims = self.signal.verify(token.as_deref()).ok()?;
            Some(claims.sub)
        };
        let user = if presented
            .as_deref()
            .is_some_and(|key| settings.key_is_valid(key))
        {
            query.get("username").unwrap_or_else(|| "ice".to_owned())
        } else if let Some(user) = token_user() {
            user
        } else {
            event!(
                info,
                "ice-servers-refused",
                client = client,
                reason = "api-key"
            );
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "an API key or signaling token is required (Authorization: Bearer KEY)",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, bearer_challenge());
            return response;
        };
        if self.server.bans().is_banned(&user, unix_now()) {
            event!(
                info,
                "ice-servers-refused",
                client = client,
                reason = "user-banned",
                user = user
            );
            return error(
                StatusCode::FORBIDDEN,
                "user-banned",
                &format!("{user} is banned"),
            );
        }
        let user = ice::rest_user(&user);
        let minted = {
            let credentials = self.server.credentials();
            let ttl = credentials.credential_ttl();
            credentials
                .mint(&user, ttl, unix_now())
                .map(|(username, password)| (username, password, ttl))
        };
        let Some((username, password, ttl)) = minted else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no-rest-secret",
                "no TURN REST secret is configured (auth.secrets)",
            );
        };
        event!(info, "ice-servers", client = client, user = user);
        let (stun, turn) = ice::urls(&settings.config);
        let mut body = ice::ice_servers(&settings.config, &username, &password);
        let uris: Vec<&String> = stun.iter().chain(&turn).collect();
        body["iceTransportPolicy"] = json!("all");
        body["ttl"] = json!(ttl.as_secs());
        body["username"] = json!(username);
        body["password"] = json!(password);
        body["uris"] = json!(uris);
        json_response(StatusCode::OK, &body)
    }
}

/// `a=1&b=2` lookups with percent-decoding of the few characters keys and
/// user names need.
/// A route of the other signaling protocols' (`[signal] y-webrtc-path`,
/// `peerjs-path`).
#[derive(Debug, PartialEq, Eq)]
enum DialectRoute {
    YWebrtc,
    /// `{peerjs-path}/peerjs`: the WebSocket.
    PeerJsSocket,
    /// `{peerjs-path}/{key}/id`: a fresh id.
    PeerJsId(String),
    /// `{peerjs-path}/{key}/peers`: the ids connected.
    PeerJsPeers(String),
    /// `{peerjs-path}` itself: what the server is.
    PeerJsInfo,
}

impl DialectRoute {
    /// The route of `path`; `upgrade` says whether the request asks for a
    /// WebSocket (at `/`, only those go to y-webrtc: `GET /` is the demo page).
    fn of(path: &str, dialects: &crate::config::Dialects, upgrade: bool) -> Option<Self> {
        if dialects.y_webrtc_path.as_deref() == Some(path) && (upgrade || path != "/") {
            return Some(Self::YWebrtc);
        }
        let base = dialects.peerjs_path.as_deref()?;
        let rest = if base == "/" {
            path.strip_prefix('/')?
        } else {
            let rest = path.strip_prefix(base)?;
            if rest.is_empty() || rest == "/" {
                return Some(Self::PeerJsInfo);
            }
            rest.strip_prefix('/')?
        };
        if rest == "peerjs" {
            return Some(Self::PeerJsSocket);
        }
        let (key, what) = rest.split_once('/')?;
        match what {
            "id" => Some(Self::PeerJsId(key.to_owned())),
            "peers" => Some(Self::PeerJsPeers(key.to_owned())),
            _ => None,
        }
    }
}

impl HttpApi {
    /// The PeerJS server's plain HTTP routes.
    fn peerjs_http(&self, route: Option<DialectRoute>, client: IpAddr) -> Response<Full<Bytes>> {
        if !self.signal.enabled() {
            return error(
                StatusCode::NOT_FOUND,
                "signaling-off",
                "signaling is not configured ([signal] in the config)",
            );
        }
        let dialects = self.signal.dialects();
        let known = |key: &str| dialects.peerjs_keys.iter().any(|k| k == key);
        match route {
            Some(DialectRoute::PeerJsId(key)) if known(&key) => {
                open_to_pages(text_response(peerjs_id()))
            }
            Some(DialectRoute::PeerJsPeers(key)) if known(&key) && dialects.peerjs_discovery => {
                open_to_pages(json_response(
                    StatusCode::OK,
                    &json!(self.signal.peerjs_peers(&key)),
                ))
            }
            Some(DialectRoute::PeerJsPeers(_)) if !dialects.peerjs_discovery => {
                event!(
                    info,
                    "peerjs-refused",
                    client = client,
                    reason = "discovery-off"
                );
                error(
                    StatusCode::UNAUTHORIZED,
                    "discovery-off",
                    "listing peers is off ([signal] peerjs-discovery)",
                )
            }
            Some(DialectRoute::PeerJsInfo) => open_to_pages(json_response(
                StatusCode::OK,
                &json!({
                    "name": "PeerJS Server",
                    "description": "icegate serving the PeerJS server protocol",
                    "website": "https://peerjs.com/",
                }),
            )),
            _ => error(
                StatusCode::UNAUTHORIZED,
                "invalid-key",
                "Invalid key provided",
            ),
        }
    }
}

pub(crate) struct Query<'a>(pub(crate) &'a str);

impl Query<'_> {
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        self.0
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| percent_decode(value))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let hex = || std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok();
        match byte {
            b'%' => match hex().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(decoded) => {
                    out.push(decoded);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            _ => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `presented` is one of `secrets`, compared with every one in
/// constant time so that timing says nothing.
pub(crate) fn is_one_of(presented: &str, secrets: &[Vec<u8>]) -> bool {
    secrets.iter().fold(false, |found, secret| {
        found | bool::from(secret.ct_eq(presented.as_bytes()))
    })
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub(crate) fn bearer_token<B>(request: &Request<B>) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn bearer_challenge() -> HeaderValue {
    HeaderValue::from_static("Bearer realm=\"icegate\"")
}

fn static_response(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The page talks only to the server that served it.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' wss: ws:; style-src 'self' 'unsafe-inline'; \
             script-src 'self' 'unsafe-inline'",
        ),
    );
    response
}

/// A plain-text answer (a PeerJS id, as the PeerJS server sends it).
fn text_response(body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Lets any page read the answer: PeerJS clients fetch ids from wherever
/// the app is served, and an id is no secret.
fn open_to_pages(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Credentials must not sit in a shared cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

/// Serves HTTP/1.1 on one connection until the client is done.
pub(crate) async fn serve_connection<S>(api: Arc<HttpApi>, io: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake_timeout = api.settings().handshake_timeout;
    let requested = Arc::new(AtomicBool::new(false));
    let seen = requested.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.route(request, peer)) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    // hyper times out slow headers only once a request has begun; a client
    // that sends nothing at all is dropped here.
    let served = match tokio::time::timeout(handshake_timeout, &mut connection).await {
        Ok(served) => served,
        Err(_) if !requested.load(Ordering::Relaxed) => {
            log::debug!("http connection from {peer} sent no request in {handshake_timeout:?}");
            return;
        }
        Err(_) => connection.await,
    };
    if let Err(error) = served {
        log::debug!("http connection from {peer} ended: {error}");
    }
}

/// A stream whose first bytes were already read (to tell TURN from HTTP):
/// they are handed out again before the rest.
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let rest = &self.prefix[self.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.offset += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let query = Query("key=a%2Bb&username=bob+smith&x");
        assert_eq!(query.get("key").as_deref(), Some("a+b"));
        assert_eq!(query.get("username").as_deref(), Some("bob smith"));
        assert_eq!(query.get("x"), None);
        assert_eq!(percent_decode("100%"), "100%");
    }

    fn dialects(y_webrtc: &str, peerjs: &str) -> crate::config::Dialects {
        crate::config::Dialects {
            y_webrtc_path: Some(y_webrtc.to_owned()),
            peerjs_path: Some(peerjs.to_owned()),
            peerjs_keys: vec!["peerjs".to_owned()],
            peerjs_discovery: false,
        }
    }

    #[test]
    fn the_other_protocols_routes_by_path() {
        let defaults = dialects("/y-webrtc", "/peerjs");
        let route = |path, upgrade| DialectRoute::of(path, &defaults, upgrade);
        assert_eq!(route("/y-webrtc", true), Some(DialectRoute::YWebrtc));
        assert_eq!(
            route("/peerjs/peerjs", true),
            Some(DialectRoute::PeerJsSocket)
        );
        assert_eq!(
            route("/peerjs/k/id", false),
            Some(DialectRoute::PeerJsId("k".to_owned()))
        );
        assert_eq!(
            route("/peerjs/k/peers", false),
            Some(DialectRoute::PeerJsPeers("k".to_owned()))
        );
        assert_eq!(route("/peerjs", false), Some(DialectRoute::PeerJsInfo));
        for native in ["/", "/ws", "/ice-servers", "/icegate.js", "/peerjs/k/x"] {
            assert_eq!(route(native, true), None, "{native}");
        }
        // At "/", as the libraries' own servers: upgrades and the PeerJS
        // routes go to them, the demo page stays.
        let root = dialects("/", "/");
        let route = |path, upgrade| DialectRoute::of(path, &root, upgrade);
        assert_eq!(route("/", true), Some(DialectRoute::YWebrtc));
        assert_eq!(route("/", false), None);
        assert_eq!(route("/peerjs", true), Some(DialectRoute::PeerJsSocket));
        assert_eq!(
            route("/peerjs/id", false),
            Some(DialectRoute::PeerJsId("peerjs".to_owned()))
        );
        for native in ["/ws", "/ice-servers", "/icegate.js"] {
            assert_eq!(route(native, true), None, "{native}");
        }
    }
}
