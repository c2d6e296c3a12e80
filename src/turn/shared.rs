//! What every shard of the allocation table shares: the relay port pool,
//! EVEN-PORT reservations, and the allocation counts the quotas check,
//! taken when an allocation begins or ends, never for a relayed packet;
//! the node's bandwidth cap, lock-free, which every relayed packet is; and
//! the bans, which every request is checked against.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::bans::Bans;
use crate::config::PortRange;
use crate::reject::Reject;
use crate::sparse::shrink_if_sparse;
use crate::turn::bandwidth::{Cells, NodeBandwidth};
use crate::turn::ports::PortPool;
use crate::turn::throttle::Throttle;

/// The next port held for a later Allocate with RESERVATION-TOKEN.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reservation {
    pub(crate) port: u16,
    pub(crate) bind: IpAddr,
    expires: Instant,
}

#[derive(Debug)]
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// Allocate is refused (508) while draining.
    draining: AtomicBool,
    /// Per-source and per-user limits on unauthenticated traffic, with their own lock.
    pub(crate) throttle: Throttle,
    pub(crate) bandwidth: NodeBandwidth,
    /// Users refused after authenticating, read once per request.
    pub(crate) bans: Arc<Bans>,
}

/// A user with allocations: how many, and their shared bandwidth state.
#[derive(Debug)]
struct User {
    allocations: u32,
    bandwidth: Arc<Cells>,
}

#[derive(Debug)]
struct Inner {
    ports: PortPool,
    reservations: HashMap<u64, Reservation>,
    per_user: HashMap<String, User>,
    total: u32,
    rng: StdRng,
}

/// The port pool and the randomness that picks from it, locked.
pub(crate) struct Ports<'a>(MutexGuard<'a, Inner>);

impl Ports<'_> {
    pub(crate) fn take_any(&mut self) -> Option<u16> {
        let Inner { ports, rng, .. } = &mut *self.0;
        ports.take_any(rng)
    }

    pub(crate) fn take_even(&mut self, with_next: bool) -> Option<u16> {
        let Inner { ports, rng, .. } = &mut *self.0;
        ports.take_even(rng, with_next)
    }

    pub(crate) fn release(&mut self, port: u16) {
        self.0.ports.release(port);
    }
}

impl Shared {
    /// `origin` is the moment bandwidth accounting counts from.
    pub(crate) fn new(range: PortRange, origin: Instant, bans: Arc<Bans>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                ports: PortPool::new(range),
                reservations: HashMap::new(),
                per_user: HashMap::new(),
                total: 0,
                rng: StdRng::from_os_rng(),
            }),
            draining: AtomicBool::new(false),
            throttle: Throttle::default(),
            bandwidth: NodeBandwidth::new(origin),
            bans,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn ports(&self) -> Ports<'_> {
        Ports(self.lock())
    }

    /// Counts one more allocation for `user`, or names the quota that
    /// refuses it; gives the user's bandwidth state, which all their
    /// allocations share. Every admitted allocation is [`Shared::leave`]d once.
    pub(crate) fn admit(
        &self,
        user: &str,
        per_user: u32,
        total: u32,
    ) -> Result<Arc<Cells>, Reject> {
        let mut inner = self.lock();
        if inner
            .per_user
            .get(user)
            .is_some_and(|u| u.allocations >= per_user)
        {
            return Err(Reject::UserQuotaReached);
        }
        if inner.total >= total {
            return Err(Reject::TotalQuotaReached);
        }
        inner.total += 1;
        let entry = inner
            .per_user
            .entry(user.to_owned())
            .or_insert_with(|| User {
                allocations: 0,
                bandwidth: Arc::default(),
            });
        entry.allocations += 1;
        Ok(entry.bandwidth.clone())
    }

    /// An allocation of `user` ended (or was admitted and never made);
    /// its relay port, if it had one, goes back to the pool.
    pub(crate) fn leave(&self, user: &str, port: Option<u16>) {
        let mut inner = self.lock();
        inner.total = inner.total.saturating_sub(1);
        if let Some(entry) = inner.per_user.get_mut(user) {
            entry.allocations -= 1;
            if entry.allocations == 0 {
                inner.per_user.remove(user);
                shrink_if_sparse(&mut inner.per_user);
            }
        }
        if let Some(port) = port {
            inner.ports.release(port);
        }
    }

    /// Holds `port` (already taken from the pool) until `expires`; returns its token.
    pub(crate) fn reserve(&self, port: u16, bind: IpAddr, expires: Instant) -> u64 {
        let mut inner = self.lock();
        let token = inner.rng.random();
        inner.reservations.insert(
            token,
            Reservation {
                port,
                bind,
                expires,
            },
        );
        token
    }

    /// The reservation of `token`, taken: its port is the caller's now.
    pub(crate) fn take_reservation(&self, token: u64) -> Option<Reservation> {
        self.lock().reservations.remove(&token)
    }

    /// Ends the reservation of `token` if it is still held, freeing its port.
    pub(crate) fn cancel_reservation(&self, token: u64) {
        let mut guard = self.lock();
        let Inner {
            ports,
            reservations,
            ..
        } = &mut *guard;
        if let Some(reservation) = reservations.remove(&token) {
            ports.release(reservation.port);
        }
    }

    /// Ends reservations whose time is up, freeing their ports.
    pub(crate) fn expire_reservations(&self, now: Instant) {
        let mut guard = self.lock();
        let Inner {
            ports,
            reservations,
            ..
        } = &mut *guard;
        reservations.retain(|_, reservation| {
            let keep = reservation.expires > now;
            if !keep {
                ports.release(reservation.port);
            }
            keep
        });
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn port_is_free(&self, port: u16) -> bool {
        self.lock().ports.is_free(port)
    }
}
