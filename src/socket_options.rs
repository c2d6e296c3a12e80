//! Socket options shared by listeners and relay sockets.

use std::net::SocketAddr;

/// Lets `socket` bind an address this host does not have yet (IP_FREEBIND):
/// at boot, an address that DHCP or a late interface brings must not leave
/// icegate listening on fewer addresses than configured.
pub(crate) fn allow_bind_before_address_exists(
    socket: &socket2::Socket,
    address: SocketAddr,
) -> std::io::Result<()> {
    if address.ip().is_unspecified() {
        return Ok(());
    }
    if address.is_ipv6() {
        rustix::net::sockopt::set_ipv6_freebind(socket, true)?;
    } else {
        rustix::net::sockopt::set_ip_freebind(socket, true)?;
    }
    Ok(())
}

/// Takes back what quinn-udp turns on for QUIC and a relay does not want:
/// DF on every datagram (a relay fragments unless the client asked for
/// DONT-FRAGMENT), and TOS and a timestamp on every received one, which
/// nothing reads and every datagram pays for; so is the destination
/// address, where the socket is bound to one address and so knows it.
pub(crate) fn relay_defaults(
    socket: &socket2::Socket,
    local: SocketAddr,
    dont_fragment: bool,
) -> std::io::Result<()> {
    let ipv6 = local.is_ipv6();
    let wildcard = local.ip().is_unspecified();
    use nix::sys::socket::{setsockopt, sockopt};
    use rustix::net::sockopt::{
        Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery, set_ip_mtu_discover, set_ip_recvtos,
        set_ipv6_mtu_discover, set_ipv6_recvtclass,
    };
    if ipv6 {
        let discovery = if dont_fragment {
            Ipv6PathMtuDiscovery::DO
        } else {
            Ipv6PathMtuDiscovery::WANT
        };
        set_ipv6_mtu_discover(socket, discovery)?;
        setsockopt(socket, sockopt::Ipv6DontFrag, &dont_fragment)?;
        set_ipv6_recvtclass(socket, false)?;
        if !wildcard {
            setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &false)?;
        }
    } else {
        let discovery = if dont_fragment {
            Ipv4PathMtuDiscovery::DO
        } else {
            Ipv4PathMtuDiscovery::WANT
        };
        set_ip_mtu_discover(socket, discovery)?;
        set_ip_recvtos(socket, false)?;
        if !wildcard {
            setsockopt(socket, sockopt::Ipv4PacketInfo, &false)?;
        }
    }
    setsockopt(socket, sockopt::ReceiveTimestampns, &false)?;
    Ok(())
}
