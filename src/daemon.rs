//! Running the daemon: binding every listener, the start banner, telling
//! systemd how it goes (readiness, status, watchdog), reload on SIGHUP or
//! `POST /reload`, and shutdown on SIGTERM or Ctrl-C after a drain.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminApi, AdminListener, ReloadReply, Sources};
use crate::config::{Config, Listen, Transport};
use crate::drain;
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
    let mut bound = Vec::new();
    for listen in &config.listen {
        bound.push((
            listen.clone(),
            bind(listen, &config).map_err(std::io::Error::other)?,
        ));
    }
    let admin_listener = AdminListener::bind(&config.admin)?;
    let signal = Signaling::new(server.clone(), &config);
    if config.cluster.redis.is_some() {
        signal
            .join_cluster(&config.cluster)
            .map_err(std::io::Error::other)?;
    }
    tokio::spawn(signal.clone().sweep_held());
    let tracker = ConnectionTracker::new(config.connections);
    let (reload_requests, reloads) = mpsc::channel(4);
    let admin = AdminApi::new(
        &config.admin,
        Sources {
            server: server.clone(),
            tracker: tracker.clone(),
            signal: signal.clone(),
        },
        reload_requests,
    );
    let admin_address = admin_listener.local_addr();
    tokio::spawn(admin::serve(admin_listener, admin.clone()));
    let mut daemon = Daemon {
        http: HttpApi::new(server.clone(), signal.clone(), &config),
        tracker,
        signal,
        admin,
        server,
        config,
        listeners: Vec::new(),
    };
    for (listen, listener) in bound {
        daemon.start(listen, listener);
    }
    daemon.take_up_bound_addresses();
    tokio::spawn(daemon.server.clone().run_timers());
    let mut signals = Signals::watch();
    print_banner(&daemon.bound_config(), &origin, &daemon.server);
    event!(
        info,
        "ready",
        realm = daemon.config.realm,
        relay_ports = format_args!(
            "{}-{}",
            daemon.config.relay.ports.low, daemon.config.relay.ports.high
        ),
        admin = admin_address
    );
    let status = Status {
        server: daemon.server.clone(),
        tracker: daemon.tracker.clone(),
        signal: daemon.signal.clone(),
    };
    systemd::notify(&[NotifyState::Ready, NotifyState::Status(&status.line())]);
    tokio::spawn(status.clone().report());
    wait_for_shutdown(&mut signals, &mut daemon, &origin, reloads).await;
    systemd::notify(&[NotifyState::Stopping]);
    drain::until_allocations_end(
        &daemon.server,
        daemon.config.shutdown_grace,
        &mut signals.term,
    )
    .await;
    let (sessions, rooms) = daemon.signal.counts();
    if sessions > 0 {
        log::info!("stopping signaling: closing {sessions} sessions in {rooms} rooms");
        daemon.signal.stop();
        // Let the close frames go out.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    daemon.signal.leave_cluster().await;
    let refusals: Vec<String> = crate::reject::Reject::ALL
        .iter()
        .map(|&r| (r, daemon.server.rejects.get(r)))
        .filter(|&(_, n)| n > 0)
        .map(|(r, n)| format!("{}={n}", r.name()))
        .collect();
    log::info!("stopping; refused or dropped: {}", refusals.join(" "));
    Ok(())
}

/// A bound socket, before its task starts.
enum Bound {
    Udp(Arc<UdpListener>),
    Stream(StreamListener),
}

/// Binds one listener and says so in the log.
fn bind(listen: &Listen, config: &Config) -> Result<Bound, String> {
    match listen.transport {
        Transport::Udp => {
            let listener = UdpListener::bind(listen.address, config.relay.listener_receive_buffer)
                .map_err(|error| format!("cannot listen on udp {}: {error}", listen.address))?;
            log::info!("listening on udp {}", listener.local_addr());
            Ok(Bound::Udp(listener))
        }
        Transport::Tcp | Transport::Tls | Transport::Http | Transport::Https => {
            if listen.transport == Transport::Http && !listen.address.ip().is_loopback() {
                log::warn!(
                    "http listener {} is not on loopback: plain HTTP carries credentials; \
                     put it behind a TLS proxy",
                    listen.address
                );
            }
            let listener = StreamListener::bind(listen)?;
            log::info!(
                "listening on {} {}",
                listener.transport(),
                listener.local_addr()
            );
            Ok(Bound::Stream(listener))
        }
    }
}

/// A listener being served.
struct Running {
    /// As configured (port 0 stays 0 here).
    listen: Listen,
    /// As bound.
    local: SocketAddr,
    certificate: Option<Arc<ReloadableCertificate>>,
    task: JoinHandle<()>,
}

/// Everything a reload may change.
struct Daemon {
    server: Arc<Server>,
    tracker: Arc<ConnectionTracker>,
    signal: Arc<Signaling>,
    http: Arc<HttpApi>,
    admin: Arc<AdminApi>,
    /// As configured.
    config: Config,
    listeners: Vec<Running>,
}

impl Daemon {
    fn start(&mut self, listen: Listen, bound: Bound) {
        let (local, certificate, task) = match bound {
            Bound::Udp(listener) => (
                listener.local_addr(),
                None,
                tokio::spawn(udp::serve(self.server.clone(), listener)),
            ),
            Bound::Stream(listener) => (
                listener.local_addr(),
                listener.certificate().cloned(),
                tokio::spawn(stream::serve(
                    self.server.clone(),
                    listener,
                    self.tracker.clone(),
                    self.http.clone(),
                )),
            ),
        };
        self.listeners.push(Running {
            listen,
            local,
            certificate,
            task,
        });
    }

    /// The config with every listener's bound address (port 0 picks one),
    /// which ICE URLs must name.
    fn bound_config(&self) -> Config {
        let mut bound = self.config.clone();
        for (running, index) in self
            .listeners
            .iter()
            .zip(pair_listeners(&self.listeners, &self.config.listen))
        {
            if let Some(index) = index {
                bound.listen[index].address = running.local;
            }
        }
        bound
    }

    /// Hands the bound addresses to what builds URLs from them.
    fn take_up_bound_addresses(&self) {
        let bound = self.bound_config();
        self.http.reconfigure(&bound);
        self.signal.reconfigure(&bound);
        let udp: Vec<SocketAddr> = self
            .listeners
            .iter()
            .filter(|running| running.listen.transport == Transport::Udp)
            .map(|running| running.local)
            .collect();
        self.server.set_listeners(&udp);
    }

    /// Re-reads the config file and applies it; on any problem the running
    /// config stays. Returns what was done, or every problem.
    fn reload(&mut self, path: &Path) -> Result<String, String> {
        let config = Config::load(path).map_err(|errors| errors.to_string())?;
        // Which entry of the new config each running listener is, if any.
        let matched = pair_listeners(&self.listeners, &config.listen);
        // New listeners first: a port that cannot be had fails the reload
        // before anything changed.
        let mut added = Vec::new();
        for (index, listen) in config.listen.iter().enumerate() {
            if !matched.contains(&Some(index)) {
                added.push((listen.clone(), bind(listen, &config)?));
            }
        }
        // Certificates next: files that check-config accepted may still
        // change under us; one that fails to load fails the reload.
        for (running, index) in self.listeners.iter().zip(&matched) {
            let files = index.and_then(|i| config.listen[i].tls.as_ref());
            if let (Some(certificate), Some(files)) = (&running.certificate, files) {
                certificate.reload_from(files.clone()).map_err(|problem| {
                    format!(
                        "{} listener {}: {problem}; still serving the previous certificate",
                        running.listen.transport, running.local
                    )
                })?;
                event!(
                    info,
                    "certificate-reloaded",
                    certificate = files.certificate.display(),
                    private_key = files.private_key.display()
                );
            }
        }
        let mut notes = self.server.reconfigure(&config);
        self.tracker.set_limits(config.connections);
        notes.extend(self.admin.reconfigure(&config.admin));
        logging::set_level(config.log.level.into());
        let mut removed = 0;
        let mut kept = Vec::new();
        for (running, index) in std::mem::take(&mut self.listeners).into_iter().zip(matched) {
            let Some(listen) = index.map(|i| &config.listen[i]) else {
                running.task.abort();
                if running.listen.transport == Transport::Udp {
                    self.server.end_listener(running.local);
                }
                log::info!(
                    "listener-removed {} {}",
                    running.listen.transport,
                    running.local
                );
                removed += 1;
                continue;
            };
            if listen.services != running.listen.services {
                notes.push(format!(
                    "services of {} {} (a restart applies them)",
                    listen.transport, running.local
                ));
            }
            kept.push(Running {
                listen: listen.clone(),
                ..running
            });
        }
        self.listeners = kept;
        let added_count = added.len();
        for (listen, bound) in added {
            self.start(listen, bound);
        }
        self.config = config;
        self.take_up_bound_addresses();
        let mut summary = format!("listeners added={added_count} removed={removed}");
        if !notes.is_empty() {
            summary.push_str(&format!(
                "; unchanged until a restart: {}",
                notes.join(", ")
            ));
        }
        Ok(summary)
    }
}

/// For each running listener, the entry of `listen` that is the same socket
/// (transport and address), each entry taken once: two `127.0.0.1:0`
/// entries are two listeners.
fn pair_listeners(running: &[Running], listen: &[Listen]) -> Vec<Option<usize>> {
    let mut taken = vec![false; listen.len()];
    running
        .iter()
        .map(|r| {
            let index = listen.iter().enumerate().position(|(i, l)| {
                !taken[i] && l.transport == r.listen.transport && l.address == r.listen.address
            })?;
            taken[index] = true;
            Some(index)
        })
        .collect()
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
            let credentials = server.credentials();
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

/// SIGTERM and SIGHUP, watched from before "ready" is announced: a service
/// manager may send either as soon as it hears it.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn watch() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate())
            .inspect_err(|error| log::warn!("cannot watch SIGTERM: {error}"))
            .ok();
        // SIGHUP would otherwise end the process (its default action).
        let hangup = signal(SignalKind::hangup())
            .inspect_err(|error| log::warn!("cannot watch SIGHUP: {error}"))
            .ok();
        Self { term, hangup }
    }
}

/// Reloads on SIGHUP and `POST /reload` until SIGTERM or Ctrl-C.
async fn wait_for_shutdown(
    signals: &mut Signals,
    daemon: &mut Daemon,
    origin: &Origin,
    mut reloads: mpsc::Receiver<ReloadReply>,
) {
    loop {
        let reply = tokio::select! {
            Some(()) = async { signals.term.as_mut()?.recv().await } => return,
            _ = tokio::signal::ctrl_c() => return,
            Some(()) = async { signals.hangup.as_mut()?.recv().await } => None,
            Some(reply) = reloads.recv() => Some(reply),
        };
        let outcome = reload(daemon, origin);
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }
}

/// One reload, however asked for, logged with its outcome.
fn reload(daemon: &mut Daemon, origin: &Origin) -> Result<String, String> {
    let Origin::File(path) = origin else {
        log::info!("reload requested: the embedded default config has no file to re-read");
        return Ok("nothing to re-read".to_owned());
    };
    systemd::notify(&[NotifyState::Reloading]);
    let outcome = daemon.reload(Path::new(path));
    daemon.server.metrics.reloaded(outcome.is_ok());
    match &outcome {
        Ok(summary) => event!(info, "reload", result = "ok", detail = summary),
        Err(problems) => {
            for problem in problems.lines() {
                log::error!("reload-failed: {problem}");
            }
            event!(
                error,
                "reload",
                result = "failed",
                detail = "the running configuration stays"
            );
        }
    }
    systemd::notify(&[NotifyState::Ready]);
    outcome
}

/// What STATUS= tells `systemctl status`, and the watchdog's pulse.
#[derive(Clone)]
struct Status {
    server: Arc<Server>,
    tracker: Arc<ConnectionTracker>,
    signal: Arc<Signaling>,
}

impl Status {
    fn line(&self) -> String {
        let allocations = self.server.allocation_count();
        let connections = self.tracker.open_count();
        let sessions = self.signal.counts().0;
        let draining = if self.server.is_draining() {
            "draining: "
        } else {
            ""
        };
        format!(
            "{draining}{allocations} allocations, {connections} TCP/TLS connections, \
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
