//! Malformed input: every truncation and thousands of deterministic
//! mutations of valid requests, handed to the core as the shell would (only
//! what `Message::parse` accepts). The core must not panic, must answer
//! every request it answers with a STUN message of the same transaction,
//! and must keep its table in step with what it reports.
//!
//! Mutated bytes mostly fail MESSAGE-INTEGRITY, so each request is also
//! mutated before signing: that way the method handlers see the damage.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{Client, Harness, Outcome, alice, peer, sign, udp_transport};
use crate::turn::{AllocId, FiveTuple};
use crate::wire::{ChannelData, Class, HEADER_LEN, Message, MessageBuilder, Method, attr};

/// xorshift64: the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("below a usize")
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

/// Flips a bit, overwrites a byte, or writes an edge value, one to three times.
fn mutate(bytes: &mut [u8], rng: &mut Rng) {
    for _ in 0..=rng.below(3) {
        let at = rng.below(bytes.len());
        match rng.below(3) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = rng.byte(),
            _ => bytes[at] = [0x00, 0x01, 0x7F, 0x80, 0xFF][rng.below(5)],
        }
    }
}

/// The length field made to match the bytes, as a sender that gets it right would.
fn with_length_fixed(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Ok(length) = u16::try_from(bytes.len().saturating_sub(HEADER_LEN))
        && bytes.len() >= HEADER_LEN
    {
        bytes[2..4].copy_from_slice(&length.to_be_bytes());
    }
    bytes
}

/// One valid request: its attributes, and whether a client signs it.
struct Template {
    bytes: Vec<u8>,
    signed: bool,
}

fn templates() -> Vec<Template> {
    let build = |method: Method, class, add: &dyn Fn(&mut MessageBuilder<'_>)| {
        let mut buf = Vec::new();
        let id = super::transaction(0xABC0 + u32::from(method.0));
        add(&mut MessageBuilder::new(&mut buf, method, class, id));
        buf
    };
    let request = |method, add: &dyn Fn(&mut MessageBuilder<'_>)| Template {
        bytes: build(method, Class::Request, add),
        signed: true,
    };
    vec![
        request(Method::ALLOCATE, &|b| {
            udp_transport(b);
            b.add_u32(attr::LIFETIME, 900)
                .add(attr::EVEN_PORT, &[0x80])
                .add(attr::DONT_FRAGMENT, &[]);
        }),
        request(Method::REFRESH, &|b| {
            b.add_u32(attr::LIFETIME, 1200);
        }),
        request(Method::CREATE_PERMISSION, &|b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer("127.0.0.1:9"))
                .add_xor_address(attr::XOR_PEER_ADDRESS, peer("127.0.0.2:9"));
        }),
        request(Method::CHANNEL_BIND, &|b| {
            b.add_u32(attr::CHANNEL_NUMBER, 0x4001 << 16)
                .add_xor_address(attr::XOR_PEER_ADDRESS, peer("127.0.0.3:9"));
        }),
        Template {
            bytes: build(Method::SEND, Class::Indication, &|b| {
                b.add_xor_address(attr::XOR_PEER_ADDRESS, peer("127.0.0.1:9"))
                    .add(attr::DATA, b"hello peer");
            }),
            signed: false,
        },
        Template {
            bytes: build(Method::BINDING, Class::Request, &|b| {
                b.add(0x8022, b"sweep");
            }),
            signed: false,
        },
    ]
}

/// The core, one allocation (alice's, with a permission and a channel) to
/// damage, and the allocations the core has reported begun and not ended.
struct Sweep {
    harness: Harness,
    owner: Client,
    live: HashMap<FiveTuple, AllocId>,
    next_port: u16,
    cases: usize,
}

impl Sweep {
    fn new() -> Self {
        let mut sweep = Self {
            harness: Harness::with_relay("max-allocations-per-user = 100000"),
            owner: alice(),
            live: HashMap::new(),
            next_port: 41000,
            cases: 0,
        };
        sweep.restore_owner();
        sweep
    }

    /// Gives alice's 5-tuple its allocation, permission and channel back.
    fn restore_owner(&mut self) {
        if self.live.contains_key(&self.owner.five_tuple) {
            return;
        }
        let now = self.harness.at(0);
        let owner = self.owner.clone();
        let id = self.harness.allocated(&owner, now);
        self.live.insert(owner.five_tuple, id);
        self.harness
            .refresh(&owner, now, 3600)
            .assert_success("refresh");
        self.harness
            .channel_bind(&owner, now, 0x4000, peer("127.0.0.1:9"))
            .assert_success("channel");
    }

    /// Allocates come from a new 5-tuple each, so they are not all 437s.
    fn sender(&mut self, template: &Template) -> Client {
        if Message::parse(&template.bytes).is_ok_and(|m| m.method == Method::ALLOCATE) {
            self.next_port += 1;
            self.owner.on_port(self.next_port)
        } else {
            self.owner.clone()
        }
    }

    /// The request with the template's attributes as given: signed for
    /// `sender` if the template is, with FINGERPRINT if it is not.
    fn finish(&self, unsigned: &Message<'_>, signed: bool, sender: &Client) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut builder = MessageBuilder::new(
            &mut buf,
            unsigned.method,
            unsigned.class,
            unsigned.transaction,
        );
        for attribute in unsigned.attributes() {
            builder.add(attribute.kind, attribute.value);
        }
        if signed {
            let nonce = self.harness.nonce(sender, self.harness.at(0));
            sign(&mut builder, sender, &nonce);
        } else {
            builder.add_fingerprint();
        }
        buf
    }

    /// Hands `bytes` to the core if they parse, and checks what comes back.
    fn feed(&mut self, sender: &Client, bytes: &[u8]) {
        let Ok(message) = Message::parse(bytes) else {
            return;
        };
        self.cases += 1;
        let now = self.harness.at(0);
        let mut out = Vec::new();
        let action = self.harness.core.handle_stun(
            now,
            &sender.five_tuple,
            &message,
            &mut self.harness.sockets,
            &mut out,
        );
        let outcome = Outcome::from(action);
        match outcome {
            Outcome::Nothing => {}
            Outcome::Reply | Outcome::ReplyVia { .. } | Outcome::Started(_) => {
                let reply = Message::parse(&out)
                    .unwrap_or_else(|e| panic!("reply to {message:?} does not parse: {e}"));
                assert_eq!(reply.transaction, message.transaction, "{message:?}");
                assert!(matches!(reply.class, Class::Success | Class::Error));
                // A reused transaction id with another method (here: damaged
                // into one) is a new request, not a retransmission.
                assert_eq!(
                    reply.method, message.method,
                    "{message:?} answered with {reply:?}"
                );
                if let Outcome::Started(id) = outcome {
                    assert_eq!(message.method, Method::ALLOCATE);
                    assert_eq!(reply.class, Class::Success);
                    assert!(self.live.insert(sender.five_tuple, id).is_none());
                }
            }
            Outcome::ToPeer { relay, .. } => {
                assert_eq!(message.method, Method::SEND);
                assert_eq!(self.live.get(&sender.five_tuple), Some(&relay));
            }
            Outcome::ConnectToPeer { .. } => {
                assert_eq!(message.method, Method::CONNECT);
                assert!(out.is_empty(), "Connect is answered when the peer has");
            }
            Outcome::Joined(_) => assert_eq!(message.method, Method::CONNECTION_BIND),
        }
        self.check_table();
    }

    /// The table holds exactly the allocations begun and not reported ended.
    fn check_table(&mut self) {
        let ended = self.harness.core.take_ended();
        self.live.retain(|_, id| !ended.contains(id));
        assert_eq!(self.harness.core.allocation_count(), self.live.len());
        for (five_tuple, id) in &self.live {
            assert_eq!(self.harness.core.table.id_for(five_tuple), Some(*id));
            let port = self.harness.bound_port(*id);
            assert!(!self.harness.core.shared.port_is_free(port));
        }
        self.restore_owner();
    }
}

#[test]
fn truncated_and_mutated_requests_never_panic_and_get_well_formed_replies() {
    let mut sweep = Sweep::new();
    let mut rng = Rng(0x1CE6_A7E5_EED0_0001);
    for template in templates() {
        let sender = sweep.sender(&template);
        let unsigned = Message::parse(&template.bytes).expect("templates parse");
        let whole = sweep.finish(&unsigned, template.signed, &sender);
        sweep.feed(&sender, &whole);
        for cut in 0..whole.len() {
            sweep.feed(&sender, &whole[..cut]);
            sweep.feed(&sender, &with_length_fixed(whole[..cut].to_vec()));
        }
        for _ in 0..200 {
            let mut bytes = whole.clone();
            mutate(&mut bytes, &mut rng);
            sweep.feed(&sender, &bytes);
        }
        // Damage first, then sign: the handlers see what integrity would hide.
        for _ in 0..300 {
            let sender = sweep.sender(&template);
            let mut bytes = template.bytes.clone();
            mutate(&mut bytes[2..], &mut rng);
            let bytes = with_length_fixed(bytes);
            if let Ok(damaged) = Message::parse(&bytes) {
                let resigned = sweep.finish(&damaged, template.signed, &sender);
                sweep.feed(&sender, &resigned);
            }
        }
    }
    assert!(
        sweep.cases > 1500,
        "only {} cases reached the core",
        sweep.cases
    );
}

#[test]
fn arbitrary_channel_data_routes_only_the_bound_channel() {
    let mut sweep = Sweep::new();
    let mut rng = Rng(0xC4A7_7E1D_A7A0_0002);
    let owner = sweep.owner.five_tuple;
    let id = sweep.live[&owner];
    let bound = peer("127.0.0.1:9");
    let now = sweep.harness.at(0).instant;
    let valid = [0x40, 0x00, 0x00, 0x04, b'p', b'i', b'n', b'g'];
    let (mut routed, mut from_peer) = (0, 0);
    for case in 0..2000 {
        let bytes = if case % 2 == 0 {
            let mut bytes = valid.to_vec();
            mutate(&mut bytes, &mut rng);
            bytes.truncate(rng.below(bytes.len() + 1));
            bytes
        } else {
            (0..rng.below(24)).map(|_| rng.byte()).collect()
        };
        let Some(frame) = ChannelData::parse(&bytes) else {
            continue;
        };
        let route = sweep
            .harness
            .core
            .route_channel_data(now, &owner, frame.channel, frame.data.len())
            .ok();
        if let Some(route) = route {
            assert_eq!(frame.channel, 0x4000, "{bytes:?}");
            assert_eq!(route, (id, bound));
            routed += 1;
        }
        let [a, b, c, d, ..] = rng.next().to_le_bytes();
        let from = [bound, SocketAddr::from(([a, b, c, d], 9))][rng.below(2)];
        let to = [id, AllocId(rng.next())][rng.below(2)];
        if sweep
            .harness
            .core
            .route_from_peer(to, from, now, 1)
            .is_some()
        {
            assert_eq!((to, from.ip()), (id, bound.ip()));
            from_peer += 1;
        }
    }
    assert!(routed > 0, "the valid frame survived some mutations");
    assert!(from_peer > 0, "the permitted peer got through");
    assert_eq!(sweep.harness.core.allocation_count(), 1);
}
