//! The scrape behind `GET /metrics`: the counters of [`crate::metrics`] and
//! [`crate::reject`] beside the live state (allocations, connections,
//! rooms), read at each scrape and encoded with `prometheus-client`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::metrics::{
    DIRECTIONS, FRAMINGS, LIMIT_REFUSALS, Limit, SIGNAL_PROTOCOLS, SignalHeld, SignalMessage,
    TURN_TRANSPORTS, read, relay_index, turn_transport_index,
};
use crate::reject::Reject;
use crate::server::{Server, unix_now};
use crate::signal::Signaling;
use crate::transport::stream::ConnectionTracker;

/// What a scrape reads besides the counters.
pub(crate) struct Sources {
    pub(crate) server: Arc<Server>,
    pub(crate) tracker: Arc<ConnectionTracker>,
    pub(crate) signal: Arc<Signaling>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sources")
    }
}

/// The registry `/metrics` encodes: every metric under `icegate_`.
pub(crate) fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::with_prefix("icegate");
    registry.register_collector(Box::new(sources));
    registry
}

/// The two text formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenMetrics 1.0, for clients that ask for it (Prometheus does).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4, for every other client.
    Classic,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it.
    pub(crate) fn for_accept(accept: Option<&str>) -> Self {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            Self::OpenMetrics
        } else {
            Self::Classic
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// `/metrics`: `registry` encoded in `format`.
pub(crate) fn render(registry: &Registry, format: Format) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    match format {
        Format::OpenMetrics => text,
        Format::Classic => classic(&text),
    }
}

/// OpenMetrics text as the classic format writes it: a counter family is
/// named with its `_total` suffix in HELP and TYPE, and there is no UNIT or
/// EOF line. The samples are the same.
fn classic(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + counters.len() * 12);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(&name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn to_i64(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// One member per TURN transport.
fn by_transport<M>(
    values: [u64; TURN_TRANSPORTS.len()],
    make: impl Fn(u64) -> M,
) -> Vec<(Vec<(&'static str, &'static str)>, M)> {
    TURN_TRANSPORTS
        .iter()
        .zip(values)
        .map(|(t, n)| (vec![("transport", t.as_str())], make(n)))
        .collect()
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A family of one metric per label set.
fn family<'l, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric_type: MetricType,
    members: impl IntoIterator<Item = (Vec<(&'static str, &'l str)>, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in members {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter family with one label: one counter per `(label value, count)`.
fn counters<'l>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (&'l str, u64)>,
) -> fmt::Result {
    let members = values
        .into_iter()
        .map(|(value, n)| (vec![(label, value)], ConstCounter::new(n)));
    family(encoder, name, help, MetricType::Counter, members)
}

/// A counter family with one counter per TURN transport.
fn transport_counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: [u64; TURN_TRANSPORTS.len()],
) -> fmt::Result {
    let members = by_transport(values, ConstCounter::new);
    family(encoder, name, help, MetricType::Counter, members)
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let server = &self.server;
        let metrics = &server.metrics;
        let rejects = &server.rejects;
        let e = &mut encoder;

        let mut current = [0u64; TURN_TRANSPORTS.len()];
        server.for_each_allocation(|allocation| {
            if let Some(i) = turn_transport_index(allocation.five_tuple.transport) {
                current[i] += 1;
            }
        });
        family(
            e,
            "allocations",
            "Allocations now, by the transport between client and server",
            MetricType::Gauge,
            by_transport(current, |n| ConstGauge::new(to_i64(n))),
        )?;
        transport_counters(
            e,
            "allocations_created",
            "Allocations made, by the transport between client and server",
            each(&metrics.allocations_created),
        )?;
        let relay_members = |values: &[AtomicU64; 6]| {
            let mut members = Vec::new();
            for (direction, direction_name) in DIRECTIONS {
                for (framing, framing_name) in FRAMINGS {
                    let n = read(&values[relay_index(direction, framing)]);
                    members.push((
                        vec![("direction", direction_name), ("framing", framing_name)],
                        ConstCounter::new(n),
                    ));
                }
            }
            members
        };
        family(
            e,
            "relayed_packets",
            "Packets relayed, by direction and by framing between client and server \
             (ChannelData, or Send and Data indications)",
            MetricType::Counter,
            relay_members(&metrics.relayed_packets),
        )?;
        family(
            e,
            "relayed_bytes",
            "Payload bytes relayed, by direction and framing",
            MetricType::Counter,
            relay_members(&metrics.relayed_bytes),
        )?;
        counter(
            e,
            "peers_refused",
            "Permissions and channels refused by the peer address policy",
            rejects.get(Reject::PeerRefused),
        )?;
        counters(
            e,
            "auth_failures",
            "TURN requests whose credentials failed, by reason",
            "reason",
            Reject::ALL
                .into_iter()
                .filter(|r| r.is_auth_failure())
                .map(|r| (r.name(), rejects.get(r))),
        )?;
        transport_counters(
            e,
            "stun_binding_responses",
            "STUN Binding success responses, by transport",
            each(&metrics.binding_responses),
        )?;
        counters(
            e,
            "refusals",
            "Requests answered with an error, and packets and connections dropped, by reason \
             (\"challenge\" is the normal first 401 of every client)",
            "reason",
            Reject::ALL.into_iter().map(|r| (r.name(), rejects.get(r))),
        )?;
        counters(
            e,
            "tls_handshakes",
            "TLS handshakes, by result",
            "result",
            [
                ("ok", read(&metrics.tls_handshakes_ok)),
                ("failed", rejects.get(Reject::TlsHandshakeFailed)),
            ],
        )?;
        let (sources, users) = server.throttle_tracked();
        family(
            e,
            "throttle_tracked",
            "Sources (addresses, IPv6 /64s) and users with failed logins the throttle \
             tracks now; each table holds at most throttle.max-tracked",
            MetricType::Gauge,
            [("sources", sources), ("users", users)]
                .into_iter()
                .map(|(table, n)| (vec![("table", table)], ConstGauge::new(to_i64(n)))),
        )?;
        gauge(
            e,
            "stream_connections",
            "TCP and TLS connections open now (TURN and HTTP)",
            i64::from(self.tracker.open_count()),
        )?;
        gauge(
            e,
            "tcp_peer_connections",
            "Peer connections of TCP allocations (RFC 6062) now: connecting, waiting \
             for ConnectionBind, or joined to a client's data connection",
            to_i64(self.server.peer_connection_count()),
        )?;
        let (connections, sessions, rooms) = self.signal.connection_counts();
        gauge(
            e,
            "signal_held_messages",
            "Signals held now for peers not yet in their room",
            to_i64(self.signal.held_count()),
        )?;
        counters(
            e,
            "signal_holds",
            "Signals held for peers on their way, and what became of them",
            "outcome",
            SignalHeld::ALL
                .into_iter()
                .zip(&metrics.signal_held)
                .map(|(outcome, n)| (outcome.name(), read(n))),
        )?;
        gauge(
            e,
            "signal_connections",
            "Signaling WebSocket connections open now",
            to_i64(connections),
        )?;
        gauge(
            e,
            "signal_sessions",
            "Signaling sessions now, with those held for a resume",
            to_i64(sessions),
        )?;
        counter(
            e,
            "signal_connections_opened",
            "Signaling WebSocket connections accepted",
            read(&metrics.signal_connections_opened),
        )?;
        counters(
            e,
            "signal_protocol_connections_opened",
            "Signaling WebSocket connections accepted, by protocol (icegate's native one, \
             y-webrtc's, PeerJS's)",
            "protocol",
            SIGNAL_PROTOCOLS
                .into_iter()
                .zip(&metrics.signal_protocol_connections)
                .map(|(protocol, count)| (protocol, read(count))),
        )?;
        gauge(
            e,
            "signal_rooms",
            "Signaling rooms with at least one peer now",
            to_i64(rooms),
        )?;
        counters(
            e,
            "signal_messages",
            "Signaling messages received from clients, by type",
            "type",
            SignalMessage::ALL
                .into_iter()
                .zip(&metrics.signal_messages)
                .map(|(kind, n)| (kind.name(), read(n))),
        )?;
        let counted = Limit::ALL
            .into_iter()
            .zip(&metrics.limit_hits)
            .map(|(limit, n)| (limit.key(), read(n)));
        let refused = LIMIT_REFUSALS
            .into_iter()
            .map(|(key, reject)| (key, rejects.get(reject)));
        counters(
            e,
            "limit_hits",
            "Requests, connections and messages refused by a configured limit, by its key",
            "limit",
            counted.chain(refused),
        )?;
        counters(
            e,
            "reloads",
            "Reloads (SIGHUP or POST /reload), by result",
            "result",
            [
                ("ok", read(&metrics.reloads[0])),
                ("failed", read(&metrics.reloads[1])),
            ],
        )?;
        let cluster = &metrics.cluster;
        if cluster.is_enabled() {
            gauge(
                e,
                "cluster_redis_up",
                "1 while the Redis server that carries signaling between nodes is reachable",
                i64::from(cluster.is_up()),
            )?;
            counter(
                e,
                "cluster_outages",
                "Times Redis went away (or could not be reached at start)",
                read(&cluster.outages),
            )?;
            counters(
                e,
                "cluster_messages",
                "Messages between nodes: published, received from other nodes, malformed \
                 (dropped), and lost with the link after being accepted (their senders told)",
                "result",
                [
                    ("published", read(&cluster.published)),
                    ("received", read(&cluster.received)),
                    ("malformed", read(&cluster.malformed)),
                    ("lost", read(&cluster.lost)),
                ],
            )?;
        }
        gauge(
            e,
            "bans",
            "Users banned now (icegate ctl ban)",
            to_i64(server.bans().list().count(unix_now())),
        )?;
        gauge(
            e,
            "draining",
            "1 while draining (POST /drain or SIGTERM): new allocations and connections refused",
            i64::from(server.is_draining()),
        )?;
        family(
            e,
            "build_info",
            "The running version",
            MetricType::Gauge,
            [(
                vec![("version", env!("CARGO_PKG_VERSION"))],
                ConstGauge::new(1),
            )],
        )
    }
}

fn each<const N: usize>(counters: &[AtomicU64; N]) -> [u64; N] {
    std::array::from_fn(|i| read(&counters[i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_their_suffix() {
        let openmetrics = "# HELP a_b Bees.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n\
                           # HELP a_c Cees now.\n# TYPE a_c gauge\na_c 3\n# EOF\n";
        assert_eq!(
            classic(openmetrics),
            "# HELP a_b_total Bees.\n# TYPE a_b_total counter\na_b_total{x=\"1\"} 2\n\
             # HELP a_c Cees now.\n# TYPE a_c gauge\na_c 3\n"
        );
        assert_eq!(
            Format::for_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::for_accept(Some("*/*")), Format::Classic);
    }
}
