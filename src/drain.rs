//! Draining: new allocations are refused (508), and so are new TURN
//! connections over TCP/TLS and new signaling connections (503), while the
//! allocations and connections that exist carry on. `POST /drain` starts it;
//! SIGTERM starts it and then waits for the allocations to end, at most
//! `shutdown-grace`, before the daemon exits.

use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio::time::{Instant, MissedTickBehavior};

use crate::logging::event;
use crate::server::Server;

/// How often the drain looks whether allocations are left.
const POLL: Duration = Duration::from_millis(100);

/// Starts draining, once; `source` says who asked, for the log.
pub(crate) fn start(server: &Server, source: &str) {
    if server.drain() {
        let allocations = server.allocation_count();
        event!(
            info,
            "drain-started",
            source = source,
            allocations = allocations
        );
    }
}

/// For SIGTERM: drains, then returns once no allocation is left, after
/// `grace`, or at a second SIGTERM (on `term`, the stream the first came
/// on) or SIGINT, whichever comes first.
pub(crate) async fn until_allocations_end(
    server: &Server,
    grace: Duration,
    term: &mut Option<Signal>,
) {
    start(server, "SIGTERM");
    let started = Instant::now();
    let deadline = started + grace;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let reason = loop {
        if server.allocation_count() == 0 {
            break "allocations-ended";
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = tokio::time::sleep_until(deadline) => break "grace-elapsed",
            Some(()) = async { term.as_mut()?.recv().await } => break "signal",
            _ = tokio::signal::ctrl_c() => break "signal",
        }
    };
    let left = server.allocation_count();
    event!(
        info,
        "drain-ended",
        reason = reason,
        allocations = left,
        seconds = started.elapsed().as_secs()
    );
}
