//! TURN and STUN over TCP and TLS (RFC 8656 §3.1, RFC 8489 §6.2).
//!
//! A stream listener accepts a connection, tells TLS from plain TCP by the
//! first byte (a TLS ClientHello starts with 0x16, STUN with 0x00–0x03,
//! ChannelData with 0x40–0x7F), cuts frames by their length fields and
//! hands each to the same [`super::handle_message`] the UDP listener uses.
//! Replies and relayed data go through the connection's [`Outbox`], which
//! one writer drains; a client that stops reading fills it and is dropped.
//! An allocation made over a connection ends when the connection does.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

use crate::config::{ConnectionLimits, Listen, Services, Transport};
use crate::http::{self, HttpApi};
use crate::logging::event;
use crate::metrics::Limit;
use crate::reject::Reject;
use crate::server::{PeerLink, Server};
use crate::sparse::shrink_if_sparse;
use crate::transport::ClientRoute;
use crate::transport::tls::ReloadableCertificate;
use crate::turn::FiveTuple;
use crate::wire::{self, StreamFrame};

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// How much a connection reads at a time.
const READ_CHUNK: usize = 16 * 1024;
/// How long queued answers may take to go out after the client closed its side.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);

pub(crate) struct StreamListener {
    socket: TcpListener,
    local: SocketAddr,
    transport: Transport,
    services: Services,
    /// The certificate and acceptor of a `tls` or `https` listener.
    tls: Option<(Arc<ReloadableCertificate>, TlsAcceptor)>,
}

/// What a connection needs of the listener that accepted it. The listening
/// socket itself stays with the accept loop, so that ending the loop (a
/// listener removed on reload) closes the port while connections go on.
struct Endpoint {
    local: SocketAddr,
    transport: Transport,
    services: Services,
    tls: Option<(Arc<ReloadableCertificate>, TlsAcceptor)>,
    http: Arc<HttpApi>,
}

impl StreamListener {
    pub(crate) fn bind(listen: &Listen) -> Result<Self, String> {
        let tls = match &listen.tls {
            Some(files) => {
                let certificate = ReloadableCertificate::new(files.clone())
                    .map_err(|problem| problem.to_string())?;
                let acceptor = TlsAcceptor::from(certificate.server_config(listen.services));
                Some((certificate, acceptor))
            }
            None => None,
        };
        let socket = bind_tcp(listen.address).map_err(|error| {
            format!(
                "cannot listen on {} {}: {error}",
                listen.transport, listen.address
            )
        })?;
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        Ok(Self {
            socket,
            local,
            transport: listen.transport,
            services: listen.services,
            tls,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    pub(crate) fn certificate(&self) -> Option<&Arc<ReloadableCertificate>> {
        self.tls.as_ref().map(|(certificate, _)| certificate)
    }
}

fn bind_tcp(address: SocketAddr) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Restarting must not wait for old connections in TIME_WAIT.
    socket.set_reuse_address(true)?;
    crate::socket_options::allow_bind_before_address_exists(&socket, address)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Counts open connections, in total and per client IP, across all stream listeners.
#[derive(Debug)]
pub(crate) struct ConnectionTracker {
    limits: RwLock<ConnectionLimits>,
    open: Mutex<(u32, HashMap<IpAddr, u32>)>,
}

/// One admitted connection; dropping it frees its place.
struct Admission {
    tracker: Arc<ConnectionTracker>,
    ip: IpAddr,
}

impl ConnectionTracker {
    pub(crate) fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits: RwLock::new(limits),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    pub(crate) fn limits(&self) -> ConnectionLimits {
        *self
            .limits
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// New limits for connections accepted from now on.
    pub(crate) fn set_limits(&self, limits: ConnectionLimits) {
        *self
            .limits
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }

    /// TCP and TLS connections open right now.
    pub(crate) fn open_count(&self) -> u32 {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
    }

    /// A place for a connection from `ip`, or the limit that refuses it.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Limit> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, per_ip) = &mut *open;
        let from_ip = per_ip.entry(ip).or_default();
        let limits = self.limits();
        let refused = if *total >= limits.max_connections {
            Some(Limit::MaxConnections)
        } else if *from_ip >= limits.max_connections_per_ip {
            Some(Limit::MaxConnectionsPerIp)
        } else {
            None
        };
        if let Some(limit) = refused {
            if *from_ip == 0 {
                per_ip.remove(&ip);
            }
            return Err(limit);
        }
        *total += 1;
        *from_ip += 1;
        Ok(Admission {
            tracker: self.clone(),
            ip,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self
            .tracker
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, per_ip) = &mut *open;
        *total -= 1;
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
                shrink_if_sparse(per_ip);
            }
        }
    }
}

/// Accepts connections until the process ends; one accept error never ends it.
pub(crate) async fn serve(
    server: Arc<Server>,
    listener: StreamListener,
    tracker: Arc<ConnectionTracker>,
    http: Arc<HttpApi>,
) {
    let StreamListener {
        socket,
        local,
        transport,
        services,
        tls,
    } = listener;
    let listener = Arc::new(Endpoint {
        local,
        transport,
        services,
        tls,
        http,
    });
    loop {
        let (tcp, client) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors or memory: wait instead of spinning.
                log::warn!("{transport} listener {local} accept error: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admission = match tracker.admit(crate::source::source_of(client.ip())) {
            Ok(admission) => admission,
            Err(limit) => {
                server.rejects.count(Reject::ConnectionLimit);
                server.metrics.limit_hit(limit);
                log::debug!("connection-refused client={client} reason=connection-limit");
                continue;
            }
        };
        let server = server.clone();
        let listener = listener.clone();
        let limits = tracker.limits();
        tokio::spawn(async move {
            accept_connection(&server, &listener, tcp, client, limits).await;
            drop(admission);
        });
    }
}

async fn accept_connection(
    server: &Arc<Server>,
    listener: &Endpoint,
    tcp: TcpStream,
    client: SocketAddr,
    limits: ConnectionLimits,
) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().unwrap_or(listener.local);
    let mut first = [0u8; 1];
    // A client that connects and says nothing is held no longer than a handshake may take.
    match tokio::time::timeout(limits.tls_handshake_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        Ok(_) => return,
        Err(_) => {
            server.rejects.count(Reject::IdleConnection);
            log::debug!("connection-closed client={client} reason=silent");
            return;
        }
    }
    let five_tuple = |transport| FiveTuple {
        client,
        server: local,
        transport,
    };
    if first[0] != TLS_HANDSHAKE {
        match listener.transport {
            Transport::Http => {
                http::serve_connection(listener.http.clone(), tcp, client).await;
            }
            // A tls listener serves plain TCP too, as coturn users expect.
            Transport::Tcp | Transport::Tls if listener.services.turn => {
                let five_tuple = five_tuple(Transport::Tcp);
                run_connection(server, tcp, five_tuple, Vec::new(), limits).await;
            }
            _ => {
                server.rejects.count(Reject::Garbage);
                log::debug!("connection-closed client={client} reason=plain-on-tls-listener");
            }
        }
        return;
    }
    let Some((_, acceptor)) = &listener.tls else {
        server.rejects.count(Reject::Garbage);
        log::debug!("connection-closed client={client} reason=tls-on-plain-tcp-listener");
        return;
    };
    let mut tls = match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp))
        .await
    {
        Ok(Ok(tls)) => {
            server.metrics.tls_handshake_completed();
            tls
        }
        Ok(Err(error)) => {
            server.rejects.count(Reject::TlsHandshakeFailed);
            log::debug!("connection-closed client={client} reason=tls-handshake-failed: {error}");
            return;
        }
        Err(_) => {
            server.rejects.count(Reject::TlsHandshakeFailed);
            log::debug!("connection-closed client={client} reason=tls-handshake-timeout");
            return;
        }
    };
    let services = listener.services;
    if !services.turn {
        http::serve_connection(listener.http.clone(), tls, client).await;
        return;
    }
    if !services.http {
        run_connection(server, tls, five_tuple(Transport::Tls), Vec::new(), limits).await;
        return;
    }
    // One port for TURN and HTTPS: the first bytes decide, not ALPN (most
    // TURN clients send none, and coturn's offers http/1.1 besides
    // stun.turn). A TURN connection starts with a STUN request (0x00–0x03);
    // anything else is taken for an HTTP request line.
    let mut first_bytes = Vec::with_capacity(READ_CHUNK);
    match tokio::time::timeout(limits.idle_timeout, tls.read_buf(&mut first_bytes)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    if wire::classify(first_bytes[0]) == wire::Kind::Stun {
        run_connection(server, tls, five_tuple(Transport::Tls), first_bytes, limits).await;
    } else {
        let prefixed = http::Prefixed::new(first_bytes, tls);
        http::serve_connection(listener.http.clone(), prefixed, client).await;
    }
}

/// Writes `bytes` at once, or frame by frame where `frame_ends` marks them.
async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    frame_ends: &[usize],
) -> io::Result<()> {
    if frame_ends.is_empty() {
        return writer.write_all(bytes).await;
    }
    let mut start = 0;
    for &end in frame_ends {
        writer.write_all(&bytes[start..end]).await?;
        start = end;
    }
    Ok(())
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    ByClient,
    ReadFailed(io::ErrorKind),
    WriteFailed(io::ErrorKind),
    /// No allocation and nothing received for `idle-timeout`.
    Idle,
    /// No allocation within `unauthenticated-timeout` of opening.
    Unauthenticated,
    /// A frame announced more than `max-frame-bytes`.
    FrameTooLarge(usize),
    /// Bytes that are neither STUN nor ChannelData: framing is lost.
    Garbage,
    /// More than `max-queued-bytes` waited for a client that does not read.
    SlowReader,
}

impl Closed {
    fn reject(self) -> Option<Reject> {
        match self {
            Self::ByClient | Self::ReadFailed(_) | Self::WriteFailed(_) => None,
            Self::Idle => Some(Reject::IdleConnection),
            Self::Unauthenticated => Some(Reject::UnauthenticatedConnection),
            Self::FrameTooLarge(_) => Some(Reject::FrameTooLarge),
            Self::Garbage => Some(Reject::Garbage),
            Self::SlowReader => Some(Reject::SlowReader),
        }
    }
}

async fn run_connection<S>(
    server: &Arc<Server>,
    stream: S,
    five_tuple: FiveTuple,
    received: Vec<u8>,
    limits: ConnectionLimits,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if server.is_draining() {
        // Draining: TURN connections that exist carry on, new ones are refused.
        server.rejects.count(Reject::Draining);
        log::debug!("connection-refused {five_tuple} reason=draining");
        return;
    }
    log::debug!("connection-opened {five_tuple}");
    // Over TLS each message gets its own record, as coturn sends them:
    // some clients (coturn's own uclient among them) read one message per
    // record and lose the rest of a record that holds several.
    let record_per_frame = five_tuple.transport == Transport::Tls;
    let outbox = Arc::new(Outbox::new(
        limits.max_queued_bytes as usize,
        record_per_frame,
    ));
    let route = ClientRoute::Stream(outbox.clone());
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut joined = None;
    let closed = {
        let reading = read_frames(server, &mut reader, received, &five_tuple, &route, limits);
        let mut writing = std::pin::pin!(outbox.drain_into(&mut writer));
        let closed = tokio::select! {
            read = reading => match read {
                Read::Closed(closed) => closed,
                Read::Joined(link, early) => {
                    joined = Some((link, early));
                    Closed::ByClient
                }
            },
            closed = &mut writing => closed,
            () = outbox.overflow.notified() => Closed::SlowReader,
        };
        if closed == Closed::ByClient {
            // A client may half-close after its last request: answer it
            // first. A joined connection's ConnectionBind response goes
            // out before any byte from the peer.
            outbox.finish();
            let _ = tokio::time::timeout(FLUSH_ON_CLOSE, writing).await;
        }
        closed
    };
    outbox.finish();
    if let Some((link, early)) = joined {
        log::debug!(
            "connection-joined {five_tuple} connection={}",
            link.connection
        );
        super::tcp_relay::join(server, link, reader, writer, early).await;
        return;
    }
    if let Some(reject) = closed.reject() {
        server.rejects.count(reject);
        event!(
            info,
            "connection-dropped",
            transport = five_tuple.transport,
            client = five_tuple.client,
            server = five_tuple.server,
            reason = reject.name()
        );
    } else {
        log::debug!("connection-closed {five_tuple} ({closed:?})");
    }
    server.connection_closed(&five_tuple);
}

/// Why a stream's frames can no longer be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FramingLost {
    /// A frame announced this many bytes, more than the limit.
    FrameTooLarge(usize),
    /// Bytes that are neither STUN nor ChannelData.
    Garbage,
}

/// Hands each whole frame at the start of `buf` to `on_frame` (the message
/// without the padding ChannelData carries on streams) and returns how many
/// bytes those frames took; what is left is an incomplete frame, or what
/// follows the frame where `on_frame` said stop. A frame announcing more
/// than `max_frame` bytes is refused from its header alone, before it is
/// read. Frames before a refusal have been handed on.
pub(crate) fn cut_frames(
    buf: &[u8],
    max_frame: usize,
    mut on_frame: impl FnMut(&[u8]) -> ControlFlow<()>,
) -> Result<usize, FramingLost> {
    let mut start = 0;
    loop {
        let pending = &buf[start..];
        if let Some(total) = wire::declared_frame_len(pending)
            && total > max_frame
        {
            return Err(FramingLost::FrameTooLarge(total));
        }
        match wire::stream_frame(pending) {
            StreamFrame::Complete { message, total } => {
                start += total;
                if on_frame(&pending[..message]).is_break() {
                    return Ok(start);
                }
            }
            StreamFrame::Incomplete => return Ok(start),
            StreamFrame::Invalid => return Err(FramingLost::Garbage),
        }
    }
}

/// How reading STUN frames from a connection ended.
enum Read {
    Closed(Closed),
    /// A ConnectionBind joined it to a peer; these bytes came after it.
    Joined(PeerLink, Vec<u8>),
}

impl From<Closed> for Read {
    fn from(closed: Closed) -> Self {
        Self::Closed(closed)
    }
}

/// Reads and handles frames; `buf` holds what was already read.
async fn read_frames<R: AsyncRead + Unpin>(
    server: &Arc<Server>,
    reader: &mut R,
    mut buf: Vec<u8>,
    five_tuple: &FiveTuple,
    route: &ClientRoute,
    limits: ConnectionLimits,
) -> Read {
    let max_frame = limits.max_frame_bytes as usize;
    let mut out = Vec::with_capacity(1500);
    // Until the connection's first allocation: whatever it sends (Binding
    // requests, say), it is closed when this passes.
    let mut must_allocate_by = Some(tokio::time::Instant::now() + limits.unauthenticated_timeout);
    loop {
        let mut joined = None;
        let cut = cut_frames(&buf, max_frame, |message| {
            joined = super::handle_message(server, five_tuple, message, route, &mut out);
            if joined.is_some() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        let start = match cut {
            Ok(consumed) => consumed,
            Err(FramingLost::FrameTooLarge(total)) => return Closed::FrameTooLarge(total).into(),
            Err(FramingLost::Garbage) => return Closed::Garbage.into(),
        };
        buf.drain(..start);
        if let Some(link) = joined {
            return Read::Joined(link, buf);
        }
        buf.reserve(READ_CHUNK);
        if let Some(deadline) = must_allocate_by {
            if server.has_allocation(five_tuple) {
                must_allocate_by = None;
            } else if tokio::time::Instant::now() >= deadline {
                return Closed::Unauthenticated.into();
            }
        }
        // Silence is fine while an allocation lives (its data flows the other
        // way); without one, a connection only holds resources.
        let read = loop {
            let mut wait = limits.idle_timeout;
            if let Some(deadline) = must_allocate_by {
                wait = wait.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            }
            match tokio::time::timeout(wait, reader.read_buf(&mut buf)).await {
                Ok(read) => break read,
                Err(_) if server.has_allocation(five_tuple) => must_allocate_by = None,
                Err(_) if must_allocate_by.is_some_and(|d| tokio::time::Instant::now() >= d) => {
                    return Closed::Unauthenticated.into();
                }
                Err(_) => return Closed::Idle.into(),
            }
        };
        match read {
            Ok(0) => return Closed::ByClient.into(),
            Ok(_) => {}
            Err(error) => return Closed::ReadFailed(error.kind()).into(),
        }
    }
}

/// Bytes waiting to go to one stream client, drained by one writer.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    ready: Notify,
    overflow: Notify,
    max_queued: usize,
    /// Write each frame on its own instead of all that is queued at once.
    write_per_frame: bool,
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: Vec<u8>,
    /// Where each frame in `queue` ends.
    frame_ends: Vec<usize>,
    closed: bool,
    overflowed: bool,
}

impl Outbox {
    fn new(max_queued: usize, write_per_frame: bool) -> Self {
        Self {
            state: Mutex::new(OutboxState::default()),
            ready: Notify::new(),
            overflow: Notify::new(),
            max_queued,
            write_per_frame,
        }
    }

    /// Queues one whole frame (ChannelData already padded).
    pub(crate) fn push(&self, bytes: &[u8]) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.closed {
            return;
        }
        if state.queue.len() + bytes.len() > self.max_queued {
            state.closed = true;
            state.overflowed = true;
            drop(state);
            self.overflow.notify_one();
            return;
        }
        state.queue.extend_from_slice(bytes);
        if self.write_per_frame {
            let end = state.queue.len();
            state.frame_ends.push(end);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Takes no more; the writer ends once what is queued has gone out.
    fn finish(&self) {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .closed = true;
        self.ready.notify_one();
    }

    async fn drain_into<W: AsyncWrite + Unpin>(&self, writer: &mut W) -> Closed {
        let mut sending = Vec::new();
        let mut frame_ends = Vec::new();
        loop {
            let finished = {
                let mut state = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if state.overflowed {
                    return Closed::SlowReader;
                }
                std::mem::swap(&mut state.queue, &mut sending);
                std::mem::swap(&mut state.frame_ends, &mut frame_ends);
                state.closed
            };
            if sending.is_empty() {
                if finished {
                    return Closed::ByClient;
                }
                // A push between the check above and this wait leaves a permit.
                self.ready.notified().await;
                continue;
            }
            let written = match write_frames(writer, &sending, &frame_ends).await {
                Ok(()) => writer.flush().await,
                Err(error) => Err(error),
            };
            if let Err(error) = written {
                return Closed::WriteFailed(error.kind());
            }
            sending.clear();
            frame_ends.clear();
        }
    }
}
