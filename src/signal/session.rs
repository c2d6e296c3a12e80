//! One signaling connection: reads the client's frames and acts on them,
//! sends what the hub queued for it, pings, and enforces the per-connection
//! limits.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::hub::{ConnectionSlot, Drained, Hub, Outbox, SessionId};
use super::protocol::{self, ErrorCode, Incoming, LeaveReason, Problem, Request};
use super::token::Claims;
use crate::config::SignalLimits;
use crate::logging::event;
use crate::metrics::{Limit, SignalMessage};

/// Oversized frames in a row after which the connection is closed.
const OVERSIZED_IN_A_ROW: u32 = 3;
/// A close frame that the client does not take within this is abandoned.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a connection's task needs.
pub(crate) struct Connection {
    pub(crate) hub: Arc<Hub>,
    pub(crate) id: SessionId,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) user: String,
    pub(crate) claims: Option<Claims>,
    pub(crate) client: IpAddr,
    pub(crate) limits: SignalLimits,
    /// Released when the task ends.
    pub(crate) slot: ConnectionSlot,
    /// Turns true when icegate stops.
    pub(crate) stopping: watch::Receiver<bool>,
}

/// How a connection ended, which decides what happens to its session.
enum Ending {
    /// The client sent a close frame: it has left.
    Closed,
    /// The connection broke or stopped answering: hold the session for a resume.
    Dropped(LeaveReason),
    /// A limit was broken, or icegate is stopping: close with this code and
    /// end the session.
    CloseWith(CloseCode, &'static str),
    /// Another connection resumed the session.
    Superseded,
}

/// A token bucket of `rate` messages a second holding at most `burst`.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
    refused_in_a_row: u32,
    last_warning: Option<Instant>,
}

impl RateLimit {
    fn new(limits: &SignalLimits) -> Self {
        Self {
            tokens: f64::from(limits.message_burst),
            rate: f64::from(limits.messages_per_second),
            burst: f64::from(limits.message_burst),
            last: Instant::now(),
            refused_in_a_row: 0,
            last_warning: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            true
        } else {
            self.refused_in_a_row += 1;
            false
        }
    }

    /// At most one `rate-limited` error a second.
    fn should_warn(&mut self, now: Instant) -> bool {
        let due = self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if due {
            self.last_warning = Some(now);
        }
        due
    }
}

pub(crate) async fn run<S>(mut ws: WebSocketStream<S>, connection: Connection)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Connection {
        hub,
        id,
        outbox,
        wake,
        user,
        claims,
        client,
        limits,
        slot,
        mut stopping,
    } = connection;
    let mut rate = RateLimit::new(&limits);
    let mut oversized_in_a_row = 0;
    let mut heard = true;
    let mut awaiting_pong = false;
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let reply = |problem: Problem, incoming: Option<&Incoming<'_>>| {
        let (kind, id) = incoming.map_or((None, None), |i| (i.kind.as_deref(), i.id));
        outbox.push(protocol::error(&problem, kind, id).into());
    };

    let ending = loop {
        tokio::select! {
            () = wake.notified() => match outbox.drain(&wake) {
                Drained::Send(frames) => {
                    let sending = async {
                        for text in frames {
                            ws.feed(Message::Text(text)).await?;
                        }
                        ws.flush().await
                    };
                    tokio::pin!(sending);
                    // A client that does not read stalls the write; more
                    // frames queued meanwhile may overflow its outbox, which
                    // must end the wait.
                    let mut woken = false;
                    let sent = loop {
                        tokio::select! {
                            result = &mut sending => break Some(result),
                            () = wake.notified() => {
                                if outbox.is_overflowed() {
                                    break None;
                                }
                                woken = true;
                            }
                        }
                    };
                    if woken {
                        wake.notify_one();
                    }
                    match sent {
                        None => break Ending::CloseWith(CloseCode::Policy, "not reading"),
                        Some(Err(_)) => break Ending::Dropped(LeaveReason::Closed),
                        Some(Ok(())) => {}
                    }
                }
                Drained::Overflowed => break Ending::CloseWith(CloseCode::Policy, "not reading"),
                Drained::Superseded => break Ending::Superseded,
                Drained::Ended => break Ending::CloseWith(CloseCode::Policy, "ended by the operator"),
            },
            frame = ws.next() => {
                heard = true;
                let message = match frame {
                    None => break Ending::Dropped(LeaveReason::Closed),
                    Some(Err(WsError::Capacity(_))) => {
                        hub.metrics.limit_hit(Limit::SignalMaxMessageBytes);
                        event!(info, "signal-limit", limit = "max-message-bytes", user = user, client = client);
                        break Ending::CloseWith(CloseCode::Size, "message too large");
                    }
                    Some(Err(error)) => {
                        log::debug!("signaling connection from {client} failed: {error}");
                        break Ending::Dropped(LeaveReason::Closed);
                    }
                    Some(Ok(Message::Close(_))) => break Ending::Closed,
                    // The answer to icegate's own ping is free; any other
                    // control frame costs a message, or pings would make
                    // icegate answer without bound.
                    Some(Ok(Message::Pong(_))) if awaiting_pong => {
                        awaiting_pong = false;
                        continue;
                    }
                    Some(Ok(Message::Frame(_))) => continue,
                    Some(Ok(message)) => message,
                };
                let now = Instant::now();
                if !rate.take(now) {
                    hub.metrics.limit_hit(Limit::SignalMessagesPerSecond);
                    if rate.refused_in_a_row >= limits.message_burst {
                        event!(info, "signal-limit", limit = "messages-per-second", user = user, client = client, closed = 1008);
                        break Ending::CloseWith(CloseCode::Policy, "flooding");
                    }
                    if rate.should_warn(now) {
                        event!(info, "signal-limit", limit = "messages-per-second", user = user, client = client);
                        reply(Problem::new(
                            ErrorCode::RateLimited,
                            format!("more than {} messages a second; slow down", limits.messages_per_second),
                        ), None);
                    }
                    continue;
                }
                let text = match message {
                    Message::Text(text) => text,
                    // tungstenite has already queued the pong.
                    Message::Ping(_) | Message::Pong(_) => continue,
                    _ => {
                        hub.metrics.signal_message(SignalMessage::Invalid);
                        reply(Problem::new(
                            ErrorCode::BinaryNotSupported,
                            "binary frames are not part of the protocol; send JSON text frames",
                        ), None);
                        continue;
                    }
                };
                if text.len() > limits.max_message_bytes as usize {
                    hub.metrics.limit_hit(Limit::SignalMaxMessageBytes);
                    oversized_in_a_row += 1;
                    event!(info, "signal-limit", limit = "max-message-bytes", user = user, client = client);
                    if oversized_in_a_row >= OVERSIZED_IN_A_ROW {
                        break Ending::CloseWith(CloseCode::Size, "messages too large");
                    }
                    reply(Problem::new(
                        ErrorCode::MessageTooLarge,
                        format!("{} bytes is more than the {} allowed", text.len(), limits.max_message_bytes),
                    ), None);
                    continue;
                }
                oversized_in_a_row = 0;
                let incoming = Incoming::parse(&text);
                hub.metrics.signal_message(match &incoming.request {
                    Err(_) => SignalMessage::Invalid,
                    Ok(Request::Join { .. }) => SignalMessage::Join,
                    Ok(Request::Leave { .. }) => SignalMessage::Leave,
                    Ok(Request::Signal { .. }) => SignalMessage::Signal,
                    Ok(Request::Broadcast { .. }) => SignalMessage::Broadcast,
                    Ok(Request::Ping) => SignalMessage::Ping,
                });
                let result = match &incoming.request {
                    Err(problem) => Err(problem.clone()),
                    Ok(Request::Join { room, peer, metadata }) => {
                        hub.join(id, claims.as_ref(), room, peer.clone(), *metadata)
                    }
                    Ok(Request::Leave { room }) => hub.leave(id, room),
                    Ok(Request::Signal { room, to, data }) => hub.relay(id, room, Some(to), data),
                    Ok(Request::Broadcast { room, data }) => hub.relay(id, room, None, data),
                    Ok(Request::Ping) => {
                        outbox.push(protocol::pong(incoming.id).into());
                        Ok(())
                    }
                };
                if let Err(problem) = result {
                    reply(problem, Some(&incoming));
                }
            },
            _ = stopping.changed() => break Ending::CloseWith(CloseCode::Away, "icegate is stopping"),
            _ = ping.tick() => {
                if !heard {
                    break Ending::Dropped(LeaveReason::Timeout);
                }
                heard = false;
                awaiting_pong = true;
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    break Ending::Dropped(LeaveReason::Closed);
                }
            }
        }
    };

    let how = match ending {
        Ending::Closed => {
            hub.close(id, &wake, LeaveReason::Closed);
            // Answer the close handshake (tungstenite queued the reply).
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, ws.flush()).await;
            "closed"
        }
        Ending::Dropped(reason) => {
            match hub.hold(id, &wake, reason) {
                Some(detachment) => {
                    let hub = hub.clone();
                    let grace = limits.resume_grace;
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        hub.expire(id, detachment);
                    });
                }
                None => hub.close(id, &wake, reason),
            }
            if reason == LeaveReason::Timeout {
                "timeout"
            } else {
                "dropped"
            }
        }
        Ending::CloseWith(code, why) => {
            // What is queued (such as the errors that led here) goes out
            // before the close frame.
            let queued = match outbox.drain(&wake) {
                Drained::Send(frames) => frames,
                Drained::Overflowed | Drained::Superseded | Drained::Ended => Vec::new(),
            };
            hub.close(id, &wake, LeaveReason::Closed);
            let frame = CloseFrame {
                code,
                reason: why.into(),
            };
            let closing = async {
                for text in queued {
                    ws.feed(Message::Text(text)).await?;
                }
                ws.close(Some(frame)).await
            };
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, closing).await;
            why
        }
        Ending::Superseded => "resumed-elsewhere",
    };
    event!(
        info,
        "signal-disconnect",
        user = user,
        client = client,
        how = how
    );
    drop(slot);
}
