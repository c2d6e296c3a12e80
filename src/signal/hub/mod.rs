//! Who is connected and in which rooms: one table for every signaling
//! connection, behind one lock, with a queue of outgoing frames per session.
//!
//! A session outlives its WebSocket connection by the resume grace period
//! when the connection drops without a close frame: its peer ids stay taken
//! and frames for it are queued, so a client that reconnects with its resume
//! token carries on as if nothing happened.
//!
//! With `[cluster]`, rooms span nodes: what concerns peers elsewhere is in
//! `across`, and reaches them through a [`Remote`].

mod across;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use rand::Rng;
use serde_json::value::RawValue;

use across::RemoteMember;
pub(crate) use across::{HeldForResume, JoinAnswer, MovedRoom, PendingJoin, Remote, RemoteEntry};

use super::held::{Held, HeldSignals};
use super::outbox::{Attachment, Closing, Outbox};
use super::protocol::{self, ErrorCode, LeaveReason, PeerEntry, Problem};
use super::token::Claims;
use super::websocket;
use crate::config::SignalLimits;
use crate::logging::event;
use crate::metrics::{Limit, Metrics, SignalHeld};
use crate::sparse::shrink_if_sparse;

pub(crate) type SessionId = u64;

/// The rooms of one session with its peer id in each: a handful at most
/// (`max-rooms-per-connection`), so a list, not a map: a map's first node
/// alone took 540 bytes per session.
#[derive(Default)]
struct RoomsOf(Vec<(Box<str>, Box<str>)>);

impl RoomsOf {
    fn get(&self, room: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| &**name == room)
            .map(|(_, peer)| &**peer)
    }

    fn insert(&mut self, room: &str, peer: &str) {
        self.0.push((room.into(), peer.into()));
    }

    fn remove(&mut self, room: &str) -> Option<Box<str>> {
        let at = self.0.iter().position(|(name, _)| &**name == room)?;
        Some(self.0.swap_remove(at).1)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(room, peer)| (&**room, &**peer))
    }
}

struct Session {
    user: Arc<str>,
    default_peer: String,
    /// Room → this session's peer id in it.
    rooms: RoomsOf,
    outbox: Arc<Outbox>,
    resume_token: String,
    /// Set while the connection is gone and the session waits for a resume;
    /// counts detachments so that an old expiry timer does nothing.
    held: Option<(u64, LeaveReason)>,
    detachments: u64,
    /// Unix time the session began.
    since: u64,
    /// Joins waiting for the cluster's answer.
    joining: u8,
}

/// One session as the admin API lists it.
pub(crate) struct SessionView {
    pub(crate) user: Arc<str>,
    pub(crate) peer: String,
    /// Room and this session's peer id in it.
    pub(crate) rooms: Vec<(String, String)>,
    pub(crate) since: u64,
    /// Held for a resume, not connected.
    pub(crate) held: bool,
    /// The cluster node it is on, with `[cluster]`.
    pub(crate) node: Option<String>,
}

struct Member {
    session: SessionId,
    metadata: Box<RawValue>,
}

#[derive(Default)]
struct Room {
    members: BTreeMap<String, Member>,
    /// Peers of the room on other nodes.
    remote: BTreeMap<String, RemoteMember>,
    /// Local joins waiting for the cluster's answer: peer id and session.
    joining: Vec<(Box<str>, SessionId)>,
    held: HeldSignals,
}

impl Room {
    /// Peers here, elsewhere and on their way in.
    fn size(&self) -> usize {
        self.members.len() + self.remote.len() + self.joining.len()
    }

    fn has_peer(&self, peer: &str) -> bool {
        self.members.contains_key(peer)
            || self.remote.contains_key(peer)
            || self.joining.iter().any(|(id, _)| &**id == peer)
    }

    /// Nobody here is in it or on the way in: the room goes.
    fn is_unused(&self) -> bool {
        self.members.is_empty() && self.joining.is_empty()
    }
}

struct HubState {
    limits: SignalLimits,
    sessions: HashMap<SessionId, Session>,
    rooms: HashMap<String, Room>,
    resume_tokens: HashMap<String, SessionId>,
    next_session: SessionId,
    next_attachment: Attachment,
    /// The rooms that hold any, which the expiry sweep visits.
    holding: HashSet<String>,
    /// icegate is stopping: new sessions close at once.
    stopping: bool,
    /// The other nodes, with `[cluster]`.
    remote: Option<Arc<dyn Remote>>,
    connections: u32,
    connections_by_ip: HashMap<IpAddr, u32>,
}

pub(crate) struct Hub {
    state: Mutex<HubState>,
    pub(crate) metrics: Arc<Metrics>,
}

/// A connection counted against the limits until it is dropped.
pub(crate) struct ConnectionSlot {
    hub: Arc<Hub>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.connections -= 1;
        if let Some(count) = state.connections_by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                state.connections_by_ip.remove(&self.ip);
                shrink_if_sparse(&mut state.connections_by_ip);
            }
        }
    }
}

/// A session as a new connection takes it up.
pub(crate) struct Opened {
    pub(crate) id: SessionId,
    pub(crate) attachment: Attachment,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) peer: String,
    pub(crate) resume_token: String,
    pub(crate) resumed: bool,
    /// `joined` for every room a resumed session is in.
    pub(crate) rejoined: Vec<String>,
}

impl Hub {
    pub(crate) fn new(limits: SignalLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(HubState {
                limits,
                sessions: HashMap::new(),
                rooms: HashMap::new(),
                resume_tokens: HashMap::new(),
                next_session: 0,
                next_attachment: 0,
                holding: HashSet::new(),
                stopping: false,
                remote: None,
                connections: 0,
                connections_by_ip: HashMap::new(),
            }),
            metrics,
        })
    }

    /// New limits, for what comes next.
    pub(crate) fn set_limits(&self, limits: SignalLimits) {
        self.lock().limits = limits;
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection, or says which limit it would break.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, &'static str> {
        let mut state = self.lock();
        let limits = state.limits;
        // Sessions held for a resume count too, up to as many again: a
        // client that connects and drops in a loop must not pile them up.
        let held = state
            .sessions
            .len()
            .saturating_sub(state.connections as usize);
        if state.connections >= limits.max_connections || held >= limits.max_connections as usize {
            return Err("max-connections");
        }
        let from_ip = state.connections_by_ip.entry(ip).or_insert(0);
        if *from_ip >= limits.max_connections_per_ip {
            return Err("max-connections-per-ip");
        }
        *from_ip += 1;
        state.connections += 1;
        Ok(ConnectionSlot {
            hub: self.clone(),
            ip,
        })
    }

    /// Resumes the session of `resume_token` when it belongs to `user` and
    /// is still held, else starts a new one.
    /// `now` is the Unix time, kept as the session's start.
    pub(crate) fn open(&self, user: &str, resume_token: Option<&str>, now: u64) -> Opened {
        let mut state = self.lock();
        let resumable = resume_token
            .and_then(|token| state.resume_tokens.get(token).copied())
            .filter(|id| {
                state.sessions.get(id).is_some_and(|session| {
                    &*session.user == user && !session.outbox.is_overflowed()
                })
            });
        let new_token = random_token();
        if let Some(id) = resumable {
            state.next_attachment += 1;
            let attachment = state.next_attachment;
            let state = &mut *state;
            let session = state
                .sessions
                .get_mut(&id)
                .unwrap_or_else(|| unreachable!());
            state.resume_tokens.remove(&session.resume_token);
            if let Some(remote) = &state.remote {
                remote.resumed_here(&session.resume_token);
            }
            state.resume_tokens.insert(new_token.clone(), id);
            session.resume_token = new_token.clone();
            session.held = None;
            let rejoined = session
                .rooms
                .iter()
                .map(|(room, peer)| joined_text(&state.rooms, room, peer))
                .collect();
            return Opened {
                id,
                attachment,
                outbox: session.outbox.clone(),
                peer: session.default_peer.clone(),
                resume_token: new_token,
                resumed: true,
                rejoined,
            };
        }
        new_session(&mut state, user, random_peer_id(), new_token, now)
    }

    /// Starts (or resumes) sending the session's frames to a connection.
    pub(crate) fn attach(&self, opened: &Opened, welcome: String) {
        let mut first = vec![welcome];
        first.extend(opened.rejoined.iter().cloned());
        opened
            .outbox
            .attach(opened.attachment, first, opened.resumed);
        if self.lock().stopping {
            opened.outbox.close_with(Closing::Stopping);
        }
    }

    /// Closes every connection, with 1001, and any that comes later.
    pub(crate) fn stop(&self) {
        let mut state = self.lock();
        state.stopping = true;
        for session in state.sessions.values() {
            session.outbox.close_with(Closing::Stopping);
        }
    }

    /// Puts the session into `room`: `joined` follows, at once or (with
    /// `[cluster]`) when the other nodes have agreed; an error is returned
    /// now or sent then, in reply to `reply_to`.
    pub(crate) fn join(
        &self,
        id: SessionId,
        claims: Option<&Claims>,
        room: &str,
        peer: Option<String>,
        metadata: Option<&RawValue>,
        reply_to: Option<&RawValue>,
    ) -> Result<(), Problem> {
        let limits = self.lock().limits;
        if claims.is_some_and(|c| !c.may_join(room)) {
            return Err(Problem::new(
                ErrorCode::RoomNotAllowed,
                format!("the token does not allow room {room}"),
            ));
        }
        let metadata = match metadata {
            None => protocol::empty_object(),
            Some(raw) if !raw.get().starts_with('{') => {
                return Err(Problem::new(
                    ErrorCode::InvalidField,
                    "\"metadata\" must be a JSON object",
                ));
            }
            Some(raw) if raw.get().len() > limits.max_metadata_bytes as usize => {
                return Err(Problem::new(
                    ErrorCode::InvalidField,
                    format!(
                        "\"metadata\" is {} bytes, more than the {} allowed",
                        raw.get().len(),
                        limits.max_metadata_bytes
                    ),
                ));
            }
            Some(raw) => raw.to_owned(),
        };
        let mut state = self.lock();
        let state = &mut *state;
        let session = state.sessions.get_mut(&id).ok_or_else(gone)?;
        let entering = state
            .rooms
            .get(room)
            .is_some_and(|r| r.joining.iter().any(|(_, s)| *s == id));
        if session.rooms.get(room).is_some() || entering {
            return Err(Problem::new(
                ErrorCode::AlreadyJoined,
                format!("already in room {room}"),
            ));
        }
        if session.rooms.len() + usize::from(session.joining)
            >= limits.max_rooms_per_connection as usize
        {
            self.metrics.limit_hit(Limit::SignalMaxRoomsPerConnection);
            event!(
                info,
                "signal-limit",
                limit = "max-rooms-per-connection",
                user = session.user
            );
            return Err(Problem::new(
                ErrorCode::TooManyRooms,
                format!(
                    "a connection may be in at most {} rooms",
                    limits.max_rooms_per_connection
                ),
            ));
        }
        let peer = peer.unwrap_or_else(|| session.default_peer.clone());
        if state.rooms.get(room).is_some_and(|r| r.has_peer(&peer)) {
            return Err(peer_id_taken(room, &peer));
        }
        let cap = room_cap(&limits, room);
        if state.rooms.get(room).map_or(0, Room::size) >= cap as usize {
            return Err(room_full(&self.metrics, &session.user, room, cap));
        }
        match state.remote.clone() {
            Some(remote) if remote.is_up() => {
                session.joining += 1;
                state
                    .rooms
                    .entry(room.to_owned())
                    .or_default()
                    .joining
                    .push((peer.as_str().into(), id));
                remote.join(PendingJoin {
                    session: id,
                    room: room.to_owned(),
                    peer,
                    metadata,
                    max_members: cap,
                    reply_to: reply_to.map(ToOwned::to_owned),
                });
            }
            _ => seat_here(state, &self.metrics, id, room, peer, metadata),
        }
        Ok(())
    }

    pub(crate) fn leave(&self, id: SessionId, room: &str) -> Result<(), Problem> {
        let mut state = self.lock();
        let state = &mut *state;
        let session = state.sessions.get_mut(&id).ok_or_else(gone)?;
        let peer = session
            .rooms
            .remove(room)
            .ok_or_else(|| not_in_room(room))?;
        let user = session.user.clone();
        leave_room(state, &self.metrics, &user, room, &peer, LeaveReason::Left);
        Ok(())
    }

    /// Sends `data` to one peer of `room`, or to all others when `to` is
    /// `None`. A signal to a peer not in the room is held for it (`message`
    /// is the sender's message id, for an `expired` notice).
    pub(crate) fn relay(
        &self,
        id: SessionId,
        room: &str,
        to: Option<&str>,
        data: &RawValue,
        message: Option<&RawValue>,
        now: Instant,
    ) -> Result<(), Problem> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let session = state.sessions.get(&id).ok_or_else(gone)?;
        let from = session.rooms.get(room).ok_or_else(|| not_in_room(room))?;
        let entry = state.rooms.get_mut(room).ok_or_else(|| not_in_room(room))?;
        let members = &entry.members;
        match to {
            Some(to) => {
                if let Some(elsewhere) = entry.remote.get(to) {
                    let sent = state
                        .remote
                        .as_ref()
                        .is_some_and(|remote| remote.signal(room, from, to, &elsewhere.node, data));
                    return if sent {
                        Ok(())
                    } else {
                        Err(across::not_crossed(room, to))
                    };
                }
                let Some(member) = members.get(to) else {
                    let limits = &state.limits;
                    if limits.hold_for.is_zero() {
                        return Err(Problem::new(
                            ErrorCode::PeerNotFound,
                            format!("no peer {to} in room {room}"),
                        ));
                    }
                    let held = Held {
                        to: to.into(),
                        from: from.into(),
                        sender: id,
                        data: data.to_owned(),
                        id: message.map(ToOwned::to_owned),
                        until: now + limits.hold_for,
                    };
                    return match entry.held.hold(held, limits) {
                        Ok(()) => {
                            if !state.holding.contains(room) {
                                state.holding.insert(room.to_owned());
                            }
                            self.metrics.signal_held(SignalHeld::Held, 1);
                            Ok(())
                        }
                        Err(limit) => {
                            self.metrics.limit_hit(limit);
                            event!(
                                info,
                                "signal-limit",
                                limit = limit.key().trim_start_matches("signal."),
                                user = session.user,
                                room = room
                            );
                            Err(Problem::new(
                                ErrorCode::PeerNotFound,
                                format!(
                                    "no peer {to} in room {room}, and no room to hold more \
                                     for peers on their way ({})",
                                    limit.key()
                                ),
                            ))
                        }
                    };
                };
                if let Some(target) = state.sessions.get(&member.session) {
                    target
                        .outbox
                        .push(protocol::signal(room, from, data, false));
                }
            }
            None => {
                let text = protocol::signal(room, from, data, true);
                for (peer, member) in members {
                    if peer != from
                        && let Some(target) = state.sessions.get(&member.session)
                    {
                        target.outbox.push(text.clone());
                    }
                }
                // A room whose peers are all here never reaches the cluster.
                if !entry.remote.is_empty() {
                    let sent = state
                        .remote
                        .as_ref()
                        .is_some_and(|remote| remote.broadcast(room, from, data));
                    if !sent {
                        return Err(across::broadcast_not_crossed(room));
                    }
                }
            }
        }
        Ok(())
    }

    /// Answers `expired` to the senders of signals held past `hold-for`.
    pub(crate) fn expire_held(&self, now: Instant) {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.holding.is_empty() {
            return;
        }
        let waited = state.limits.hold_for.as_secs();
        let mut expired = 0;
        for name in &state.holding {
            let Some(room) = state.rooms.get_mut(name) else {
                continue;
            };
            for held in room.held.take_expired(now) {
                expired += 1;
                if let Some(sender) = state.sessions.get(&held.sender) {
                    let notice = protocol::expired(name, &held.to, waited, held.id.as_deref());
                    sender.outbox.push(websocket::text(&notice));
                }
            }
        }
        let rooms = &state.rooms;
        state
            .holding
            .retain(|name| rooms.get(name).is_some_and(|room| !room.held.is_empty()));
        self.metrics.signal_held(SignalHeld::Expired, expired);
    }

    /// The peer ids in `room` on this node, sorted.
    pub(crate) fn peers_of(&self, room: &str) -> Vec<String> {
        self.lock()
            .rooms
            .get(room)
            .map(|entry| entry.members.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Signals held for peers on their way right now.
    pub(crate) fn held_count(&self) -> usize {
        let state = self.lock();
        state
            .holding
            .iter()
            .filter_map(|name| state.rooms.get(name))
            .map(|room| room.held.len())
            .sum()
    }

    /// The connection of `attachment` dropped without a close frame: hold the
    /// session for a resume. Returns the detachment number for [`Hub::expire`].
    pub(crate) fn hold(
        &self,
        id: SessionId,
        attachment: Attachment,
        reason: LeaveReason,
    ) -> Option<u64> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let session = state.sessions.get_mut(&id)?;
        if !session.outbox.detach(attachment) {
            return None;
        }
        session.detachments += 1;
        session.held = Some((session.detachments, reason));
        let detachment = session.detachments;
        let session = &*session;
        if let Some(remote) = &state.remote
            && session.rooms.len() > 0
        {
            // Whichever node the client comes back to may take it up.
            let rooms = session
                .rooms
                .iter()
                .filter_map(|(room, peer)| {
                    let member = state.rooms.get(room)?.members.get(peer)?;
                    Some((room.to_owned(), peer.to_owned(), member.metadata.clone()))
                })
                .collect();
            let held = HeldForResume {
                token: session.resume_token.clone(),
                user: session.user.to_string(),
                peer: session.default_peer.clone(),
                rooms,
            };
            remote.hold_for_resume(held, state.limits.resume_grace);
        }
        Some(detachment)
    }

    /// Ends a held session whose grace period ran out, unless it resumed.
    pub(crate) fn expire(&self, id: SessionId, detachment: u64) {
        let mut state = self.lock();
        let reason = match state.sessions.get(&id).and_then(|s| s.held) {
            Some((n, reason)) if n == detachment => reason,
            _ => return,
        };
        end_session(&mut state, &self.metrics, id, reason);
    }

    /// Ends the session now (a close frame, a limit, no resume possible),
    /// if the connection of `attachment` still has it.
    pub(crate) fn close(&self, id: SessionId, attachment: Attachment, reason: LeaveReason) {
        let mut state = self.lock();
        let owned = state
            .sessions
            .get(&id)
            .is_some_and(|s| s.outbox.detach(attachment));
        if owned {
            end_session(&mut state, &self.metrics, id, reason);
        }
    }

    /// Every session, or `user`'s, oldest first.
    pub(crate) fn sessions(&self, user: Option<&str>) -> Vec<SessionView> {
        let state = self.lock();
        let mut list: Vec<(SessionId, SessionView)> = state
            .sessions
            .iter()
            .filter(|(_, s)| user.is_none_or(|u| &*s.user == u))
            .map(|(&id, s)| {
                let view = SessionView {
                    user: s.user.clone(),
                    peer: s.default_peer.clone(),
                    rooms: s
                        .rooms
                        .iter()
                        .map(|(room, peer)| (room.to_string(), peer.to_string()))
                        .collect(),
                    since: s.since,
                    held: s.held.is_some(),
                    node: state.remote.as_ref().map(|r| r.node().to_owned()),
                };
                (id, view)
            })
            .collect();
        list.sort_by_key(|(id, _)| *id);
        list.into_iter().map(|(_, view)| view).collect()
    }

    /// Sessions and rooms right now.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.sessions.len(), state.rooms.len())
    }

    /// Connections, sessions (held ones included) and rooms right now.
    pub(crate) fn connection_counts(&self) -> (u32, usize, usize) {
        let state = self.lock();
        (state.connections, state.sessions.len(), state.rooms.len())
    }

    /// Ends every session of `user`, held or attached (whose connection is
    /// then closed); returns how many.
    pub(crate) fn end_user(&self, user: &str) -> usize {
        let mut state = self.lock();
        let ids: Vec<SessionId> = state
            .sessions
            .iter()
            .filter(|(_, session)| &*session.user == user)
            .map(|(&id, _)| id)
            .collect();
        for &id in &ids {
            if let Some(session) = state.sessions.get(&id) {
                session.outbox.close_with(Closing::Ended);
            }
            end_session(&mut state, &self.metrics, id, LeaveReason::Closed);
        }
        ids.len()
    }
}

/// A session that starts now, with no rooms.
fn new_session(
    state: &mut HubState,
    user: &str,
    peer: String,
    resume_token: String,
    now: u64,
) -> Opened {
    state.next_attachment += 1;
    state.next_session += 1;
    let id = state.next_session;
    let outbox = Arc::new(Outbox::new(state.limits.max_queued_bytes as usize));
    state.resume_tokens.insert(resume_token.clone(), id);
    state.sessions.insert(
        id,
        Session {
            user: user.into(),
            default_peer: peer.clone(),
            rooms: RoomsOf::default(),
            outbox: outbox.clone(),
            resume_token: resume_token.clone(),
            held: None,
            detachments: 0,
            since: now,
            joining: 0,
        },
    );
    Opened {
        id,
        attachment: state.next_attachment,
        outbox,
        peer,
        resume_token,
        resumed: false,
        rejoined: Vec::new(),
    }
}

/// Puts a session's peer into a room (the checks passed), with the room's
/// peers on other nodes as the cluster knows them: tells the others, answers
/// `joined`, and hands over what was held for the peer.
fn seat(
    state: &mut HubState,
    metrics: &Metrics,
    id: SessionId,
    room: &str,
    peer: String,
    metadata: Box<RawValue>,
    elsewhere: Vec<RemoteEntry>,
) {
    let Some(session) = state.sessions.get_mut(&id) else {
        return;
    };
    session.rooms.insert(room, &peer);
    let user = session.user.clone();
    state.rooms.entry(room.to_owned()).or_default();
    // Peers elsewhere this node had not heard of yet (their `peer-joined`
    // is on its way): the others here learn of them too.
    for remote in elsewhere {
        if remote.peer != peer {
            across::arrive(state, metrics, room, remote);
        }
    }
    let news = websocket::text(&protocol::peer_joined(room, &peer, &metadata));
    let entry = state.rooms.entry(room.to_owned()).or_default();
    announce(&state.sessions, room, &entry.members, &news);
    entry.members.insert(
        peer.clone(),
        Member {
            session: id,
            metadata,
        },
    );
    let waiting = entry.held.take_for(&peer);
    if entry.held.is_empty() {
        state.holding.remove(room);
    }
    let joined = joined_text(&state.rooms, room, &peer);
    event!(info, "signal-join", user = user, room = room, peer = peer);
    if let Some(session) = state.sessions.get(&id) {
        session.outbox.push(websocket::text(&joined));
        // Signals sent before it arrived, in the order they were sent.
        for held in &waiting {
            session
                .outbox
                .push(protocol::signal(room, &held.from, &held.data, false));
        }
    }
    if !waiting.is_empty() {
        metrics.signal_held(SignalHeld::Delivered, waiting.len());
    }
}

/// [`seat`] without asking the other nodes (there are none, or Redis is
/// away): the node serves its own peers, and the id is claimed across
/// nodes once Redis is back.
fn seat_here(
    state: &mut HubState,
    metrics: &Metrics,
    id: SessionId,
    room: &str,
    peer: String,
    metadata: Box<RawValue>,
) {
    if let Some(remote) = &state.remote {
        remote.join_later(room, &peer, &metadata);
    }
    seat(state, metrics, id, room, peer, metadata, Vec::new());
}

fn peer_id_taken(room: &str, peer: &str) -> Problem {
    Problem::new(
        ErrorCode::PeerIdTaken,
        format!("peer id {peer} is taken in room {room}"),
    )
}

fn room_full(metrics: &Metrics, user: &str, room: &str, cap: u32) -> Problem {
    let limit = if is_quiet(room) {
        Limit::SignalPeerjsMaxPeers
    } else {
        Limit::SignalMaxPeersPerRoom
    };
    metrics.limit_hit(limit);
    event!(
        info,
        "signal-limit",
        limit = limit.key().trim_start_matches("signal."),
        user = user,
        room = room
    );
    Problem::new(
        ErrorCode::RoomFull,
        format!("room {room} has {cap} peers, the most allowed"),
    )
}

/// Rooms whose names start with this are quiet: their peers hear of no one
/// arriving or leaving, and `joined` lists nobody. A PeerJS key's clients
/// share one, thousands of peers that only ever signal one another by id.
/// Native clients cannot name one (control characters are refused).
pub(crate) const QUIET_ROOM_PREFIX: &str = "\u{1}";

fn is_quiet(room: &str) -> bool {
    room.starts_with(QUIET_ROOM_PREFIX)
}

/// How many peers `room` may hold.
fn room_cap(limits: &SignalLimits, room: &str) -> u32 {
    if is_quiet(room) {
        limits.peerjs_max_peers
    } else {
        limits.max_peers_per_room
    }
}

fn end_session(state: &mut HubState, metrics: &Metrics, id: SessionId, reason: LeaveReason) {
    let Some(session) = state.sessions.remove(&id) else {
        return;
    };
    state.resume_tokens.remove(&session.resume_token);
    shrink_if_sparse(&mut state.sessions);
    shrink_if_sparse(&mut state.resume_tokens);
    for (room, peer) in session.rooms.iter() {
        leave_room(state, metrics, &session.user, room, peer, reason);
    }
}

/// Takes `peer` out of `room`, logged, and tells the others.
fn leave_room(
    state: &mut HubState,
    metrics: &Metrics,
    user: &str,
    room: &str,
    peer: &str,
    reason: LeaveReason,
) {
    event!(
        info,
        "signal-leave",
        user = user,
        room = room,
        peer = peer,
        reason = reason.as_str()
    );
    if let Some(remote) = &state.remote {
        remote.leave(room, peer, reason);
    }
    let Some(entry) = state.rooms.get_mut(room) else {
        return;
    };
    entry.members.remove(peer);
    if entry.is_unused() {
        drop_room(state, metrics, room);
        return;
    }
    let text = websocket::text(&protocol::peer_left(room, peer, reason));
    announce(&state.sessions, room, &entry.members, &text);
}

/// A room nobody here is in: what it held goes (nobody is left to send it
/// to, or to tell), and so does this node's interest in it.
fn drop_room(state: &mut HubState, metrics: &Metrics, room: &str) {
    let Some(entry) = state.rooms.remove(room) else {
        return;
    };
    state.holding.remove(room);
    metrics.signal_held(SignalHeld::Expired, entry.held.len());
    shrink_if_sparse(&mut state.rooms);
    if let Some(remote) = &state.remote {
        remote.unsubscribe(room);
    }
}

/// Presence news (`peer-joined`, `peer-left`) for every peer of a room
/// here, unless the room is quiet.
fn announce(
    sessions: &HashMap<SessionId, Session>,
    room: &str,
    members: &BTreeMap<String, Member>,
    frame: &Bytes,
) {
    if is_quiet(room) {
        return;
    }
    for member in members.values() {
        if let Some(other) = sessions.get(&member.session) {
            other.outbox.push_frame(frame.clone(), true);
        }
    }
}

fn joined_text(rooms: &HashMap<String, Room>, room: &str, peer: &str) -> String {
    let Some(entry) = rooms.get(room).filter(|_| !is_quiet(room)) else {
        return protocol::joined(room, peer, &[]);
    };
    let here = entry.members.iter().map(|(id, m)| (id, &m.metadata));
    let elsewhere = entry.remote.iter().map(|(id, m)| (id, &m.metadata));
    let others: Vec<PeerEntry<'_>> = here
        .chain(elsewhere)
        .filter(|(id, _)| id.as_str() != peer)
        .map(|(id, metadata)| PeerEntry { peer: id, metadata })
        .collect();
    protocol::joined(room, peer, &others)
}

fn not_in_room(room: &str) -> Problem {
    Problem::new(ErrorCode::NotInRoom, format!("not in room {room}"))
}

fn gone() -> Problem {
    Problem::new(ErrorCode::NotInRoom, "the session has ended")
}

const ID_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

fn random_peer_id() -> String {
    let mut rng = rand::rng();
    let tail: String = (0..8)
        .map(|_| ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char)
        .collect();
    format!("p-{tail}")
}

fn random_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 18] = rand::rng().random();
    format!(
        "r1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
