//! Policy benches: the whole decision for one outbound message with three recipients (MAIL
//! FROM, 3 × RCPT TO, end of message) against one million resident accounts, single-threaded
//! and with two threads contending; and one governor check on an account record.
//!
//! The setup also prints the resident memory each tracked account costs. The single-threaded
//! decision is timed in the thread's CPU time (see `thread_cpu_time`), the contended one in
//! wall time.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

mod common;

use common::thread_cpu_time;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outbound_guard::config::{Config, builtin_default_policy};
use outbound_guard::metrics::Metrics;
use outbound_guard::policy::account;
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::engine::{Engine, Transaction};
use outbound_guard::policy::events::EventSink;
use outbound_guard::policy::limits::{AccountRecord, LimitKind, Limiters};
use outbound_guard::policy::{MailFacts, MessageFacts, Policy, RcptFacts};
use outbound_guard::state::restrictions::MemoryRestrictions;

const ACCOUNTS: usize = 1_000_000;
const CONFIG: &str = "[organization]\nlocal_domains = [\"example.com\"]\n\
    [policy.default]\nrecipient_limit_external_per_hour = 100000\nrecipient_limit_internal_per_hour = 100000\n\
    recipient_limit_per_day = 100000\n";

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

fn engine() -> (Engine, tokio::sync::mpsc::Receiver<outbound_guard::policy::events::Event>) {
    let config = Arc::new(Config::parse(std::path::Path::new("bench.toml"), CONFIG).unwrap());
    let (sink, rx) = EventSink::channel(1024);
    // The system clock, as in production: its reads are part of the decision's cost.
    let clock = EngineClock::System;
    let engine = Engine::new(config, Arc::new(MemoryRestrictions::default()), sink, clock, Arc::new(Metrics::new()));
    (engine, rx)
}

/// Account `i`'s address, written into `buf` as the codec hands the sender to the policy: in a
/// buffer just filled from the connection, so already in the cache. (Picking it from a
/// million strings made in advance would add a cache miss that production does not have.)
fn account(buf: &mut [u8; 32], i: usize) -> &[u8] {
    let mut digits = [0u8; 20];
    let mut n = i;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let parts: [&[u8]; 3] = [b"user", &digits[at..], b"@example.com"];
    let mut len = 0;
    for part in parts {
        buf[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    &buf[..len]
}

fn one_message(engine: &Engine, tx: &mut Transaction, account: &[u8]) {
    let facts = MailFacts { sender: account, auth_login: Some(account), client_addr: None, queue_id: None };
    black_box(engine.mail_from(tx, &facts));
    for to in [&b"a@example.net"[..], b"b@example.org", b"c@example.com"] {
        black_box(engine.rcpt_to(tx, &RcptFacts { recipient: to }));
    }
    black_box(engine.end_of_message(tx, &MessageFacts { queue_id: None, headers: &[], scanned: &[] }));
    engine.end_transaction(tx);
}

fn decision(c: &mut Criterion) {
    let (engine, _events) = engine();
    let mut buf = [0u8; 32];
    let before = rss_bytes();
    let mut tx = Transaction::default();
    for i in 0..ACCOUNTS {
        one_message(&engine, &mut tx, account(&mut buf, i));
    }
    let after = rss_bytes();
    eprintln!(
        "tracked accounts: {}, resident memory per account: {} bytes",
        engine.tracked_accounts(),
        (after.saturating_sub(before)) / ACCOUNTS
    );

    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    // Timed in this thread's CPU time rather than wall time: on a shared machine a wall clock
    // also counts the time other processes held the core, which says nothing about the engine.
    group.bench_function("message_3_rcpts_1m_accounts", |b| {
        b.iter_custom(|iters| {
            let started = thread_cpu_time();
            for _ in 0..iters {
                // A stride through the accounts defeats the cache, as real traffic would.
                i = (i + 7919) % ACCOUNTS;
                one_message(&engine, &mut tx, account(&mut buf, i));
            }
            thread_cpu_time() - started
        })
    });
    let engine = Arc::new(engine);
    group.bench_function("message_3_rcpts_1m_accounts_2_threads", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2usize {
                    let engine = engine.clone();
                    s.spawn(move || {
                        let mut tx = Transaction::default();
                        let mut buf = [0u8; 32];
                        let mut i = t * 500_000;
                        for _ in 0..iters / 2 {
                            i = (i + 7919) % ACCOUNTS;
                            one_message(&engine, &mut tx, account(&mut buf, i));
                        }
                    });
                }
            });
            started.elapsed()
        })
    });
    group.finish();
}

fn limiter(c: &mut Criterion) {
    let mut settings = builtin_default_policy();
    settings.recipient_limit_external_per_hour = u32::MAX / 2;
    settings.recipient_limit_per_day = u32::MAX / 2;
    let clock = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(1_795_341_600));
    let limiters = Limiters::new(&[settings]);
    let mut record = AccountRecord::default();
    let mut group = c.benchmark_group("limiter");
    group.throughput(Throughput::Elements(1));
    group.bench_function("check_external_and_day", |b| {
        b.iter(|| black_box(limiters.try_add_recipient(0, &mut record, LimitKind::ExternalPerHour, clock.now_nanos())))
    });
    group.finish();
}

fn addresses(c: &mut Criterion) {
    let local = vec!["example.com".to_owned()];
    let mut group = c.benchmark_group("address");
    group.throughput(Throughput::Elements(1));
    group.bench_function("recipient_class", |b| {
        b.iter(|| black_box(account::recipient_is_internal(black_box(b"b@example.org"), &local)))
    });
    group.bench_function("canonical_account", |b| {
        b.iter(|| black_box(account::canonical(black_box(b"user123456@example.com"), true).is_some()))
    });
    group.finish();
}

criterion_group!(benches, decision, limiter, addresses);
criterion_main!(benches);
