//! UDP listeners: batched receive with the destination address of each
//! datagram (so wildcard listeners answer from the address the client
//! reached), and non-blocking sends back to clients.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::server::Server;
use crate::transport::{ClientRoute, Transport};
use crate::turn::FiveTuple;

/// Room for the largest datagram, or a GRO batch of smaller ones.
const SLOT_LEN: usize = 65_536;

#[derive(Debug)]
pub(crate) struct UdpListener {
    socket: UdpSocket,
    state: UdpSocketState,
    local: SocketAddr,
}

impl UdpListener {
    pub(crate) fn bind(address: SocketAddr) -> io::Result<Arc<Self>> {
        let domain = socket2::Domain::for_address(address);
        let socket =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if address.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        crate::socket_options::allow_bind_before_address_exists(&socket, address)?;
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        let state = UdpSocketState::new((&socket).into())?;
        // Bursts from many clients arrive between two wake-ups; the kernel's
        // default buffer (~200 KiB) drops them.
        let _ = state.set_recv_buffer_size((&socket).into(), 4 << 20);
        let socket = UdpSocket::from_std(socket.into())?;
        let local = socket.local_addr()?;
        Ok(Arc::new(Self {
            socket,
            state,
            local,
        }))
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn send(&self, destination: SocketAddr, src_ip: Option<IpAddr>, contents: &[u8]) {
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: None,
            src_ip,
        };
        // A full send buffer drops the datagram, as a congested link would.
        if let Err(error) = self.state.try_send((&self.socket).into(), &transmit) {
            log::debug!("send to {destination} failed: {error}");
        }
    }
}

/// How to reach one UDP client: the listener it spoke to and the address it reached.
#[derive(Clone, Debug)]
pub(crate) struct UdpRoute {
    listener: Arc<UdpListener>,
    client: SocketAddr,
    src_ip: Option<IpAddr>,
}

impl UdpRoute {
    pub(crate) fn send(&self, bytes: &[u8]) {
        self.listener.send(self.client, self.src_ip, bytes);
    }

    pub(crate) fn client(&self) -> SocketAddr {
        self.client
    }
}

/// Receives datagrams until the process ends; one receive error never ends it.
pub(crate) async fn serve(server: Arc<Server>, listener: Arc<UdpListener>) {
    let mut buffers = vec![0u8; SLOT_LEN * BATCH_SIZE];
    let mut metas = [RecvMeta::default(); BATCH_SIZE];
    let mut out = Vec::with_capacity(1500);
    let wildcard = listener.local.ip().is_unspecified();
    loop {
        if let Err(error) = listener.socket.readable().await {
            log::error!("udp listener {} failed: {error}", listener.local);
            return;
        }
        let mut chunks = buffers.chunks_mut(SLOT_LEN);
        let mut slices: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("BATCH_SIZE slots")));
        let received = listener.socket.try_io(Interest::READABLE, || {
            listener
                .state
                .recv((&listener.socket).into(), &mut slices, &mut metas)
        });
        let count = match received {
            Ok(count) => count,
            Err(error) => {
                handle_recv_error(&listener, &error).await;
                continue;
            }
        };
        for (meta, slice) in metas.iter().zip(slices.iter()).take(count) {
            let src_ip = if wildcard { meta.dst_ip } else { None };
            let server_addr =
                SocketAddr::new(src_ip.unwrap_or(listener.local.ip()), listener.local.port());
            let five_tuple = FiveTuple {
                client: meta.addr,
                server: server_addr,
                transport: Transport::Udp,
            };
            let route = ClientRoute::Udp(UdpRoute {
                listener: listener.clone(),
                client: meta.addr,
                src_ip,
            });
            // GRO may have joined several datagrams of one sender: split by stride.
            let stride = meta.stride.max(1);
            for datagram in slice[..meta.len].chunks(stride) {
                super::handle_message(&server, &five_tuple, datagram, &route, &mut out);
            }
        }
    }
}

async fn handle_recv_error(listener: &UdpListener, error: &io::Error) {
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
