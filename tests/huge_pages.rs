//! The daemon's account table is offered transparent huge pages: the binary runs with the
//! allocator of `outbound_guard::huge_pages`, so a table grown past the large-block size lies
//! in memory advised for huge pages (the `hg` flag in `/proc/PID/smaps`).
//!
//! The table is grown the quick way: the daemon restores a counters snapshot of enough
//! accounts at start.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::binary::GuardProcess;
use outbound_guard::huge_pages::LARGE_BLOCK;
use outbound_guard::policy::record::AccountRecord;
use outbound_guard::state::snapshot;

/// The process's mappings advised for huge pages, as (size, of which on huge pages) in KiB.
fn advised_mappings(pid: u32) -> Vec<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let mut found = Vec::new();
    let (mut size, mut huge) = (0, 0);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("Size:") => size = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("AnonHugePages:") => huge = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            Some("VmFlags:") if fields.any(|f| f == "hg") => found.push((size, huge)),
            _ => {}
        }
    }
    found
}

#[test]
fn a_large_account_table_lies_in_memory_advised_for_huge_pages() {
    if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
        eprintln!("this kernel has no transparent huge pages; nothing to check");
        return;
    }
    // The table is split into shards (four per CPU, a power of two); each must pass the
    // large-block size: 64-byte slots, at most 7/8 full before it doubles.
    let shards = (std::thread::available_parallelism().map_or(1, usize::from) * 4).next_power_of_two();
    let per_shard = LARGE_BLOCK / 64 * 7 / 8 / 2 + 4096;
    let accounts = shards * per_shard;

    // Started once to lay out its directory, killed (no snapshot of its own), given a
    // snapshot, started again.
    let mut guard = GuardProcess::start("", "[organization]\nlocal_domains = [\"example.com\"]\n");
    guard.child.kill().expect("kill the first run");
    guard.child.wait().expect("reap the first run");
    // Counters an hour into the future, so that none is idle and every one is restored.
    let later = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(3600);
    let mut record = AccountRecord::default();
    record.tat[0] = later.as_nanos() as u64;
    let records = (0..accounts).map(|i| (format!("user{i}@example.com"), record.clone()));
    let path = guard.dir.path().join("state").join("counters.snapshot");
    assert_eq!(snapshot::write(&path, records).expect("write a snapshot"), accounts);
    let guard = GuardProcess::restart(guard);
    assert!(guard.log().contains(&format!("accounts={accounts}")), "all restored:\n{}", guard.log());

    // Neighbouring mappings with the same flags merge, so count kilobytes, not mappings.
    let advised = advised_mappings(guard.child.id());
    let advised_kib: u64 = advised.iter().map(|(size, _)| size).sum();
    let tables_kib = (shards * LARGE_BLOCK / 1024) as u64;
    assert!(
        advised_kib >= tables_kib,
        "the {shards} shards' tables ({tables_kib} KiB at least) in memory advised for huge pages; found {advised:?}"
    );
    eprintln!("advised mappings (KiB, of which on huge pages): {advised:?}");
    let (status, _) = guard.terminate();
    assert!(status.success());
}
