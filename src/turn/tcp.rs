//! TCP allocations (RFC 6062): the peer connections of each, named by
//! CONNECTION-ID, from Connect (or a peer connecting to the relayed
//! address) through the client's ConnectionBind to their end.
//!
//! The core decides and keeps the state; the shell owns the sockets. It
//! connects out when the core answers Connect with [`Action::ConnectToPeer`]
//! and reports the outcome ([`Core::connect_finished`]), hands peers that
//! connect in to [`Core::peer_connected_in`], joins a bound connection's
//! two sockets on [`Action::ReplyAndJoinPeer`], and closes the ones the core
//! reports ended ([`Core::take_ended_connections`]).

use std::net::SocketAddr;
use std::time::Instant;

use super::connections::{BIND_WAIT, DeferredReply, Stage};
use super::core::{Action, Core, Request, finish, finish_as, peer_address};
use crate::config::Transport;
use crate::logging::event;
use crate::reject::Reject;
use crate::turn::AllocId;
use crate::turn::bandwidth::{Gate, Way};
use crate::wire::{Class, Message, MessageBuilder, Method, TransactionId, attr};

/// What became of a Connect once the shell tried the peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Connected {
    /// Answered in `out`; the shell keeps the peer socket for ConnectionBind.
    Keep,
    /// Answered in `out` (447); the connection is gone.
    Refused,
    /// The allocation ended meanwhile: nothing to answer, close the socket.
    Gone,
}

impl Core {
    /// Connect (RFC 6062 §5.2): checks the peer and the caps, then asks the
    /// shell to connect out from the relayed address; the answer waits for that.
    pub(super) fn connect<'a>(&mut self, request: &Request<'_, 'a>) -> Result<Action<'a>, Reject> {
        let Request {
            five_tuple,
            message,
            ..
        } = *request;
        let peer = message
            .get(attr::XOR_PEER_ADDRESS)
            .and_then(|value| peer_address(message, value))
            .ok_or(Reject::BadRequest)?;
        let allocation = self
            .table
            .by_five_tuple(five_tuple)
            .ok_or(Reject::AllocationMismatch)?;
        let (relays, bound, id) = (allocation.relays(), allocation.bound, allocation.id);
        let Some(connections) = &allocation.tcp_connections else {
            return Err(Reject::RelayTransportMismatch);
        };
        let exists = connections.iter().any(|&(to, _)| to == peer);
        let count = connections.len();
        self.check_peer(five_tuple, relays, peer)?;
        if exists {
            return Err(Reject::ConnectionExists);
        }
        if count >= self.limits.max_tcp_connections_per_allocation {
            return Err(Reject::TcpConnectionQuota);
        }
        let reply = DeferredReply {
            transaction: message.transaction,
            sha256: message.get(attr::MESSAGE_INTEGRITY_SHA256).is_some(),
            fingerprint: message.has_fingerprint(),
        };
        let connection = self.peers.add(id, peer, Stage::Connecting(reply));
        self.attach(id, peer, connection);
        Ok(Action::ConnectToPeer {
            connection,
            from: bound,
            peer,
        })
    }

    /// The shell's outcome of connecting `connection` to its peer; the
    /// Connect response goes into `out` unless the allocation is gone.
    pub(crate) fn connect_finished(
        &mut self,
        connection: u32,
        connected: bool,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Connected {
        let Some(entry) = self.peers.by_id.get(&connection) else {
            return Connected::Gone;
        };
        let Stage::Connecting(reply) = entry.stage else {
            return Connected::Gone;
        };
        let (id, peer) = (entry.allocation, entry.peer);
        let Some(allocation) = self.table.get(id) else {
            return Connected::Gone;
        };
        let key = allocation.key;
        let class = if connected {
            Class::Success
        } else {
            Class::Error
        };
        let mut response = MessageBuilder::new(out, Method::CONNECT, class, reply.transaction);
        let outcome = if connected {
            response.add_u32(attr::CONNECTION_ID, connection);
            Connected::Keep
        } else {
            let (code, phrase) = Reject::ConnectFailed
                .error_code()
                .expect("a refusal with a code");
            response.add_error(code, phrase);
            Connected::Refused
        };
        finish_as(&mut response, reply.sha256, reply.fingerprint, &key);
        if connected {
            self.peers.await_bind(connection, now);
            event!(
                info,
                "peer-connected",
                relay = allocation.relayed,
                peer = peer,
                connection = connection
            );
        } else {
            self.counters.count(Reject::ConnectFailed);
            self.forget(connection);
        }
        outcome
    }

    /// A peer connected to allocation `id`'s relayed address: its CONNECTION-ID,
    /// with the ConnectionAttempt indication for the client in `out`; or why
    /// the shell closes it (counted).
    pub(crate) fn peer_connected_in(
        &mut self,
        id: AllocId,
        peer: SocketAddr,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<u32, Reject> {
        let peer = SocketAddr::new(crate::policy::canonical(peer.ip()), peer.port());
        let refused = match self.table.get(id) {
            None => Err(Reject::NoRoute),
            Some(allocation) => match &allocation.tcp_connections {
                None => Err(Reject::NoRoute),
                // A permission was checked against the policy when it was made.
                Some(_) if !allocation.permits(peer.ip(), now) => Err(Reject::NoRoute),
                Some(connections)
                    if connections.len() >= self.limits.max_tcp_connections_per_allocation =>
                {
                    Err(Reject::TcpConnectionQuota)
                }
                Some(_) => Ok(allocation.relayed),
            },
        };
        let relayed = refused.inspect_err(|&reject| self.counters.count(reject))?;
        let connection = self
            .peers
            .add(id, peer, Stage::AwaitingBind(now + BIND_WAIT));
        self.peers
            .bind_deadlines
            .push_back((now + BIND_WAIT, connection));
        self.attach(id, peer, connection);
        MessageBuilder::new(
            out,
            Method::CONNECTION_ATTEMPT,
            Class::Indication,
            TransactionId::fresh(),
        )
        .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        .add_u32(attr::CONNECTION_ID, connection);
        event!(
            info,
            "peer-connected",
            relay = relayed,
            peer = peer,
            connection = connection
        );
        Ok(connection)
    }

    /// ConnectionBind (RFC 6062 §5.4), on a new TCP/TLS connection of the
    /// allocation's user: the connection becomes the peer's data connection.
    pub(super) fn connection_bind<'a>(
        &mut self,
        request: &Request<'_, 'a>,
        out: &mut Vec<u8>,
    ) -> Result<Action<'a>, Reject> {
        let Request {
            five_tuple,
            message,
            user,
            ..
        } = *request;
        if five_tuple.transport == Transport::Udp || self.table.id_for(five_tuple).is_some() {
            return Err(Reject::UnknownConnection);
        }
        let connection = message
            .get(attr::CONNECTION_ID)
            .and_then(attr::u32_value)
            .ok_or(Reject::BadRequest)?;
        let entry = self
            .peers
            .by_id
            .get_mut(&connection)
            .filter(|entry| matches!(entry.stage, Stage::AwaitingBind(_)))
            .ok_or(Reject::UnknownConnection)?;
        let allocation = self
            .table
            .get(entry.allocation)
            .ok_or(Reject::UnknownConnection)?;
        if allocation.username != user.username {
            return Err(Reject::WrongCredentials);
        }
        entry.stage = Stage::Bound;
        let mut reply = MessageBuilder::reply(out, message, Class::Success);
        finish(&mut reply, message, &user.key);
        Ok(Action::ReplyAndJoinPeer(connection))
    }

    /// For a ConnectionBind, the client address of the allocation whose
    /// peer connection it names.
    pub(super) fn control_client_of(&self, message: &Message<'_>) -> Option<SocketAddr> {
        if message.method != Method::CONNECTION_BIND {
            return None;
        }
        let connection = message.get(attr::CONNECTION_ID).and_then(attr::u32_value)?;
        let entry = self.peers.by_id.get(&connection)?;
        Some(self.table.get(entry.allocation)?.five_tuple.client)
    }

    /// A bound or waiting connection closed on the shell's side (the client
    /// or the peer hung up): the allocation may connect to that peer again.
    pub(crate) fn peer_connection_closed(&mut self, connection: u32) {
        self.forget(connection);
    }

    /// Connections the core ended since the last call: the shell closes them.
    pub(crate) fn take_ended_connections(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.peers.ended)
    }

    /// Whether `len` bytes may go over joined connection `connection` now,
    /// under the bandwidth caps; counted in its allocation if so. Bytes
    /// over a cap wait (TCP holds them back), so nothing is dropped.
    pub(crate) fn pass_peer_data(
        &mut self,
        connection: u32,
        way: Way,
        len: usize,
        now: Instant,
    ) -> bool {
        let Some(entry) = self.peers.by_id.get(&connection) else {
            // Closing: nothing to count against.
            return true;
        };
        let Some(allocation) = self.table.get_mut(entry.allocation) else {
            return true;
        };
        let gate = Gate::new(&self.limits.bandwidth, &self.shared.bandwidth);
        allocation.pass(gate, way, now, len).is_ok()
    }

    /// Peer connections open now, in every stage.
    pub(crate) fn peer_connection_count(&self) -> usize {
        self.peers.by_id.len()
    }

    /// Closes the connections whose ConnectionBind did not come in time.
    pub(super) fn expire_peer_connections(&mut self, now: Instant) {
        while let Some(&(deadline, connection)) = self.peers.bind_deadlines.front() {
            if deadline > now {
                break;
            }
            self.peers.bind_deadlines.pop_front();
            let late = self.peers.by_id.get(&connection).is_some_and(
                |entry| matches!(entry.stage, Stage::AwaitingBind(until) if until <= now),
            );
            if late {
                self.counters.count(Reject::ConnectionBindTimeout);
                self.forget(connection);
                self.peers.ended.push(connection);
            }
        }
        if self.peers.bind_deadlines.is_empty() {
            self.peers.bind_deadlines.shrink_to(16);
        }
    }

    /// Ends every peer connection of an allocation that is going away.
    pub(super) fn end_peer_connections(&mut self, connections: &[(SocketAddr, u32)]) {
        for &(_, connection) in connections {
            if self.peers.by_id.remove(&connection).is_some() {
                self.peers.ended.push(connection);
            }
        }
    }

    fn attach(&mut self, id: AllocId, peer: SocketAddr, connection: u32) {
        if let Some(connections) = self
            .table
            .get_mut(id)
            .and_then(|allocation| allocation.tcp_connections.as_mut())
        {
            connections.push((peer, connection));
        }
    }

    fn forget(&mut self, connection: u32) {
        let Some(entry) = self.peers.by_id.remove(&connection) else {
            return;
        };
        if let Some(connections) = self
            .table
            .get_mut(entry.allocation)
            .and_then(|allocation| allocation.tcp_connections.as_mut())
        {
            connections.retain(|&(_, id)| id != connection);
        }
    }
}
