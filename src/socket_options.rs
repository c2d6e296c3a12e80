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
