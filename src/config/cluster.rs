//! The `[cluster]` table: the Redis server that carries signaling between nodes, and this
//! node's name and liveness in it. Without `redis`, icegate is a single node.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::IntoConnectionInfo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::io_message;
use super::walk::{Ctx, Section};

const CLUSTER_KEYS: &[&str] = &[
    "redis",
    "redis-ca-file",
    "redis-password-file",
    "node-name",
    "node-ttl",
    "max-backlog",
];
/// A node silent this long is taken for dead and its peers leave their rooms.
pub(crate) const DEFAULT_NODE_TTL: Duration = Duration::from_secs(15);
/// Below this the heartbeat (a third of it) would race Redis round trips.
const MIN_NODE_TTL: Duration = Duration::from_secs(1);
/// Messages waiting for Redis per node; past it a publish is refused.
pub(crate) const DEFAULT_MAX_BACKLOG: u32 = 10_000;
/// Node names go into Redis key names: short, and without the `:` that separates key parts.
pub(crate) const MAX_NODE_NAME_CHARS: usize = 64;
/// A password file is read whole; nothing sensible is larger.
const MAX_PASSWORD_FILE_BYTES: u64 = 4096;

/// The `[cluster]` table. `Debug` redacts the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ClusterConfig {
    /// `redis://` or `rediss://` URL without a password; `None`: a single node.
    pub(crate) redis: Option<String>,
    /// CA certificates (PEM) a `rediss://` server's certificate must chain to; without it,
    /// the system's roots.
    pub(crate) redis_ca: Option<CaFile>,
    /// The password read from `redis-password-file`.
    pub(crate) redis_password: Option<String>,
    pub(crate) redis_password_file: Option<PathBuf>,
    /// Unique per node; `None`: the host name and a random suffix, chosen at start.
    pub(crate) node_name: Option<String>,
    pub(crate) node_ttl: Duration,
    pub(crate) max_backlog: u32,
}

/// A PEM file of CA certificates, read and checked at load time.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct CaFile {
    pub(crate) path: PathBuf,
    pub(crate) pem: Vec<u8>,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &self.redis)
            .field("redis_ca", &self.redis_ca.as_ref().map(|ca| &ca.path))
            .field(
                "redis_password",
                &self.redis_password.as_ref().map(|_| "<redacted>"),
            )
            .field("redis_password_file", &self.redis_password_file)
            .field("node_name", &self.node_name)
            .field("node_ttl", &self.node_ttl)
            .field("max_backlog", &self.max_backlog)
            .finish()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: None,
            redis_ca: None,
            redis_password: None,
            redis_password_file: None,
            node_name: None,
            node_ttl: DEFAULT_NODE_TTL,
            max_backlog: DEFAULT_MAX_BACKLOG,
        }
    }
}

pub(super) fn read_cluster(cx: &mut Ctx<'_>, top: &Section<'_, '_>) -> ClusterConfig {
    let table = top.section(cx, "cluster", CLUSTER_KEYS);
    let redis = table.opt::<String>(cx, "redis");
    let mut url_ok = redis.ok;
    if let Some(url) = &redis.value
        && let Err(message) = check_redis_url(url)
    {
        url_ok = false;
        cx.report(table.key("redis"), redis.span.as_ref(), message);
    }
    let tls = redis
        .value
        .as_deref()
        .is_some_and(|url| url.starts_with("rediss://"));

    let ca_path = table.opt::<PathBuf>(cx, "redis-ca-file");
    let redis_ca = ca_path.value.and_then(|path| {
        let path = resolve(cx, path);
        let key = table.key("redis-ca-file");
        if redis.value.is_some() && url_ok && !tls {
            let message = "redis-ca-file needs a rediss:// URL in cluster.redis";
            cx.report(&key, ca_path.span.as_ref(), message);
            return None;
        }
        match cx.may_read(&path).and_then(|()| read_ca_file(&path)) {
            Ok(pem) => Some(CaFile { path, pem }),
            Err(message) => {
                cx.report(&key, ca_path.span.as_ref(), message);
                None
            }
        }
    });

    let password_path = table.opt::<PathBuf>(cx, "redis-password-file");
    let redis_password_file = password_path.value.map(|path| resolve(cx, path));
    let redis_password = redis_password_file.as_ref().and_then(|path| {
        match cx.may_read(path).and_then(|()| read_password_file(path)) {
            Ok(password) => Some(password),
            Err(message) => {
                let key = table.key("redis-password-file");
                cx.report(key, password_path.span.as_ref(), message);
                None
            }
        }
    });

    let node_name = table.opt::<String>(cx, "node-name");
    if let Some(name) = &node_name.value
        && !is_node_name(name)
    {
        let message = format!(
            "expected 1 to {MAX_NODE_NAME_CHARS} letters, digits, '.', '_' or '-' \
             (unique per node), got {name:?}"
        );
        cx.report(table.key("node-name"), node_name.span.as_ref(), message);
    }
    let node_ttl = table.get(cx, "node-ttl", DEFAULT_NODE_TTL);
    if node_ttl.ok && node_ttl.value < MIN_NODE_TTL {
        let message = format!(
            "expected at least {}, got {}",
            humantime::format_duration(MIN_NODE_TTL),
            humantime::format_duration(node_ttl.value)
        );
        cx.report(table.key("node-ttl"), node_ttl.span.as_ref(), message);
    }
    let max_backlog = table.get(cx, "max-backlog", DEFAULT_MAX_BACKLOG);

    ClusterConfig {
        redis: redis.value,
        redis_ca,
        redis_password,
        redis_password_file,
        node_name: node_name.value,
        node_ttl: node_ttl.value,
        max_backlog: max_backlog.value,
    }
}

fn resolve(cx: &Ctx<'_>, path: PathBuf) -> PathBuf {
    match cx.base_dir {
        Some(base) if path.is_relative() => base.join(path),
        _ => path,
    }
}

/// A URL the Redis client takes, `redis://` or `rediss://`, without a password: one in the
/// URL would show wherever the config or the URL is printed. Messages never quote the URL.
fn check_redis_url(url: &str) -> Result<(), String> {
    const WHAT: &str = "expected a URL like \"redis://127.0.0.1:6379\" or \
                        \"rediss://redis.example.org:6380\"";
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(format!("{WHAT} (redis:// or rediss://)"));
    }
    let info = url
        .into_connection_info()
        .map_err(|e| format!("{WHAT}: {}", e.detail().unwrap_or("cannot parse it")))?;
    if info.redis_settings().password().is_some() {
        return Err(
            "a password in the URL is readable wherever the URL is shown: put it in a file \
             named by cluster.redis-password-file instead"
                .to_owned(),
        );
    }
    Ok(())
}

/// 1 to [`MAX_NODE_NAME_CHARS`] of `[A-Za-z0-9._-]`.
pub(crate) fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display().to_string();
    let pem = fs::read(path).map_err(|e| format!("cannot read {shown:?}: {}", io_message(&e)))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("expected {shown:?} to hold PEM certificates: {e}"))?;
    if certificates.is_empty() {
        return Err(format!(
            "expected {shown:?} to hold at least one PEM certificate, it holds none"
        ));
    }
    Ok(pem)
}

/// The file's first line, without surrounding blanks; messages never quote it.
fn read_password_file(path: &Path) -> Result<String, String> {
    let shown = path.display().to_string();
    let cannot = |e: std::io::Error| format!("cannot read {shown:?}: {}", io_message(&e));
    if fs::metadata(path).map_err(cannot)?.len() > MAX_PASSWORD_FILE_BYTES {
        return Err(format!(
            "expected {shown:?} to hold one line (a password), it is larger than \
             {MAX_PASSWORD_FILE_BYTES} bytes"
        ));
    }
    let text = fs::read_to_string(path).map_err(cannot)?;
    match text.lines().next().map(str::trim) {
        Some(password) if !password.is_empty() => Ok(password.to_owned()),
        _ => Err(format!(
            "expected {shown:?} to hold a password on its first line, it is empty"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::testing::{MINIMAL, parse_err, parse_ok, scratch_dir};

    fn cluster(keys: &str) -> String {
        format!("{MINIMAL}\n[cluster]\n{keys}")
    }

    #[test]
    fn single_node_by_default() {
        let config = parse_ok(MINIMAL);
        assert_eq!(config.cluster, ClusterConfig::default());
        assert_eq!(config.cluster.redis, None);
        assert_eq!(config.cluster.node_ttl, Duration::from_secs(15));
        assert_eq!(config.cluster.max_backlog, 10_000);
    }

    #[test]
    fn every_key_is_read() {
        let dir = scratch_dir();
        fs::write(dir.join("redis-password"), "s3cret-pass\n# ignored\n").unwrap();
        let path = dir.join("icegate.toml");
        let text = cluster(
            "redis = \"redis://127.0.0.1:6379/2\"\nredis-password-file = \"redis-password\"\n\
             node-name = \"eu-1.a_b\"\nnode-ttl = \"3s\"\nmax-backlog = 5\n",
        );
        fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let c = &config.cluster;
        assert_eq!(c.redis.as_deref(), Some("redis://127.0.0.1:6379/2"));
        assert_eq!(c.redis_password.as_deref(), Some("s3cret-pass"));
        assert_eq!(c.redis_password_file, Some(dir.join("redis-password")));
        assert_eq!(c.node_name.as_deref(), Some("eu-1.a_b"));
        assert_eq!(c.node_ttl, Duration::from_secs(3));
        assert_eq!(c.max_backlog, 5);
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "Debug leaks the password"
        );
    }

    #[test]
    fn rediss_takes_a_ca_file() {
        let dir = scratch_dir();
        let ca = dir.join("ca.pem");
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-subj",
                "/CN=icegate-test-ca",
                "-days",
                "1",
                "-keyout",
            ])
            .arg(dir.join("ca.key"))
            .arg("-out")
            .arg(&ca)
            .output()
            .expect("run openssl");
        assert!(made.status.success(), "{made:?}");
        let text = cluster(&format!(
            "redis = \"rediss://127.0.0.1:6380\"\nredis-ca-file = \"{}\"\n",
            ca.display()
        ));
        let config = parse_ok(&text);
        let got = config.cluster.redis_ca.expect("a CA");
        assert_eq!(got.path, ca);
        assert_eq!(got.pem, fs::read(&ca).unwrap());
    }

    #[test]
    fn problems_name_key_and_line() {
        let dir = scratch_dir();
        let empty = dir.join("empty-password");
        fs::write(&empty, "\n").unwrap();
        let not_pem = dir.join("not.pem");
        fs::write(&not_pem, "hello\n").unwrap();
        let e = parse_err(&cluster(&format!(
            "redis = \"http://127.0.0.1\"\nnode-name = \"a:b\"\nnode-ttl = \"500ms\"\n\
             max-backlog = 0\nredis-password-file = \"{}\"\nredis-ca-file = \"{}\"\nport = 1\n",
            empty.display(),
            not_pem.display()
        )))
        .to_string();
        for want in [
            "test.toml:7: cluster.redis: expected a URL like",
            "test.toml:8: cluster.node-name: expected 1 to 64 letters",
            "test.toml:9: cluster.node-ttl: expected at least 1s, got 500ms",
            "test.toml:10: cluster.max-backlog: expected a whole number",
            "test.toml:11: cluster.redis-password-file: expected",
            "test.toml:12: cluster.redis-ca-file: expected",
            "test.toml:13: cluster.port: unknown key",
        ] {
            assert!(e.contains(want), "{want:?} not in:\n{e}");
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_being_quoted() {
        let e = parse_err(&cluster("redis = \"redis://:hunter2@127.0.0.1:6379\"\n")).to_string();
        assert!(e.contains("cluster.redis-password-file"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // A user name alone (for a Redis ACL user) is fine.
        parse_ok(&cluster("redis = \"redis://icegate@127.0.0.1:6379\"\n"));
    }

    #[test]
    fn a_ca_file_needs_rediss() {
        let e = parse_err(&cluster(
            "redis = \"redis://127.0.0.1\"\nredis-ca-file = \"/nonexistent/ca.pem\"\n",
        ))
        .to_string();
        assert!(
            e.contains("cluster.redis-ca-file: redis-ca-file needs a rediss:// URL"),
            "{e}"
        );
    }

    #[test]
    fn node_names() {
        for good in ["a", "node-1", "eu.west_2", &"x".repeat(64)] {
            assert!(is_node_name(good), "{good}");
        }
        for bad in ["", "a:b", "a b", "ä", &"x".repeat(65)] {
            assert!(!is_node_name(bad), "{bad}");
        }
    }
}
