//! coturn's listeners as `[[listen]]` tables: every listening IP on the plain ports (UDP and
//! TCP) and, when a certificate is given and loads, on the TLS ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::Environment;
use super::settings::{COTURN_PORT, COTURN_TLS_PORT, Settings};
use super::writer::{TomlWriter, quoted};

/// One `[[listen]]` table to write.
struct Listener {
    address: SocketAddr,
    transport: &'static str,
    from: String,
}

/// Writes the `[[listen]]` tables.
pub(super) fn write_listeners(w: &mut TomlWriter, s: &Settings, env: &Environment<'_>) {
    let (ips, ip_from) = if s.listening_ips.is_empty() {
        (vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)], "")
    } else {
        (s.listening_ips.clone(), "listening-ip, ")
    };
    let plain_port = s.listening_port.unwrap_or(COTURN_PORT);
    let tls_port = s.tls_listening_port.unwrap_or(COTURN_TLS_PORT);
    let tls_files = if s.no_tls { None } else { tls_files(w, s, env) };
    let plain_from = if s.listening_port.is_some() {
        "listening-port"
    } else {
        "listening-port (default)"
    };
    let tls_from = if s.tls_listening_port.is_some() {
        "tls-listening-port"
    } else {
        "tls-listening-port (default)"
    };
    let plain_ports = [
        (Some(plain_port), plain_from),
        (s.alt_listening_port, "alt-listening-port"),
    ];
    let tls_ports = [
        (Some(tls_port), tls_from),
        (s.alt_tls_listening_port, "alt-tls-listening-port"),
    ];

    let mut listeners: Vec<Listener> = Vec::new();
    let mut add = |address: SocketAddr, transport: &'static str, from: String| {
        // A tls listener serves plain TCP too, so a TLS port equal to a plain one takes it over.
        let clash = |l: &Listener| {
            l.address == address
                && (l.transport == transport || transport != "udp" && l.transport != "udp")
        };
        if let Some(at) = listeners.iter().position(clash) {
            if transport == "tls" {
                listeners[at] = Listener {
                    address,
                    transport,
                    from,
                };
            }
        } else {
            listeners.push(Listener {
                address,
                transport,
                from,
            });
        }
    };
    for ip in &ips {
        for (port, port_from) in plain_ports {
            let Some(port) = port else { continue };
            let address = SocketAddr::new(*ip, port);
            if !s.no_udp {
                add(address, "udp", format!("{ip_from}{port_from}"));
            }
            if !s.no_tcp {
                add(address, "tcp", format!("{ip_from}{port_from}"));
            }
        }
        if tls_files.is_some() {
            for (port, port_from) in tls_ports {
                let Some(port) = port else { continue };
                add(
                    SocketAddr::new(*ip, port),
                    "tls",
                    format!("{ip_from}{port_from}"),
                );
            }
        }
    }

    if listeners.is_empty() {
        w.blank();
        w.comment(
            "coturn listened on nothing icegate serves (no-udp, no-tcp and no TLS listener);\n\
             icegate needs one listener: UDP on the listening port.",
        );
        for ip in &ips {
            listeners.push(Listener {
                address: SocketAddr::new(*ip, plain_port),
                transport: "udp",
                from: format!("{ip_from}{plain_from}"),
            });
        }
    }
    for listener in &listeners {
        w.table("[[listen]]");
        w.key(
            "address",
            quoted(&listener.address.to_string()),
            &listener.from,
        );
        w.key("transport", quoted(listener.transport), &listener.from);
        if let (Some((certificate, private_key)), "tls") = (&tls_files, listener.transport) {
            w.key(
                "certificate",
                quoted(&certificate.display().to_string()),
                "cert",
            );
            w.key(
                "private-key",
                quoted(&private_key.display().to_string()),
                "pkey",
            );
        }
    }
}

/// The certificate and key of the TLS listeners, when coturn had them and they load; else
/// a comment on why there is no TLS listener.
fn tls_files(
    w: &mut TomlWriter,
    s: &Settings,
    env: &Environment<'_>,
) -> Option<(PathBuf, PathBuf)> {
    let (Some(cert), Some(pkey)) = (&s.cert, &s.pkey) else {
        w.comment(
            "No TLS listener: the coturn file gives no cert and pkey (coturn's defaults were\n\
             turn_server_cert.pem and turn_server_pkey.pem). To serve turns:, add a [[listen]]\n\
             with transport = \"tls\", certificate and private-key.",
        );
        w.blank();
        return None;
    };
    // coturn looked relative paths up next to its config file, among other places.
    let certificate = env.config_dir.join(cert);
    let private_key = env.config_dir.join(pkey);
    match (env.check_tls)(&certificate, &private_key) {
        Ok(()) => Some((certificate, private_key)),
        Err(why) => {
            w.comment(&format!(
                "No TLS listener: coturn's cert and pkey ({}, {}) do not load: {why}.\n\
                 Fix them and add a [[listen]] with transport = \"tls\".",
                certificate.display(),
                private_key.display()
            ));
            w.blank();
            None
        }
    }
}
