//! Running the daemon: binding every listener, the start banner, telling
//! systemd how it goes (readiness, status, watchdog), and shutdown on
//! SIGTERM or Ctrl-C.

use std::io::Write;
use std::sync::Arc;

use crate::config::{Config, Transport};
use crate::http::HttpApi;
use crate::ice;
use crate::logging::{self, LogTarget, event};
use crate::server::{Server, unix_now};
use crate::signal::Signaling;
use crate::transport::stream::{self, ConnectionTracker, StreamListener};
use crate::transport::tls::ReloadableCertificate;
use crate::transport::udp::{self, UdpListener};
use systemd::NotifyState;

/// How the daemon was configured, for the banner.
pub(crate) enum Origin {
    File(String),
    /// The embedded default, with the REST secret made for this run.
    Embedded {
        secret: String,
    },
}

/// Binds every listener, prints the banner, serves until SIGTERM or SIGINT.
pub(crate) fn run(config: Config, origin: Origin, log_target: LogTarget) -> std::io::Result<()> {
    logging::init(log_target, config.log.level.into()).map_err(std::io::Error::other)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("icegate")
        .build()?;
    runtime.block_on(serve(config, origin))
}

async fn serve(config: Config, origin: Origin) -> std::io::Result<()> {
    let server = Server::new(&config);
    // Bind everything first, so a port that cannot be had fails the start
    // before any client is served.
    let mut udp_listeners = Vec::new();
    let mut stream_listeners = Vec::new();
    for listen in &config.listen {
        match listen.transport {
            Transport::Udp => {
                let listener = UdpListener::bind(listen.address).map_err(|error| {
                    std::io::Error::new(
                        error.kind(),
                        format!("cannot listen on udp {}: {error}", listen.address),
                    )
                })?;
                log::info!("listening on udp {}", listener.local_addr());
                udp_listeners.push(listener);
            }
            Transport::Tcp | Transport::Tls | Transport::Http | Transport::Https => {
                if listen.transport == Transport::Http && !listen.address.ip().is_loopback() {
                    log::warn!(
                        "http listener {} is not on loopback: plain HTTP carries credentials; \
                         put it behind a TLS proxy",
                        listen.address
                    );
                }
                let listener = StreamListener::bind(listen).map_err(std::io::Error::other)?;
                log::info!(
                    "listening on {} {}",
                    listener.transport(),
                    listener.local_addr()
                );
                stream_listeners.push(listener);
            }
        }
    }
    let certificates: Vec<Arc<ReloadableCertificate>> = stream_listeners
        .iter()
        .filter_map(|l| l.certificate().cloned())
        .collect();
    // ICE URLs name the ports actually bound (port 0 picks one).
    let mut bound = config.clone();
    let mut udp_addresses = udp_listeners.iter().map(|l| l.local_addr());
    let mut stream_addresses = stream_listeners.iter().map(StreamListener::local_addr);
    for listen in &mut bound.listen {
        let address = match listen.transport {
            Transport::Udp => udp_addresses.next(),
            _ => stream_addresses.next(),
        };
        listen.address = address.unwrap_or(listen.address);
    }
    let signal = Signaling::new(server.clone(), &bound);
    let http_api = HttpApi::new(server.clone(), signal.clone(), &bound);
    for listener in udp_listeners {
        tokio::spawn(udp::serve(server.clone(), listener));
    }
    let tracker = ConnectionTracker::new(config.connections);
    for listener in stream_listeners {
        tokio::spawn(stream::serve(
            server.clone(),
            listener,
            tracker.clone(),
            http_api.clone(),
        ));
    }
    tokio::spawn(server.clone().run_timers());
    print_banner(&bound, &origin, &server);
    event!(
        info,
        "ready",
        realm = config.realm,
        relay_ports = format_args!("{}-{}", config.relay.ports.low, config.relay.ports.high)
    );
    let status = Status {
        server: server.clone(),
        tracker: tracker.clone(),
        signal: signal.clone(),
    };
    systemd::notify(&[NotifyState::Ready, NotifyState::Status(&status.line())]);
    tokio::spawn(status.clone().report());
    wait_for_shutdown(&certificates).await;
    systemd::notify(&[NotifyState::Stopping]);
    if let Some(signal) = &signal {
        let (sessions, rooms) = signal.counts();
        log::info!("stopping signaling: closing {sessions} sessions in {rooms} rooms");
        signal.stop();
        // Let the close frames go out.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let refusals: Vec<String> = crate::reject::Reject::ALL
        .iter()
        .map(|&r| (r, server.rejects.get(r)))
        .filter(|&(_, n)| n > 0)
        .map(|(r, n)| format!("{}={n}", r.name()))
        .collect();
    log::info!("stopping; refused or dropped: {}", refusals.join(" "));
    Ok(())
}

fn print_banner(config: &Config, origin: &Origin, server: &Arc<Server>) {
    let mut stdout = std::io::stdout().lock();
    match origin {
        Origin::File(path) => {
            let _ = writeln!(
                stdout,
                "icegate {} running with {path}",
                env!("CARGO_PKG_VERSION")
            );
        }
        Origin::Embedded { secret } => {
            let demo = config
                .listen
                .iter()
                .find(|l| l.transport == Transport::Http)
                .map_or_else(String::new, |l| l.address.to_string());
            let core = server.core();
            let credentials = core.credentials();
            let ttl = credentials.credential_ttl();
            let Some((username, password)) = credentials.mint("demo", ttl, unix_now()) else {
                return;
            };
            let servers = ice::ice_servers(config, &username, &password);
            let _ = writeln!(
                stdout,
                "icegate {} running with the embedded default config.\n\
                 It listens on loopback only and ALLOWS LOOPBACK PEERS, so two browser tabs on this\n\
                 machine can relay to each other; the shipped config file refuses them.\n\
                 TURN REST secret for this run: {secret}\n\
                 Demo page, signaling without tokens (loopback only): open\n\
                 http://{demo}/?room=demo in two tabs.\n\
                 iceServers for user \"demo\", valid {}h:\n{}",
                env!("CARGO_PKG_VERSION"),
                ttl.as_secs() / 3600,
                serde_json::to_string_pretty(&servers).unwrap_or_default()
            );
        }
    }
    let _ = stdout.flush();
}

/// Re-reads every TLS certificate; one that does not load keeps the old one.
fn reload_certificates(certificates: &[Arc<ReloadableCertificate>]) {
    for certificate in certificates {
        let files = certificate.files();
        match certificate.reload() {
            Ok(()) => log::info!(
                "certificate-reloaded certificate={} private-key={}",
                files.certificate.display(),
                files.private_key.display()
            ),
            Err(problem) => log::error!(
                "certificate-reload-failed: {problem}; still serving the previous certificate"
            ),
        }
    }
}

async fn wait_for_shutdown(certificates: &[Arc<ReloadableCertificate>]) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            log::warn!("cannot watch SIGTERM: {error}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    // SIGHUP would otherwise end the process (its default action).
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            Some(()) = async { hangup.as_mut()?.recv().await } => {
                log::info!("reload requested (SIGHUP): certificates only, the rest of the configuration needs a restart");
                reload_certificates(certificates);
            }
        }
    }
}

/// What STATUS= tells `systemctl status`, and the watchdog's pulse.
#[derive(Clone)]
struct Status {
    server: Arc<Server>,
    tracker: Arc<ConnectionTracker>,
    signal: Option<Arc<Signaling>>,
}

impl Status {
    fn line(&self) -> String {
        let allocations = self.server.core().allocation_count();
        let connections = self.tracker.open_count();
        let sessions = self.signal.as_ref().map_or(0, |s| s.counts().0);
        format!(
            "{allocations} allocations, {connections} TCP/TLS connections, \
             {sessions} signaling sessions"
        )
    }

    /// Updates STATUS= every few seconds and, when systemd asks for it,
    /// pets the watchdog from here: a stuck allocation table (its lock
    /// never free) or a stuck runtime stops the pulse.
    async fn report(self) {
        let watchdog = systemd::watchdog_interval();
        let period = watchdog.map_or(STATUS_PERIOD, |w| (w / 2).min(STATUS_PERIOD));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let line = self.line();
            if watchdog.is_some() {
                systemd::notify(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
            } else {
                systemd::notify(&[NotifyState::Status(&line)]);
            }
        }
    }
}

/// How often STATUS= is refreshed without a watchdog.
const STATUS_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// sd_notify(3): silent no-ops when not started by systemd.
mod systemd {
    pub(super) use sd_notify::NotifyState;

    pub(super) fn notify(states: &[NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(false, states) {
            log::debug!("sd_notify: {error}");
        }
    }

    /// WatchdogSec= of the unit, when it set one for this process.
    pub(super) fn watchdog_interval() -> Option<std::time::Duration> {
        let mut usec = 0;
        sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| std::time::Duration::from_micros(usec))
    }
}
