//! Policy benches: the whole decision for one outbound message with three recipients (MAIL
//! FROM, 3 × RCPT TO, end of message) against one million resident accounts, single-threaded
//! and with two threads contending; one governor check on an account record; and a restriction
//! and its release recorded in the durable store (two `fdatasync`s each), the rare path.
//!
//! The setup also prints the resident memory each tracked account costs (see
//! `fresh_process_allocation` for why each engine is measured as if alone). The single-threaded
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

/// Fixes glibc's mmap threshold at its default, 128 KiB, before the first engine is built.
/// glibc raises the threshold whenever a large block is freed; once the first engine's
/// tables are freed, the next engine's growing tables would come from the heap and those it
/// outgrows stay resident, some 50–60 bytes an account that a daemon, which builds one
/// engine, does not have. Fixed, every engine here places its tables as a fresh process does.
fn fresh_process_allocation() {
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

fn decision(c: &mut Criterion) {
    fresh_process_allocation();
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
/// per tracked account on top of the account table. The limits are the highest allowed (11
/// networks, 5 countries), whose entries are the largest; `OG_BENCH_LOGIN_LIMITS=4,2` sets
/// others, for the memory figure (the timed part then restricts the accounts that pass them).
fn decision_login_spread(c: &mut Criterion) {
    fresh_process_allocation();
    let limits = std::env::var("OG_BENCH_LOGIN_LIMITS").unwrap_or_else(|_| "11,5".to_owned());
    let (networks, countries) = limits.split_once(',').expect("OG_BENCH_LOGIN_LIMITS=NETWORKS,COUNTRIES");
    let (networks, countries): (u32, u32) = (networks.parse().unwrap(), countries.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut db = mmdb::documentation_countries();
    db.insert("192.0.3.0/24", "SE");
    db.write(&dir.path().join("countries.mmdb"));
    let (engine, _events) = engine_with(
        &dir.path().join("bench.toml"),
        &format!(
            "max_client_networks_per_hour = {networks}\nmax_client_countries_per_day = {countries}\n\
             [geoip]\ndatabase = \"countries.mmdb\"\n"
        ),
    );
    let (mut buf, mut tx) = ([0u8; 32], Transaction::default());
    let before = rss_bytes();
    // Each account from as many of its four places as pass the limits (all four under the
    // default ones: four networks in three countries), so that the entries are as large as
    // the timed messages make them.
    let places = match countries {
        0 | 3.. => 4,
        2 => 2,
        _ => 1,
    }
    .min(networks as usize);
    for i in 0..ACCOUNTS {
        for n in 0..places {
            one_message_from(&engine, &mut tx, decision::account(&mut buf, i), Some(client_of(i, n)));
        }
    }
    let after = rss_bytes();
    eprintln!(
        "login spread on ({networks} networks, {countries} countries; each account from {places} places): tracked \
         accounts: {}, resident memory per account: {} bytes (account record and login-spread entry; entry sizes \
         by class: {:?} bytes)",
        engine.tracked_accounts(),
        (after.saturating_sub(before)) / ACCOUNTS,
        outbound_guard::policy::logins::Layout::for_limits(networks, countries).class_bytes(),
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
