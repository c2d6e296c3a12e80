//! `icegate ctl`: the admin API (`crate::admin`) from the command line, with
//! the address and token read from the config file or given outright.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::bans::time_text;
use crate::config::{self, Config};

/// The config file `ctl` reads the admin address and token from by default.
const DEFAULT_CONFIG: &str = "/etc/icegate/icegate.toml";
/// How long one request may take; a reload gets longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(70);
/// sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 78;

#[derive(Args, Debug)]
pub(crate) struct Ctl {
    /// The config file to read `[admin] address` and `token` from
    /// (default /etc/icegate/icegate.toml, unless --admin is given).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The admin listener, like http://127.0.0.1:9641.
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// The admin token (default: `[admin] token` of the config file).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// Health, allocations and connections now.
    Status,
    /// List allocations, all or one user's.
    Allocations {
        #[arg(long)]
        user: Option<String>,
    },
    /// List signaling sessions, all or one user's.
    Sessions {
        #[arg(long)]
        user: Option<String>,
    },
    /// End a user's allocations and signaling connections.
    Kill { user: String },
    /// End a user's allocations and signaling connections and refuse new
    /// ones (static, TURN REST and token alike) until unbanned.
    Ban {
        user: String,
        /// End the ban by itself after this long, like 30m or 1h.
        #[arg(long = "for", value_name = "DURATION", value_parser = config::parse_duration)]
        duration: Option<Duration>,
    },
    /// Lift a user's ban.
    Unban { user: String },
    /// List the bans in force.
    Bans,
    /// Refuse new allocations and connections; existing ones carry on.
    Drain,
    /// Reload the configuration, as SIGHUP does, and say how it went.
    Reload,
}

/// Where to send requests, and with which token.
struct Target {
    base: String,
    authority: String,
    token: Option<String>,
}

/// A failure, as printed before exiting.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

pub(crate) fn main(ctl: Ctl) -> ExitCode {
    let result = target(&ctl).and_then(|target| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::new(format!("cannot start: {e}")))?;
        runtime.block_on(run(&target, &ctl.command))
    });
    match result {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("icegate ctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn target(ctl: &Ctl) -> Result<Target, Failure> {
    let config = match (&ctl.config, &ctl.admin) {
        (None, Some(_)) => None,
        (path, _) => {
            let path = path
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            Some(Config::load(&path).map_err(|errors| Failure {
                message: format!(
                    "cannot read the admin address from the config:\n{errors}\n\
                     (or give it with --admin http://HOST:PORT)"
                ),
                code: EXIT_CONFIG,
            })?)
        }
    };
    let base = match (&ctl.admin, &config) {
        (Some(url), _) => url.trim_end_matches('/').to_owned(),
        (None, Some(config)) => format!("http://{}", reachable(config.admin.address)),
        (None, None) => unreachable!("a config is loaded without --admin"),
    };
    let uri: Uri = base
        .parse()
        .map_err(|e| Failure::new(format!("--admin {base}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(Failure::new(format!(
            "--admin {base}: expected an http:// URL like http://127.0.0.1:9641"
        )));
    }
    let Some(authority) = uri.authority().map(|a| a.to_string()) else {
        return Err(Failure::new(format!("--admin {base}: no host and port")));
    };
    let token = ctl
        .token
        .clone()
        .or_else(|| config.and_then(|c| c.admin.token));
    Ok(Target {
        base,
        authority,
        token,
    })
}

/// A wildcard listen address is reached on loopback.
fn reachable(address: SocketAddr) -> SocketAddr {
    let ip = match address {
        SocketAddr::V4(a) if a.ip().is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        other => other.ip(),
    };
    SocketAddr::new(ip, address.port())
}

async fn run(target: &Target, command: &CtlCommand) -> Result<String, Failure> {
    match command {
        CtlCommand::Status => status(target).await,
        CtlCommand::Allocations { user } => {
            let path = match user {
                Some(user) => format!("/allocations?user={}", encode(user)),
                None => "/allocations".to_owned(),
            };
            let list = json(request(target, Method::GET, &path).await?)?;
            Ok(allocation_table(&list))
        }
        CtlCommand::Sessions { user } => {
            let path = match user {
                Some(user) => format!("/sessions?user={}", encode(user)),
                None => "/sessions".to_owned(),
            };
            let list = json(request(target, Method::GET, &path).await?)?;
            Ok(session_table(&list))
        }
        CtlCommand::Kill { user } => {
            let path = format!("/allocations?user={}", encode(user));
            let answer = json(request(target, Method::DELETE, &path).await?)?;
            Ok(format!(
                "ended {} allocations and {} signaling sessions of {user}\n",
                answer["allocations"], answer["signal_sessions"]
            ))
        }
        CtlCommand::Ban { user, duration } => {
            let mut path = format!("/bans?user={}", encode(user));
            if let Some(duration) = duration {
                path.push_str(&format!("&for={}ms", duration.as_millis()));
            }
            let answer = json(request(target, Method::POST, &path).await?)?;
            let until = match answer["until"].as_u64() {
                Some(until) => format!("until {}", time_text(Some(until))),
                None => "until unbanned".to_owned(),
            };
            Ok(format!(
                "banned {user} {until}; ended {} allocations and {} signaling sessions\n",
                answer["allocations"], answer["signal_sessions"]
            ))
        }
        CtlCommand::Unban { user } => {
            let path = format!("/bans?user={}", encode(user));
            request(target, Method::DELETE, &path).await?;
            Ok(format!("unbanned {user}\n"))
        }
        CtlCommand::Bans => {
            let list = json(request(target, Method::GET, "/bans").await?)?;
            Ok(ban_table(&list))
        }
        CtlCommand::Drain => {
            let answer = json(request(target, Method::POST, "/drain").await?)?;
            Ok(format!(
                "draining: new allocations and connections are refused; {} allocations remain\n",
                answer["allocations"]
            ))
        }
        CtlCommand::Reload => {
            let answer = json(request(target, Method::POST, "/reload").await?)?;
            Ok(format!(
                "reloaded: {}\n",
                answer["message"].as_str().unwrap_or("")
            ))
        }
    }
}

async fn status(target: &Target) -> Result<String, Failure> {
    let health = match request(target, Method::GET, "/healthz").await {
        Ok(body) => body.trim().to_owned(),
        Err(failure) if failure.message.contains(" 503 ") => "draining".to_owned(),
        Err(failure) => return Err(failure),
    };
    let metrics = request(target, Method::GET, "/metrics").await?;
    let sample = |name: &str| sum_of(&metrics, name, |_| true);
    let by_transport = |name: &str| -> String {
        ["udp", "tcp", "tls"]
            .iter()
            .map(|t| {
                let labels = format!("transport=\"{t}\"");
                format!("{t} {}", sum_of(&metrics, name, |l| l == labels))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let version = metrics
        .lines()
        .find_map(|l| l.strip_prefix("icegate_build_info{version=\""))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("?");
    Ok(format!(
        "icegate {version} at {}: {health}\n\
         allocations: {} ({})\n\
         allocations made since start: {}\n\
         TCP/TLS connections: {}\n\
         signaling connections: {}, rooms: {}\n",
        target.base,
        sample("icegate_allocations"),
        by_transport("icegate_allocations"),
        sample("icegate_allocations_created_total"),
        sample("icegate_stream_connections"),
        sample("icegate_signal_connections"),
        sample("icegate_signal_rooms"),
    ))
}

/// The sum of the samples of `name` whose labels (the text between the
/// braces) pass `labels`, in the classic text format.
fn sum_of(metrics: &str, name: &str, labels: impl Fn(&str) -> bool) -> u64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(key, _)| {
            let (sample, rest) = key.split_once('{').unwrap_or((key, "}"));
            sample == name && labels(rest.trim_end_matches('}'))
        })
        .filter_map(|(_, value)| value.parse::<u64>().ok())
        .sum()
}

fn allocation_table(list: &Value) -> String {
    let rows = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if rows.is_empty() {
        return "no allocations\n".to_owned();
    }
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let traffic = |v: &Value| format!("{}B/{}p", v["bytes"], v["packets"]);
    // Both relays of a dual-stack allocation; a daemon without the list has one.
    let relayed = |row: &Value| {
        let addresses = match row["relayed_addresses"].as_array() {
            Some(addresses) if !addresses.is_empty() => {
                addresses.iter().map(text).collect::<Vec<_>>().join(",")
            }
            _ => text(&row["relayed"]),
        };
        // A TCP relay (RFC 6062) says so, with its peer connections.
        if row["relay_transport"] == "tcp" {
            format!("{addresses} (tcp, {} peers)", row["peer_connections"])
        } else {
            addresses
        }
    };
    let mut table = vec![
        [
            "USER",
            "TRANSPORT",
            "CLIENT",
            "RELAYED",
            "AGE",
            "TO PEER",
            "FROM PEER",
        ]
        .map(str::to_owned),
    ];
    for row in rows {
        table.push([
            text(&row["user"]),
            text(&row["transport"]),
            text(&row["client"]),
            relayed(row),
            format!("{}s", row["age_seconds"]),
            traffic(&row["to_peer"]),
            traffic(&row["from_peer"]),
        ]);
    }
    columns(&table)
}

fn session_table(list: &Value) -> String {
    let rows = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if rows.is_empty() {
        return "no signaling sessions\n".to_owned();
    }
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let mut table = vec![["USER", "PEER", "ROOMS", "STATE", "NODE", "AGE"].map(str::to_owned)];
    for row in rows {
        let rooms: Vec<String> = row["rooms"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|r| format!("{}:{}", text(&r["room"]), text(&r["peer"])))
            .collect();
        table.push([
            text(&row["user"]),
            text(&row["peer"]),
            if rooms.is_empty() {
                "-".to_owned()
            } else {
                rooms.join(",")
            },
            text(&row["state"]),
            // Named with `[cluster]` only.
            row["node"]
                .as_str()
                .map_or_else(|| "-".to_owned(), str::to_owned),
            format!("{}s", row["age_seconds"]),
        ]);
    }
    columns(&table)
}

fn ban_table(list: &Value) -> String {
    let rows = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if rows.is_empty() {
        return "no bans\n".to_owned();
    }
    let mut table = vec![["USER", "UNTIL", "BANNED"].map(str::to_owned)];
    for row in rows {
        table.push([
            row["user"].as_str().unwrap_or_default().to_owned(),
            time_text(row["until"].as_u64()),
            time_text(Some(row["since"].as_u64().unwrap_or_default())),
        ]);
    }
    columns(&table)
}

/// Rows as left-aligned columns two spaces apart.
fn columns<const N: usize>(table: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn json(body: String) -> Result<Value, Failure> {
    serde_json::from_str(&body)
        .map_err(|e| Failure::new(format!("unexpected answer ({e}): {body}")))
}

/// One request; the body of a 2xx answer, or a failure saying what came back.
async fn request(target: &Target, method: Method, path: &str) -> Result<String, Failure> {
    let limit = if path == "/reload" {
        RELOAD_TIMEOUT
    } else {
        REQUEST_TIMEOUT
    };
    let url = format!("{}{path}", target.base);
    tokio::time::timeout(limit, exchange(target, method, path))
        .await
        .map_err(|_| Failure::new(format!("{url}: no answer within {limit:?}")))?
        .map_err(|message| Failure::new(format!("{url}: {message}")))
}

async fn exchange(target: &Target, method: Method, path: &str) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(&target.authority)
        .await
        .map_err(|e| {
            format!("cannot connect: {e}; is icegate running with this [admin] address?")
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, &target.authority)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    if let Some(token) = &target.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        return Ok(body);
    }
    let why = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    let hint = if status == StatusCode::UNAUTHORIZED {
        " (give the admin token with --token, or [admin] token in --config)"
    } else {
        ""
    };
    Err(format!("{} {why}{hint}", status.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_by_name_and_labels() {
        let metrics = "# TYPE a gauge\na{t=\"udp\"} 2\na{t=\"tcp\"} 3\nab 7\nb 1\n";
        assert_eq!(sum_of(metrics, "a", |_| true), 5);
        assert_eq!(sum_of(metrics, "a", |l| l == "t=\"tcp\""), 3);
        assert_eq!(sum_of(metrics, "b", |_| true), 1);
    }

    #[test]
    fn bans_are_listed_with_their_times() {
        let list = serde_json::json!([
            { "user": "alice", "since": 1_800_000_000u64, "until": null },
            { "user": "bob", "since": 1_800_000_000u64, "until": 1_800_003_600u64 },
        ]);
        assert_eq!(
            ban_table(&list),
            "USER   UNTIL                 BANNED\n\
             alice  permanent             2027-01-15T08:00:00Z\n\
             bob    2027-01-15T09:00:00Z  2027-01-15T08:00:00Z\n"
        );
        assert_eq!(ban_table(&serde_json::json!([])), "no bans\n");
    }

    #[test]
    fn allocations_show_both_relays_of_a_dual_stack_one() {
        let traffic = serde_json::json!({ "bytes": 0, "packets": 0 });
        let list = serde_json::json!([
            {
                "user": "alice", "transport": "udp", "client": "127.0.0.1:5000",
                "relayed": "127.0.0.1:50000",
                "relayed_addresses": ["127.0.0.1:50000", "[::1]:50001"],
                "age_seconds": 3, "to_peer": traffic, "from_peer": traffic,
            },
            {
                "user": "bob", "transport": "udp", "client": "127.0.0.1:5001",
                "relayed": "127.0.0.1:50002",
                "age_seconds": 4, "to_peer": traffic, "from_peer": traffic,
            },
        ]);
        let table = allocation_table(&list);
        assert!(table.contains(" 127.0.0.1:50000,[::1]:50001 "), "{table}");
        assert!(
            table.contains(" 127.0.0.1:50002 "),
            "an older daemon's listing: {table}"
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("alice"), "alice");
        assert_eq!(encode("a b&c:d"), "a%20b%26c%3Ad");
    }

    #[test]
    fn wildcard_admin_addresses_are_reached_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:9641".parse().unwrap()),
            "127.0.0.1:9641".parse().unwrap()
        );
        assert_eq!(
            reachable("[::]:9641".parse().unwrap()),
            "[::1]:9641".parse().unwrap()
        );
    }
}
