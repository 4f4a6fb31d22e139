//! End-to-end throughput of one node, memory backend against Redis backend (issue #8): an
//! in-process filter on a loopback port, driven by [`MtaClient`] over 8 connections at once,
//! each message MAIL FROM (an authenticated account out of 1000), 3 × RCPT TO, headers and end
//! of message. In Redis mode every message pays the MAIL FROM read of the shared state and a
//! (pipelined, background) commit. A real `redis-server` is started on a free loopback port,
//! without persistence, and killed at the end; without one the Redis half is skipped.
//!
//! Besides criterion's per-message times, the setup prints both rates and their ratio for a
//! fixed run (the figure docs/cluster.md reports).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outbound_guard::config::{Config, ListenAddr};
use outbound_guard::daemon::{self, Services};
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
use outbound_guard::milter::server::Listener;
use outbound_guard::policy::clock::EngineClock;
use tokio::sync::watch;

const CONNECTIONS: usize = 8;
const ACCOUNTS: usize = 1000;
/// Messages of the fixed run that gives the printed ratio.
const FIXED_RUN: usize = 20_000;

/// A filter in its own thread and runtime (a current-thread runtime, as `outbound-guard run`).
struct Node {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(state: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[organization]\nlocal_domains = [\"example.com\"]\n{state}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [policy.default]\nrecipient_limit_external_per_hour = 1000000\n\
             recipient_limit_internal_per_hour = 1000000\nrecipient_limit_per_day = 10000000\n"
        );
        let path = dir.path().join("bench.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Arc::new(Config::parse(&path, &text).unwrap());
        let (stop, rx) = watch::channel(false);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = Listener::bind(&ListenAddr::Inet("127.0.0.1:0".parse().unwrap()), 0o660).await.unwrap();
                let Ok(ListenAddr::Inet(addr)) = listener.local_addr() else { panic!("not inet") };
                let services = Arc::new(Services::new(config, EngineClock::System).unwrap());
                addr_tx.send(addr).unwrap();
                daemon::run(listener, None, services, rx).await;
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(30)).expect("the filter starts");
        Node { addr, stop, thread: Some(thread), _dir: dir }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `redis-server` on a free port; `None` when it is not installed.
struct Redis(Child, u16);

impl Redis {
    fn start() -> Option<Redis> {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Redis(child, port));
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        None
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `n` messages over [`CONNECTIONS`] connections at once; returns the time taken.
async fn load(addr: SocketAddr, n: usize, offset: usize) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let share = n / CONNECTIONS + usize::from(c < n % CONNECTIONS);
        tasks.push(tokio::spawn(async move {
            let mut client = MtaClient::connect(addr).await.unwrap();
            client.negotiate(POSTFIX_OFFER).await.unwrap();
            for i in 0..share {
                let account = format!("user{}@example.com", (offset + c * 7919 + i) % ACCOUNTS);
                client.macros(b'M', &[("{auth_authen}", &account)]).await.unwrap();
                assert_eq!(client.mail_from(&format!("<{account}>"), &[]).await.unwrap().kind(), Some(b'c'));
                for to in ["<a@example.net>", "<b@example.org>", "<c@example.com>"] {
                    assert_eq!(client.rcpt_to(to).await.unwrap().kind(), Some(b'c'));
                }
                let end = client.message(&[("Subject", "bench")], b"hello\r\n").await.unwrap();
                assert_eq!(end.kind(), Some(b'c'));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

/// CPU time (user + system) a process has used, from /proc (`self` or a PID).
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15; clock ticks of 1/100 s on Linux.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Messages per second (best of 3 runs), and CPU time per message of this process (client and
/// filter) plus the Redis server's, if any: on a machine shared with other work the CPU cost
/// is the steadier figure.
fn rate(rt: &tokio::runtime::Runtime, node: &Node, redis_pid: Option<u32>) -> (f64, Duration, Duration) {
    rt.block_on(load(node.addr, 2000, 0)); // warm up
    let redis_pid = redis_pid.map(|p| p.to_string());
    let (self_before, redis_before) = (cpu_time("self"), redis_pid.as_deref().map_or(Duration::ZERO, cpu_time));
    let best = (0..3).map(|r| rt.block_on(load(node.addr, FIXED_RUN, r * 13))).min().unwrap();
    let per_message = |d: Duration| d / (3 * FIXED_RUN as u32);
    let process = per_message(cpu_time("self") - self_before);
    let server = per_message(redis_pid.as_deref().map_or(Duration::ZERO, cpu_time) - redis_before);
    (FIXED_RUN as f64 / best.as_secs_f64(), process, server)
}

fn backends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let memory = Node::start("");
    let redis = Redis::start();
    let shared = redis
        .as_ref()
        .map(|r| Node::start(&format!("[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/0\"\n", r.1)));

    // The fixed run takes minutes in a debug build; `cargo test --all-targets` (no `--bench`
    // argument) only checks that the bench still runs.
    let measuring = std::env::args().any(|a| a == "--bench");
    let (memory_rate, memory_cpu, _) =
        if measuring { rate(&rt, &memory, None) } else { (0.0, Duration::ZERO, Duration::ZERO) };
    match &shared {
        _ if !measuring => {}
        Some(node) => {
            let (redis_rate, redis_cpu, server_cpu) = rate(&rt, node, redis.as_ref().map(|r| r.0.id()));
            println!(
                "end to end, {CONNECTIONS} connections: memory {memory_rate:.0} msg/s, redis {redis_rate:.0} msg/s, \
                 ratio {:.2}; CPU per message: memory {memory_cpu:?}, redis {redis_cpu:?} + redis-server \
                 {server_cpu:?}, ratio {:.2}",
                redis_rate / memory_rate,
                memory_cpu.as_secs_f64() / (redis_cpu + server_cpu).as_secs_f64()
            );
        }
        None => println!("end to end: memory {memory_rate:.0} msg/s; redis-server not found, Redis backend skipped"),
    }

    let mut group = c.benchmark_group("end_to_end_backend");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    group.bench_function("memory", |b| {
        b.iter_custom(|iters| rt.block_on(load(memory.addr, iters as usize, 0)));
    });
    if let Some(node) = &shared {
        group.bench_function("redis", |b| {
            b.iter_custom(|iters| rt.block_on(load(node.addr, iters as usize, 0)));
        });
    }
    group.finish();
}

criterion_group!(benches, backends);
criterion_main!(benches);
