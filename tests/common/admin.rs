//! The daemon's admin listener from a test: plain HTTP/1.1 requests over a
//! std TCP stream (a client icegate's own code has no part in), and
//! `/metrics` parsed by the Python `prometheus-client` package's parsers
//! (`tests/metrics_parse.py`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::{TestDaemon, python_json};

/// The longest one admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// metrics_parse.py only parses two small files.
const PARSE_DEADLINE: Duration = Duration::from_secs(20);

/// An answer: status code, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// `METHOD path` to the admin listener at `admin`, with `Authorization:
/// Bearer TOKEN` if given and any `extra` header lines.
pub fn request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[&str],
) -> Answer {
    let mut stream = TcpStream::connect(admin).expect("connect to the admin listener");
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .expect("read timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(head.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path}: no full answer: {e}"));
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no header end in {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {text:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// One scrape of `/metrics`: every sample, by name and labels.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// Family name → type, as the parser saw them.
    pub families: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

fn sample_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

impl Scrape {
    /// Scrapes `daemon` in both text formats and parses them.
    pub fn of(daemon: &TestDaemon, token: Option<&str>) -> Self {
        let classic = request(daemon.admin, "GET", "/metrics", token, &[]);
        assert_eq!(classic.status, 200, "{}", classic.body);
        assert_eq!(
            classic.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let openmetrics = request(
            daemon.admin,
            "GET",
            "/metrics",
            token,
            &["Accept: application/openmetrics-text; version=1.0.0"],
        );
        assert_eq!(openmetrics.status, 200, "{}", openmetrics.body);
        assert!(
            openmetrics
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/openmetrics-text")),
            "{:?}",
            openmetrics.headers
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let classic_path = dir.path().join("classic.txt");
        let openmetrics_path = dir.path().join("openmetrics.txt");
        std::fs::write(&classic_path, &classic.body).expect("write");
        std::fs::write(&openmetrics_path, &openmetrics.body).expect("write");
        let parsed = python_json(
            "metrics_parse.py",
            &[
                classic_path.display().to_string(),
                openmetrics_path.display().to_string(),
            ],
            PARSE_DEADLINE,
            "prometheus-client",
        );
        let families = parsed["families"]
            .as_object()
            .expect("families")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let mut samples = BTreeMap::new();
        for sample in parsed["samples"].as_array().expect("samples") {
            let name = sample[0].as_str().expect("sample name");
            let labels: Vec<(&str, &str)> = sample[1]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()))
                .collect();
            let value = sample[2].as_f64().expect("sample value");
            samples.insert(sample_key(name, &labels), value);
        }
        Self { families, samples }
    }

    /// The value of sample `name` with exactly `labels`; the test fails if there is none.
    #[track_caller]
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = sample_key(name, labels);
        *self
            .samples
            .get(&key)
            .unwrap_or_else(|| panic!("no sample {key} in {:#?}", self.samples.keys()))
    }

    /// How much every sample changed since `before`, leaving out those that did not.
    pub fn changes_since(&self, before: &Scrape) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter_map(|(key, &now)| {
                let was = before.samples.get(key).copied().unwrap_or(0.0);
                (now != was).then(|| (key.clone(), now - was))
            })
            .collect()
    }
}

/// The key [`Scrape::changes_since`] lists a sample under.
pub fn key(name: &str, labels: &[(&str, &str)]) -> String {
    sample_key(name, labels)
}
