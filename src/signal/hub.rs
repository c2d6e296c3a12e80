//! Who is connected and in which rooms: one table for every signaling
//! connection, behind one lock, with a queue of outgoing frames per session.
//!
//! A session outlives its WebSocket connection by the resume grace period
//! when the connection drops without a close frame: its peer ids stay taken
//! and frames for it are queued, so a client that reconnects with its resume
//! token carries on as if nothing happened.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::protocol::{self, ErrorCode, LeaveReason, PeerEntry, Problem};
use super::token::Claims;
use crate::config::SignalLimits;
use crate::logging::event;
use crate::metrics::{Limit, Metrics};
use crate::sparse::shrink_if_sparse;

pub(crate) type SessionId = u64;

/// One frame waiting to be sent, and whether it only reports presence
/// (dropped on resume, where `joined` tells the current state instead).
struct Queued {
    text: Utf8Bytes,
    presence: bool,
}

/// Frames for one session, filled by any connection's task and drained by
/// the task of the connection the session is attached to.
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    max_bytes: usize,
}

struct OutboxState {
    frames: VecDeque<Queued>,
    bytes: usize,
    /// The session did not keep up; it is being closed.
    overflowed: bool,
    /// The operator ended the session; its connection is being closed.
    ended: bool,
    /// Wakes the task of the attached connection; `None` while held for resume.
    attached: Option<Arc<Notify>>,
}

/// What the attached connection should do next.
pub(crate) enum Drained {
    Send(Vec<Utf8Bytes>),
    /// More was queued than `max-queued-bytes`: the client is not reading.
    Overflowed,
    /// A resumed connection took the session over.
    Superseded,
    /// The operator ended the session (`DELETE /allocations?user=`).
    Ended,
}

impl Outbox {
    fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(OutboxState {
                frames: VecDeque::new(),
                bytes: 0,
                overflowed: false,
                ended: false,
                attached: None,
            }),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn push(&self, text: Utf8Bytes) {
        self.push_frame(text, false);
    }

    fn push_frame(&self, text: Utf8Bytes, presence: bool) {
        let mut state = self.lock();
        if state.overflowed {
            return;
        }
        if state.bytes + text.len() > self.max_bytes {
            state.overflowed = true;
            state.frames.clear();
            state.bytes = 0;
        } else {
            state.bytes += text.len();
            state.frames.push_back(Queued { text, presence });
        }
        if let Some(wake) = &state.attached {
            wake.notify_one();
        }
    }

    /// Everything queued for the connection woken by `wake`.
    pub(crate) fn drain(&self, wake: &Arc<Notify>) -> Drained {
        let mut state = self.lock();
        if state.ended {
            return Drained::Ended;
        }
        if !state
            .attached
            .as_ref()
            .is_some_and(|w| Arc::ptr_eq(w, wake))
        {
            return Drained::Superseded;
        }
        if state.overflowed {
            return Drained::Overflowed;
        }
        state.bytes = 0;
        Drained::Send(state.frames.drain(..).map(|q| q.text).collect())
    }

    /// Hands the session to a connection: `first` goes out before anything
    /// already queued. A previously attached connection is woken to leave.
    fn attach(&self, wake: Arc<Notify>, first: Vec<String>, resumed: bool) {
        let mut state = self.lock();
        if resumed {
            state.frames.retain(|q| !q.presence);
        }
        for text in first.into_iter().rev() {
            state.bytes += text.len();
            state.frames.push_front(Queued {
                text: text.into(),
                presence: false,
            });
        }
        if let Some(old) = state.attached.replace(wake.clone()) {
            old.notify_one();
        }
        wake.notify_one();
    }

    fn detach(&self, wake: &Arc<Notify>) -> bool {
        let mut state = self.lock();
        if state
            .attached
            .as_ref()
            .is_some_and(|w| Arc::ptr_eq(w, wake))
        {
            state.attached = None;
            true
        } else {
            false
        }
    }

    pub(crate) fn is_overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Tells the attached connection, if any, to close.
    fn end(&self) {
        let mut state = self.lock();
        state.ended = true;
        if let Some(wake) = &state.attached {
            wake.notify_one();
        }
    }
}

struct Session {
    user: Arc<str>,
    default_peer: String,
    /// Room → this session's peer id in it.
    rooms: BTreeMap<String, String>,
    outbox: Arc<Outbox>,
    resume_token: String,
    /// Set while the connection is gone and the session waits for a resume;
    /// counts detachments so that an old expiry timer does nothing.
    held: Option<(u64, LeaveReason)>,
    detachments: u64,
}

struct Member {
    session: SessionId,
    metadata: Box<RawValue>,
}

#[derive(Default)]
struct Room {
    members: BTreeMap<String, Member>,
}

struct HubState {
    limits: SignalLimits,
    sessions: HashMap<SessionId, Session>,
    rooms: HashMap<String, Room>,
    resume_tokens: HashMap<String, SessionId>,
    next_session: SessionId,
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
    pub(crate) fn open(&self, user: &str, resume_token: Option<&str>) -> Opened {
        let mut state = self.lock();
        let limits = state.limits;
        let resumable = resume_token
            .and_then(|token| state.resume_tokens.get(token).copied())
            .filter(|id| {
                state.sessions.get(id).is_some_and(|session| {
                    &*session.user == user && !session.outbox.is_overflowed()
                })
            });
        let new_token = random_token();
        if let Some(id) = resumable {
            let state = &mut *state;
            let session = state
                .sessions
                .get_mut(&id)
                .unwrap_or_else(|| unreachable!());
            state.resume_tokens.remove(&session.resume_token);
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
                outbox: session.outbox.clone(),
                peer: session.default_peer.clone(),
                resume_token: new_token,
                resumed: true,
                rejoined,
            };
        }
        state.next_session += 1;
        let id = state.next_session;
        let outbox = Arc::new(Outbox::new(limits.max_queued_bytes as usize));
        let peer = random_peer_id();
        state.resume_tokens.insert(new_token.clone(), id);
        state.sessions.insert(
            id,
            Session {
                user: user.into(),
                default_peer: peer.clone(),
                rooms: BTreeMap::new(),
                outbox: outbox.clone(),
                resume_token: new_token.clone(),
                held: None,
                detachments: 0,
            },
        );
        Opened {
            id,
            outbox,
            peer,
            resume_token: new_token,
            resumed: false,
            rejoined: Vec::new(),
        }
    }

    /// Starts (or resumes) sending the session's frames to a connection.
    pub(crate) fn attach(&self, opened: &Opened, wake: Arc<Notify>, welcome: String) {
        let mut first = vec![welcome];
        first.extend(opened.rejoined.iter().cloned());
        opened.outbox.attach(wake, first, opened.resumed);
    }

    pub(crate) fn join(
        &self,
        id: SessionId,
        claims: Option<&Claims>,
        room: &str,
        peer: Option<String>,
        metadata: Option<&RawValue>,
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
        if session.rooms.contains_key(room) {
            return Err(Problem::new(
                ErrorCode::AlreadyJoined,
                format!("already in room {room}"),
            ));
        }
        if session.rooms.len() >= limits.max_rooms_per_connection as usize {
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
        let members = state.rooms.get(room).map_or(0, |r| r.members.len());
        if state
            .rooms
            .get(room)
            .is_some_and(|r| r.members.contains_key(&peer))
        {
            return Err(Problem::new(
                ErrorCode::PeerIdTaken,
                format!("peer id {peer} is taken in room {room}"),
            ));
        }
        if members >= limits.max_peers_per_room as usize {
            self.metrics.limit_hit(Limit::SignalMaxPeersPerRoom);
            event!(
                info,
                "signal-limit",
                limit = "max-peers-per-room",
                user = session.user,
                room = room
            );
            return Err(Problem::new(
                ErrorCode::RoomFull,
                format!(
                    "room {room} has {} peers, the most allowed",
                    limits.max_peers_per_room
                ),
            ));
        }
        session.rooms.insert(room.to_owned(), peer.clone());
        let user = session.user.clone();
        let announce: Utf8Bytes = protocol::peer_joined(room, &peer, &metadata).into();
        let entry = state.rooms.entry(room.to_owned()).or_default();
        for member in entry.members.values() {
            if let Some(other) = state.sessions.get(&member.session) {
                other.outbox.push_frame(announce.clone(), true);
            }
        }
        entry.members.insert(
            peer.clone(),
            Member {
                session: id,
                metadata,
            },
        );
        let joined = joined_text(&state.rooms, room, &peer);
        event!(info, "signal-join", user = user, room = room, peer = peer);
        if let Some(session) = state.sessions.get(&id) {
            session.outbox.push(joined.into());
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
        leave_room(state, &user, room, &peer, LeaveReason::Left);
        Ok(())
    }

    /// Sends `data` to one peer of `room`, or to all others when `to` is `None`.
    pub(crate) fn relay(
        &self,
        id: SessionId,
        room: &str,
        to: Option<&str>,
        data: &RawValue,
    ) -> Result<(), Problem> {
        let state = self.lock();
        let session = state.sessions.get(&id).ok_or_else(gone)?;
        let from = session.rooms.get(room).ok_or_else(|| not_in_room(room))?;
        let members = &state
            .rooms
            .get(room)
            .ok_or_else(|| not_in_room(room))?
            .members;
        let text: Utf8Bytes = protocol::signal(room, from, data, to.is_none()).into();
        match to {
            Some(to) => {
                let member = members.get(to).ok_or_else(|| {
                    Problem::new(
                        ErrorCode::PeerNotFound,
                        format!("no peer {to} in room {room}"),
                    )
                })?;
                if let Some(target) = state.sessions.get(&member.session) {
                    target.outbox.push(text);
                }
            }
            None => {
                for (peer, member) in members {
                    if peer != from
                        && let Some(target) = state.sessions.get(&member.session)
                    {
                        target.outbox.push(text.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// The connection woken by `wake` dropped without a close frame: hold the
    /// session for a resume. Returns the detachment number for [`Hub::expire`].
    pub(crate) fn hold(
        &self,
        id: SessionId,
        wake: &Arc<Notify>,
        reason: LeaveReason,
    ) -> Option<u64> {
        let mut state = self.lock();
        let session = state.sessions.get_mut(&id)?;
        if !session.outbox.detach(wake) {
            return None;
        }
        session.detachments += 1;
        session.held = Some((session.detachments, reason));
        Some(session.detachments)
    }

    /// Ends a held session whose grace period ran out, unless it resumed.
    pub(crate) fn expire(&self, id: SessionId, detachment: u64) {
        let mut state = self.lock();
        let reason = match state.sessions.get(&id).and_then(|s| s.held) {
            Some((n, reason)) if n == detachment => reason,
            _ => return,
        };
        end_session(&mut state, id, reason);
    }

    /// Ends the session now (a close frame, a limit, no resume possible),
    /// if the connection woken by `wake` still has it.
    pub(crate) fn close(&self, id: SessionId, wake: &Arc<Notify>, reason: LeaveReason) {
        let mut state = self.lock();
        let owned = state
            .sessions
            .get(&id)
            .is_some_and(|s| s.outbox.detach(wake));
        if owned {
            end_session(&mut state, id, reason);
        }
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
                session.outbox.end();
            }
            end_session(&mut state, id, LeaveReason::Closed);
        }
        ids.len()
    }
}

fn end_session(state: &mut HubState, id: SessionId, reason: LeaveReason) {
    let Some(session) = state.sessions.remove(&id) else {
        return;
    };
    state.resume_tokens.remove(&session.resume_token);
    shrink_if_sparse(&mut state.sessions);
    shrink_if_sparse(&mut state.resume_tokens);
    for (room, peer) in &session.rooms {
        leave_room(state, &session.user, room, peer, reason);
    }
}

/// Takes `peer` out of `room`, logged, and tells the others.
fn leave_room(state: &mut HubState, user: &str, room: &str, peer: &str, reason: LeaveReason) {
    event!(
        info,
        "signal-leave",
        user = user,
        room = room,
        peer = peer,
        reason = reason.as_str()
    );
    let Some(entry) = state.rooms.get_mut(room) else {
        return;
    };
    entry.members.remove(peer);
    if entry.members.is_empty() {
        state.rooms.remove(room);
        shrink_if_sparse(&mut state.rooms);
        return;
    }
    let text: Utf8Bytes = protocol::peer_left(room, peer, reason).into();
    for member in entry.members.values() {
        if let Some(other) = state.sessions.get(&member.session) {
            other.outbox.push_frame(text.clone(), true);
        }
    }
}

fn joined_text(rooms: &HashMap<String, Room>, room: &str, peer: &str) -> String {
    let others: Vec<PeerEntry<'_>> = rooms
        .get(room)
        .into_iter()
        .flat_map(|r| r.members.iter())
        .filter(|(id, _)| id.as_str() != peer)
        .map(|(id, member)| PeerEntry {
            peer: id,
            metadata: &member.metadata,
        })
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
