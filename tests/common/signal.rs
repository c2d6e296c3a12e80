//! Signaling clients for the tests: tokio-tungstenite's WebSocket client
//! against the real daemon's `/ws`, JSON in and out, every wait bounded.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{TestConfig, unix_now};

/// The HS256 secret the signaling tests configure.
pub const JWT_SECRET: &str = "signaling-test-secret-0123456789abcdef";
/// The longest a test waits for one message.
pub const WAIT: Duration = Duration::from_secs(5);

/// A daemon config with a UDP listener for TURN, a plain HTTP listener for
/// `/ws`, public host 127.0.0.1, and `[signal]` with [`JWT_SECRET`] plus
/// `signal_extra` (on top of [`TestConfig::default`]).
pub fn signal_config(signal_extra: &str) -> String {
    let signal = format!("[signal]\njwt-secrets = [\"{JWT_SECRET}\"]\n{signal_extra}\n");
    TestConfig {
        http: true,
        public_host: Some("127.0.0.1"),
        tables: &signal,
        ..TestConfig::default()
    }
    .render()
}

/// An HS256 token for `sub`, expiring `valid_for` seconds from now
/// (negative: already expired), optionally limited to `rooms`.
pub fn token(secret: &str, sub: &str, valid_for: i64, rooms: Option<&[&str]>) -> String {
    let mut claims = json!({ "sub": sub, "exp": unix_now() as i64 + valid_for });
    if let Some(rooms) = rooms {
        claims["rooms"] = json!(rooms);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode token")
}

/// A token for `sub` signed with [`JWT_SECRET`], valid for an hour.
pub fn token_for(sub: &str) -> String {
    token(JWT_SECRET, sub, 3600, None)
}

/// A WebSocket client, over plain TCP unless made [`SignalClient::from_stream`].
pub struct SignalClient<S = MaybeTlsStream<TcpStream>> {
    ws: WebSocketStream<S>,
}

/// An upgrade the server refused: the HTTP status and body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl SignalClient {
    /// Connects to `ws://ADDR/ws?QUERY` with extra request `headers`.
    pub async fn connect_with(
        address: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, Refused> {
        Self::connect_to(address, &format!("/ws?{query}"), headers).await
    }

    /// Connects to `ws://ADDR` + `path_and_query` with extra request `headers`.
    pub async fn connect_to(
        address: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, Refused> {
        let url = format!("ws://{address}{path_and_query}");
        let mut request = url.into_client_request().expect("request");
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
            request
                .headers_mut()
                .insert(name, HeaderValue::from_str(value).expect("header value"));
        }
        let connecting = tokio_tungstenite::connect_async(request);
        match tokio::time::timeout(WAIT, connecting)
            .await
            .expect("connect in time")
        {
            Ok((ws, _)) => Ok(Self { ws }),
            Err(WsError::Http(response)) => Err(Refused {
                status: response.status().as_u16(),
                body: String::from_utf8_lossy(response.body().as_deref().unwrap_or(&[]))
                    .into_owned(),
            }),
            Err(error) => panic!("connecting to {address}: {error}"),
        }
    }

    /// Connects with `token` and returns the client and its `welcome`.
    pub async fn join_server(address: SocketAddr, token: &str) -> (Self, Value) {
        let mut client = Self::connect_with(address, &format!("token={token}"), &[])
            .await
            .expect("upgrade accepted");
        let welcome = client.expect("welcome").await;
        (client, welcome)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SignalClient<S> {
    /// A client over an established stream (e.g. TLS) whose upgrade to
    /// `url` is done here.
    pub async fn over(stream: S, url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
            .await
            .expect("upgrade in time")
            .expect("upgrade accepted");
        Self { ws }
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("send a frame");
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::binary(bytes.to_vec()))
            .await
            .expect("send a frame");
    }

    /// Sends any frame, such as a WebSocket ping or pong.
    pub async fn send_frame(&mut self, message: Message) {
        self.ws.send(message).await.expect("send a frame");
    }

    /// The next frame of any kind; `None` when the connection ended
    /// without a close frame.
    pub async fn next_frame(&mut self) -> Option<Message> {
        let frame = tokio::time::timeout(WAIT, self.ws.next())
            .await
            .unwrap_or_else(|_| panic!("no frame within {WAIT:?}"));
        frame.and_then(Result::ok)
    }

    /// The next text message, as JSON; `None` when the server closed.
    pub async fn next(&mut self) -> Option<Value> {
        match self.next_event().await {
            Event::Text(value) => Some(value),
            Event::Closed(_) => None,
        }
    }

    /// The next text message or the close (with its code).
    pub async fn next_event(&mut self) -> Event {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no message within {WAIT:?}"));
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return Event::Text(serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("server sent a frame that is not JSON ({e}): {text}")
                    }));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(frame.map(|f: CloseFrame| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    /// The next message, which must have `type` `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let message = self
            .next()
            .await
            .unwrap_or_else(|| panic!("closed while waiting for {kind}"));
        assert_eq!(message["type"], kind, "expected {kind}, got {message}");
        message
    }

    /// The next message, which must have `type` `kind`, as JSON and as the
    /// text the server sent (to check what it passed on byte for byte).
    pub async fn expect_raw(&mut self, kind: &str) -> (Value, String) {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no {kind} within {WAIT:?}"));
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("server sent a frame that is not JSON ({e})"));
                    assert_eq!(message["type"], kind, "expected {kind}, got {message}");
                    return (message, text.as_str().to_owned());
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    panic!("closed while waiting for {kind}")
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next message must be an `error` with `code`; returns it.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let message = self.expect("error").await;
        assert_eq!(message["code"], code, "unexpected error {message}");
        message
    }

    /// The next text message if one arrives within `within`.
    pub async fn poll_for(&mut self, within: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(within, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).ok(),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(frame) = tokio::time::timeout(quiet, self.ws.next()).await {
            panic!("expected nothing, got {frame:?}");
        }
    }

    /// Sends a `ping` and waits for its `pong`: the connection works.
    pub async fn assert_usable(&mut self) {
        self.send(json!({"type": "ping", "id": "alive?"})).await;
        let pong = self.expect("pong").await;
        assert_eq!(pong["id"], "alive?");
    }

    /// Joins `room` as `peer` and returns the `joined` message.
    pub async fn join(&mut self, room: &str, peer: &str) -> Value {
        self.send(json!({"type": "join", "room": room, "peer": peer}))
            .await;
        let joined = self.expect("joined").await;
        assert_eq!(joined["peer"], peer);
        joined
    }

    /// Closes with a close frame, as a browser tab that leaves does.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
        // Read until the server's close reply or the end.
        let _ = tokio::time::timeout(WAIT, async { while self.ws.next().await.is_some() {} }).await;
    }

    /// Drops the TCP connection without a close frame, as a network change does.
    pub fn drop_connection(self) {
        drop(self.ws);
    }

    /// The raw stream, to stop reading it (a client that hangs).
    pub fn into_inner(self) -> WebSocketStream<S> {
        self.ws
    }
}

#[derive(Debug)]
pub enum Event {
    Text(Value),
    /// The close code, if the server sent a close frame.
    Closed(Option<u16>),
}
