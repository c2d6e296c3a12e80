//! Allocations: each on its own client socket (its own 5-tuple), Allocate
//! (401 challenge, then with credentials), then ChannelBind or CreatePermission
//! for the peer; at the end Refresh with LIFETIME 0. A fixed number of them are
//! in progress at once; every request is retransmitted a few times, then given up.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::net::{self, Poller};
use crate::stun::{self, Auth, Builder, Tid};

/// First retransmission timeout; it doubles per retransmission (RFC 8489 uses 500 ms,
/// loopback answers in microseconds unless the server is swamped).
const RTO: Duration = Duration::from_millis(250);
const TRANSMISSIONS: u32 = 4;
/// A 401 or 438 (stale nonce) is answered with fresh credentials at most this often.
const AUTH_RETRIES: u32 = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Probe,
    Allocate,
    Bind,
    Ready,
    Release,
    Released,
    Failed,
}

/// What follows the allocation: a channel (for ChannelData) or a permission (for
/// Send indications, and the alloc scenario).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    Channel,
    Permission,
}

pub struct Alloc {
    pub sock: UdpSocket,
    pub auth: Auth,
    pub relay: Option<SocketAddrV4>,
    /// Channel number when bound with ChannelBind.
    pub channel: Option<u16>,
    pub peer: SocketAddrV4,
    step: Step,
    tid: Tid,
    request: Vec<u8>,
    sent_at: Instant,
    transmissions: u32,
    auth_retries: u32,
}

impl Alloc {
    /// A client socket on 127.0.0.1 (ephemeral port) connected to the server.
    pub fn new(server: SocketAddrV4, user: &str, peer: SocketAddrV4) -> io::Result<Alloc> {
        let sock = net::udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), Some(server))?;
        Ok(Alloc {
            sock,
            auth: Auth {
                user: user.to_owned(),
                ..Auth::default()
            },
            relay: None,
            channel: None,
            peer,
            step: Step::Probe,
            tid: [0; 12],
            request: Vec::new(),
            sent_at: Instant::now(),
            transmissions: 0,
            auth_retries: 0,
        })
    }

    pub fn ready(&self) -> bool {
        self.step == Step::Ready
    }
}

/// Counts of one phase (setup or release).
#[derive(Default)]
pub struct Outcome {
    pub ok: usize,
    pub failed: usize,
    /// Why allocations failed: error code or "timeout", with counts.
    pub why: BTreeMap<String, usize>,
    pub seconds: f64,
}

impl Outcome {
    pub fn why_text(&self) -> String {
        if self.why.is_empty() {
            return "-".into();
        }
        self.why
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

pub struct Engine<'a> {
    pub password: &'a str,
    pub bind: Bind,
    pub conc: usize,
    pub deadline: Instant,
    rng: u64,
}

impl<'a> Engine<'a> {
    pub fn new(password: &'a str, bind: Bind, conc: usize, deadline: Instant) -> Engine<'a> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = now.as_nanos() as u64 ^ u64::from(std::process::id()) << 32;
        Engine {
            password,
            bind,
            conc: conc.max(1),
            deadline,
            rng: seed | 1,
        }
    }

    fn new_tid(&mut self) -> Tid {
        let mut tid = [0; 12];
        for chunk in tid.chunks_mut(4) {
            // xorshift64: transaction IDs need to differ, not to be secret.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            chunk.copy_from_slice(&self.rng.to_le_bytes()[..4]);
        }
        tid
    }

    /// Sets every allocation up (Probe → Allocate → Bind → Ready).
    pub fn set_up(&mut self, allocs: &mut [Alloc]) -> Outcome {
        for (i, a) in allocs.iter_mut().enumerate() {
            a.step = Step::Probe;
            // RFC 8656 channel numbers 0x4000-0x4FFF, one per client.
            a.channel = (self.bind == Bind::Channel).then_some(0x4000 + (i % 0x1000) as u16);
        }
        self.run(allocs, Step::Ready)
    }

    /// Refresh with LIFETIME 0 for every allocation that is ready.
    pub fn release(&mut self, allocs: &mut [Alloc]) -> Outcome {
        for a in allocs.iter_mut().filter(|a| a.step == Step::Ready) {
            a.step = Step::Release;
            a.auth_retries = 0;
        }
        self.run(allocs, Step::Released)
    }

    fn build(&mut self, a: &mut Alloc) {
        a.tid = self.new_tid();
        a.request = match a.step {
            Step::Probe => Builder::new(stun::ALLOCATE, &a.tid)
                .requested_udp()
                .finish(),
            Step::Allocate => Builder::new(stun::ALLOCATE, &a.tid)
                .requested_udp()
                .sign(&a.auth),
            Step::Bind => match a.channel {
                Some(ch) => Builder::new(stun::CHANNEL_BIND, &a.tid)
                    .channel(ch)
                    .peer(a.peer)
                    .sign(&a.auth),
                None => Builder::new(stun::CREATE_PERMISSION, &a.tid)
                    .peer(a.peer)
                    .sign(&a.auth),
            },
            Step::Release => Builder::new(stun::REFRESH, &a.tid)
                .lifetime(0)
                .sign(&a.auth),
            Step::Ready | Step::Released | Step::Failed => Vec::new(),
        };
        a.transmissions = 0;
        transmit(a);
    }

    fn run(&mut self, allocs: &mut [Alloc], goal: Step) -> Outcome {
        let start = Instant::now();
        let mut out = Outcome::default();
        let Ok(mut poller) = Poller::new() else {
            out.why.insert("epoll".into(), allocs.len());
            return out;
        };
        let todo: Vec<usize> = (0..allocs.len())
            .filter(|&i| matches!(allocs[i].step, Step::Probe | Step::Release))
            .collect();
        let mut next = 0;
        let mut active: Vec<usize> = Vec::with_capacity(self.conc);
        let mut buf = [0u8; 2048];
        // Bounded by the deadline: every pass waits at most 20 ms.
        while (next < todo.len() || !active.is_empty()) && Instant::now() < self.deadline {
            while active.len() < self.conc && next < todo.len() {
                let i = todo[next];
                next += 1;
                if poller.add(allocs[i].sock.as_raw_fd(), i as u64).is_err() {
                    fail(&mut allocs[i], &mut out, "epoll");
                    continue;
                }
                self.build(&mut allocs[i]);
                active.push(i);
            }
            let ready = poller.wait(Duration::from_millis(20));
            for e in 0..ready {
                let i = poller.token(e) as usize;
                // A socket holds a few datagrams at most: responses and retransmitted answers.
                for _ in 0..8 {
                    let Ok(n) = allocs[i].sock.recv(&mut buf) else {
                        break;
                    };
                    self.answer(&mut allocs[i], &buf[..n], &mut out);
                }
            }
            let now = Instant::now();
            for &i in &active {
                let a = &mut allocs[i];
                if a.step == goal || a.step == Step::Failed {
                    continue;
                }
                if now.duration_since(a.sent_at) >= RTO * (1 << (a.transmissions - 1)) {
                    if a.transmissions >= TRANSMISSIONS {
                        fail(a, &mut out, "timeout");
                    } else {
                        transmit(a);
                    }
                }
            }
            active.retain(|&i| {
                let a = &allocs[i];
                let done = a.step == goal || a.step == Step::Failed;
                if done {
                    poller.remove(a.sock.as_raw_fd());
                }
                !done
            });
        }
        for i in active.into_iter().chain(todo[next..].iter().copied()) {
            fail(&mut allocs[i], &mut out, "deadline");
        }
        out.ok = allocs.iter().filter(|a| a.step == goal).count();
        out.seconds = start.elapsed().as_secs_f64();
        out
    }

    fn answer(&mut self, a: &mut Alloc, buf: &[u8], out: &mut Outcome) {
        let Some(msg) = stun::parse(buf) else { return };
        if msg.tid != a.tid || a.request.is_empty() {
            return; // an answer to an earlier transmission or transaction
        }
        if msg.kind & 0x0110 == stun::ERROR {
            let code = msg.error_code();
            if (code == 401 || code == 438) && a.auth_retries < AUTH_RETRIES {
                a.auth_retries += 1;
                if let Some(realm) = msg.realm() {
                    a.auth.set_realm(realm, self.password);
                }
                if let Some(nonce) = msg.nonce() {
                    a.auth.nonce = nonce.to_vec();
                }
                if a.step == Step::Probe {
                    a.step = Step::Allocate;
                }
                self.build(a);
            } else if code == 437 && a.step == Step::Release {
                a.step = Step::Released; // already gone
            } else {
                fail(a, out, &code.to_string());
            }
            return;
        }
        if msg.kind & 0x0110 != stun::SUCCESS {
            return;
        }
        a.step = match a.step {
            Step::Probe | Step::Allocate => {
                a.relay = msg.relayed();
                Step::Bind
            }
            Step::Bind => Step::Ready,
            Step::Release => Step::Released,
            s => s,
        };
        if a.step == Step::Bind {
            self.build(a);
        } else {
            a.request.clear();
        }
    }
}

fn transmit(a: &mut Alloc) {
    // A full buffer or an ICMP error shows up as a timeout, then a retransmission.
    let _ = a.sock.send(&a.request);
    a.sent_at = Instant::now();
    a.transmissions += 1;
}

fn fail(a: &mut Alloc, out: &mut Outcome, why: &str) {
    a.step = Step::Failed;
    a.request.clear();
    out.failed += 1;
    *out.why.entry(why.to_owned()).or_default() += 1;
}
