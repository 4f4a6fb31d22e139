//! Counters snapshot benches: writing the snapshot of one million tracked accounts (as at a
//! graceful shutdown) and reading it back into a fresh engine (as at start). Target for the
//! restore: ≤ 1 s.
//!
//! Also prints the resident memory of 1M and (with `OG_BENCH_10M=1`, by hand: about 1.5 GiB
//! and a minute) 10M tracked accounts, for the "10M accounts in ≤ 2 GiB" target.

use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use outbound_guard::config::Config;
use outbound_guard::metrics::Metrics;
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::engine::{Engine, Transaction};
use outbound_guard::policy::events::EventSink;
use outbound_guard::policy::{MailFacts, MessageFacts, Policy, RcptFacts};
use outbound_guard::state::memory::MemoryRestrictions;
use outbound_guard::state::snapshot;

/// Low limits, so one recipient keeps an account's record in use for many minutes: an idle
/// record is not restored (nothing in it matters), and the bench must restore every one.
const CONFIG: &str = "[organization]\nlocal_domains = [\"example.com\"]\n\
    [policy.default]\nrecipient_limit_external_per_hour = 10\nrecipient_limit_internal_per_hour = 10\n\
    recipient_limit_per_day = 50\n";

fn empty_engine() -> Engine {
    let config = Arc::new(Config::parse(std::path::Path::new("bench.toml"), CONFIG).unwrap());
    // The receiver is dropped: events are not what is measured (the sink drops when full).
    let (sink, _) = EventSink::channel(16);
    Engine::new(config, Arc::new(MemoryRestrictions::default()), sink, EngineClock::System, Arc::new(Metrics::new()))
}

/// An engine tracking `n` accounts, each having sent one message to one recipient.
fn engine_with(n: usize) -> Engine {
    let engine = empty_engine();
    let mut tx = Transaction::default();
    let mut name = String::new();
    for i in 0..n {
        name.clear();
        std::fmt::Write::write_fmt(&mut name, format_args!("user{i}@example.com")).unwrap();
        let facts = MailFacts {
            sender: name.as_bytes(),
            auth_login: Some(name.as_bytes()),
            client_addr: None,
            queue_id: None,
            local_submission: false,
        };
        engine.mail_from(&mut tx, &facts);
        engine.rcpt_to(&mut tx, &RcptFacts { recipient: b"a@example.net" });
        // Delivered, so counted (an unfinished transaction gives its recipients back).
        engine.end_of_message(&mut tx, &MessageFacts { queue_id: None, headers: &[], scanned: &[] });
        engine.end_transaction(&mut tx);
    }
    engine
}

// As in the daemon, whose memory this reports: the account table on huge pages.
#[global_allocator]
static ALLOCATOR: outbound_guard::huge_pages::LargeBlocksOnHugePages =
    outbound_guard::huge_pages::LargeBlocksOnHugePages;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

fn memory_at(n: usize) {
    let before = rss_bytes();
    let engine = engine_with(n);
    let after = rss_bytes();
    eprintln!(
        "{n} tracked accounts: {:.0} MiB resident, {} bytes per account",
        (after - before) as f64 / (1 << 20) as f64,
        (after - before) / n
    );
    drop(engine);
}

fn snapshot(c: &mut Criterion) {
    // Under `cargo test --all-targets` (no `--bench` argument) a small run checks the bench
    // still works; a million accounts in a debug build would only cost CI time.
    let accounts = if std::env::args().any(|a| a == "--bench") { 1_000_000 } else { 10_000 };
    memory_at(accounts);
    if std::env::var_os("OG_BENCH_10M").is_some() {
        memory_at(10_000_000);
    }
    let engine = engine_with(accounts);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counters.snapshot");
    // Written once here too, so the restore can be measured on its own (a bench filter).
    snapshot::write(&path, engine.records()).unwrap();

    let mut group = c.benchmark_group("snapshot_1m_accounts");
    group.sample_size(10);
    group.bench_function("write", |b| b.iter(|| snapshot::write(&path, engine.records()).unwrap()));
    group.bench_function("read_and_restore", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let fresh = empty_engine();
                let started = Instant::now();
                let records = snapshot::read(&path).unwrap().expect("a snapshot");
                let restored = fresh.restore_records(records);
                total += started.elapsed();
                assert_eq!(restored, accounts);
                drop(fresh); // outside the timed part
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
