//! A real Redis server for the tests (`/usr/bin/redis-server`, Debian package
//! `redis-server`): on a free loopback port, without persistence, killed by
//! its PID when dropped. `restart` stops it and starts it again, empty, on
//! the same port, for outage tests. The unit tests of `src/cluster` use this
//! file too, so it needs nothing but std.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test uses part of the fixture; src/cluster includes this file as well"
)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "/usr/bin/redis-server";
/// How long a starting server may take to answer PING.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A running redis-server, stopped on drop.
pub struct TestRedis {
    port: u16,
    /// More `redis-server` options (TLS, `--requirepass`), kept for `restart`.
    extra: Vec<String>,
    child: Option<Child>,
}

impl TestRedis {
    /// Starts a server on a free port of 127.0.0.1 and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`TestRedis::start`], with more `redis-server` options.
    pub fn start_with(extra: &[String]) -> Self {
        assert!(
            Path::new(SERVER).is_file(),
            "{SERVER} is missing: these tests need `apt-get install redis-server`"
        );
        // The port is free when asked, and another process may take it before the server
        // binds it: then try another.
        for _ in 0..5 {
            let port = free_port();
            let mut redis = Self {
                port,
                extra: extra.to_vec(),
                child: None,
            };
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Kills the server (its clients see the connection drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with no data.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + START_LIMIT;
        // The port may still be held for a moment by the dying server's sockets.
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends one command (inline form, no quoting) and returns the raw reply.
    pub fn command(&self, line: &str) -> String {
        let mut stream = TcpStream::connect_timeout(&self.address(), Duration::from_secs(2))
            .expect("connect to redis-server");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("set a read timeout");
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send to redis-server");
        let mut reply = Vec::new();
        let mut buffer = [0u8; 4096];
        // A reply ends with CRLF; a large one comes in several reads.
        while let Ok(n) = stream.read(&mut buffer) {
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buffer[..n]);
            if reply.ends_with(b"\r\n") && complete(&reply) {
                break;
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    }

    /// Starts the server and waits for PING; false if it exited first (port taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new(SERVER)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SERVER}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                self.child = None;
                return false;
            }
            if self.pings() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    fn pings(&self) -> bool {
        let Ok(mut stream) =
            TcpStream::connect_timeout(&self.address(), Duration::from_millis(200))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        // A server with --requirepass answers -NOAUTH: it is up all the same.
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && (&reply == b"+PONG\r\n" || reply.starts_with(b"-NOAUTH"))
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a RESP reply is whole: simple replies are one line; for a bulk string or an
/// array this counts its lines roughly, which is enough for the small replies tests read.
fn complete(reply: &[u8]) -> bool {
    let text = String::from_utf8_lossy(reply);
    let lines: Vec<&str> = text.split("\r\n").collect();
    let first = lines.first().copied().unwrap_or_default();
    match first.as_bytes().first() {
        Some(b'$') => first == "$-1" || lines.len() >= 3,
        Some(b'*') => {
            let n: usize = first[1..].parse().unwrap_or(0);
            // Each element of a flat array of bulk strings takes two lines.
            lines.len() > 2 * n
        }
        _ => true,
    }
}

/// A loopback port free now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
