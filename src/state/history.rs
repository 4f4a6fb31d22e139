//! The index that answers "what happened to this account" from `audit.log` without reading the
//! whole file: for every account, where each of its entries lies in the file (offset and
//! length, 12 bytes an entry). It is built by the one scan of the file the durable store makes
//! at start and extended by every append, so a lookup reads only the account's last
//! [`HISTORY_SHOWN`] entries, one positioned read each, however long the log has grown. The
//! entries themselves stay on disk: the file is the history, the index only finds it.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use tracing::warn;

use super::journal::{self, Span};
use crate::policy::restriction::AuditEntry;

/// Most entries a history lookup returns: the account's newest.
pub const HISTORY_SHOWN: usize = 100;

/// Per-account spans of `audit.log`.
pub struct HistoryIndex {
    /// A read-only handle on the audit log (never compacted or renamed, so it stays the file).
    file: File,
    spans: DashMap<Box<str>, Vec<Span>, ahash::RandomState>,
    /// Bytes read by lookups since start: what the tests measure a lookup's cost by.
    bytes_read: AtomicU64,
}

impl HistoryIndex {
    /// An empty index over the audit log at `path` (which must exist).
    ///
    /// # Errors
    /// When the file cannot be opened for reading.
    pub fn open(path: &Path) -> io::Result<HistoryIndex> {
        Ok(HistoryIndex { file: File::open(path)?, spans: DashMap::default(), bytes_read: AtomicU64::new(0) })
    }

    /// Notes where an entry of `account` lies; entries are added oldest first.
    pub fn add(&self, account: &str, span: Span) {
        self.spans.entry(account.into()).or_default().push(span);
    }

    /// Whether the log holds anything about `account`.
    pub fn knows(&self, account: &str) -> bool {
        self.spans.contains_key(account)
    }

    /// The account's newest [`HISTORY_SHOWN`] entries, oldest first, read from the file. An
    /// entry that cannot be read back is left out with a log line (the file is append-only, so
    /// that means damage after the fact, not a race with an append).
    pub fn history(&self, account: &str) -> Vec<AuditEntry> {
        let spans: Vec<Span> = match self.spans.get(account) {
            Some(list) => list[list.len().saturating_sub(HISTORY_SHOWN)..].to_vec(),
            None => return Vec::new(),
        };
        spans.into_iter().filter_map(|span| self.read(span)).collect()
    }

    /// The newest entry of every account in the log (one read per account).
    pub fn latest(&self) -> Vec<AuditEntry> {
        let last: Vec<Span> = self.spans.iter().filter_map(|list| list.last().copied()).collect();
        last.into_iter().filter_map(|span| self.read(span)).collect()
    }

    /// Bytes the lookups have read from the file so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    fn read(&self, span: Span) -> Option<AuditEntry> {
        self.bytes_read.fetch_add(u64::from(span.len), Ordering::Relaxed);
        match journal::read_span::<AuditEntry>(&self.file, span) {
            Ok(Some(mut entry)) => {
                // The notice is for the notifier at start, not part of the history shown.
                entry.notice = None;
                Some(entry)
            }
            Ok(None) => {
                warn!(offset = span.offset, "audit log entry no longer readable (checksum or format mismatch)");
                None
            }
            Err(e) => {
                warn!(offset = span.offset, "audit log entry cannot be read: {e}");
                None
            }
        }
    }
}
