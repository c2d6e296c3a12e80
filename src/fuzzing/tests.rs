//! The seed corpora and the replay of kept inputs.
//!
//! `cargo test --lib fuzzing::tests::write_seeds -- --ignored` rewrites
//! `fuzz/seeds/`; every test run replays `fuzz/seeds/` and
//! `fuzz/regressions/` through the targets' functions, so a crash found by
//! a fuzzer stays fixed.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::*;
use crate::wire::{Method, TransactionId};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn seeds_and_regressions_replay() {
    for (target, run) in TARGETS {
        let seeds = files_in(&fuzz_dir().join("seeds").join(target));
        assert!(!seeds.is_empty(), "no seeds for {target}");
        let regressions = files_in(&fuzz_dir().join("regressions").join(target));
        for path in seeds.iter().chain(&regressions) {
            let bytes = fs::read(path).expect("read a kept input");
            eprintln!("{}", path.display());
            run(&bytes);
        }
    }
}

/// Appends one record in the form [`records`] reads.
fn push_record(input: &mut Vec<u8>, control: u8, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("records are under 64 KiB");
    input.push(control);
    input.extend_from_slice(&len.to_be_bytes());
    input.extend_from_slice(bytes);
}

/// Builds an input for [`stun_core`] record by record, running each through
/// a rig as the target will, so signed requests carry the nonce the core
/// will accept at that point and replies (a RESERVATION-TOKEN) can be used.
struct Script {
    rig: Rig,
    input: Vec<u8>,
    last_transaction: u32,
}

impl Script {
    fn new() -> Self {
        Self {
            rig: Rig::new(),
            input: Vec::new(),
            last_transaction: 0,
        }
    }

    fn transaction(&mut self) -> TransactionId {
        self.last_transaction += 1;
        let mut id = [7; 16];
        id[..4].copy_from_slice(&wire::MAGIC_COOKIE.to_be_bytes());
        id[12..].copy_from_slice(&self.last_transaction.to_be_bytes());
        TransactionId(id)
    }

    fn build(
        &mut self,
        method: Method,
        class: Class,
        add: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Vec<u8> {
        let transaction = self.transaction();
        let mut buf = Vec::new();
        add(&mut MessageBuilder::new(
            &mut buf,
            method,
            class,
            transaction,
        ));
        buf
    }

    fn send(&mut self, control: u8, bytes: &[u8]) -> Option<Vec<u8>> {
        push_record(&mut self.input, control, bytes);
        self.rig.step(control, bytes)
    }

    /// A request as `client` signs it (valid MESSAGE-INTEGRITY), sent as is.
    fn signed(
        &mut self,
        client: u8,
        method: Method,
        add: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Option<Vec<u8>> {
        let bytes = self.signed_bytes(client, method, add);
        self.send(client, &bytes)
    }

    fn signed_bytes(
        &mut self,
        client: u8,
        method: Method,
        add: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Vec<u8> {
        let unsigned = self.build(method, Class::Request, add);
        let message = Message::parse(&unsigned).expect("a built message parses");
        self.rig.sign(&message, usize::from(client), false)
    }

    /// A request without credentials that the target signs (control bit 2).
    fn resigned(
        &mut self,
        client: u8,
        fingerprint: bool,
        method: Method,
        add: impl FnOnce(&mut MessageBuilder<'_>),
    ) -> Option<Vec<u8>> {
        let bytes = self.build(method, Class::Request, add);
        self.send(client | 4 | if fingerprint { 8 } else { 0 }, &bytes)
    }

    /// The clock moves by `TIME_STEPS[step]` (or the policy is reloaded).
    fn tick(&mut self, step: u8) {
        self.send(step << 4, &[]);
    }

    fn allocate(&mut self, client: u8) -> Option<Vec<u8>> {
        self.signed(client, Method::ALLOCATE, udp)
    }

    fn permission(&mut self, client: u8, peer: SocketAddr) -> Option<Vec<u8>> {
        self.signed(client, Method::CREATE_PERMISSION, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    fn channel(&mut self, client: u8, number: u16, peer: SocketAddr) -> Option<Vec<u8>> {
        self.signed(client, Method::CHANNEL_BIND, |b| {
            b.add_u32(attr::CHANNEL_NUMBER, u32::from(number) << 16)
                .add_xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    fn send_indication(&mut self, client: u8, peer: SocketAddr, data: &[u8]) {
        let bytes = self.build(Method::SEND, Class::Indication, |b| {
            b.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
                .add(attr::DATA, data);
        });
        self.send(client, &bytes);
    }

    fn channel_data(&mut self, client: u8, number: u16, data: &[u8]) {
        let mut bytes = Vec::new();
        wire::push_channel_data(&mut bytes, number, data, false);
        self.send(client, &bytes);
    }

    fn refresh(&mut self, client: u8, lifetime: u32) -> Option<Vec<u8>> {
        self.signed(client, Method::REFRESH, |b| {
            b.add_u32(attr::LIFETIME, lifetime);
        })
    }
}

fn udp(builder: &mut MessageBuilder<'_>) {
    builder.add(attr::REQUESTED_TRANSPORT, &[attr::TRANSPORT_UDP, 0, 0, 0]);
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("an address")
}

fn assert_success(reply: Option<Vec<u8>>, what: &str) -> Vec<u8> {
    let reply = reply.unwrap_or_else(|| panic!("{what}: no reply"));
    let message = Message::parse(&reply).expect("the reply parses");
    assert_eq!(message.class, Class::Success, "{what}");
    reply
}

/// Named inputs for one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn stun_core_seeds() -> Seeds {
    let mut seeds = Vec::new();
    let peer = addr("127.0.0.1:5000");
    let other_peer = addr("127.0.0.2:6000");

    let mut s = Script::new();
    let unsigned = s.build(Method::ALLOCATE, Class::Request, udp);
    s.send(0, &unsigned);
    seeds.push(("allocate-unauthenticated", s.input));

    let mut s = Script::new();
    assert_success(s.allocate(0), "allocate");
    seeds.push(("allocate", s.input));

    let mut s = Script::new();
    assert_success(s.allocate(0), "allocate");
    assert_success(s.permission(0, peer), "permission");
    assert_success(s.channel(0, 0x4000, peer), "channel");
    s.send_indication(0, peer, b"to the peer");
    s.channel_data(0, 0x4000, b"hello");
    assert_success(s.refresh(0, 600), "refresh");
    s.tick(12);
    s.channel_data(0, 0x4000, b"after the permission expired");
    assert_success(s.refresh(0, 0), "delete");
    seeds.push(("relay-session", s.input));

    let mut s = Script::new();
    s.resigned(1, false, Method::ALLOCATE, udp);
    s.resigned(1, true, Method::CREATE_PERMISSION, |b| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            .add_xor_address(attr::XOR_PEER_ADDRESS, other_peer);
    });
    s.resigned(1, true, Method::CHANNEL_BIND, |b| {
        b.add_u32(attr::CHANNEL_NUMBER, 0x4FFF << 16)
            .add_xor_address(attr::XOR_PEER_ADDRESS, other_peer);
    });
    s.channel_data(1, 0x4FFF, &[0; 33]);
    s.send_indication(1, other_peer, b"x");
    s.resigned(1, false, Method::REFRESH, |b| {
        b.add_u32(attr::LIFETIME, 3600);
    });
    seeds.push(("relay-session-signed-by-target", s.input));

    let mut s = Script::new();
    assert_success(s.allocate(3), "REST allocate");
    assert_success(s.permission(3, peer), "REST permission");
    s.tick(14);
    s.refresh(3, 600);
    s.allocate(3);
    seeds.push(("rest-user-expires", s.input));

    let mut s = Script::new();
    assert_success(
        s.signed(2, Method::ALLOCATE, |b| {
            udp(b);
            b.add(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        }),
        "IPv6 allocate",
    );
    let v6_peer = addr("[::1]:5000");
    assert_success(s.permission(2, v6_peer), "IPv6 permission");
    s.permission(2, addr("[::ffff:127.0.0.1]:5000"));
    s.send_indication(2, v6_peer, b"over IPv6");
    seeds.push(("ipv6", s.input));

    let mut s = Script::new();
    let binding = s.build(Method::BINDING, Class::Request, |b| {
        b.add_fingerprint();
    });
    s.send(0, &binding);
    let mut classic = binding.clone();
    classic[4..8].copy_from_slice(&[1, 2, 3, 4]);
    classic.truncate(20);
    classic[2..4].copy_from_slice(&[0, 0]);
    s.send(2, &classic);
    seeds.push(("binding", s.input));

    let mut s = Script::new();
    let reply = assert_success(
        s.signed(0, Method::ALLOCATE, |b| {
            udp(b);
            b.add(attr::EVEN_PORT, &[0x80]);
        }),
        "EVEN-PORT",
    );
    let token = Message::parse(&reply)
        .expect("the reply parses")
        .get(attr::RESERVATION_TOKEN)
        .expect("a reservation token")
        .to_vec();
    s.signed(1, Method::ALLOCATE, |b| {
        udp(b);
        b.add(attr::RESERVATION_TOKEN, &token);
    });
    seeds.push(("even-port", s.input));

    let mut s = Script::new();
    assert_success(s.allocate(0), "allocate");
    for n in 1..=5 {
        s.permission(0, addr(&format!("127.0.0.{n}:5000")));
    }
    for n in 0..4 {
        s.channel(0, 0x4000 + n, addr(&format!("127.0.0.{}:5000", n + 1)));
    }
    s.channel(0, 0x3FFF, peer);
    s.channel(0, 0x5000, peer);
    seeds.push(("caps", s.input));

    let mut s = Script::new();
    for _ in 0..4 {
        let mut bytes = s.signed_bytes(0, Method::ALLOCATE, udp);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        s.send(0, &bytes);
    }
    s.allocate(0);
    seeds.push(("wrong-password", s.input));

    let mut s = Script::new();
    s.signed(0, Method::ALLOCATE, |b| {
        udp(b);
        b.add(0x0030, b"unknown")
            .add(attr::DONT_FRAGMENT, &[])
            .add_u32(attr::LIFETIME, 7200);
    });
    s.signed(0, Method(0x00B), |_| {});
    seeds.push(("unknown-attribute", s.input));

    let mut s = Script::new();
    assert_success(s.allocate(0), "allocate");
    assert_success(s.permission(0, other_peer), "permission");
    assert_success(s.channel(0, 0x4001, peer), "channel");
    s.tick(RELOAD);
    s.channel_data(0, 0x4001, b"refused after the reload");
    s.send_indication(0, other_peer, b"still allowed");
    seeds.push(("reload", s.input));

    let mut s = Script::new();
    assert_success(s.allocate(0), "allocate");
    let bytes = s.signed_bytes(0, Method::CREATE_PERMISSION, |b| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    s.send(0, &bytes);
    s.send(0, &bytes);
    s.refresh(1, 600);
    s.allocate(0);
    s.tick(9);
    s.allocate(2);
    s.allocate(3);
    s.allocate(1);
    seeds.push(("retransmission-and-mismatch", s.input));

    seeds
}

fn channel_data_seeds() -> Seeds {
    let frame = |number: u16, data: &[u8], padded: bool| {
        let mut bytes = Vec::new();
        wire::push_channel_data(&mut bytes, number, data, padded);
        bytes
    };
    let input = |records: &[(u8, Vec<u8>)]| {
        let mut input = Vec::new();
        for (control, bytes) in records {
            push_record(&mut input, *control, bytes);
        }
        input
    };
    let mut too_long = frame(0x4000, b"abcd", false);
    too_long[3] = 9;
    vec![
        (
            "bound-channels",
            input(&[
                (0, frame(0x4000, b"hello", false)),
                (0, frame(0x4FFF, &[1; 100], true)),
            ]),
        ),
        (
            "unbound-and-invalid",
            input(&[
                (0, frame(0x4001, b"x", false)),
                (0, frame(0x5000, b"x", false)),
                (0, frame(0x3FFF, b"", false)),
                (0, too_long),
            ]),
        ),
        (
            "other-clients",
            input(&[
                (1, frame(0x4000, b"from alice's other port", false)),
                (2, frame(0x4000, b"from bob", false)),
                (3, frame(0x4FFF, b"", false)),
            ]),
        ),
        (
            "expiry",
            input(&[
                (0x90, frame(0x4000, b"30 s later", false)),
                (0xC0, frame(0x4000, b"permission gone", false)),
                (0xD0, frame(0x4FFF, b"channel gone", false)),
            ]),
        ),
        (
            "from-peers",
            input(&[
                (4, b"to alice via 0x4000".to_vec()),
                (12, vec![0; 1200]),
                (0xF4, b"after a reload".to_vec()),
            ]),
        ),
        (
            "reload",
            input(&[
                (0xF0, frame(0x4000, b"peer refused now", false)),
                (0, frame(0x4FFF, b"still allowed", true)),
            ]),
        ),
    ]
}

/// A masked client frame: `first` is FIN, RSV and opcode.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x0f, 0xc3, 0x81];
    let mut out = vec![first];
    match u16::try_from(payload.len()) {
        Ok(n @ 0..=125) => out.push(0x80 | u8::try_from(n).unwrap_or(0)),
        Ok(n) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

fn websocket_seeds() -> Seeds {
    let input = |seed: u8, limit: u16, frames: &[Vec<u8>]| {
        let mut input = vec![seed];
        input.extend_from_slice(&limit.to_be_bytes());
        for frame in frames {
            input.extend_from_slice(frame);
        }
        input
    };
    let ping = br#"{"type":"ping","id":1}"#;
    vec![
        (
            "messages-and-controls",
            input(
                1,
                1024,
                &[
                    client_frame(0x81, ping),
                    client_frame(0x89, b"are you there"),
                    client_frame(0x8a, b""),
                    client_frame(0x82, &[0, 1, 2]),
                    client_frame(0x88, b"\x03\xe8bye"),
                ],
            ),
        ),
        (
            "fragments-around-a-ping",
            input(
                7,
                64,
                &[
                    client_frame(0x01, &ping[..5]),
                    client_frame(0x89, b"p"),
                    client_frame(0x00, &ping[5..12]),
                    client_frame(0x80, &ping[12..]),
                ],
            ),
        ),
        (
            "long-lengths",
            input(
                3,
                300,
                &[
                    client_frame(0x81, &[b'a'; 200]),
                    client_frame(0x81, &[b'b'; 400]),
                ],
            ),
        ),
        ("unmasked", input(5, 1024, &[b"\x81\x02{}".to_vec()])),
    ]
}

fn stream_framing_seeds() -> Seeds {
    let mut s = Script::new();
    let allocate = s.signed_bytes(0, Method::ALLOCATE, udp);
    let binding = s.build(Method::BINDING, Class::Request, |_| {});
    let padded = |data: &[u8]| {
        let mut bytes = Vec::new();
        wire::push_channel_data(&mut bytes, 0x4000, data, true);
        bytes
    };
    let input = |max: u16, seed: u8, parts: &[&[u8]]| {
        let mut input = max.to_be_bytes().to_vec();
        input.push(seed);
        for part in parts {
            input.extend_from_slice(part);
        }
        input
    };
    vec![
        (
            "stun-and-channel-data",
            input(4096, 1, &[&allocate, &padded(b"hello"), &binding]),
        ),
        (
            "odd-channel-data",
            input(
                4096,
                2,
                &[&padded(b"abc"), &padded(b"abcd"), &padded(b"a")[..5]],
            ),
        ),
        ("incomplete", input(4096, 3, &[&binding, &allocate[..30]])),
        (
            "http-request",
            input(1500, 4, &[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]),
        ),
        (
            "tls-after-stun",
            input(1500, 5, &[&binding, &[0x16, 3, 1, 0, 5]]),
        ),
        ("too-large", input(20, 6, &[&binding, &allocate])),
        ("small-limit", input(0, 7, &[&padded(b""), &padded(b"x")])),
    ]
}

fn signaling_seeds() -> Seeds {
    let messages: [(&str, &str); 14] = [
        ("join", r#"{"type":"join","room":"lobby"}"#),
        (
            "join-peer-metadata",
            r#"{"type":"join","id":1,"room":"lobby","peer":"alice","metadata":{"name":"Alice","caps":[1,2]}}"#,
        ),
        ("leave", r#"{"type":"leave","id":"x1","room":"lobby"}"#),
        (
            "signal",
            r#"{"type":"signal","id":3,"room":"a","to":"b","data":{"sdp":"v=0\r\n","type":"offer"}}"#,
        ),
        (
            "broadcast",
            r#"{"type":"broadcast","room":"a","data":[1,"\u00e9",null,true]}"#,
        ),
        ("ping", r#"{"type":"ping","id":-12.5e3}"#),
        ("unknown-type", r#"{"type":"dance","id":{"no":"echo"}}"#),
        ("no-type", "{}"),
        ("array", "[1,2]"),
        ("not-json", "not json"),
        ("bad-names", r#"{"type":"join","room":"","peer":7}"#),
        (
            "control-char",
            "{\"type\":\"signal\",\"room\":\"a\\u0007\",\"to\":\"b\",\"data\":null}",
        ),
        (
            "duplicate-keys",
            r#"{"type":"ping","type":"join","room":"r"}"#,
        ),
        (
            "deep",
            r#"{"type":"broadcast","room":"r","data":[[[[[[[[[[{"a":[[[[]]]]}]]]]]]]]]]}"#,
        ),
    ];
    messages
        .into_iter()
        .map(|(name, text)| (name, text.as_bytes().to_vec()))
        .collect()
}

fn token_seeds() -> Seeds {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    // 2100-01-01: seeds stay valid.
    let far = 4_102_444_800u64;
    let claims = |exp: u64, rooms: bool| {
        let mut claims = serde_json::json!({"sub": "alice", "exp": exp});
        if rooms {
            claims["rooms"] = serde_json::json!(["lobby", "a"]);
        }
        claims
    };
    let encode = |algorithm, key: &EncodingKey, claims: &serde_json::Value| {
        jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("encode a token")
    };
    let hs = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let es = EncodingKey::from_ec_pem(EC_PRIVATE_KEY).expect("the EC key");
    let rsa_pem = fs::read(fuzz_dir().join("keys/rsa.pem")).expect("the RSA key");
    let rs = EncodingKey::from_rsa_pem(&rsa_pem).expect("the RSA key");
    let valid = encode(Algorithm::HS256, &hs, &claims(far, false));
    let mut tampered = valid.clone().into_bytes();
    let middle = valid.find('.').expect("a JWT") + 3;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let raw = |token: &str| [&[0u8][..], token.as_bytes()].concat();
    let split = |mode: u8, header: &str, claims: &str| {
        [&[mode][..], header.as_bytes(), b"\n", claims.as_bytes()].concat()
    };
    let hs_header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let es_header = r#"{"alg":"ES256"}"#;
    vec![
        ("hs256", raw(&valid)),
        (
            "hs256-rooms",
            raw(&encode(Algorithm::HS256, &hs, &claims(far, true))),
        ),
        (
            "es256",
            raw(&encode(Algorithm::ES256, &es, &claims(far, false))),
        ),
        (
            "rs256",
            raw(&encode(Algorithm::RS256, &rs, &claims(far, true))),
        ),
        (
            "expired",
            raw(&encode(
                Algorithm::HS256,
                &hs,
                &claims(1_000_000_000, false),
            )),
        ),
        (
            "other-secret",
            raw(&encode(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another secret of 32 characters!"),
                &claims(far, false),
            )),
        ),
        ("tampered", [&[0u8][..], &tampered].concat()),
        ("not-a-jwt", raw("a.b.c")),
        ("empty", raw("")),
        (
            "alg-none",
            raw("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIiwiZXhwIjo0MTAyNDQ0ODAwfQ."),
        ),
        (
            "signed-claims",
            split(
                1,
                hs_header,
                r#"{"sub":"alice","exp":4102444800,"rooms":["a"]}"#,
            ),
        ),
        (
            "signed-es256",
            split(3, es_header, r#"{"sub":"bob","exp":4102444800}"#),
        ),
        (
            "signed-bad-claims",
            split(1, hs_header, r#"{"sub":7,"exp":"soon","rooms":"a"}"#),
        ),
        (
            "signed-huge-exp",
            split(
                1,
                hs_header,
                r#"{"sub":"a","exp":18446744073709551615,"nbf":1e400}"#,
            ),
        ),
        (
            "signed-header-kid",
            split(
                1,
                r#"{"alg":"HS256","kid":"k","jku":"x","crit":["b64"]}"#,
                r#"{"sub":"a","exp":4102444800}"#,
            ),
        ),
    ]
}

fn config_seeds() -> Seeds {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = |path: &str| fs::read(root.join(path)).expect("a shipped config");
    let listen_udp = "[[listen]]\naddress = \"127.0.0.1:3478\"\n";
    let tls = "[[listen]]\naddress = \"127.0.0.1:5349\"\ntransport = \"tls\"\n\
               certificate = \"cert.pem\"\nprivate-key = \"key.pem\"\n\
               [[listen]]\naddress = \"127.0.0.1:443\"\ntransport = \"tls\"\n\
               certificate = \"cert.pem\"\nprivate-key = \"key.pem\"\nservices = [\"turn\", \"http\"]\n\
               [auth]\nsecrets-file = \"rest-secret\"\n";
    let jwt = format!(
        "{listen_udp}[auth]\nsecrets = [\"0123456789abcdef\"]\n[signal]\n\
         jwt-secrets = [\"{JWT_SECRET}\"]\njwt-public-keys = [\"ec.pub.pem\", \"rsa.pub.pem\"]\n\
         allowed-origins = [\"https://app.example.org\"]\n"
    );
    let outside = String::from(
        "[[listen]]\naddress = \"[::]:5349\"\ntransport = \"tls\"\n\
         certificate = \"/dev/zero\"\nprivate-key = \"../../etc/passwd\"\n\
         [auth]\nsecrets-file = \"short-secret\"\n[signal]\njwt-public-keys = [\"cert.pem\", \"/proc/self/status\"]\n",
    );
    let everything = format!(
        "realm = \"turn.example.org\"\npublic-host = \"turn.example.org\"\nshutdown-grace = \"5s\"\n\
         [log]\nlevel = \"debug\"\n{listen_udp}\
         [relay]\naddresses = [\"0.0.0.0\", \"::\"]\nexternal-addresses = [\"203.0.113.1\"]\n\
         ports = \"40000-40100\"\ndeny-peers = [\"10.0.0.0/8\"]\nmax-bps = \"1 Mbit/s\"\n\
         [auth]\nsecrets = [\"0123456789abcdef\"]\ncredential-ttl = \"1h\"\n\
         [[auth.users]]\nname = \"alice\"\nkey = \"0123456789abcdef0123456789abcdef\"\n\
         [throttle]\nlogin-failures = 5\n[connections]\nmax-connections = 10\n"
    );
    let durations = format!(
        "shutdown-grace = \"1m\"\n{listen_udp}[relay]\naddresses = [\"127.0.0.1\"]\n\
         allow-peers = [\"127.0.0.0/8\"]\ndefault-lifetime = \"10m\"\nmax-lifetime = \"1h\"\n\
         permission-lifetime = \"5m\"\nchannel-lifetime = \"10m\"\n\
         [auth]\nsecrets = [\"0123456789abcdef\"]\ncredential-ttl = \"1d\"\nnonce-lifetime = \"10m\"\n"
    );
    vec![
        ("icegate", shipped("config/icegate.toml")),
        ("dev-loopback", shipped("config/examples/dev-loopback.toml")),
        ("rest-secrets", shipped("config/examples/rest-secrets.toml")),
        ("static-users", shipped("config/examples/static-users.toml")),
        (
            "bad-three-problems",
            shipped("tests/data/bad/three-problems.toml"),
        ),
        (
            "bad-duplicate-listen",
            shipped("tests/data/bad/duplicate-listen.toml"),
        ),
        (
            "bad-admin-problems",
            shipped("tests/data/bad/admin-problems.toml"),
        ),
        ("tls-and-secrets-file", tls.as_bytes().to_vec()),
        ("jwt-keys", jwt.into_bytes()),
        ("paths-outside-the-sandbox", outside.into_bytes()),
        ("many-tables", everything.into_bytes()),
        ("syntax-error", b"[[listen]\naddress = \"x\"\n".to_vec()),
        ("durations", durations.into_bytes()),
    ]
}

fn coturn_config_seeds() -> Seeds {
    let hand_written = "listening-port=3478\n--tls-listening-port 5349\nlistening-ip=192.0.2.1\n\
        listening-ip=2001:db8::1\nrelay-ip=192.0.2.1\nexternal-ip=203.0.113.1/192.0.2.1\n\
        min-port=40000\nmax-port=40999\nrealm=turn.example.org\nlt-cred-mech\n\
        user=alice:wonderland\nuser=bob:0x0123456789abcdef0123456789abcdef\nuse-auth-secret\n\
        static-auth-secret=0123456789abcdef\ntotal-quota=100\nuser-quota=4\nmax-bps=125000\n\
        bps-capacity=0\ndenied-peer-ip=10.0.0.0-10.255.255.255\nallowed-peer-ip=10.1.2.3\n\
        allow-loopback-peers\ncert=cert.pem\npkey=key.pem\nalternate-server=198.51.100.1\n\
        prometheus\nstale-nonce\nmax-allocate-lifetime=300\nverbose\nno-cli\nfrobnicate\n";
    let mut seeds = vec![
        ("hand-written", hand_written.as_bytes().to_vec()),
        (
            "nothing-served",
            b"no-udp\nno-tcp\nno-tls\nexternal-ip=2001:db8::1\n".to_vec(),
        ),
    ];
    // Every option name icegate knows, with values of each kind an option takes.
    let values = ["", "=1", " 192.0.2.1", "=a:b", "=10.0.0.0-10.0.0.255", "=0"];
    let every_option: String = crate::config::COTURN_OPTIONS
        .iter()
        .zip(values.iter().cycle())
        .map(|((name, _), value)| format!("--{name}{value}\n"))
        .collect();
    seeds.push(("every-option", every_option.into_bytes()));
    seeds
}

/// Rewrites `fuzz/seeds/`: real messages as the tests build them, signed
/// with the nonces the targets' cores accept, and the shipped configs.
#[test]
#[ignore = "writes fuzz/seeds/; run by hand when the input formats change"]
fn write_seeds() {
    let targets: [(&str, Seeds); 8] = [
        ("stun_core", stun_core_seeds()),
        ("channel_data", channel_data_seeds()),
        ("stream_framing", stream_framing_seeds()),
        ("signaling_message", signaling_seeds()),
        ("websocket_frames", websocket_seeds()),
        ("token", token_seeds()),
        ("config", config_seeds()),
        ("coturn_config", coturn_config_seeds()),
    ];
    for (target, seeds) in targets {
        let dir = fuzz_dir().join("seeds").join(target);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a seeds directory");
        for (name, bytes) in seeds {
            fs::write(dir.join(name), &bytes).expect("write a seed");
        }
    }
}

#[test]
fn the_config_target_reads_the_sandbox_and_nothing_else() {
    for (name, text) in config_seeds() {
        let text = String::from_utf8(text).expect("UTF-8");
        let parsed = Config::parse_sandboxed(&text, sandbox());
        match name {
            "tls-and-secrets-file" | "jwt-keys" | "many-tables" | "durations" => {
                if let Err(e) = parsed {
                    panic!("{name}: {e}");
                }
            }
            "paths-outside-the-sandbox" => {
                let problems = parsed.expect_err("refused").to_string();
                // /dev/zero and /proc/self/status; the key after the
                // refused certificate is not looked at.
                assert_eq!(
                    problems.matches("outside the sandbox").count(),
                    2,
                    "{problems}"
                );
                assert!(problems.contains("at least 8 characters"), "{problems}");
            }
            _ => {}
        }
    }
}
