//! The durable restrictions store: the in-memory map for lookups, backed by two journals under
//! `state.dir`:
//!
//! - `restrictions.journal` — restrict/release records; replayed at start, then compacted to
//!   the restrictions still in force, and again every 10,000 records while running;
//! - `audit.log` — every restrict, replacement and release with who, when and why;
//!   append-only, never compacted (it is the audit trail). An account's history is read back
//!   from it through a [`HistoryIndex`] (where each account's entries lie), not kept in memory.
//!
//! A restriction or release is on disk (fsynced) before the call returns, so before the MTA is
//! told 5xx and before an administrator is told "released". Its audit entry holds the event
//! that announces it: the notification and the change are one record, and
//! [`DurableRestrictions::recent_notices`] hands the last week's back at start, for the notifier
//! to spool whatever a crash kept from it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::history::HistoryIndex;
use super::journal::{self, Journal, Span};
use super::memory::{MemoryRestrictions, at};
use crate::policy::events::Event;
use crate::policy::restriction::{AuditEntry, Restriction, RestrictionStore, StoreError};

/// How far back the notices recorded with changes are handed to the notifier at start. The
/// notifier remembers delivered notices for a week (`notify::Tuning::keep_done`), so within it
/// a notice already sent is recognised and not sent again.
pub const NOTICES_REPLAYED_FOR_SECS: i64 = 7 * 86_400;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Restrict {
        restriction: Restriction,
    },
    Release {
        account: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

struct Files {
    journal: Journal,
    audit: Journal,
    /// Records appended to the journal since it was last compacted.
    appended: usize,
}

impl Files {
    /// Records one change in the audit trail and the journal, or in neither: when the journal
    /// refuses it (a full disk), the audit entry is taken back, so the trail never shows a
    /// restriction that was not made. Returns where the audit entry lies, for the index.
    fn append_both(&mut self, entry: &AuditEntry, record: &Record) -> std::io::Result<Span> {
        let mark = self.audit.end();
        let span = self.audit.append_span(entry)?;
        if let Err(e) = self.journal.append(record) {
            if let Err(undo) = self.audit.roll_back(mark) {
                warn!(path = %self.audit.path().display(), "audit entry of a refused change not taken back yet: {undo}");
            }
            return Err(e);
        }
        Ok(span)
    }
}

/// The journal is compacted to the restrictions in force after this many appends, so a
/// filter that runs for months neither grows it without bound nor replays years at start.
const COMPACT_EVERY: usize = 10_000;

/// What opening the store could not trust and left out; each line is also logged where it was
/// found, and one summary line says how many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Damaged lines of `restrictions.journal`: torn, failing their checksum, or not a
    /// restrict/release record. The compaction at start rewrites the journal without them.
    pub journal_records: usize,
    /// Damaged lines of `audit.log`, a torn last entry (cut off) included.
    pub audit_entries: usize,
}

impl Dropped {
    pub fn any(&self) -> bool {
        self.journal_records + self.audit_entries > 0
    }
}

/// Restrictions that survive `kill -9` and power loss.
pub struct DurableRestrictions {
    /// The state directory's lock, held for the life of the store (released when the file
    /// closes, also on `kill -9`).
    _lock: std::fs::File,
    memory: MemoryRestrictions,
    history: HistoryIndex,
    files: Mutex<Files>,
    dir: PathBuf,
    compact_every: usize,
    /// The notices of the changes recorded in the last week, until the notifier takes them.
    recent_notices: Mutex<Vec<Event>>,
    /// What the load at open skipped as damaged.
    dropped: Dropped,
}

/// The lock file in the state directory; it holds the owner's process id, for the error a
/// second filter gets.
const LOCK_FILE: &str = "lock";

/// Takes the state directory's lock (`flock`, exclusive, not waiting) and writes this
/// process's id into the lock file.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                pid if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => format!("pid {pid}"),
                _ => "pid unknown".to_owned(),
            };
            return Err(StoreError::InUse { dir: dir.display().to_string(), holder });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

impl DurableRestrictions {
    /// Opens (creating) the store in `dir`: replays and compacts the journal, loads the audit
    /// trail. Damaged records are skipped with a log line each, counted in
    /// [`DurableRestrictions::dropped_at_load`] and summed up in one more line: a damaged
    /// journal loads what is intact and says what it dropped.
    ///
    /// # Errors
    /// When the directory or the files cannot be created, read or written.
    pub fn open(dir: &Path, now_secs: i64) -> Result<DurableRestrictions, StoreError> {
        std::fs::create_dir_all(dir)?;
        // Before anything is read or rewritten: a second filter started on the same directory
        // (a stray `outbound-guard` run by hand) must not compact the journal under the first.
        let lock = lock_dir(dir)?;
        let journal_path = dir.join("restrictions.journal");
        let audit_path = dir.join("audit.log");

        let memory = MemoryRestrictions::default();
        // Opened for appending first: it creates the file the index reads, and cuts a torn
        // tail, so the scan sees only whole records.
        let audit = Journal::open(&audit_path)?;
        let history = HistoryIndex::open(&audit_path)?;
        let mut recent_notices = Vec::new();
        let audit_read = journal::read_counted::<AuditEntry>(&audit_path)?;
        let journal_read = journal::read_counted::<Record>(&journal_path)?;
        let dropped = Dropped {
            journal_records: journal_read.dropped,
            audit_entries: audit_read.dropped + usize::from(audit.torn_bytes_cut() > 0),
        };
        for (span, entry) in audit_read.records {
            if let Some(notice) = entry.notice
                && entry.at.unix_timestamp() > now_secs - NOTICES_REPLAYED_FOR_SECS
            {
                recent_notices.push(notice);
            }
            history.add(&entry.account, span);
        }
        let mut current: Vec<Restriction> = Vec::new();
        for (_, record) in journal_read.records {
            match record {
                Record::Restrict { restriction } => {
                    current.retain(|r| r.account != restriction.account);
                    current.push(restriction);
                }
                Record::Release { account, .. } => current.retain(|r| r.account != account),
            }
        }
        current.retain(|r| r.in_force(now_secs));
        let compacted: Vec<Record> =
            current.iter().cloned().map(|restriction| Record::Restrict { restriction }).collect();
        journal::rewrite(&journal_path, &compacted)?;
        for r in current {
            memory.insert_replayed(r);
        }
        let count = memory.list(now_secs).len();
        if dropped.any() {
            warn!(
                dir = %dir.display(),
                journal_records = dropped.journal_records,
                audit_entries = dropped.audit_entries,
                "damaged records dropped at load (each logged above); everything intact was loaded"
            );
        }
        info!(dir = %dir.display(), restrictions = count, dropped = dropped.journal_records + dropped.audit_entries, "restrictions loaded");
        let files = Files { journal: Journal::open(&journal_path)?, audit, appended: 0 };
        journal::sync_dir(&journal_path)?;
        Ok(DurableRestrictions {
            _lock: lock,
            memory,
            history,
            files: Mutex::new(files),
            dir: dir.to_owned(),
            compact_every: COMPACT_EVERY,
            recent_notices: Mutex::new(recent_notices),
            dropped,
        })
    }

    /// Counts an append and, every `compact_every` of them, rewrites the journal to the
    /// restrictions in force at `now_secs` (what a restart would keep of it). Called with the
    /// files locked, after the memory map has the change, so the rewrite holds it. A failed
    /// compaction is logged and tried again `compact_every` appends later (not at every append,
    /// which would rewrite the whole set each time a disk refuses); the records are safe in
    /// the journal as it is.
    fn appended(&self, files: &mut Files, now_secs: i64) {
        files.appended += 1;
        if files.appended < self.compact_every {
            return;
        }
        let in_force: Vec<Record> =
            self.memory.list(now_secs).into_iter().map(|restriction| Record::Restrict { restriction }).collect();
        match journal::compact(&mut files.journal, &in_force) {
            Ok(()) => info!(restrictions = in_force.len(), appended = files.appended, "restrictions journal compacted"),
            Err(e) => warn!(
                path = %files.journal.path().display(),
                "restrictions journal not compacted, trying again after {} more records: {e}",
                self.compact_every
            ),
        }
        files.appended = 0;
    }

    /// The notices of the restrictions and releases recorded in the last week, oldest first
    /// (once: later calls get none). The notifier spools those it has neither pending nor
    /// delivered, so a notice lost to a crash between the change and the spool is still sent.
    pub fn recent_notices(&self) -> Vec<Event> {
        std::mem::take(&mut *self.recent_notices.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The newest audit entry of every account with a trail.
    pub fn latest_audit(&self) -> Vec<AuditEntry> {
        self.history.latest()
    }

    /// Bytes history lookups have read from `audit.log` since start.
    pub fn history_bytes_read(&self) -> u64 {
        self.history.bytes_read()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the load at open skipped as damaged (all zero for an intact state directory).
    pub fn dropped_at_load(&self) -> Dropped {
        self.dropped
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        // A panic while holding the lock cannot leave a half-written record behind (each append
        // is one write), so the files stay usable.
        self.files.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RestrictionStore for DurableRestrictions {
    fn is_restricted(&self, account: &str, now_secs: i64) -> bool {
        self.memory.is_restricted(account, now_secs)
    }

    fn get(&self, account: &str, now_secs: i64) -> Option<Restriction> {
        self.memory.get(account, now_secs)
    }

    fn restrict(&self, restriction: Restriction, by: &str, notice: Option<&Event>) -> Result<bool, StoreError> {
        let mut files = self.files();
        if self.memory.in_force(&restriction.account, restriction.created_at.unix_timestamp()) {
            return Ok(false);
        }
        let entry = AuditEntry::restricted(&restriction, by).announcing(notice);
        let span = files.append_both(&entry, &Record::Restrict { restriction: restriction.clone() })?;
        self.history.add(&restriction.account, span);
        let now_secs = restriction.created_at.unix_timestamp();
        let created = self.memory.insert_new(restriction);
        self.appended(&mut files, now_secs);
        Ok(created)
    }

    fn replace(
        &self,
        account: &str,
        reason: &str,
        until: Option<OffsetDateTime>,
        now_secs: i64,
        by: &str,
    ) -> Result<Option<(Restriction, Restriction)>, StoreError> {
        let mut files = self.files();
        let Some((before, after)) = self.memory.replaced(account, reason, until, now_secs) else {
            return Ok(None);
        };
        let entry = AuditEntry::replaced(&after, at(now_secs), by);
        let span = files.append_both(&entry, &Record::Restrict { restriction: after.clone() })?;
        self.history.add(account, span);
        self.memory.insert_replayed(after.clone());
        self.appended(&mut files, now_secs);
        Ok(Some((before, after)))
    }

    fn release(
        &self,
        account: &str,
        now_secs: i64,
        by: &str,
        reason: &str,
        notice: Option<&Event>,
    ) -> Result<Option<Restriction>, StoreError> {
        let mut files = self.files();
        if !self.memory.in_force(account, now_secs) {
            return Ok(None);
        }
        let at = at(now_secs);
        let entry = AuditEntry::released(account, at, by, reason).announcing(notice);
        let span = files.append_both(&entry, &Record::Release { account: account.to_owned(), at })?;
        self.history.add(account, span);
        let released = self.memory.take(account, now_secs);
        self.appended(&mut files, now_secs);
        Ok(released)
    }

    fn list(&self, now_secs: i64) -> Vec<Restriction> {
        self.memory.list(now_secs)
    }

    fn history(&self, account: &str) -> Vec<AuditEntry> {
        self.history.history(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::restriction::{AuditAction, Counters};

    fn restriction(account: &str, at: i64, until: Option<i64>) -> Restriction {
        Restriction::for_test(account, "limit", at, until)
    }

    #[test]
    fn restrictions_and_releases_survive_reopening_with_their_history() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = DurableRestrictions::open(dir.path(), 100).unwrap();
            s.restrict(restriction("a@x", 100, None), "policy", None).unwrap();
            s.restrict(restriction("b@x", 100, None), "policy", None).unwrap();
            s.restrict(restriction("c@x", 100, Some(150)), "policy", None).unwrap();
            s.release("b@x", 110, "admin", "password changed", None).unwrap();
        }
        let s = DurableRestrictions::open(dir.path(), 200).unwrap();
        let accounts: Vec<_> = s.list(200).into_iter().map(|r| r.account).collect();
        assert_eq!(accounts, ["a@x"], "b released, c expired");
        let trail: Vec<_> = s.history("b@x").into_iter().map(|e| (e.action, e.by)).collect();
        assert_eq!(
            trail,
            [(AuditAction::Restricted, "policy".to_owned()), (AuditAction::Released, "admin".to_owned())]
        );
        // The journal was compacted to what is in force.
        let records = journal::read_all::<Record>(&dir.path().join("restrictions.journal")).unwrap();
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn the_journal_is_compacted_while_running_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("restrictions.journal");
        let accounts = |s: &DurableRestrictions, now| {
            let mut a: Vec<_> = s.list(now).into_iter().map(|r| r.account).collect();
            a.sort();
            a
        };
        let before_restart = {
            let mut s = DurableRestrictions::open(dir.path(), 100).unwrap();
            s.compact_every = 8;
            s.restrict(restriction("kept@x", 100, None), "policy", None).unwrap();
            s.restrict(restriction("expires@x", 100, Some(150)), "policy", None).unwrap();
            // 2 + 30 appends: compacted after the 8th, 16th, 24th and 32nd.
            for i in 0..20 {
                let account = format!("u{i:02}@x");
                s.restrict(restriction(&account, 100 + i, None), "policy", None).unwrap();
                if i % 2 == 0 {
                    s.release(&account, 100 + i, "admin", "ok", None).unwrap();
                }
            }
            let records = journal::read_all::<Record>(&path).unwrap();
            assert_eq!(records.len(), 12, "kept, expires and the ten odd ones, nothing else");
            assert!(records.iter().all(|r| matches!(r, Record::Restrict { .. })));
            // Appends after a compaction go to the new file, not the replaced one.
            s.release("u01@x", 130, "admin", "after compaction", None).unwrap();
            assert_eq!(journal::read_all::<Record>(&path).unwrap().len(), 13);
            accounts(&s, 130)
        };
        assert_eq!(before_restart.len(), 11);
        assert!(!dir.path().join("restrictions.tmp").exists(), "no temp file left behind");
        let s = DurableRestrictions::open(dir.path(), 130).unwrap();
        assert_eq!(accounts(&s, 130), before_restart, "a restart sees what the running store saw");
        assert!(!s.is_restricted("u01@x", 130));
        // The audit trail is never compacted.
        assert_eq!(s.history("u00@x").len(), 2);
        assert_eq!(s.history("u01@x").len(), 2);
    }

    #[test]
    fn a_failed_compaction_keeps_every_record_and_is_tried_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("restrictions.journal");
        let mut s = DurableRestrictions::open(dir.path(), 100).unwrap();
        s.compact_every = 4;
        // A directory where the compaction's temp file would go: the rewrite cannot start.
        let blocker = dir.path().join("restrictions.tmp");
        std::fs::create_dir(&blocker).unwrap();
        let restrict_and_release = |s: &DurableRestrictions, i: i64| {
            let account = format!("f{i}@x");
            s.restrict(restriction(&account, 100 + i, None), "policy", None).unwrap();
            s.release(&account, 100 + i, "admin", "ok", None).unwrap();
        };
        s.restrict(restriction("kept@x", 100, None), "policy", None).unwrap();
        for i in 0..2 {
            restrict_and_release(&s, i); // appends 2–5; the compaction at the 4th fails
        }
        assert_eq!(journal::read_all::<Record>(&path).unwrap().len(), 5, "nothing lost, nothing rewritten");
        std::fs::remove_dir(&blocker).unwrap();
        // Not tried again at the next appends (the 5th was the first after the failure) …
        restrict_and_release(&s, 2);
        assert_eq!(journal::read_all::<Record>(&path).unwrap().len(), 7);
        // … but at the fourth after it.
        s.restrict(restriction("f3@x", 103, None), "policy", None).unwrap();
        assert_eq!(journal::read_all::<Record>(&path).unwrap().len(), 2, "compacted to kept@x and f3@x");
        s.release("f3@x", 104, "admin", "ok", None).unwrap();
        drop(s);
        let s = DurableRestrictions::open(dir.path(), 110).unwrap();
        assert_eq!(s.list(110).into_iter().map(|r| r.account).collect::<Vec<_>>(), ["kept@x"]);
    }

    #[test]
    fn a_torn_last_record_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = DurableRestrictions::open(dir.path(), 100).unwrap();
            s.restrict(restriction("a@x", 100, None), "policy", None).unwrap();
        }
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join("restrictions.journal")).unwrap();
        f.write_all(b"1234abcd {\"op\":\"release\",\"acc").unwrap();
        drop(f);
        let s = DurableRestrictions::open(dir.path(), 100).unwrap();
        assert!(s.is_restricted("a@x", 100));
        assert_eq!(s.dropped_at_load(), Dropped { journal_records: 1, audit_entries: 0 });
    }

    /// A journal damaged in the middle and at its end, and an audit trail with a torn last
    /// entry: every intact record loads, the load counts what it dropped, and the next load
    /// (after the compaction) finds nothing more to drop.
    #[test]
    fn a_damaged_journal_loads_what_is_intact_and_counts_what_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = DurableRestrictions::open(dir.path(), 100).unwrap();
            assert_eq!(s.dropped_at_load(), Dropped::default());
            for account in ["a@x", "b@x", "c@x"] {
                s.restrict(restriction(account, 100, None), "policy", None).unwrap();
            }
        }
        let path = dir.path().join("restrictions.journal");
        let mut text = std::fs::read_to_string(&path).unwrap();
        // b@x's record fails its checksum; garbage and a torn record follow.
        let b = text.find("b@x").unwrap();
        text.replace_range(b..b + 1, "B");
        text.push_str("not a record\n1234abcd {\"op\":\"rel");
        std::fs::write(&path, text).unwrap();
        let audit = dir.path().join("audit.log");
        let mut trail = std::fs::read(&audit).unwrap();
        trail.extend_from_slice(b"0badc0de {\"torn");
        std::fs::write(&audit, trail).unwrap();

        let s = DurableRestrictions::open(dir.path(), 101).unwrap();
        let mut kept: Vec<String> = s.list(101).into_iter().map(|r| r.account).collect();
        kept.sort();
        assert_eq!(kept, ["a@x", "c@x"]);
        assert_eq!(s.dropped_at_load(), Dropped { journal_records: 3, audit_entries: 1 });
        assert_eq!(s.latest_audit().len(), 3, "the intact audit entries are all kept");
        drop(s);
        let s = DurableRestrictions::open(dir.path(), 102).unwrap();
        assert_eq!(s.dropped_at_load(), Dropped::default());
        assert_eq!(s.list(102).len(), 2);
    }

    /// The `intact` seed of the `journal_replay` fuzz target is a state directory this store
    /// wrote (two restrictions, one released, and their audit trail), in the target's input
    /// layout; this keeps it in the current record format. `UPDATE_FUZZ_SEEDS=1` rewrites it.
    #[test]
    fn the_journal_fuzz_seed_is_what_the_store_writes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = DurableRestrictions::open(dir.path(), 100).unwrap();
            s.restrict(restriction("alice@example.com", 100, None), "policy", None).unwrap();
            s.restrict(restriction("bob@example.com", 110, Some(4_000_000_000)), "policy", None).unwrap();
            s.release("alice@example.com", 120, "admin", "ok", None).unwrap();
        }
        let mut seed = std::fs::read(dir.path().join("restrictions.journal")).unwrap();
        seed.extend_from_slice(b"\n=== audit.log ===\n");
        seed.extend_from_slice(&std::fs::read(dir.path().join("audit.log")).unwrap());
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/journal_replay/intact");
        if std::env::var_os("UPDATE_FUZZ_SEEDS").is_some() {
            std::fs::write(&path, &seed).unwrap();
        }
        assert!(std::fs::read(&path).unwrap() == seed, "{} is stale: rerun with UPDATE_FUZZ_SEEDS=1", path.display());
    }

    fn notice(account: &str, id: &str) -> Event {
        Event {
            id: id.into(),
            kind: crate::policy::events::EventKind::SenderRestricted,
            account: account.into(),
            reason: "limit".into(),
            policy: "default".into(),
            limit: Some(crate::policy::limits::LimitKind::ExternalPerHour),
            counters: Counters::default(),
            since: OffsetDateTime::from_unix_timestamp(100).unwrap(),
            until: None,
            node: "mx1".into(),
            by: None,
            cause: String::new(),
            escalated: false,
        }
    }

    #[test]
    fn the_notices_of_the_last_week_come_back_once_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let week = NOTICES_REPLAYED_FOR_SECS;
        {
            let s = DurableRestrictions::open(dir.path(), 100).unwrap();
            s.restrict(restriction("old@x", 100, None), "policy", Some(&notice("old@x", "01"))).unwrap();
            s.restrict(restriction("new@x", 100 + week, None), "policy", Some(&notice("new@x", "02"))).unwrap();
            let mut release = notice("new@x", "03");
            release.kind = crate::policy::events::EventKind::SenderReleased;
            s.release("new@x", 101 + week, "admin", "ok", Some(&release)).unwrap();
            // A change another node made (no notice of ours).
            s.restrict(restriction("remote@x", 102 + week, None), "policy", None).unwrap();
        }
        let s = DurableRestrictions::open(dir.path(), 150 + week).unwrap();
        let ids: Vec<String> = s.recent_notices().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["02", "03"], "the week-old one is left out");
        assert!(s.recent_notices().is_empty(), "handed over once");
        // The notice is not part of the history the API shows.
        assert!(s.history("new@x").iter().all(|e| e.notice.is_none()));
    }

    /// The audit entry of a change the journal refused (a full disk) is taken back: the trail
    /// never shows, nor re-announces, a restriction that was not made.
    #[test]
    fn a_change_the_journal_refuses_leaves_no_audit_entry() {
        let dir = tempfile::tempdir().unwrap();
        let s = DurableRestrictions::open(dir.path(), 100).unwrap();
        s.restrict(restriction("a@x", 100, None), "policy", Some(&notice("a@x", "01"))).unwrap();
        let real = std::mem::replace(&mut s.files().journal, Journal::open(Path::new("/dev/full")).unwrap());
        assert!(s.restrict(restriction("b@x", 100, None), "policy", Some(&notice("b@x", "02"))).is_err());
        assert!(!s.is_restricted("b@x", 100));
        s.files().journal = real;
        s.restrict(restriction("c@x", 100, None), "policy", Some(&notice("c@x", "03"))).unwrap();
        drop(s);
        let audit = journal::read_all::<AuditEntry>(&dir.path().join("audit.log")).unwrap();
        let accounts: Vec<&str> = audit.iter().map(|e| e.account.as_str()).collect();
        assert_eq!(accounts, ["a@x", "c@x"]);
        let s = DurableRestrictions::open(dir.path(), 100).unwrap();
        assert_eq!(s.recent_notices().into_iter().map(|e| e.id).collect::<Vec<_>>(), ["01", "03"]);
    }

    /// A lookup reads the account's own entries, one positioned read each, not the log: with
    /// thousands of other entries in it, the bytes read are those of the account's entries.
    #[test]
    fn a_history_lookup_reads_only_the_accounts_entries() {
        let dir = tempfile::tempdir().unwrap();
        let s = DurableRestrictions::open(dir.path(), 100).unwrap();
        s.restrict(restriction("bob@x", 100, None), "policy", None).unwrap();
        for i in 0..400 {
            s.restrict(restriction(&format!("u{i}@x"), 100, None), "policy", None).unwrap();
        }
        s.release("bob@x", 200, "carol", "password changed", None).unwrap();
        drop(s);
        let log_len = std::fs::metadata(dir.path().join("audit.log")).unwrap().len();
        let s = DurableRestrictions::open(dir.path(), 300).unwrap();
        let before = s.history_bytes_read();
        let trail = s.history("bob@x");
        let read = s.history_bytes_read() - before;
        assert_eq!(
            trail.iter().map(|e| e.action).collect::<Vec<_>>(),
            [AuditAction::Restricted, AuditAction::Released]
        );
        assert_eq!(trail[1].by, "carol");
        let own: u64 = trail.iter().map(|e| journal::frame(&serde_json::to_string(e).unwrap()).len() as u64 - 1).sum();
        assert_eq!(read, own, "exactly the account's two entries");
        assert!(read * 100 < log_len, "{read} bytes of {log_len}");
        assert!(s.history("nobody@x").is_empty());
    }

    /// Spans found at start after a fragment of a failed write (an older version's file) and
    /// spans of entries appended after a start read back the same entries.
    #[test]
    fn the_index_finds_entries_after_a_fragment_and_after_appends() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = DurableRestrictions::open(dir.path(), 100).unwrap();
            s.restrict(restriction("a@x", 100, None), "policy", None).unwrap();
        }
        // A fragment with invalid UTF-8 glued before the next whole entry, as an old version wrote.
        let entry = AuditEntry::released("a@x", at(110), "admin", "ok");
        let mut bytes = std::fs::read(dir.path().join("audit.log")).unwrap();
        bytes.extend_from_slice(b"0badc0de {\"acc\xff\xfe");
        bytes.extend_from_slice(journal::frame(&serde_json::to_string(&entry).unwrap()).as_bytes());
        std::fs::write(dir.path().join("audit.log"), bytes).unwrap();
        let s = DurableRestrictions::open(dir.path(), 120).unwrap();
        assert_eq!(
            s.history("a@x").iter().map(|e| e.action).collect::<Vec<_>>(),
            [AuditAction::Restricted, AuditAction::Released]
        );
        // (Only the audit log was given the release: in the journal a@x is still restricted.)
        s.replace("a@x", "new reason", None, 140, "carol").unwrap().unwrap();
        let trail = s.history("a@x");
        assert_eq!(trail.len(), 3);
        assert_eq!(
            (trail[2].action, trail[2].reason.as_str(), trail[2].until),
            (AuditAction::Replaced, "new reason", None)
        );
    }

    /// A replacement is in the journal (the new reason and `until` come back after a restart)
    /// and in the history; with nothing in force it records nothing.
    #[test]
    fn a_replacement_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = DurableRestrictions::open(dir.path(), 100).unwrap();
            assert!(s.replace("a@x", "r", None, 100, "carol").unwrap().is_none());
            s.restrict(restriction("a@x", 100, Some(200)), "policy", None).unwrap();
            let (before, after) = s.replace("a@x", "stolen laptop", None, 150, "carol").unwrap().unwrap();
            assert_eq!((before.until, after.until), (Some(at(200)), None));
            assert_eq!(after.created_at, before.created_at, "still restricted since it began");
        }
        let s = DurableRestrictions::open(dir.path(), 300).unwrap();
        let r = s.get("a@x", 300).expect("in force past the old until");
        assert_eq!(r.reason, "stolen laptop");
        let actions: Vec<_> = s.history("a@x").iter().map(|e| (e.action, e.by.clone())).collect();
        assert_eq!(actions, [(AuditAction::Restricted, "policy".into()), (AuditAction::Replaced, "carol".into())]);
    }
}
