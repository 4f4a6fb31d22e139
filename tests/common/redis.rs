//! Real `redis-server` processes for the cluster-mode tests: each on a free port of 127.0.0.1
//! with no persistence (`--save "" --appendonly no`) and a private directory; killed by PID when
//! dropped, also while a test panics. Redis cannot listen on port 0, so a port is picked by
//! binding and releasing it, and the start is retried on another port should it be taken in
//! between. Readiness is the port in LISTEN state, awaited with a bound.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{POLL, free_port, send_signal, tcp_listening};

/// A running `redis-server` (or a sentinel, see [`RedisServer::sentinel`]).
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// A server on a free port.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A server on a free port with extra command-line settings (`--requirepass x`, …); `{port}`
    /// in them stands for the port chosen (e.g. `--port 0 --tls-port {port}` for TLS only).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = free_port();
            let extra: Vec<String> = extra.iter().map(|s| s.replace("{port}", &port.to_string())).collect();
            if let Some(child) = spawn(port, dir.path(), &extra, None) {
                return RedisServer { child, port, dir, extra };
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// A sentinel on a free port watching the master `server` as `service` (quorum 1).
    pub fn sentinel(server: &RedisServer, service: &str) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {service} 127.0.0.1 {} 1\n\
                     sentinel down-after-milliseconds {service} 1000\n",
                    dir.path().display(),
                    server.port
                ),
            )
            .expect("write sentinel.conf");
            if let Some(child) = spawn(port, dir.path(), &[], Some(&conf)) {
                return RedisServer { child, port, dir, extra: Vec::new() };
            }
        }
        panic!("redis sentinel did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL to the PID we started) and waits for it.
    pub fn kill(&mut self) {
        send_signal(self.child.id(), "KILL");
        let _ = self.child.wait();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered — a Redis
    /// swapping or stuck, rather than gone.
    pub fn freeze(&self) {
        send_signal(self.child.id(), "STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        send_signal(self.child.id(), "CONT");
    }

    /// Starts it again, empty, on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn(self.port, self.dir.path(), &self.extra, None) {
                self.child = child;
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start again on port {}", self.port);
            std::thread::sleep(POLL);
        }
    }

    /// A plain connection for the test's own look at the data.
    pub fn connection(&self) -> ::redis::Connection {
        ::redis::Client::open(self.url()).expect("client").get_connection().expect("connect to the test redis")
    }
}

/// Starts one process and waits (bounded) until it listens; `None` when it exited first (the
/// port was taken).
fn spawn(port: u16, dir: &Path, extra: &[String], sentinel_conf: Option<&Path>) -> Option<Child> {
    let mut cmd = Command::new("redis-server");
    match sentinel_conf {
        Some(conf) => {
            cmd.arg(conf).arg("--sentinel");
        }
        None => {
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir)
                .args(extra);
        }
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (is it installed?)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tcp_listening(port) {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(POLL);
    }
    Some(child)
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            send_signal(self.child.id(), "KILL");
            let _ = self.child.wait();
        }
    }
}

/// Waits until `condition` holds, at most `limit`; returns whether it did.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
