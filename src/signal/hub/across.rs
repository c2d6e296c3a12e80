//! The hub's side of rooms that span nodes (`[cluster]`): peers of a room
//! on other nodes, joins the other nodes agree to, signals that cross, and
//! sessions that move to another node on resume. The hub reaches the other
//! nodes through a [`Remote`], which the shell implements over Redis; what
//! they say comes back as calls here. Nothing here waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::{
    Hub, HubState, Member, Opened, SessionId, announce, drop_room, joined_text, new_session,
    peer_id_taken, random_token, room_cap, room_full, seat, seat_here,
};
use crate::logging::event;
use crate::metrics::{Metrics, SignalHeld};
use crate::signal::held::Held;
use crate::signal::protocol::{self, ErrorCode, LeaveReason, Problem};
use crate::signal::websocket;

/// The sender of a signal held for a peer on its way that came from another
/// node: no session here (sessions count from 1), so no `expired` notice.
const NO_SESSION: SessionId = 0;
/// How long a signal waits here for a peer whose join the other nodes saw
/// before this node had their answer: a Redis round trip, with room to spare.
const JOIN_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// The other nodes, as the hub reaches them. Called with the hub locked:
/// each returns at once and never calls the hub back from inside.
pub(crate) trait Remote: Send + Sync {
    /// This node's name in the cluster.
    fn node(&self) -> &str;
    /// Redis is reachable now.
    fn is_up(&self) -> bool;
    /// Asks the other nodes whether the join may happen; the answer comes
    /// to [`Hub::joined_across`].
    fn join(&self, join: PendingJoin);
    /// Claims the peer id across nodes once Redis is back.
    fn join_later(&self, room: &str, peer: &str, metadata: &RawValue);
    fn leave(&self, room: &str, peer: &str, reason: LeaveReason);
    /// The peer's presence belongs to another node now.
    fn forget(&self, room: &str, peer: &str);
    /// No peer here is in `room` any more.
    fn unsubscribe(&self, room: &str);
    /// False if the signal cannot cross now.
    fn signal(&self, room: &str, from: &str, to: &str, node: &str, data: &RawValue) -> bool;
    fn broadcast(&self, room: &str, from: &str, data: &RawValue) -> bool;
    /// Keeps what another node needs to resume the session held here.
    fn hold_for_resume(&self, held: HeldForResume, grace: Duration);
    /// The session held under `token` resumed on this node.
    fn resumed_here(&self, token: &str);
}

/// A session held for a resume, as another node would take it up.
pub(crate) struct HeldForResume {
    pub(crate) token: String,
    pub(crate) user: String,
    pub(crate) peer: String,
    /// Room, peer id, metadata.
    pub(crate) rooms: Vec<(String, String, Box<RawValue>)>,
}

/// A join the other nodes are asked about.
pub(crate) struct PendingJoin {
    pub(crate) session: SessionId,
    pub(crate) room: String,
    pub(crate) peer: String,
    pub(crate) metadata: Box<RawValue>,
    pub(crate) max_members: u32,
    /// The `id` of the client's `join`, for an error in reply.
    pub(crate) reply_to: Option<Box<RawValue>>,
}

/// What the other nodes said to a join.
pub(crate) enum JoinAnswer {
    /// With the room's peers on other nodes.
    Joined(Vec<RemoteEntry>),
    Taken,
    Full,
    /// Redis went away meanwhile.
    Unavailable,
}

/// A peer of a room on another node.
pub(crate) struct RemoteEntry {
    pub(crate) peer: String,
    pub(crate) node: String,
    pub(crate) metadata: Box<RawValue>,
}

/// A room a session that moved here is in, claimed for it across nodes.
pub(crate) struct MovedRoom {
    pub(crate) room: String,
    pub(crate) peer: String,
    pub(crate) metadata: Box<RawValue>,
    pub(crate) elsewhere: Vec<RemoteEntry>,
}

pub(super) struct RemoteMember {
    pub(super) node: Box<str>,
    pub(super) metadata: Box<RawValue>,
}

impl Hub {
    /// Rooms span nodes from now on.
    pub(crate) fn connect_nodes(&self, remote: Arc<dyn Remote>) {
        self.lock().remote = Some(remote);
    }

    /// The other nodes answered a join.
    pub(crate) fn joined_across(&self, join: PendingJoin, answer: JoinAnswer) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let PendingJoin {
            session,
            room,
            peer,
            metadata,
            reply_to,
            ..
        } = join;
        let reserved = state.rooms.get_mut(&room).is_some_and(|entry| {
            let before = entry.joining.len();
            entry
                .joining
                .retain(|(id, s)| !(*s == session && **id == *peer));
            entry.joining.len() < before
        });
        let user = match state.sessions.get_mut(&session) {
            Some(s) if reserved => {
                s.joining = s.joining.saturating_sub(1);
                Some(s.user.clone())
            }
            _ => None,
        };
        let Some(user) = user else {
            // The session ended meanwhile: undo what the other nodes did.
            if matches!(answer, JoinAnswer::Joined(_))
                && let Some(remote) = &state.remote
            {
                remote.leave(&room, &peer, LeaveReason::Closed);
            }
            if state.rooms.get(&room).is_some_and(super::Room::is_unused) {
                drop_room(state, &self.metrics, &room);
            }
            return;
        };
        let limits = state.limits;
        let refused = match answer {
            JoinAnswer::Taken => peer_id_taken(&room, &peer),
            JoinAnswer::Full => room_full(&self.metrics, &user, &room, room_cap(&limits, &room)),
            JoinAnswer::Joined(elsewhere) => {
                return seat(
                    state,
                    &self.metrics,
                    session,
                    &room,
                    peer,
                    metadata,
                    elsewhere,
                );
            }
            JoinAnswer::Unavailable => {
                return seat_here(state, &self.metrics, session, &room, peer, metadata);
            }
        };
        if let Some(s) = state.sessions.get(&session) {
            let text = protocol::error(&refused, Some("join"), reply_to.as_deref());
            s.outbox.push(websocket::text(&text));
        }
        if state.rooms.get(&room).is_some_and(super::Room::is_unused) {
            drop_room(state, &self.metrics, &room);
        }
    }

    /// `peer` joined `room` on `node` (or moved there).
    pub(crate) fn peer_joined_elsewhere(
        &self,
        node: &str,
        room: &str,
        peer: &str,
        metadata: Box<RawValue>,
    ) {
        let mut state = self.lock();
        if state.rooms.contains_key(room) {
            let entry = RemoteEntry {
                peer: peer.to_owned(),
                node: node.to_owned(),
                metadata,
            };
            arrive(&mut state, &self.metrics, room, entry);
        }
    }

    /// `peer` of `node` left `room`.
    pub(crate) fn peer_left_elsewhere(
        &self,
        node: &str,
        room: &str,
        peer: &str,
        reason: LeaveReason,
    ) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(entry) = state.rooms.get_mut(room) else {
            return;
        };
        // A peer that moved on is no longer the old node's to take out.
        if entry.remote.get(peer).is_none_or(|m| &*m.node != node) {
            return;
        }
        entry.remote.remove(peer);
        let text = websocket::text(&protocol::peer_left(room, peer, reason));
        announce(&state.sessions, room, &entry.members, &text);
    }

    /// A signal from a peer elsewhere for `to` here; false if `to` is not here.
    /// A peer whose join waits for the cluster's answer is here already for
    /// the other nodes (Redis announced it with the join): its signals wait
    /// for it, and follow its `joined`.
    pub(crate) fn signal_from_elsewhere(
        &self,
        room: &str,
        from: &str,
        to: &str,
        data: &RawValue,
        now: Instant,
    ) -> bool {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(entry) = state.rooms.get_mut(room) else {
            return false;
        };
        if let Some(member) = entry.members.get(to) {
            if let Some(target) = state.sessions.get(&member.session) {
                target
                    .outbox
                    .push(protocol::signal(room, from, data, false));
            }
            return true;
        }
        if !entry.joining.iter().any(|(peer, _)| &**peer == to) {
            return false;
        }
        let held = Held {
            to: to.into(),
            from: from.into(),
            sender: NO_SESSION,
            data: data.to_owned(),
            id: None,
            until: now + JOIN_ANSWER_WAIT,
        };
        if entry.held.hold(held, &state.limits).is_err() {
            return false;
        }
        if !state.holding.contains(room) {
            state.holding.insert(room.to_owned());
        }
        true
    }

    /// A broadcast from a peer elsewhere, for every peer of `room` here.
    pub(crate) fn broadcast_from_elsewhere(&self, room: &str, from: &str, data: &RawValue) {
        let state = self.lock();
        let Some(entry) = state.rooms.get(room) else {
            return;
        };
        let text = protocol::signal(room, from, data, true);
        for member in entry.members.values() {
            if let Some(target) = state.sessions.get(&member.session) {
                target.outbox.push(text.clone());
            }
        }
    }

    /// A signal (or, `to` = `None`, a broadcast) that `from` here sent did
    /// not reach the other nodes: its sender hears so.
    pub(crate) fn not_delivered(&self, room: &str, from: &str, to: Option<&str>) {
        let state = self.lock();
        let Some(member) = state.rooms.get(room).and_then(|r| r.members.get(from)) else {
            return;
        };
        let problem = match to {
            Some(to) => Problem::new(
                ErrorCode::Undeliverable,
                format!(
                    "the signal to {to} in room {room} was not delivered: {to} was no longer \
                     on its node, or the node could not be reached"
                ),
            ),
            None => broadcast_not_crossed(room),
        };
        if let Some(sender) = state.sessions.get(&member.session) {
            let kind = if to.is_some() { "signal" } else { "broadcast" };
            sender.outbox.push(websocket::text(&protocol::error(
                &problem,
                Some(kind),
                None,
            )));
        }
    }

    /// The session held here under `resume_token` resumed on `to_node`,
    /// which owns its peer ids now: it goes without a `peer-left`.
    pub(crate) fn moved_away(&self, resume_token: &str, to_node: &str) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(&id) = state.resume_tokens.get(resume_token) else {
            return;
        };
        if state.sessions.get(&id).is_none_or(|s| s.held.is_none()) {
            return;
        }
        let Some(session) = state.sessions.remove(&id) else {
            return;
        };
        state.resume_tokens.remove(resume_token);
        for (room, peer) in session.rooms.iter() {
            move_member(state, &self.metrics, room, peer, to_node);
        }
        event!(
            info,
            "signal-moved",
            user = session.user,
            peer = session.default_peer,
            node = to_node
        );
    }

    /// While Redis was away, another node took `peer` in `room`: the
    /// session here is no longer in the room.
    pub(crate) fn presence_lost(&self, room: &str, peer: &str) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(member) = state
            .rooms
            .get_mut(room)
            .and_then(|entry| entry.members.remove(peer))
        else {
            return;
        };
        if let Some(session) = state.sessions.get_mut(&member.session) {
            session.rooms.remove(room);
            let problem = Problem::new(
                ErrorCode::PeerIdTaken,
                format!(
                    "peer id {peer} in room {room} was taken on another node while the \
                     cluster was unavailable; this connection is no longer in the room"
                ),
            );
            session
                .outbox
                .push(websocket::text(&protocol::error(&problem, None, None)));
        }
        let Some(entry) = state.rooms.get(room) else {
            return;
        };
        if entry.is_unused() {
            drop_room(state, &self.metrics, room);
            return;
        }
        let text = websocket::text(&protocol::peer_left(room, peer, LeaveReason::Left));
        announce(&state.sessions, room, &entry.members, &text);
    }

    /// Rooms with peers here.
    pub(crate) fn local_rooms(&self) -> Vec<String> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// The room's peers elsewhere, as Redis has them after an outage: those
    /// new are announced as joined, and with `prune` those gone as left.
    /// (Right after an outage a Redis that restarted empty has not heard
    /// from the other nodes yet: they put their peers back on their own.)
    pub(crate) fn refresh_room(&self, room: &str, elsewhere: Vec<RemoteEntry>, prune: bool) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(entry) = state.rooms.get_mut(room) else {
            return;
        };
        let gone: Vec<String> = entry
            .remote
            .keys()
            .filter(|peer| prune && !elsewhere.iter().any(|e| &e.peer == *peer))
            .cloned()
            .collect();
        for peer in gone {
            entry.remote.remove(&peer);
            let text = websocket::text(&protocol::peer_left(room, &peer, LeaveReason::Left));
            announce(&state.sessions, room, &entry.members, &text);
        }
        for remote in elsewhere {
            arrive(state, &self.metrics, room, remote);
        }
    }

    /// Whether a session here answers to `resume_token`.
    pub(crate) fn knows_resume(&self, resume_token: &str) -> bool {
        self.lock().resume_tokens.contains_key(resume_token)
    }

    /// Takes up a session that was held on another node, in the rooms
    /// claimed for it here.
    pub(crate) fn open_moved(
        &self,
        user: &str,
        peer: String,
        rooms: Vec<MovedRoom>,
        now: u64,
    ) -> Opened {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut opened = new_session(state, user, peer, random_token(), now);
        opened.resumed = true;
        for moved in rooms {
            let MovedRoom {
                room,
                peer,
                metadata,
                elsewhere,
            } = moved;
            state.rooms.entry(room.clone()).or_default();
            for remote in elsewhere {
                if remote.peer != peer {
                    arrive(state, &self.metrics, &room, remote);
                }
            }
            let entry = state.rooms.entry(room.clone()).or_default();
            if entry.members.contains_key(&peer) {
                continue;
            }
            // The others knew it on its old node: only where it is changes.
            if entry.remote.remove(&peer).is_none() {
                let text = websocket::text(&protocol::peer_joined(&room, &peer, &metadata));
                announce(&state.sessions, &room, &entry.members, &text);
            }
            entry.members.insert(
                peer.clone(),
                Member {
                    session: opened.id,
                    metadata,
                },
            );
            if let Some(session) = state.sessions.get_mut(&opened.id) {
                session.rooms.insert(&room, &peer);
            }
            opened
                .rejoined
                .push(joined_text(&state.rooms, &room, &peer));
        }
        opened
    }
}

/// A peer of `room` on another node, new or moved: the peers here hear of a
/// new one, and signals held for it are sent on.
pub(super) fn arrive(state: &mut HubState, metrics: &Metrics, room: &str, remote: RemoteEntry) {
    let RemoteEntry {
        peer,
        node,
        metadata,
    } = remote;
    let Some(entry) = state.rooms.get_mut(room) else {
        return;
    };
    if let Some(member) = entry.members.get(&peer) {
        // Ours until now: if its session waits for a resume, it resumed
        // there; if it is connected here, Redis will settle it.
        if state
            .sessions
            .get(&member.session)
            .is_some_and(|s| s.held.is_some())
        {
            let session = member.session;
            if let Some(s) = state.sessions.get_mut(&session) {
                s.rooms.remove(room);
            }
            move_member(state, metrics, room, &peer, &node);
        }
        return;
    }
    if let Some(known) = entry.remote.get_mut(&peer) {
        known.node = node.into();
        known.metadata = metadata;
        return;
    }
    let text = websocket::text(&protocol::peer_joined(room, &peer, &metadata));
    announce(&state.sessions, room, &entry.members, &text);
    let waiting = entry.held.take_for(&peer);
    if entry.held.is_empty() {
        state.holding.remove(room);
    }
    let Some(entry) = state.rooms.get_mut(room) else {
        return;
    };
    entry.remote.insert(
        peer.clone(),
        RemoteMember {
            node: node.as_str().into(),
            metadata,
        },
    );
    if waiting.is_empty() {
        return;
    }
    metrics.signal_held(SignalHeld::Delivered, waiting.len());
    let remote = state.remote.clone();
    for held in waiting {
        let sent = remote
            .as_ref()
            .is_some_and(|r| r.signal(room, &held.from, &peer, &node, &held.data));
        if !sent && let Some(sender) = state.sessions.get(&held.sender) {
            let problem = not_crossed(room, &peer);
            let text = protocol::error(&problem, Some("signal"), held.id.as_deref());
            sender.outbox.push(websocket::text(&text));
        }
    }
}

/// A local member of `room` that now lives on `node`: known there, quietly.
fn move_member(state: &mut HubState, metrics: &Metrics, room: &str, peer: &str, node: &str) {
    let Some(entry) = state.rooms.get_mut(room) else {
        return;
    };
    let Some(member) = entry.members.remove(peer) else {
        return;
    };
    entry.remote.insert(
        peer.to_owned(),
        RemoteMember {
            node: node.into(),
            metadata: member.metadata,
        },
    );
    if let Some(remote) = &state.remote {
        remote.forget(room, peer);
    }
    if state.rooms.get(room).is_some_and(super::Room::is_unused) {
        drop_room(state, metrics, room);
    }
}

pub(super) fn not_crossed(room: &str, to: &str) -> Problem {
    Problem::new(
        ErrorCode::Undeliverable,
        format!(
            "{to} in room {room} is on another node, which cannot be reached now (the \
             cluster's Redis is unavailable); the signal was not delivered"
        ),
    )
}

pub(super) fn broadcast_not_crossed(room: &str) -> Problem {
    Problem::new(
        ErrorCode::Undeliverable,
        format!(
            "the broadcast reached the peers of room {room} on this node only: the other \
             nodes cannot be reached now (the cluster's Redis is unavailable)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Instant;

    use serde_json::Value;

    use super::*;
    use crate::config::DEFAULT_SIGNAL_LIMITS;
    use crate::signal::outbox::Queued;

    /// Records what the hub asks of the other nodes; `down` and `cut_off` say
    /// how they answer.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        joins: Mutex<Vec<PendingJoin>>,
        down: bool,
        cut_off: bool,
    }

    impl Recorder {
        fn calls(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }

        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl Remote for Recorder {
        fn node(&self) -> &str {
            "here"
        }
        fn is_up(&self) -> bool {
            !self.down
        }
        fn join(&self, join: PendingJoin) {
            self.record(format!("join {} {}", join.room, join.peer));
            self.joins.lock().unwrap().push(join);
        }
        fn join_later(&self, room: &str, peer: &str, _: &RawValue) {
            self.record(format!("join-later {room} {peer}"));
        }
        fn leave(&self, room: &str, peer: &str, reason: LeaveReason) {
            self.record(format!("leave {room} {peer} {}", reason.as_str()));
        }
        fn forget(&self, room: &str, peer: &str) {
            self.record(format!("forget {room} {peer}"));
        }
        fn unsubscribe(&self, room: &str) {
            self.record(format!("unsubscribe {room}"));
        }
        fn signal(&self, room: &str, from: &str, to: &str, node: &str, data: &RawValue) -> bool {
            self.record(format!("signal {room} {from}->{to}@{node} {}", data.get()));
            !self.cut_off
        }
        fn broadcast(&self, room: &str, from: &str, data: &RawValue) -> bool {
            self.record(format!("broadcast {room} {from} {}", data.get()));
            !self.cut_off
        }
        fn hold_for_resume(&self, held: HeldForResume, _: Duration) {
            self.record(format!("hold {} {}", held.user, held.rooms.len()));
        }
        fn resumed_here(&self, _: &str) {
            self.record("resumed-here".to_owned());
        }
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    struct Client {
        opened: Opened,
    }

    impl Client {
        /// The JSON messages sent to it since last asked.
        fn received(&self) -> Vec<Value> {
            let mut frames: VecDeque<Queued> = VecDeque::new();
            self.opened
                .outbox
                .take_all(self.opened.attachment, &mut frames);
            frames
                .iter()
                .map(|q| serde_json::from_slice(websocket::payload(&q.frame)).unwrap())
                .collect()
        }
    }

    fn hub(remote: &Arc<Recorder>) -> Arc<Hub> {
        let hub = Hub::new(DEFAULT_SIGNAL_LIMITS, Arc::new(Metrics::default()));
        hub.connect_nodes(remote.clone());
        hub
    }

    fn connect(hub: &Hub, user: &str) -> Client {
        let opened = hub.open(user, None, 0);
        hub.attach(&opened, "{}".to_owned());
        let client = Client { opened };
        client.received();
        client
    }

    fn join(hub: &Hub, remote: &Recorder, client: &Client, room: &str, peer: &str) {
        hub.join(
            client.opened.id,
            None,
            room,
            Some(peer.to_owned()),
            None,
            None,
        )
        .unwrap();
        if let Some(pending) = remote.joins.lock().unwrap().pop() {
            hub.joined_across(pending, JoinAnswer::Joined(Vec::new()));
        }
    }

    #[test]
    fn a_join_waits_for_the_other_nodes_and_lists_their_peers() {
        let remote = Arc::new(Recorder::default());
        let hub = hub(&remote);
        let alice = connect(&hub, "alice");
        hub.join(alice.opened.id, None, "r", Some("a".into()), None, None)
            .unwrap();
        assert_eq!(remote.calls(), ["join r a"]);
        assert!(
            alice.received().is_empty(),
            "joined before the nodes agreed"
        );
        // A second join of the same room is refused while the first waits.
        let again = hub.join(alice.opened.id, None, "r", None, None, None);
        assert_eq!(again.unwrap_err().code, ErrorCode::AlreadyJoined);

        let pending = remote.joins.lock().unwrap().pop().unwrap();
        let elsewhere = vec![RemoteEntry {
            peer: "b".into(),
            node: "there".into(),
            metadata: raw(r#"{"n":2}"#),
        }];
        hub.joined_across(pending, JoinAnswer::Joined(elsewhere));
        let got = alice.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["type"], "joined");
        assert_eq!(got[0]["peers"][0]["peer"], "b");
        assert_eq!(got[0]["peers"][0]["metadata"]["n"], 2);
    }

    #[test]
    fn a_join_refused_elsewhere_is_answered_in_reply_to_it() {
        let remote = Arc::new(Recorder::default());
        let hub = hub(&remote);
        let alice = connect(&hub, "alice");
        hub.join(
            alice.opened.id,
            None,
            "r",
            Some("a".into()),
            None,
            Some(&raw("7")),
        )
        .unwrap();
        let pending = remote.joins.lock().unwrap().pop().unwrap();
        hub.joined_across(pending, JoinAnswer::Taken);
        let got = alice.received();
        assert_eq!(got[0]["code"], "peer-id-taken");
        assert_eq!(got[0]["in_reply_to"]["id"], 7);
        assert_eq!(remote.calls(), ["join r a", "unsubscribe r"]);
        // The room is free to join again.
        join(&hub, &remote, &alice, "r", "a2");
        assert_eq!(alice.received()[0]["type"], "joined");
    }

    #[test]
    fn a_room_of_local_peers_never_reaches_the_other_nodes() {
        let remote = Arc::new(Recorder::default());
        let hub = hub(&remote);
        let (alice, bob) = (connect(&hub, "alice"), connect(&hub, "bob"));
        join(&hub, &remote, &alice, "r", "a");
        join(&hub, &remote, &bob, "r", "b");
        remote.calls();
        let now = Instant::now();
        hub.relay(alice.opened.id, "r", Some("b"), &raw("1"), None, now)
            .unwrap();
        hub.relay(alice.opened.id, "r", None, &raw("2"), None, now)
            .unwrap();
        assert!(remote.calls().is_empty());
        assert_eq!(bob.received().len(), 3, "joined, the signal, the broadcast");
    }

    #[test]
    fn signals_cross_to_the_node_of_their_peer_or_come_back_undeliverable() {
        let remote = Arc::new(Recorder::default());
        let hub = hub(&remote);
        let alice = connect(&hub, "alice");
        join(&hub, &remote, &alice, "r", "a");
        hub.peer_joined_elsewhere("there", "r", "b", raw("{}"));
        assert_eq!(alice.received()[1]["type"], "peer-joined");
        remote.calls();
        let now = Instant::now();
        hub.relay(alice.opened.id, "r", Some("b"), &raw("1"), None, now)
            .unwrap();
        hub.relay(alice.opened.id, "r", None, &raw("2"), None, now)
            .unwrap();
        assert_eq!(remote.calls(), ["signal r a->b@there 1", "broadcast r a 2"]);

        // Accepted, then lost on the way: the sender hears so.
        hub.not_delivered("r", "a", Some("b"));
        let got = alice.received();
        assert_eq!(got[0]["code"], "undeliverable");
        assert_eq!(got[0]["in_reply_to"]["type"], "signal");

        let cut_off = Arc::new(Recorder {
            cut_off: true,
            ..Recorder::default()
        });
        hub.connect_nodes(cut_off);
        let refused = hub.relay(alice.opened.id, "r", Some("b"), &raw("1"), None, now);
        assert_eq!(refused.unwrap_err().code, ErrorCode::Undeliverable);
        let refused = hub.relay(alice.opened.id, "r", None, &raw("1"), None, now);
        assert_eq!(refused.unwrap_err().code, ErrorCode::Undeliverable);
    }

    #[test]
    fn a_signal_held_here_goes_to_the_node_its_peer_joins_on() {
        let remote = Arc::new(Recorder::default());
        let hub = hub(&remote);
        let alice = connect(&hub, "alice");
        join(&hub, &remote, &alice, "r", "a");
        remote.calls();
        hub.relay(
            alice.opened.id,
            "r",
            Some("late"),
            &raw(r#"{"sdp":1}"#),
            None,
            Instant::now(),
        )
        .unwrap();
        assert!(remote.calls().is_empty(), "held, not sent");
        hub.peer_joined_elsewhere("there", "r", "late", raw("{}"));
        assert_eq!(remote.calls(), [r#"signal r a->late@there {"sdp":1}"#]);
        assert_eq!(hub.held_count(), 0);
    }

    #[test]
    fn peers_elsewhere_leave_only_by_their_own_node() {
        let remote = Arc::new(Recorder::default());
        let hub = hub(&remote);
        let alice = connect(&hub, "alice");
        join(&hub, &remote, &alice, "r", "a");
        hub.peer_joined_elsewhere("one", "r", "b", raw("{}"));
        // It moved to another node: known, not announced again.
        hub.peer_joined_elsewhere("two", "r", "b", raw("{}"));
        alice.received();
        hub.peer_left_elsewhere("one", "r", "b", LeaveReason::NodeLost);
        assert!(
            alice.received().is_empty(),
            "a stale leave from its old node"
        );
        hub.peer_left_elsewhere("two", "r", "b", LeaveReason::NodeLost);
        let got = alice.received();
        assert_eq!(got[0]["type"], "peer-left");
        assert_eq!(got[0]["reason"], "node-lost");
    }

    #[test]
    fn a_session_held_here_that_resumed_elsewhere_goes_quietly() {
        let remote = Arc::new(Recorder::default());
        let hub = hub(&remote);
        let (alice, bob) = (connect(&hub, "alice"), connect(&hub, "bob"));
        join(&hub, &remote, &alice, "r", "a");
        join(&hub, &remote, &bob, "r", "b");
        let token = alice.opened.resume_token.clone();
        hub.hold(
            alice.opened.id,
            alice.opened.attachment,
            LeaveReason::Closed,
        )
        .unwrap();
        assert!(remote.calls().contains(&"hold alice 1".to_owned()));
        bob.received();
        hub.moved_away(&token, "there");
        assert!(
            bob.received().is_empty(),
            "no peer-left for a peer that moved"
        );
        assert_eq!(remote.calls(), ["forget r a"]);
        hub.relay(
            bob.opened.id,
            "r",
            Some("a"),
            &raw("1"),
            None,
            Instant::now(),
        )
        .unwrap();
        assert_eq!(remote.calls(), ["signal r b->a@there 1"]);
        assert_eq!(hub.counts().0, 1);
    }

    #[test]
    fn without_redis_a_node_serves_its_own_peers() {
        let remote = Arc::new(Recorder {
            down: true,
            ..Recorder::default()
        });
        let hub = hub(&remote);
        let alice = connect(&hub, "alice");
        hub.join(alice.opened.id, None, "r", Some("a".into()), None, None)
            .unwrap();
        assert_eq!(alice.received()[0]["type"], "joined");
        assert_eq!(remote.calls(), ["join-later r a"]);
        hub.presence_lost("r", "a");
        let got = alice.received();
        assert_eq!(got[0]["code"], "peer-id-taken");
        assert_eq!(remote.calls(), ["unsubscribe r"]);
        assert_eq!(hub.counts().1, 0);
    }

    #[test]
    fn a_signal_for_a_peer_whose_join_is_still_being_answered_follows_its_joined() {
        let remote = Arc::new(Recorder::default());
        let hub = hub(&remote);
        let bob = connect(&hub, "bob");
        hub.join(bob.opened.id, None, "r", Some("b".into()), None, None)
            .unwrap();
        // Redis announced the join to the other nodes, which answered at once.
        let now = Instant::now();
        assert!(hub.signal_from_elsewhere("r", "a", "b", &raw(r#"{"sdp":1}"#), now));
        assert!(!hub.signal_from_elsewhere("r", "a", "nobody", &raw("1"), now));
        assert!(bob.received().is_empty());
        let pending = remote.joins.lock().unwrap().pop().unwrap();
        hub.joined_across(pending, JoinAnswer::Joined(Vec::new()));
        let got = bob.received();
        assert_eq!(got[0]["type"], "joined");
        assert_eq!(got[1]["type"], "signal");
        assert_eq!(got[1]["from"], "a");
        assert_eq!(got[1]["data"]["sdp"], 1);
    }
}
