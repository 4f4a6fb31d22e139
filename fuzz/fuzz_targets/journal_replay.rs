//! The durable restrictions store opened on whatever its files hold. The input is the state
//! directory's two journals: the bytes before the first `MARKER` are `restrictions.journal`,
//! those after it `audit.log` (none: no audit trail). They are written into a scratch
//! directory and `DurableRestrictions::open` loads them, as the filter does at start.
//!
//! Besides "never panics" (records of any shape, times at the ends of their range, lines cut
//! anywhere), it checks that a damaged journal loads what is intact and says what it dropped:
//! - opening never fails on content (only I/O may fail, and the scratch directory does not);
//! - read as records of any shape, every line of a file is either kept or counted as dropped;
//! - the store drops at least those lines (it also drops well-formed records that are not
//!   restrict/release records or audit entries) and never more lines than there are;
//! - the load rewrote the journal to what it kept: opened again, it drops nothing from the
//!   journal, lists the same restrictions, and drops from the audit trail (never rewritten)
//!   what it dropped the first time, less a torn last entry the first open cut off.
//!
//! The scratch directory is one per process under the temp directory, reused by every input;
//! a tmpfs `TMPDIR` makes the fsyncs of each load cheap.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outbound_guard::policy::restriction::RestrictionStore;
use outbound_guard::state::durable::DurableRestrictions;
use outbound_guard::state::journal;
use serde::de::IgnoredAny;

/// Separates the journal's bytes from the audit trail's in an input.
const MARKER: &[u8] = b"\n=== audit.log ===\n";

/// "Now" for the load: restrictions that ended before it are not kept.
const NOW_SECS: i64 = 1_795_341_600;

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("outbound-guard-fuzz-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the scratch directory");
        dir
    })
}

/// Lines of a file as the journal reader counts them: a last line without a newline counts.
fn lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count() + usize::from(bytes.last().is_some_and(|&b| b != b'\n'))
}

fuzz_target!(|data: &[u8]| {
    let (journal_bytes, audit_bytes) = match data.windows(MARKER.len()).position(|w| w == MARKER) {
        Some(at) => (&data[..at], Some(&data[at + MARKER.len()..])),
        None => (data, None),
    };
    let dir = scratch();
    let journal_path = dir.join("restrictions.journal");
    let audit_path = dir.join("audit.log");
    std::fs::write(&journal_path, journal_bytes).expect("write the journal");
    match audit_bytes {
        Some(bytes) => std::fs::write(&audit_path, bytes).expect("write the audit trail"),
        None => {
            let _ = std::fs::remove_file(&audit_path);
        }
    }

    // What a reader that accepts any record shape keeps and drops.
    let any_journal = journal::read_counted::<IgnoredAny>(&journal_path).expect("read the journal");
    assert_eq!(any_journal.records.len() + any_journal.dropped, lines(journal_bytes));
    let any_audit = journal::read_counted::<IgnoredAny>(&audit_path).expect("read the audit trail");
    let audit = audit_bytes.unwrap_or_default();
    assert_eq!(any_audit.records.len() + any_audit.dropped, lines(audit));

    let store = DurableRestrictions::open(dir, NOW_SECS).expect("a damaged journal never stops the load");
    let dropped = store.dropped_at_load();
    assert!(dropped.journal_records >= any_journal.dropped && dropped.journal_records <= lines(journal_bytes));
    assert!(dropped.audit_entries >= any_audit.dropped && dropped.audit_entries <= lines(audit));
    let listed = store.list(NOW_SECS);
    for r in &listed {
        assert!(store.is_restricted(&r.account, NOW_SECS), "{} listed but not restricted", r.account);
    }
    let _ = store.latest_audit();
    let _ = store.recent_notices();
    drop(store);

    let torn_audit = usize::from(audit.last().is_some_and(|&b| b != b'\n'));
    let again = DurableRestrictions::open(dir, NOW_SECS).expect("the rewritten journal loads");
    let dropped_again = again.dropped_at_load();
    assert_eq!(dropped_again.journal_records, 0, "the compacted journal is intact");
    assert_eq!(dropped_again.audit_entries, dropped.audit_entries - torn_audit);
    let accounts = |list: Vec<outbound_guard::policy::restriction::Restriction>| {
        let mut a: Vec<String> = list.into_iter().map(|r| r.account).collect();
        a.sort();
        a
    };
    assert_eq!(accounts(again.list(NOW_SECS)), accounts(listed));
});
