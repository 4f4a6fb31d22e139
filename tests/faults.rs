//! Peers that are there but do not answer — the harder failure than a refused connection,
//! which other tests cover (`notify.rs`, `verdict_clients.rs`, `cluster_redis.rs`): a frozen
//! Redis (SIGSTOP), a spamd, a notification relay and a webhook that accept a connection and
//! never say a word. The real binary; each test asserts that the MTA's transactions keep their
//! answers in bounded time and that decisions (limits, restrictions) still hold.
#![cfg(feature = "real-peers")]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::binary::GuardProcess;
use common::mta::{runtime, send};
use common::redis::{RedisServer, wait_until};
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
use outbound_guard::milter::command::Command as Milter;

/// External recipients per hour in every test here.
const LIMIT: usize = 3;

fn policy() -> String {
    format!(
        "[organization]\nlocal_domains = [\"example.com\"]\n\
         [policy.default]\nrecipient_limit_external_per_hour = {LIMIT}\naction_when_threshold_reached = \"block\"\n"
    )
}

/// A peer that accepts connections and never answers; it holds them until dropped.
struct SilentPeer {
    addr: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
    _thread: JoinHandle<()>,
}

impl SilentPeer {
    fn start() -> SilentPeer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                keep.lock().unwrap().push(stream);
            }
        });
        SilentPeer { addr, held, _thread: thread }
    }

    fn connections(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

/// Sends one message from `account` to `n` external recipients; the reply letters and the
/// time the exchange took.
fn timed_send(g: &GuardProcess, account: &str, n: usize) -> (String, Duration) {
    let started = Instant::now();
    let letters = runtime().block_on(send(g.milter_port, account, n));
    (String::from_utf8(letters).unwrap(), started.elapsed())
}

#[test]
fn a_frozen_redis_costs_each_transaction_at_most_its_timeout_and_limits_still_hold() {
    let redis = RedisServer::start();
    let config = format!(
        "{}[state]\nbackend = \"redis\"\nredis_url = \"{}\"\n[notify]\nnode_name = \"frozen\"\n",
        policy(),
        redis.url()
    );
    let g = GuardProcess::start("io_timeout = \"1s\"", &config);
    assert!(wait_until(Duration::from_secs(10), || g.metric("redis_up") == Some(1.0)), "redis never up");
    assert_eq!(timed_send(&g, "before@example.com", 1).0, "cc");

    redis.freeze();
    // Every transaction is answered; none waits longer than the 1 s bound (plus the exchange).
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let (letters, took) = timed_send(&g, &format!("a{i}@example.com"), 1);
        assert_eq!(letters, "cc", "transaction {i} while Redis is frozen");
        slowest = slowest.max(took);
    }
    assert!(slowest < Duration::from_millis(1500), "a transaction took {slowest:?} with Redis frozen");
    assert!(wait_until(Duration::from_secs(5), || g.metric("redis_up") == Some(0.0)), "redis_up still 1");
    // Decided on the node's own view: the limit still restricts.
    let (letters, took) = timed_send(&g, "loud@example.com", LIMIT + 1);
    assert_eq!(letters, "ccccy", "the limit while Redis is frozen");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(timed_send(&g, "loud@example.com", 1).0, "y");

    // Thawed: the link comes back and the restriction made meanwhile reaches Redis.
    redis.thaw();
    assert!(wait_until(Duration::from_secs(15), || g.metric("redis_up") == Some(1.0)), "redis_up never back");
    let mut conn = redis.connection();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let keys: Vec<String> = ::redis::cmd("KEYS").arg("*loud@example.com*").query(&mut conn).unwrap_or_default();
            !keys.is_empty()
        }),
        "the restriction made while Redis was frozen never reached it"
    );
    assert_eq!(timed_send(&g, "loud@example.com", 1).0, "y", "restriction lost after the thaw");
    let (status, log) = g.terminate();
    assert!(status.success(), "exit {status}:\n{log}");
}

#[test]
fn a_silent_spamd_never_holds_a_message_past_the_verdict_timeout() {
    let spamd = SilentPeer::start();
    let config =
        format!("{}[verdict]\nsources = [\"spamd\"]\nspamd = \"{}\"\ntimeout = \"1s\"\n", policy(), spamd.addr);
    let g = GuardProcess::start("", &config);
    let rt = runtime();
    for i in 0..3 {
        let started = Instant::now();
        let end = rt.block_on(async {
            let mut c = MtaClient::connect(([127, 0, 0, 1], g.milter_port).into()).await.unwrap();
            c.negotiate(POSTFIX_OFFER).await.unwrap();
            c.macros(b'M', &[("{auth_authen}", "scanned@example.com")]).await.unwrap();
            assert_eq!(c.mail_from("<scanned@example.com>", &[]).await.unwrap().kind(), Some(b'c'));
            assert_eq!(c.rcpt_to("<r@example.net>").await.unwrap().kind(), Some(b'c'));
            let end = c.message(&[("Subject", "hello")], b"hello\r\n").await.unwrap();
            c.write(Milter::Quit).await.unwrap();
            end
        });
        let took = started.elapsed();
        // No verdict is not a refusal: the message goes on.
        assert!(matches!(end.kind(), Some(b'c' | b'a')), "message {i}: end of message answered {:?}", end.kind());
        assert!(took < Duration::from_millis(2500), "message {i} took {took:?} with spamd silent");
    }
    assert!(spamd.connections() >= 1, "spamd was never asked");
    assert!(
        g.metric("verdicts_total{source=\"spamd\",result=\"error\"}").unwrap_or(0.0) >= 3.0,
        "scanner failures not counted"
    );
    let (status, log) = g.terminate();
    assert!(status.success(), "exit {status}:\n{log}");
}

/// The notification channels (`smtp` or `webhook`) silent: restrictions are made and enforced at
/// once, the MTA never waits for a notice, and the filter still stops cleanly.
fn silent_notification_channel(channel: &str) {
    let peer = SilentPeer::start();
    let notify = match channel {
        "smtp" => format!("[notify]\nsmtp = \"smtp://{}\"\nrecipients = [\"postmaster@example.com\"]\n", peer.addr),
        _ => format!("[notify]\nwebhook = \"http://{}/hook\"\nrecipients = []\n", peer.addr),
    };
    let g = GuardProcess::start("", &format!("{}{notify}", policy()));
    let (letters, took) = timed_send(&g, "noisy@example.com", LIMIT + 1);
    assert_eq!(letters, "ccccy", "the 4th recipient restricts");
    assert!(took < Duration::from_millis(500), "restricting took {took:?} with the {channel} channel silent");
    let (letters, took) = timed_send(&g, "noisy@example.com", 1);
    assert_eq!(letters, "y");
    assert!(took < Duration::from_millis(500), "refusing took {took:?}");
    assert!(wait_until(Duration::from_secs(5), || peer.connections() >= 1), "the {channel} channel was never tried");
    // Other accounts are not held up either.
    for i in 0..5 {
        let (letters, took) = timed_send(&g, &format!("quiet{i}@example.com"), 1);
        assert_eq!(letters, "cc");
        assert!(took < Duration::from_millis(500), "took {took:?}");
    }
    let started = Instant::now();
    let (status, log) = g.terminate();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(15), "stopping took {:?}", started.elapsed());
}

#[test]
fn a_silent_notification_relay_holds_up_nothing() {
    silent_notification_channel("smtp");
}

#[test]
fn a_silent_webhook_holds_up_nothing() {
    silent_notification_channel("webhook");
}
