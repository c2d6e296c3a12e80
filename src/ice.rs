//! `iceServers` for applications: URLs built from `public-host` and the
//! listeners, with TURN credentials (RFC 7064/7065 URI forms).

use std::net::IpAddr;

use serde_json::{Value, json};

use crate::config::{Config, Transport};

/// The host clients should use: `public-host`, else a specific listener address.
pub(crate) fn public_host(config: &Config) -> String {
    if let Some(host) = &config.public_host {
        return host.clone();
    }
    let ip = config
        .listen
        .iter()
        .map(|l| l.address.ip())
        .find(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    match ip {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    }
}

/// `stun:` URLs (UDP listeners) and `turn:`/`turns:` URLs, one per distinct
/// port and transport. A TLS listener also serves plain TCP, but only its
/// `turns:` URL is listed: a client that can do TLS should.
pub(crate) fn urls(config: &Config) -> (Vec<String>, Vec<String>) {
    let host = public_host(config);
    let mut stun = Vec::new();
    let mut turn = Vec::new();
    for listen in &config.listen {
        let port = listen.address.port();
        let turn_url = match listen.transport {
            Transport::Udp => {
                let stun_url = format!("stun:{host}:{port}");
                if !stun.contains(&stun_url) {
                    stun.push(stun_url);
                }
                format!("turn:{host}:{port}?transport=udp")
            }
            Transport::Tcp => format!("turn:{host}:{port}?transport=tcp"),
            Transport::Tls if listen.services.turn => {
                format!("turns:{host}:{port}?transport=tcp")
            }
            Transport::Tls | Transport::Http | Transport::Https => continue,
        };
        if !turn.contains(&turn_url) {
            turn.push(turn_url);
        }
    }
    (stun, turn)
}

/// A user name as the REST username's user part: it follows the expiry and
/// a ':', so it may hold no ':' itself; control characters and length are
/// cut too, since it ends up in logs.
pub(crate) fn rest_user(name: &str) -> String {
    name.chars()
        .filter(|c| *c != ':' && !c.is_control())
        .take(64)
        .collect()
}

/// An RTCConfiguration-ready `{"iceServers": [...]}` object. An entry
/// without URLs is left out: browsers reject an empty `urls`.
pub(crate) fn ice_servers(config: &Config, username: &str, credential: &str) -> Value {
    let (stun, turn) = urls(config);
    let mut servers = Vec::new();
    if !stun.is_empty() {
        servers.push(json!({ "urls": stun }));
    }
    if !turn.is_empty() {
        servers.push(json!({ "urls": turn, "username": username, "credential": credential }));
    }
    json!({ "iceServers": servers })
}
