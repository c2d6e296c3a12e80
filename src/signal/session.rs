//! One signaling connection: reads the client's frames and acts on them,
//! sends what the hub queued for it, pings, and enforces the per-connection
//! limits.
//!
//! The connection is one future polled by hand rather than a `select!` of
//! several: each wake-up drains the outbox, writes, reads and checks the
//! ping timer in one pass, and the future holds no buffer while idle.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::dialect::{Acting, Dialect};
use super::hub::{ConnectionSlot, Hub, SessionId};
use super::outbox::{Attachment, Closing, Drained, Outbox, Queued};
use super::protocol::{self, ErrorCode, Incoming, LeaveReason, Problem, Request};
use super::token::Claims;
use super::websocket::{self, Decoder, FrameError, Received};
use crate::config::SignalLimits;
use crate::logging::event;
use crate::metrics::{Limit, SignalMessage};

/// Oversized frames in a row after which the connection is closed.
const OVERSIZED_IN_A_ROW: u32 = 3;
/// A close frame that the client does not take within this is abandoned.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// What one read takes at most, into a buffer that lives only during the read.
const READ_CHUNK: usize = 8 * 1024;
/// Frames handed to the socket in one write.
const WRITE_BATCH: usize = 32;
/// Reads per wake-up before other connections get their turn.
const READS_PER_POLL: usize = 16;
/// Close codes (RFC 6455 §7.4.1).
const GOING_AWAY: u16 = 1001;
const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;

/// Everything a connection's task needs.
pub(crate) struct Connection {
    pub(crate) hub: Arc<Hub>,
    pub(crate) id: SessionId,
    pub(crate) attachment: Attachment,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) user: String,
    pub(crate) claims: Option<Claims>,
    pub(crate) client: IpAddr,
    pub(crate) limits: SignalLimits,
    /// Released when the task ends.
    pub(crate) slot: ConnectionSlot,
    /// The protocol the client speaks.
    pub(crate) dialect: Dialect,
}

/// How a connection ended, which decides what happens to its session.
enum Ending {
    /// The client sent a close frame (with this code): it has left.
    Closed(Option<u16>),
    /// The connection broke or stopped answering: hold the session for a resume.
    Dropped(LeaveReason),
    /// A limit was broken, or icegate is stopping: close with this code and
    /// end the session.
    CloseWith(u16, &'static str),
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

/// What acting on the client's frames needs, apart from the decoder.
struct Reader {
    connection: Connection,
    rate: RateLimit,
    oversized_in_a_row: u32,
    /// Something arrived since the last ping.
    heard: bool,
    awaiting_pong: bool,
}

/// Frames taken from the outbox and not yet written, the first `written`
/// bytes of the front one already out.
#[derive(Default)]
struct Writer {
    sending: VecDeque<Queued>,
    written: usize,
    unflushed: bool,
}

/// One connection's state, in one allocation: the task's future itself
/// holds only a pointer to it and the ping timer.
struct Link<S> {
    io: S,
    decoder: Decoder,
    reader: Reader,
    writer: Writer,
}

/// The connection's task: serves it until it ends, then settles its session.
pub(crate) fn run<S>(io: S, connection: Connection) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = connection.limits;
    let max_message = limits.max_message_bytes as usize;
    let mut link = Box::new(Link {
        io,
        decoder: Decoder::new(max_message, max_message * super::HARD_SIZE_FACTOR),
        reader: Reader {
            rate: RateLimit::new(&limits),
            connection,
            oversized_in_a_row: 0,
            heard: true,
            awaiting_pong: false,
        },
        writer: Writer::default(),
    });
    async move {
        let ping = tokio::time::sleep(limits.ping_interval);
        tokio::pin!(ping);
        let ending = poll_fn(|cx| {
            let Link {
                io,
                decoder,
                reader,
                writer,
            } = &mut *link;
            poll_connection(cx, io, decoder, reader, writer, ping.as_mut())
        })
        .await;
        let Link {
            io, reader, writer, ..
        } = *link;
        // Boxed: the closing steps would otherwise take room in every idle
        // connection's future.
        Box::pin(finish(io, reader.connection, writer, ending)).await;
    }
}

fn poll_connection<S>(
    cx: &mut Context<'_>,
    io: &mut S,
    decoder: &mut Decoder,
    reader: &mut Reader,
    writer: &mut Writer,
    mut ping: Pin<&mut Sleep>,
) -> Poll<Ending>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(ending) = take_queued(cx, &mut reader.connection, writer) {
        return Poll::Ready(ending);
    }
    if let Err(ending) = writer.poll_write(cx, io) {
        return Poll::Ready(ending);
    }

    // Read until the socket says it would block: only that registers the
    // task for the next data (after a short read tokio knows the socket is
    // empty and says so without a system call).
    let mut reads = 0;
    loop {
        if reads == READS_PER_POLL {
            // Other connections get their turn; this one comes back.
            cx.waker().wake_by_ref();
            break;
        }
        reads += 1;
        let mut chunk = [const { MaybeUninit::<u8>::uninit() }; READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Pending => break,
            Poll::Ready(Err(error)) => {
                log::debug!(
                    "signaling connection from {} failed: {error}",
                    reader.connection.client
                );
                return Poll::Ready(Ending::Dropped(LeaveReason::Closed));
            }
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                return Poll::Ready(Ending::Dropped(LeaveReason::Closed));
            }
            Poll::Ready(Ok(())) => {}
        }
        reader.heard = true;
        match decoder.feed(buf.filled_mut(), |received| reader.act(received)) {
            Ok(ControlFlow::Continue(())) => {}
            Ok(ControlFlow::Break(ending)) => return Poll::Ready(ending),
            Err(error) => return Poll::Ready(reader.refuse(error)),
        }
    }

    if ping.as_mut().poll(cx).is_ready() {
        if !reader.heard {
            return Poll::Ready(Ending::Dropped(LeaveReason::Timeout));
        }
        reader.heard = false;
        reader.awaiting_pong = true;
        reader.connection.outbox.push(websocket::ping());
        let interval = reader.connection.limits.ping_interval;
        ping.as_mut().reset(Instant::now() + interval);
        // Registers the timer's waker for the next round.
        let _ = ping.as_mut().poll(cx);
    }

    // Replies and pings queued above go out now, not at the next wake-up.
    if let Err(ending) = take_queued(cx, &mut reader.connection, writer) {
        return Poll::Ready(ending);
    }
    if let Err(ending) = writer.poll_write(cx, io) {
        return Poll::Ready(ending);
    }
    Poll::Pending
}

/// Takes what is queued for the connection, in its dialect's words, once
/// what it took before is written.
fn take_queued(
    cx: &Context<'_>,
    connection: &mut Connection,
    writer: &mut Writer,
) -> Result<(), Ending> {
    let fresh = writer.sending.is_empty();
    match connection
        .outbox
        .drain(connection.attachment, cx.waker(), &mut writer.sending)
    {
        Drained::Send => {}
        Drained::Close(closing) => return Err(closing_ending(closing)),
        Drained::Superseded => return Err(Ending::Superseded),
    }
    if fresh && !writer.sending.is_empty() {
        let Connection {
            hub,
            id,
            outbox,
            claims,
            dialect,
            ..
        } = connection;
        let acting = Acting {
            hub,
            id: *id,
            outbox,
            claims: claims.as_ref(),
        };
        if let ControlFlow::Break(why) = dialect.translate(&mut writer.sending, &acting) {
            // Its last words are queued in `writer`; the close follows them.
            return Err(Ending::CloseWith(POLICY, why));
        }
    }
    Ok(())
}

fn closing_ending(closing: Closing) -> Ending {
    match closing {
        Closing::Overflowed => Ending::CloseWith(POLICY, "not reading"),
        Closing::Ended => Ending::CloseWith(POLICY, "ended by the operator"),
        Closing::Stopping => Ending::CloseWith(GOING_AWAY, "icegate is stopping"),
    }
}

impl Writer {
    /// Writes what it can without waiting; `Err` when the connection broke.
    fn poll_write<S>(&mut self, cx: &mut Context<'_>, io: &mut S) -> Result<(), Ending>
    where
        S: AsyncWrite + Unpin,
    {
        while !self.sending.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
            let mut count = 0;
            for (i, queued) in self.sending.iter().take(WRITE_BATCH).enumerate() {
                let from = if i == 0 { self.written } else { 0 };
                slices[i] = IoSlice::new(&queued.frame[from..]);
                count = i + 1;
            }
            match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0) | Err(_)) => return Err(Ending::Dropped(LeaveReason::Closed)),
                Poll::Ready(Ok(n)) => self.advance(n),
            }
            self.unflushed = true;
        }
        // Frames are not kept between messages: an idle connection holds no queue.
        self.sending = VecDeque::new();
        if self.unflushed {
            match Pin::new(&mut *io).poll_flush(cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return Err(Ending::Dropped(LeaveReason::Closed)),
            }
        }
        Ok(())
    }

    fn advance(&mut self, mut n: usize) {
        while let Some(front) = self.sending.front() {
            let left = front.frame.len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.sending.pop_front();
        }
    }

    /// The rest of what was being written, for the last words before a close.
    fn rest(self) -> impl Iterator<Item = bytes::Bytes> {
        let written = self.written;
        self.sending
            .into_iter()
            .enumerate()
            .map(move |(i, queued)| {
                if i == 0 {
                    queued.frame.slice(written..)
                } else {
                    queued.frame
                }
            })
    }
}

impl Reader {
    fn reply(&self, problem: &Problem, incoming: Option<&Incoming<'_>>) {
        let (kind, id) = incoming.map_or((None, None), |i| (i.kind.as_deref(), i.id));
        self.connection
            .outbox
            .push(websocket::text(&protocol::error(problem, kind, id)));
    }

    /// A message over `max-message-bytes`: counted and logged.
    fn count_oversized(&self) {
        let Connection {
            hub, user, client, ..
        } = &self.connection;
        hub.metrics.limit_hit(Limit::SignalMaxMessageBytes);
        event!(
            info,
            "signal-limit",
            limit = "max-message-bytes",
            user = user,
            client = client
        );
    }

    /// A frame that breaks the protocol ends the connection with its code.
    fn refuse(&self, error: FrameError) -> Ending {
        if error == FrameError::TooLarge {
            self.count_oversized();
        } else {
            log::debug!(
                "signaling connection from {} broke the protocol: {}",
                self.connection.client,
                error.reason()
            );
        }
        Ending::CloseWith(error.close_code(), error.reason())
    }

    fn act(&mut self, received: Received<'_>) -> ControlFlow<Ending> {
        let limits = self.connection.limits;
        match received {
            Received::Close(code) => return ControlFlow::Break(Ending::Closed(code)),
            // The answer to icegate's own ping is free; any other control
            // frame costs a message, or pings would make icegate answer
            // without bound.
            Received::Pong if self.awaiting_pong => {
                self.awaiting_pong = false;
                return ControlFlow::Continue(());
            }
            _ => {}
        }
        let Connection {
            hub, user, client, ..
        } = &self.connection;
        let now = Instant::now();
        if !self.rate.take(now) {
            hub.metrics.limit_hit(Limit::SignalMessagesPerSecond);
            if self.rate.refused_in_a_row >= limits.message_burst {
                event!(
                    info,
                    "signal-limit",
                    limit = "messages-per-second",
                    user = user,
                    client = client,
                    closed = 1008
                );
                return ControlFlow::Break(Ending::CloseWith(POLICY, "flooding"));
            }
            if self.rate.should_warn(now) {
                event!(
                    info,
                    "signal-limit",
                    limit = "messages-per-second",
                    user = user,
                    client = client
                );
                self.reply(
                    &Problem::new(
                        ErrorCode::RateLimited,
                        format!(
                            "more than {} messages a second; slow down",
                            limits.messages_per_second
                        ),
                    ),
                    None,
                );
            }
            return ControlFlow::Continue(());
        }
        let text = match received {
            Received::Text(text) => text,
            Received::Ping(payload) => {
                self.connection.outbox.push(websocket::pong(payload));
                return ControlFlow::Continue(());
            }
            Received::Pong | Received::Close(_) => return ControlFlow::Continue(()),
            Received::Binary => {
                hub.metrics.signal_message(SignalMessage::Invalid);
                self.reply(
                    &Problem::new(
                        ErrorCode::BinaryNotSupported,
                        "binary frames are not part of the protocol; send JSON text frames",
                    ),
                    None,
                );
                return ControlFlow::Continue(());
            }
            Received::TooLarge(length) => {
                self.count_oversized();
                self.oversized_in_a_row += 1;
                if self.oversized_in_a_row >= OVERSIZED_IN_A_ROW {
                    return ControlFlow::Break(Ending::CloseWith(TOO_BIG, "messages too large"));
                }
                self.reply(
                    &Problem::new(
                        ErrorCode::MessageTooLarge,
                        format!(
                            "{length} bytes is more than the {} allowed",
                            limits.max_message_bytes
                        ),
                    ),
                    None,
                );
                return ControlFlow::Continue(());
            }
        };
        self.oversized_in_a_row = 0;
        if self.connection.dialect.is_native() {
            self.act_on_text(text);
        } else {
            let Connection {
                hub,
                id,
                outbox,
                claims,
                dialect,
                ..
            } = &mut self.connection;
            let acting = Acting {
                hub,
                id: *id,
                outbox,
                claims: claims.as_ref(),
            };
            let kind = dialect.act(text, &acting);
            hub.metrics.signal_message(kind);
        }
        ControlFlow::Continue(())
    }

    fn act_on_text(&self, text: &str) {
        let Connection {
            hub,
            id,
            outbox,
            claims,
            ..
        } = &self.connection;
        let incoming = Incoming::parse(text);
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
            Ok(Request::Join {
                room,
                peer,
                metadata,
            }) => hub.join(
                *id,
                claims.as_ref(),
                room,
                peer.clone(),
                *metadata,
                incoming.id,
            ),
            Ok(Request::Leave { room }) => hub.leave(*id, room),
            Ok(Request::Signal { room, to, data }) => {
                hub.relay(*id, room, Some(to), data, incoming.id, now())
            }
            Ok(Request::Broadcast { room, data }) => {
                hub.relay(*id, room, None, data, incoming.id, now())
            }
            Ok(Request::Ping) => {
                outbox.push(websocket::text(&protocol::pong(incoming.id)));
                Ok(())
            }
        };
        if let Err(problem) = result {
            self.reply(&problem, Some(&incoming));
        }
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Settles the session and says goodbye as the ending calls for.
async fn finish<S>(mut io: S, connection: Connection, writer: Writer, ending: Ending)
where
    S: AsyncWrite + Unpin,
{
    let Connection {
        hub,
        id,
        attachment,
        outbox,
        user,
        client,
        limits,
        slot,
        mut dialect,
        claims,
        ..
    } = connection;
    let how = match ending {
        Ending::Closed(code) => {
            hub.close(id, attachment, LeaveReason::Closed);
            // Answer the close handshake; what was on its way is finished first.
            let reply = websocket::close_reply(code);
            let _ = tokio::time::timeout(
                CLOSE_WRITE_TIMEOUT,
                write_frames(&mut io, writer.rest().chain([reply])),
            )
            .await;
            "closed"
        }
        Ending::Dropped(reason) if !dialect.resumable() => {
            hub.close(id, attachment, reason);
            "dropped"
        }
        Ending::Dropped(reason) => {
            match hub.hold(id, attachment, reason) {
                Some(detachment) => {
                    let hub = hub.clone();
                    let grace = limits.resume_grace;
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        hub.expire(id, detachment);
                    });
                }
                None => hub.close(id, attachment, reason),
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
            let mut queued = VecDeque::new();
            outbox.take_all(attachment, &mut queued);
            let acting = Acting {
                hub: &hub,
                id,
                outbox: &outbox,
                claims: claims.as_ref(),
            };
            let _ = dialect.translate(&mut queued, &acting);
            hub.close(id, attachment, LeaveReason::Closed);
            let frames = writer
                .rest()
                .chain(queued.into_iter().map(|q| q.frame))
                .chain([websocket::close(code, why)]);
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, write_frames(&mut io, frames)).await;
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

async fn write_frames<S>(
    io: &mut S,
    frames: impl Iterator<Item = bytes::Bytes>,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    for frame in frames {
        io.write_all(&frame).await?;
    }
    io.flush().await
}
