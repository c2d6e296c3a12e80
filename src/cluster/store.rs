//! What icegate keeps in Redis, in one place: key and channel names, the value formats and
//! the Lua scripts that change presence atomically.
//!
//! | key or channel                  | type    | what                                            |
//! |---------------------------------|---------|-------------------------------------------------|
//! | `icegate:nodes`                 | set     | node names that may own presence (the registry) |
//! | `icegate:node:NODE`             | string  | NODE's heartbeat (its instance id), with a TTL  |
//! | `icegate:node:NODE:peers`       | set     | `ROOM\nPEER` of every entry NODE owns           |
//! | `icegate:presence:ROOM`         | hash    | PEER → `NODE METADATA-JSON`                     |
//! | `icegate:resume:KEY`            | string  | a session's resume record (JSON), with a TTL    |
//! | `icegate:room:ROOM` (channel)   | pub/sub | the room's messages                             |
//! | `icegate:inbox:NODE` (channel)  | pub/sub | notices for NODE                                |
//!
//! Node names have no `:` or space (`config::is_node_name`) and room names and peer ids no
//! `\n` (`check_names`), so these splits are unambiguous. The scripts name keys built from
//! their arguments, which a single Redis server (not Redis Cluster) allows.

pub(super) const REGISTRY: &str = "icegate:nodes";
const ROOM_CHANNEL: &str = "icegate:room:";
const INBOX_CHANNEL: &str = "icegate:inbox:";
const PRESENCE: &str = "icegate:presence:";

pub(super) fn heartbeat_key(node: &str) -> String {
    format!("icegate:node:{node}")
}

pub(super) fn peers_key(node: &str) -> String {
    format!("icegate:node:{node}:peers")
}

pub(super) fn presence_key(room: &str) -> String {
    format!("{PRESENCE}{room}")
}

pub(super) fn resume_key(session: &str) -> String {
    format!("icegate:resume:{session}")
}

pub(super) fn room_channel(room: &str) -> String {
    format!("{ROOM_CHANNEL}{room}")
}

pub(super) fn room_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix(ROOM_CHANNEL)
}

pub(super) fn inbox_channel(node: &str) -> String {
    format!("{INBOX_CHANNEL}{node}")
}

pub(super) fn is_inbox_channel(channel: &str) -> bool {
    channel.starts_with(INBOX_CHANNEL)
}

/// A member of a node's peers set.
pub(super) fn owned_member(room: &str, peer: &str) -> String {
    format!("{room}\n{peer}")
}

/// What a presence entry starts with when `node` owns it.
pub(super) fn owner_prefix(node: &str) -> String {
    format!("{node} ")
}

pub(super) fn presence_entry(node: &str, metadata: &str) -> String {
    format!("{node} {metadata}")
}

/// The owning node and the metadata of a presence entry.
pub(super) fn parse_entry(entry: &str) -> Option<(&str, &str)> {
    entry.split_once(' ')
}

/// Joins a room if the peer id is free there and the room has room: records the entry and
/// that this node owns it, publishes `peer-joined`, and returns the room's entries, all in
/// one step so that of two nodes joining at once each sees the other (in the entries, or in
/// the message on the room's channel it subscribed to first).
///
/// KEYS: presence hash, own peers set. ARGV: peer, entry, owned member, max members, room
/// channel, peer-joined message. Returns `{"taken"}`, `{"full"}` or `{"ok", {PEER, ENTRY, ...}}`.
pub(super) const JOIN: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {'taken'} end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return {'full'} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {'ok', redis.call('HGETALL', KEYS[1])}
";

/// Leaves a room if this node owns the entry, and publishes `peer-left`.
///
/// KEYS: presence hash, own peers set. ARGV: peer, own prefix, owned member, room channel,
/// peer-left message. Returns 1 if the entry was ours and is gone, else 0.
pub(super) const LEAVE: &str = r"
local entry = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[3])
if entry and string.sub(entry, 1, #ARGV[2]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  return 1
end
return 0
";

/// Makes this node the owner of an entry: one it already owns (kept), one that is gone
/// (Redis restarted, or this node was swept while cut off), or one `previous` owns (a session
/// resumed here). A new or moved entry is announced with `peer-joined`; an entry another node
/// owns stays theirs.
///
/// KEYS: presence hash, own peers set, previous owner's peers set. ARGV: peer, own prefix,
/// entry, owned member, room channel, peer-joined message, previous owner's prefix (or "").
/// Returns 1 (already ours), 2 (now ours) or 0 (another node's).
pub(super) const CLAIM: &str = r"
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry then
  if string.sub(entry, 1, #ARGV[2]) == ARGV[2] then
    redis.call('SADD', KEYS[2], ARGV[4])
    return 1
  end
  if ARGV[7] == '' or string.sub(entry, 1, #ARGV[7]) ~= ARGV[7] then return 0 end
  redis.call('SREM', KEYS[3], ARGV[4])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 2
";

/// Removes up to a batch of the entries a dead node owned, each with a `peer-left` (reason
/// `node-lost`, speaking for the dead node) on its room's channel, and drops the node from
/// the registry once none is left. A node whose heartbeat is back is left alone, unless
/// `force` (a node clearing what an earlier run under its name left behind). Nodes sweeping
/// at once share the work: SPOP hands each entry to one of them.
///
/// KEYS: registry, the node's heartbeat key, its peers set. ARGV: node, batch size, presence
/// key prefix, room channel prefix, force ("1" or "0"). Returns -1 if the node is alive, else
/// the entries left to sweep.
pub(super) const SWEEP: &str = r"
if ARGV[5] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local owner = ARGV[1] .. ' '
for _, member in ipairs(redis.call('SPOP', KEYS[3], tonumber(ARGV[2]))) do
  local cut = string.find(member, '\n', 1, true)
  if cut then
    local room = string.sub(member, 1, cut - 1)
    local peer = string.sub(member, cut + 1)
    local hash = ARGV[3] .. room
    local entry = redis.call('HGET', hash, peer)
    if entry and string.sub(entry, 1, #owner) == owner then
      redis.call('HDEL', hash, peer)
      redis.call('PUBLISH', ARGV[4] .. room, cjson.encode({node = ARGV[1],
        msg = {['peer-left'] = {room = room, peer = peer, reason = 'node-lost'}}}))
    end
  end
end
local left = redis.call('SCARD', KEYS[3])
if left == 0 and ARGV[5] ~= '1' then redis.call('SREM', KEYS[1], ARGV[1]) end
return left
";

/// The prefixes [`SWEEP`] builds keys and channels from.
pub(super) const SWEEP_PREFIXES: (&str, &str) = (PRESENCE, ROOM_CHANNEL);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_back() {
        assert_eq!(room_of_channel(&room_channel("a:b c")), Some("a:b c"));
        assert!(is_inbox_channel(&inbox_channel("n1")));
        assert!(!is_inbox_channel(&room_channel("n1")));
        let entry = presence_entry("n1", r#"{"name": "x y"}"#);
        assert!(entry.starts_with(&owner_prefix("n1")));
        assert!(!entry.starts_with(&owner_prefix("n")));
        assert_eq!(parse_entry(&entry), Some(("n1", r#"{"name": "x y"}"#)));
        assert_ne!(heartbeat_key("n1"), peers_key("n1"));
    }
}
