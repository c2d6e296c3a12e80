//! UDP listeners: one socket per worker thread on the same address
//! (SO_REUSEPORT, so the kernel spreads clients across cores and keeps each
//! client on one socket), batched receive with the destination address of
//! each datagram (so wildcard listeners answer from the address the client
//! reached), and non-blocking sends back to clients.
//!
//! A batch's ChannelData messages are relayed together ([`Server::relay_channel_data`]);
//! a STUN message first sends the ChannelData before it, so a client's
//! messages keep their order.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use quinn_udp::{BATCH_SIZE, RecvMeta};
use tokio::task::JoinSet;

use crate::datagrams::{BatchSocket, Run};
use crate::server::{ChannelFrame, PeerSends, Server};
use crate::transport::{ClientRoute, Transport};
use crate::turn::FiveTuple;
use crate::wire::{self, CHANNEL_DATA_HEADER_LEN, ChannelData, Kind};

/// Room for the largest datagram, or a GRO batch of smaller ones.
const SLOT_LEN: usize = 65_536;

/// One UDP listener: a socket per worker thread, all bound to one address.
#[derive(Debug)]
pub(crate) struct UdpListener {
    sockets: Vec<Arc<ListenerSocket>>,
    local: SocketAddr,
}

/// One socket of a listener.
#[derive(Debug)]
struct ListenerSocket {
    socket: BatchSocket,
    local: SocketAddr,
}

/// Tries at a port of the kernel's choosing, should another program take
/// it between the plain bind and the shared ones.
const EPHEMERAL_ATTEMPTS: usize = 8;

impl UdpListener {
    /// Binds `address` once per worker thread; `receive_buffer` is each
    /// socket's SO_RCVBUF.
    pub(crate) fn bind(address: SocketAddr, receive_buffer: usize) -> io::Result<Arc<Self>> {
        let count = std::thread::available_parallelism().map_or(1, usize::from);
        let mut attempt = 0;
        loop {
            // A plain bind first. SO_REUSEPORT alone would join the sockets
            // another process of this user (a second icegate) has on the
            // port and share its clients silently, and for port 0 the
            // kernel may pick such a port; a plain bind fails or picks a port
            // no one holds.
            let plain = bind_socket(address, false)?;
            if count == 1 {
                return Ok(Arc::new(Self::of(vec![ListenerSocket::new(
                    plain,
                    receive_buffer,
                )?])));
            }
            let local = plain
                .local_addr()?
                .as_socket()
                .ok_or(io::ErrorKind::InvalidInput)?;
            drop(plain);
            let shared: io::Result<Vec<ListenerSocket>> = (0..count)
                .map(|_| ListenerSocket::new(bind_socket(local, true)?, receive_buffer))
                .collect();
            match shared {
                Ok(sockets) => return Ok(Arc::new(Self::of(sockets))),
                Err(error)
                    if error.kind() == io::ErrorKind::AddrInUse
                        && address.port() == 0
                        && attempt + 1 < EPHEMERAL_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn of(sockets: Vec<ListenerSocket>) -> Self {
        let local = sockets[0].local;
        Self {
            sockets: sockets.into_iter().map(Arc::new).collect(),
            local,
        }
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// A UDP socket bound to `address`; with `shared`, one of a SO_REUSEPORT group.
fn bind_socket(address: SocketAddr, shared: bool) -> io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if shared {
        socket.set_reuse_port(true)?;
    }
    crate::socket_options::allow_bind_before_address_exists(&socket, address)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

impl ListenerSocket {
    fn new(socket: socket2::Socket, receive_buffer: usize) -> io::Result<Self> {
        let socket = BatchSocket::new(socket, false, receive_buffer)?;
        let local = socket.local_addr()?;
        Ok(Self { socket, local })
    }
}

/// How to reach one UDP client: the listener socket it spoke to and the address it reached.
#[derive(Clone, Debug)]
pub(crate) struct UdpRoute {
    listener: Arc<ListenerSocket>,
    client: SocketAddr,
    src_ip: Option<IpAddr>,
}

impl UdpRoute {
    pub(crate) fn send(&self, bytes: &[u8]) {
        self.listener.socket.send(self.client, self.src_ip, bytes);
    }

    pub(crate) fn client(&self) -> SocketAddr {
        self.client
    }

    pub(crate) fn send_run(&self, run: &Run) {
        run.send(&self.listener.socket, self.client, self.src_ip);
    }
}

/// The UDP listeners being served, by address: an answer for NAT behaviour
/// discovery (RFC 5780) leaves from another listener than the one asked.
static SERVED: Mutex<Vec<(SocketAddr, Weak<UdpListener>)>> = Mutex::new(Vec::new());

/// Sends `bytes` to `to` from the listener at `from`; dropped if there is
/// none (it was removed by a reload meanwhile).
pub(crate) fn send_via(from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
    let listener = SERVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(address, _)| *address == from)
        .and_then(|(_, listener)| listener.upgrade());
    if let Some(listener) = listener {
        listener.sockets[0].socket.send(to, None, bytes);
    }
}

/// Serves every socket of the listener until the process ends (or the
/// listener is removed: aborting this task ends the sockets' tasks).
pub(crate) async fn serve(server: Arc<Server>, listener: Arc<UdpListener>) {
    {
        let mut served = SERVED.lock().unwrap_or_else(|e| e.into_inner());
        served.retain(|(_, listener)| listener.strong_count() > 0);
        served.push((listener.local, Arc::downgrade(&listener)));
    }
    let mut tasks = JoinSet::new();
    for socket in &listener.sockets {
        tasks.spawn(serve_socket(server.clone(), socket.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

/// Receives datagrams on one socket; one receive error never ends it.
async fn serve_socket(server: Arc<Server>, listener: Arc<ListenerSocket>) {
    let mut buffers = vec![0u8; SLOT_LEN * BATCH_SIZE];
    let mut metas = [RecvMeta::default(); BATCH_SIZE];
    let mut out = Vec::with_capacity(1500);
    let mut frames = Vec::with_capacity(BATCH_SIZE);
    let mut sends = PeerSends::default();
    let wildcard = listener.local.ip().is_unspecified();
    loop {
        // After a full batch readiness stays set and this returns at once,
        // within tokio's budget, so a flood cannot starve the relay tasks.
        if let Err(error) = listener.socket.readable().await {
            log::error!("udp listener {} failed: {error}", listener.local);
            return;
        }
        let received = {
            let mut chunks = buffers.chunks_mut(SLOT_LEN);
            let mut slices: [IoSliceMut<'_>; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("BATCH_SIZE slots")));
            listener.socket.recv(&mut slices, &mut metas)
        };
        let count = match received {
            Ok(count) => count,
            Err(error) => {
                handle_recv_error(&listener, &error).await;
                continue;
            }
        };
        for (slot, meta) in metas.iter().take(count).enumerate() {
            let src_ip = if wildcard { meta.dst_ip } else { None };
            let server_addr =
                SocketAddr::new(src_ip.unwrap_or(listener.local.ip()), listener.local.port());
            let five_tuple = FiveTuple {
                client: meta.addr,
                server: server_addr,
                transport: Transport::Udp,
            };
            // GRO may have joined several datagrams of one sender: split by stride.
            let stride = meta.stride.max(1);
            let slot_start = slot * SLOT_LEN;
            let mut start = slot_start;
            while start < slot_start + meta.len {
                let end = (start + stride).min(slot_start + meta.len);
                let datagram = &buffers[start..end];
                match channel_frame(datagram, &five_tuple, start) {
                    Some(frame) => frames.push(frame),
                    None => {
                        // In order: what the client sent before this message goes first.
                        server.relay_channel_data(&buffers, &frames, &mut sends);
                        frames.clear();
                        let route = ClientRoute::Udp(UdpRoute {
                            listener: listener.clone(),
                            client: meta.addr,
                            src_ip,
                        });
                        // Only a stream can be joined to a peer: a UDP ConnectionBind is refused.
                        let _ =
                            super::handle_message(&server, &five_tuple, datagram, &route, &mut out);
                    }
                }
                start = end;
            }
        }
        server.relay_channel_data(&buffers, &frames, &mut sends);
        frames.clear();
    }
}

/// A well-formed ChannelData message at `offset` of the receive buffer,
/// with its payload's place there; None for anything else.
fn channel_frame(datagram: &[u8], five_tuple: &FiveTuple, offset: usize) -> Option<ChannelFrame> {
    if wire::classify(*datagram.first()?) != Kind::ChannelData {
        return None;
    }
    let frame = ChannelData::parse(datagram)?;
    let start = offset + CHANNEL_DATA_HEADER_LEN;
    Some(ChannelFrame {
        five_tuple: *five_tuple,
        channel: frame.channel,
        data: start..start + frame.data.len(),
    })
}

async fn handle_recv_error(listener: &ListenerSocket, error: &io::Error) {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
        // ICMP port unreachable from an earlier reply: a client went away.
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused => {}
        _ => {
            // Out of buffers or descriptors: back off instead of spinning.
            log::warn!("udp listener {} receive error: {error}", listener.local);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
