//! Per-source token buckets for 401s and Binding answers, per-user backoff
//! after failed logins, and the summarising of `auth-failed` lines. One
//! table for every shard (a request from one source may hash to any shard),
//! behind its own lock so that the port pool's lock is not contended; it is
//! taken for requests only, never for relayed data.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;
use crate::logging::event;
use crate::sparse::shrink_if_sparse;

/// The first backoff of a user; each further period doubles it.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How often the tables are swept at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug)]
pub(crate) enum Bucket {
    /// 401s (challenges and failed authentications) and 438s.
    Unauthenticated,
    Binding,
}

#[derive(Clone, Copy, Debug)]
struct Tokens {
    tokens: f64,
    at: Instant,
}

impl Tokens {
    fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, (rate, burst): (u32, u32)) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.at = now;
    }

    fn take(&mut self, now: Instant, limit: (u32, u32)) -> bool {
        self.refill(now, limit);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn give_back(&mut self, now: Instant, limit: (u32, u32)) {
        self.refill(now, limit);
        self.tokens = (self.tokens + 1.0).min(f64::from(limit.1));
    }

    fn is_full(mut self, now: Instant, limit: (u32, u32)) -> bool {
        self.refill(now, limit);
        self.tokens >= f64::from(limit.1)
    }
}

#[derive(Debug)]
struct Source {
    unauthenticated: Tokens,
    binding: Tokens,
    /// When the last `auth-failed` line for this source was written.
    logged_at: Option<Instant>,
    /// `auth-failed` lines folded into the next one.
    folded: u64,
}

#[derive(Debug)]
struct UserFailures {
    failures: u32,
    last_failure: Instant,
    backoff: Duration,
    blocked_until: Option<Instant>,
}

/// What the core does with an `auth-failed` line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AuthLog {
    /// Write it, saying how many were folded into it since the last one.
    Write { repeated: u64 },
    /// Fold it into the next one.
    Fold,
}

/// A user's failed login that started a backoff period: log it once.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) failures: u32,
    pub(crate) period: Duration,
}

#[derive(Debug)]
struct Inner {
    config: ThrottleConfig,
    sources: HashMap<IpAddr, Source>,
    /// Shared by every source not tracked while the table is full.
    overflow: Option<Source>,
    users: HashMap<String, UserFailures>,
    swept_at: Option<Instant>,
    /// `auth-failed` lines folded, for tests.
    folded_total: u64,
}

#[derive(Debug)]
pub(crate) struct Throttle(Mutex<Inner>);

impl Default for Throttle {
    fn default() -> Self {
        Self(Mutex::new(Inner {
            config: crate::config::DEFAULT_THROTTLE,
            sources: HashMap::new(),
            overflow: None,
            users: HashMap::new(),
            swept_at: None,
            folded_total: 0,
        }))
    }
}

impl Inner {
    fn limit(&self, bucket: Bucket) -> (u32, u32) {
        match bucket {
            Bucket::Unauthenticated => (
                self.config.unauthenticated_per_second,
                self.config.unauthenticated_burst,
            ),
            Bucket::Binding => (self.config.binding_per_second, self.config.binding_burst),
        }
    }

    fn new_source(&self, now: Instant) -> Source {
        Source {
            unauthenticated: Tokens::full(self.config.unauthenticated_burst, now),
            binding: Tokens::full(self.config.binding_burst, now),
            logged_at: None,
            folded: 0,
        }
    }

    /// The entry of `source`. When the table is full, a new source shares
    /// the overflow entry rather than evicting one: evicting would hand a
    /// flood from many addresses fresh buckets (and push out the sources
    /// being throttled), while sharing keeps memory bounded and only slows
    /// new sources until the sweep frees room as buckets fill up again.
    fn source(&mut self, source: IpAddr, now: Instant) -> &mut Source {
        if !self.sources.contains_key(&source)
            && self.sources.len() < self.config.max_tracked as usize
        {
            let fresh = self.new_source(now);
            self.sources.insert(source, fresh);
        }
        let fresh = self.new_source(now);
        match self.sources.get_mut(&source) {
            Some(entry) => entry,
            None => self.overflow.get_or_insert(fresh),
        }
    }
}

impl Throttle {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with<T>(&self, _now: Instant, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.lock())
    }

    /// Applies a (re)loaded config; buckets keep what they hold.
    pub(crate) fn configure(&self, config: ThrottleConfig) {
        self.lock().config = config;
    }

    /// Takes a token from `source`'s bucket: false means drop the request.
    pub(crate) fn allow(&self, bucket: Bucket, source: IpAddr, now: Instant) -> bool {
        self.with(now, |inner| {
            let limit = inner.limit(bucket);
            let entry = inner.source(source, now);
            match bucket {
                Bucket::Unauthenticated => entry.unauthenticated.take(now, limit),
                Bucket::Binding => entry.binding.take(now, limit),
            }
        })
    }

    /// Whether an `auth-failed` line from `source` is written or folded.
    pub(crate) fn auth_log(&self, source: IpAddr, now: Instant) -> AuthLog {
        self.with(now, |inner| {
            let interval = inner.config.auth_log_interval;
            let entry = inner.source(source, now);
            match entry.logged_at {
                Some(at) if now.saturating_duration_since(at) < interval => {
                    entry.folded += 1;
                    inner.folded_total += 1;
                    AuthLog::Fold
                }
                _ => {
                    entry.logged_at = Some(now);
                    AuthLog::Write {
                        repeated: std::mem::take(&mut entry.folded),
                    }
                }
            }
        })
    }

    /// Whether `user` is backing off now (its requests are dropped).
    pub(crate) fn user_blocked(&self, user: &str, now: Instant) -> bool {
        self.with(now, |inner| {
            inner
                .users
                .get(user)
                .and_then(|entry| entry.blocked_until)
                .is_some_and(|until| now < until)
        })
    }

    /// A failed login for `user`; Some when it starts a backoff period.
    pub(crate) fn user_failed(&self, user: &str, now: Instant) -> Option<Backoff> {
        self.with(now, |inner| {
            let config = inner.config;
            if !inner.users.contains_key(user) {
                // A full table tracks no new user: a flood of made-up names
                // cannot grow memory, and the source bucket still holds.
                if inner.users.len() >= config.max_tracked as usize {
                    return None;
                }
                inner.users.insert(
                    user.to_owned(),
                    UserFailures {
                        failures: 0,
                        last_failure: now,
                        backoff: Duration::ZERO,
                        blocked_until: None,
                    },
                );
            }
            let entry = inner.users.get_mut(user)?;
            if now.saturating_duration_since(entry.last_failure) >= config.login_failure_window {
                // Quiet long enough: the real user starts afresh.
                entry.failures = 0;
                entry.backoff = Duration::ZERO;
            }
            entry.failures += 1;
            entry.last_failure = now;
            if entry.failures < config.login_failures {
                return None;
            }
            entry.backoff = if entry.backoff.is_zero() {
                FIRST_BACKOFF
            } else {
                (entry.backoff * 2).min(config.login_backoff_max)
            }
            .min(config.login_backoff_max);
            entry.blocked_until = Some(now + entry.backoff);
            Some(Backoff {
                failures: entry.failures,
                period: entry.backoff,
            })
        })
    }

    /// A request from `source` authenticated: the challenge that came
    /// before it is given back, so that clients behind one NAT address
    /// that do log in are not held to the budget meant for floods. An
    /// Allocate also clears its user's failures.
    pub(crate) fn authenticated(&self, source: IpAddr, allocating: Option<&str>, now: Instant) {
        self.with(now, |inner| {
            let limit = inner.limit(Bucket::Unauthenticated);
            if let Some(entry) = inner.sources.get_mut(&source) {
                entry.unauthenticated.give_back(now, limit);
            }
            if let Some(user) = allocating {
                inner.users.remove(user);
            }
        });
    }

    /// Forgets sources whose buckets are full again (and whose log line
    /// interval is over) and users quiet for a failure window, at most once
    /// a second whichever shard asks.
    pub(crate) fn sweep(&self, now: Instant) {
        self.with(now, |inner| {
            if inner
                .swept_at
                .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
            {
                return;
            }
            inner.swept_at = Some(now);
            let unauthenticated = inner.limit(Bucket::Unauthenticated);
            let binding = inner.limit(Bucket::Binding);
            let interval = inner.config.auth_log_interval;
            inner.sources.retain(|address, source| {
                let idle = source.unauthenticated.is_full(now, unauthenticated)
                    && source.binding.is_full(now, binding)
                    && source
                        .logged_at
                        .is_none_or(|at| now.saturating_duration_since(at) >= interval);
                // Lines still folded are not lost with the source.
                if idle && source.folded > 0 {
                    event!(
                        info,
                        "auth-failed",
                        source = address,
                        repeated = source.folded
                    );
                }
                !idle
            });
            shrink_if_sparse(&mut inner.sources);
            let window = inner.config.login_failure_window;
            inner.users.retain(|_, user| {
                user.blocked_until.is_some_and(|until| now < until)
                    || now.saturating_duration_since(user.last_failure) < window
            });
            shrink_if_sparse(&mut inner.users);
        });
    }

    /// Sources and users tracked now, each bounded by `max-tracked`.
    pub(crate) fn tracked(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.sources.len(), inner.users.len())
    }

    #[cfg(test)]
    pub(crate) fn folded_total(&self) -> u64 {
        self.lock().folded_total
    }
}
