//! The data path: one thread sends for every client and reads what comes back,
//! one thread per peer socket echoes every datagram to where it came from (the
//! relayed address). Each client datagram is thus relayed twice by the server.
//!
//! Payload of every datagram: client index (u32), sequence number (u64), send
//! time in ns since the generator's epoch (u64), a byte set to 1 when it was sent
//! inside the measured window, then filler.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::net::{BATCH, Batch, Poller};
use crate::stats::Histogram;
use crate::stun;

pub const WARMUP: u8 = 0;
pub const MEASURE: u8 = 1;
pub const DRAIN: u8 = 2;
pub const STOP: u8 = 3;

/// Bytes of the payload header described above; payloads are at least this long.
pub const HEAD: usize = 21;
const FLAG: usize = 20;

/// Counters both threads update once per batch, read by the main thread.
#[derive(Default)]
pub struct Shared {
    pub phase: AtomicU8,
    /// Cumulative: datagrams the clients sent, the clients received, the peers received.
    pub c_tx: AtomicU64,
    pub c_rx: AtomicU64,
    pub p_rx: AtomicU64,
    /// Of the datagrams sent inside the measured window: how many, how many reached a
    /// peer, how many came back to their client (until the end of the drain).
    pub m_tx: AtomicU64,
    pub m_prx: AtomicU64,
    pub m_rx: AtomicU64,
    /// Datagrams the kernel refused to take (full send buffer).
    pub drops: AtomicU64,
    /// Paced sending: datagrams skipped because the sender fell more than 100 ms behind.
    pub behind: AtomicU64,
}

/// How clients send.
#[derive(Clone, Copy)]
pub enum Pace {
    /// Keep this many datagrams in flight per client (sent, not yet echoed back).
    Window(u64),
    /// This many datagrams per second in all, spread evenly over the clients.
    Rate(f64),
}

/// One client's data path.
pub struct Flow {
    pub fd: RawFd,
    /// Bytes before the payload (ChannelData header or Send indication head).
    pub prefix: Vec<u8>,
    /// Whole datagram length.
    pub len: usize,
    pub send_indication: bool,
}

struct FlowState {
    seq: u64,
    sent: u64,
    recvd: u64,
    written_off: u64,
    last_progress: u64,
    next_due: u64,
    last_transit: Option<i64>,
    jitter_ns: f64,
}

pub struct ClientReport {
    pub rtt: Histogram,
    /// RFC 3550 interarrival jitter, mean over the clients that received in the window.
    pub jitter_ms: Option<f64>,
}

/// Datagrams in flight without any echo for this long are written off (lost), so a
/// window never stays shut. Long enough that a server descheduled by other work on
/// the machine is not buried under a second window.
const WRITE_OFF_NS: u64 = 250_000_000;
const FAR_BEHIND_NS: u64 = 100_000_000;

fn ns_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Sends and receives for every client until the phase is STOP or the deadline passes.
pub fn run_clients(
    flows: &[Flow],
    payload: usize,
    pace: Pace,
    shared: &Shared,
    epoch: Instant,
    deadline: Instant,
) -> ClientReport {
    let n = flows.len().max(1);
    let mut batch = Batch::new();
    // The filler never changes: written once into every slot.
    let prefix_len = flows.first().map_or(0, |f| f.prefix.len());
    for i in 0..BATCH {
        let slot = batch.slot(i);
        slot[prefix_len..prefix_len + payload].fill(0xA5);
    }
    let mut poller = Poller::new().expect("epoll");
    for (i, f) in flows.iter().enumerate() {
        poller.add(f.fd, i as u64).expect("epoll_ctl");
    }
    let start = ns_since(epoch);
    let period = match pace {
        Pace::Rate(r) => (1e9 * n as f64 / r.max(1e-3)) as u64,
        Pace::Window(_) => 0,
    };
    let mut st: Vec<FlowState> = (0..flows.len())
        .map(|i| FlowState {
            seq: 0,
            sent: 0,
            recvd: 0,
            written_off: 0,
            last_progress: start,
            // Clients start evenly spread over one period, not all at once.
            next_due: start + period * i as u64 / n as u64,
            last_transit: None,
            jitter_ns: 0.0,
        })
        .collect();
    let mut rtt = Histogram::new();
    let mut rr = 0;
    // Bounded by the deadline; each pass waits at most 5 ms.
    loop {
        let phase = shared.phase.load(Relaxed);
        if phase == STOP || Instant::now() >= deadline {
            break;
        }
        let mut more = false;
        let mut wait_ns = 5_000_000u64;
        if phase < DRAIN {
            let now = ns_since(epoch);
            let flag = u8::from(phase == MEASURE);
            let (mut tx, mut drops) = (0, 0);
            for k in 0..flows.len() {
                // Round robin start, so no client is always first.
                let i = (rr + k) % flows.len();
                let (f, s) = (&flows[i], &mut st[i]);
                let quota = match pace {
                    Pace::Window(w) => {
                        let in_flight = s.sent.saturating_sub(s.recvd + s.written_off);
                        if in_flight >= w && now.saturating_sub(s.last_progress) > WRITE_OFF_NS {
                            s.written_off += in_flight;
                            s.last_progress = now;
                        }
                        let room = w.saturating_sub(s.sent.saturating_sub(s.recvd + s.written_off));
                        // Refill in chunks of a quarter window: fewer, fuller batches.
                        if room >= (w / 4).max(1) {
                            room.min(BATCH as u64) as usize
                        } else {
                            0
                        }
                    }
                    Pace::Rate(_) => {
                        if now.saturating_sub(s.next_due) > FAR_BEHIND_NS {
                            let skipped = (now - s.next_due) / period;
                            shared.behind.fetch_add(skipped, Relaxed);
                            s.next_due += skipped * period;
                        }
                        let mut q = 0;
                        while s.next_due <= now && q < BATCH {
                            s.next_due += period;
                            q += 1;
                        }
                        wait_ns = wait_ns.min(s.next_due.saturating_sub(now));
                        q
                    }
                };
                if quota == 0 {
                    continue;
                }
                let stamp = ns_since(epoch);
                for j in 0..quota {
                    let slot = batch.slot(j);
                    slot[..prefix_len].copy_from_slice(&f.prefix);
                    if f.send_indication {
                        // Transaction IDs of indications differ per datagram.
                        slot[12..20].copy_from_slice(&s.seq.to_le_bytes());
                    }
                    let p = &mut slot[prefix_len..];
                    p[0..4].copy_from_slice(&(i as u32).to_le_bytes());
                    p[4..12].copy_from_slice(&s.seq.to_le_bytes());
                    p[12..20].copy_from_slice(&stamp.to_le_bytes());
                    p[FLAG] = flag;
                    batch.set_len(j, f.len);
                    s.seq += 1;
                }
                let sent = batch.send(f.fd, quota, false) as u64;
                s.sent += sent;
                tx += sent;
                drops += quota as u64 - sent;
                if quota == BATCH {
                    more = true;
                }
            }
            rr = rr.wrapping_add(1);
            shared.c_tx.fetch_add(tx, Relaxed);
            shared.drops.fetch_add(drops, Relaxed);
            if flag == 1 {
                shared.m_tx.fetch_add(tx, Relaxed);
            }
        }
        let timeout = if more {
            Duration::ZERO
        } else {
            Duration::from_nanos(wait_ns)
        };
        let ready = poller.wait(timeout);
        let (mut rx, mut mrx) = (0, 0);
        for e in 0..ready {
            let i = poller.token(e) as usize;
            // Bounded drain of one socket; what is left is read on the next pass.
            for _ in 0..8 {
                let got = batch.recv(flows[i].fd, false).unwrap_or(0);
                if got == 0 {
                    break;
                }
                let now = ns_since(epoch);
                let s = &mut st[i];
                for j in 0..got {
                    let Some(p) = stun::relayed_payload(batch.received(j)) else {
                        continue;
                    };
                    if p.len() < HEAD || u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize != i
                    {
                        continue;
                    }
                    s.recvd += 1;
                    rx += 1;
                    if p[FLAG] != 1 {
                        continue;
                    }
                    mrx += 1;
                    let sent_at = u64::from_le_bytes(p[12..20].try_into().unwrap_or_default());
                    let transit = now as i64 - sent_at as i64;
                    rtt.add((transit.max(0) / 1000) as u64);
                    if let Some(last) = s.last_transit {
                        // RFC 3550 section 6.4.1: J += (|D| - J) / 16
                        s.jitter_ns += ((transit - last).abs() as f64 - s.jitter_ns) / 16.0;
                    }
                    s.last_transit = Some(transit);
                }
                s.last_progress = now;
                if got < BATCH {
                    break;
                }
            }
        }
        shared.c_rx.fetch_add(rx, Relaxed);
        shared.m_rx.fetch_add(mrx, Relaxed);
    }
    let with_jitter: Vec<f64> = st
        .iter()
        .filter(|s| s.last_transit.is_some())
        .map(|s| s.jitter_ns)
        .collect();
    let jitter_ms = (!with_jitter.is_empty())
        .then(|| with_jitter.iter().sum::<f64>() / with_jitter.len() as f64 / 1e6);
    ClientReport { rtt, jitter_ms }
}

/// Echoes every datagram on `fd` back to its source until STOP or the deadline.
pub fn run_peer(fd: RawFd, shared: &Shared, deadline: Instant) {
    let mut batch = Batch::new();
    let mut poller = Poller::new().expect("epoll");
    poller.add(fd, 0).expect("epoll_ctl");
    while shared.phase.load(Relaxed) != STOP && Instant::now() < deadline {
        if poller.wait(Duration::from_millis(5)) == 0 {
            continue;
        }
        // Bounded drain: at most 16 batches, then the stop flag is looked at again.
        for _ in 0..16 {
            let got = batch.recv(fd, true).unwrap_or(0);
            if got == 0 {
                break;
            }
            let flagged = (0..got)
                .filter(|&j| batch.received(j).get(FLAG) == Some(&1))
                .count();
            shared.p_rx.fetch_add(got as u64, Relaxed);
            shared.m_prx.fetch_add(flagged as u64, Relaxed);
            batch.send(fd, got, true);
            if got < BATCH {
                break;
            }
        }
    }
}
