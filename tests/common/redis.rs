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

/// A Redis Cluster of 3 masters with a replica each, every node a [`RedisServer`] with its own
/// directory (its `nodes.conf` survives [`RedisServer::kill`] and [`RedisServer::restart`], so
/// a restarted node rejoins). A short `cluster-node-timeout` makes a failover take seconds.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// Milliseconds after which a silent node is failing and its replica takes over.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1000;

impl RedisCluster {
    /// Starts six nodes and joins them with `redis-cli --cluster create`; returns once every
    /// node says `cluster_state:ok` and every replica is in sync (at most 30 s).
    pub fn start() -> RedisCluster {
        let timeout = CLUSTER_NODE_TIMEOUT_MS.to_string();
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                // The cluster bus listens on a port of its own, by default port + 10000, which
                // may be taken or beyond 65535: a free port picked like the other.
                let bus = super::process::free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &timeout,
                    // A replica fails over however long it was apart from its master.
                    "--cluster-replica-validity-factor",
                    "0",
                ])
            })
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli (is redis-tools installed?)");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        assert!(cluster.wait_ok(Duration::from_secs(30)), "the cluster did not reach cluster_state:ok");
        cluster
    }

    /// `redis+cluster://127.0.0.1:P1,…/` with every node as a seed.
    pub fn url(&self) -> String {
        self.url_first(0)
    }

    /// [`RedisCluster::url`] with node `first` as the first seed: the one a filter node
    /// subscribes on while it answers.
    pub fn url_first(&self, first: usize) -> String {
        let order = std::iter::once(first).chain((0..self.nodes.len()).filter(|&i| i != first));
        let seeds: Vec<String> = order.map(|i| format!("127.0.0.1:{}", self.nodes[i].port)).collect();
        format!("redis+cluster://{}/", seeds.join(","))
    }

    /// Waits (at most `limit`) until every running node says `cluster_state:ok`, knows as
    /// many masters with slots as there are (3) and every replica's link to its master is up.
    pub fn wait_ok(&self, limit: Duration) -> bool {
        wait_until(limit, || {
            self.running().all(|n| {
                let info = query_text(n, &["CLUSTER", "INFO"]);
                let replication = query_text(n, &["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_size:3")
                    && (replication.contains("role:master") || replication.contains("master_link_status:up"))
            })
        })
    }

    /// The nodes that answer.
    fn running(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| tcp_listening(n.port))
    }

    /// Index in [`RedisCluster::nodes`] of a running master that holds slots.
    pub fn a_master(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| tcp_listening(n.port) && query_text(n, &["INFO", "replication"]).contains("role:master"))
            .expect("a running master")
    }

    /// A connection to the whole cluster (the client follows MOVED) for the test's own look.
    pub fn connection(&self) -> ::redis::cluster::ClusterConnection {
        let seeds: Vec<String> = self.running().map(|n| format!("redis://127.0.0.1:{}/", n.port)).collect();
        ::redis::cluster::ClusterClient::new(seeds)
            .expect("cluster client")
            .get_connection()
            .expect("connect to the test cluster")
    }

    /// Moves `slots` slots from one master to another with `redis-cli --cluster reshard`.
    pub fn reshard(&self, from: usize, to: usize, slots: u32) -> std::process::Output {
        let id = |i: usize| query_text(&self.nodes[i], &["CLUSTER", "MYID"]);
        Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{}", self.nodes[from].port)])
            .args(["--cluster-from", id(from).trim(), "--cluster-to", id(to).trim()])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli")
    }
}

/// A command's reply to one node as text ("" when it does not answer).
pub fn query_text(node: &RedisServer, args: &[&str]) -> String {
    let Ok(client) = ::redis::Client::open(node.url()) else { return String::new() };
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else { return String::new() };
    let mut cmd = ::redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query::<String>(&mut conn).unwrap_or_default()
}
