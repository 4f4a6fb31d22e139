//! Policy benches: the whole decision for one outbound message with three recipients (MAIL
//! FROM, 3 × RCPT TO, end of message) against one million resident accounts, single-threaded
//! and with two threads contending; one governor check on an account record; and a restriction
//! and its release recorded in the durable store (two `fdatasync`s each), the rare path.
//!
//! The setup also prints the resident memory each tracked account costs. The single-threaded
//! decision is timed in the thread's CPU time (see `thread_cpu_time`), the contended one in
//! wall time.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

mod common;
#[path = "common/decision.rs"]
mod decision;
/// The tests' MaxMind DB writer, for the login-spread case's country database.
#[path = "../tests/common/mmdb.rs"]
mod mmdb;

use common::thread_cpu_time;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use decision::{ACCOUNTS, STRIDE, engine, engine_with, fill, one_message, one_message_from};
use outbound_guard::config::builtin_default_policy;
use outbound_guard::policy::account;
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::engine::Transaction;
use outbound_guard::policy::limits::{LimitKind, Limiters};
use outbound_guard::policy::record::AccountRecord;

// As in the daemon: the account table on huge pages (see the module's documentation).
#[global_allocator]
static ALLOCATOR: outbound_guard::huge_pages::LargeBlocksOnHugePages =
    outbound_guard::huge_pages::LargeBlocksOnHugePages;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

fn decision(c: &mut Criterion) {
    let (engine, _events) = engine();
    let before = rss_bytes();
    fill(&engine);
    let after = rss_bytes();
    let (mut buf, mut tx) = ([0u8; 32], Transaction::default());
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
                i = (i + STRIDE) % ACCOUNTS;
                one_message(&engine, &mut tx, decision::account(&mut buf, i));
            }
            thread_cpu_time() - started
        })
    });
    // The same decision for 4,096 accounts taken in turn, whose slots stay in the cache: what
    // the decision costs without the memory misses a million accounts bring. (Few enough to be
    // cached, many enough that none reaches its limit in a run.)
    group.bench_function("message_3_rcpts_4k_cached_accounts", |b| {
        b.iter_custom(|iters| {
            let started = thread_cpu_time();
            for _ in 0..iters {
                i = (i + STRIDE) % 4096;
                one_message(&engine, &mut tx, decision::account(&mut buf, i));
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
                            i = (i + STRIDE) % ACCOUNTS;
                            one_message(&engine, &mut tx, decision::account(&mut buf, i));
                        }
                    });
                }
            });
            started.elapsed()
        })
    });
    group.finish();
}

/// The client of account `i`'s `n`-th message: four /24s in three countries in turn, so that
/// each account has several networks and countries to look through, none over its limits.
fn client_of(i: usize, n: usize) -> std::net::IpAddr {
    const NETWORKS: [[u8; 3]; 4] = [[192, 0, 2], [198, 51, 100], [203, 0, 113], [192, 0, 3]];
    let [a, b, c] = NETWORKS[(i + n) % NETWORKS.len()];
    std::net::IpAddr::from([a, b, c, (i % 250) as u8 + 1])
}

/// The same decision with the login-spread signal on (both limits, a country database): the
/// MAIL FROM notes the network and looks up the country. The setup prints what the state costs
/// per tracked account on top of the account table.
fn decision_login_spread(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut db = mmdb::documentation_countries();
    db.insert("192.0.3.0/24", "SE");
    db.write(&dir.path().join("countries.mmdb"));
    let (engine, _events) = engine_with(
        &dir.path().join("bench.toml"),
        "max_client_networks_per_hour = 11\nmax_client_countries_per_day = 5\n\
         [geoip]\ndatabase = \"countries.mmdb\"\n",
    );
    let (mut buf, mut tx) = ([0u8; 32], Transaction::default());
    let before = rss_bytes();
    for i in 0..ACCOUNTS {
        one_message_from(&engine, &mut tx, decision::account(&mut buf, i), Some(client_of(i, 0)));
    }
    let after = rss_bytes();
    eprintln!(
        "login spread on: tracked accounts: {}, resident memory per account: {} bytes (account record and \
         login-spread entry; size of the entry: {} bytes)",
        engine.tracked_accounts(),
        (after.saturating_sub(before)) / ACCOUNTS,
        std::mem::size_of::<outbound_guard::policy::logins::LoginEntry>(),
    );

    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    let (mut i, mut n) = (0usize, 0usize);
    group.bench_function("message_3_rcpts_1m_accounts_login_spread", |b| {
        b.iter_custom(|iters| {
            let started = thread_cpu_time();
            for _ in 0..iters {
                i = (i + STRIDE) % ACCOUNTS;
                n += 1;
                let client = Some(client_of(i, n / ACCOUNTS));
                one_message_from(&engine, &mut tx, decision::account(&mut buf, i), client);
            }
            thread_cpu_time() - started
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
        b.iter(|| black_box(limiters.try_add_recipient(0, &mut record, LimitKind::ExternalPerHour, clock.now())))
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

/// A restriction made and lifted through the engine with the durable store on a temp dir: what
/// a restriction costs besides the decision (the journal, the audit trail, the event).
fn restriction(c: &mut Criterion) {
    let config = Arc::new(
        outbound_guard::config::Config::parse(
            std::path::Path::new("bench.toml"),
            "[organization]\nlocal_domains = [\"example.com\"]\n",
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let clock = EngineClock::System;
    let store =
        Arc::new(outbound_guard::state::durable::DurableRestrictions::open(dir.path(), clock.now().secs()).unwrap());
    let (sink, mut events) = outbound_guard::policy::events::EventSink::channel(1024);
    let engine = outbound_guard::policy::engine::Engine::new(
        config,
        store,
        sink,
        clock,
        Arc::new(outbound_guard::metrics::Metrics::new()),
    );
    let mut group = c.benchmark_group("restriction");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("restrict_and_release_durable", |b| {
        b.iter(|| {
            i += 1;
            let account = format!("bench{i}@example.com");
            engine.restrict_manually(&account, "bench", None, "bench").unwrap();
            engine.release(&account, "bench", None).unwrap();
            while events.try_recv().is_ok() {}
        })
    });
    group.finish();
}

/// One pass of the per-hour sampler (`Engine::sample_hourly`, every minute in the daemon) over a
/// million resident accounts: with (nearly) none in use, the scan alone; with every one in use
/// (limits of 10 an hour), each copied out, 100,000 written into the series and the rest left
/// out at the cap. Wall time of the pass; each shard of the account table is read-locked for
/// its share of the scan only.
fn hourly_sample(c: &mut Criterion) {
    let mut group = c.benchmark_group("hourly");
    group.sample_size(10);
    let (idle, _events) = engine();
    fill(&idle);
    group.bench_function("sample_1m_accounts_none_in_use", |b| b.iter(|| black_box(idle.sample_hourly())));
    drop(idle);
    let config = Arc::new(
        outbound_guard::config::Config::parse(
            std::path::Path::new("bench.toml"),
            "[organization]\nlocal_domains = [\"example.com\"]\n[policy.default]\n\
             recipient_limit_external_per_hour = 10\nrecipient_limit_internal_per_hour = 10\n\
             recipient_limit_per_day = 100000\nmax_recipients_per_message = 100\n",
        )
        .unwrap(),
    );
    let (sink, _events) = outbound_guard::policy::events::EventSink::channel(1024);
    let busy = outbound_guard::policy::engine::Engine::new(
        config,
        Arc::new(outbound_guard::state::memory::MemoryRestrictions::default()),
        sink,
        EngineClock::System,
        Arc::new(outbound_guard::metrics::Metrics::new()),
    );
    fill(&busy);
    let first = busy.sample_hourly();
    eprintln!("all in use: {first:?}");
    group.bench_function("sample_1m_accounts_all_in_use", |b| b.iter(|| black_box(busy.sample_hourly())));
    group.finish();
}

criterion_group!(benches, decision, decision_login_spread, limiter, addresses, restriction, hourly_sample);
criterion_main!(benches);
