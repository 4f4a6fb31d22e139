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

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outbound_guard::config::{Config, builtin_default_policy};
use outbound_guard::metrics::Metrics;
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

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the thread CPU clock exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn accounts() -> Vec<String> {
    (0..ACCOUNTS).map(|i| format!("user{i}@example.com")).collect()
}

fn one_message(engine: &Engine, tx: &mut Transaction, account: &str) {
    let facts = MailFacts {
        sender: account.as_bytes(),
        auth_login: Some(account.as_bytes()),
        client_addr: None,
        queue_id: None,
    };
    black_box(engine.mail_from(tx, &facts));
    for to in [&b"a@example.net"[..], b"b@example.org", b"c@example.com"] {
        black_box(engine.rcpt_to(tx, &RcptFacts { recipient: to }));
    }
    black_box(engine.end_of_message(tx, &MessageFacts { queue_id: None, headers: &[], scanned: &[] }));
    engine.end_transaction(tx);
}

fn decision(c: &mut Criterion) {
    let (engine, _events) = engine();
    let names = accounts();
    let before = rss_bytes();
    let mut tx = Transaction::default();
    for name in &names {
        one_message(&engine, &mut tx, name);
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
                one_message(&engine, &mut tx, &names[i]);
            }
            thread_cpu_time() - started
        })
    });
    let engine = Arc::new(engine);
    let names = Arc::new(names);
    group.bench_function("message_3_rcpts_1m_accounts_2_threads", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2usize {
                    let engine = engine.clone();
                    let names = names.clone();
                    s.spawn(move || {
                        let mut tx = Transaction::default();
                        let mut i = t * 500_000;
                        for _ in 0..iters / 2 {
                            i = (i + 7919) % ACCOUNTS;
                            one_message(&engine, &mut tx, &names[i]);
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

criterion_group!(benches, decision, limiter);
criterion_main!(benches);
