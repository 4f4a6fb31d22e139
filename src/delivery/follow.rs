//! Following a log file that the system rotates under us, by polling: no inotify, so it works
//! the same on every filesystem, and a poll is a `stat` and a read to the end.
//!
//! Each [`Follower::poll`] reads what was appended since the last one and hands over whole
//! lines; a last line without its newline yet is kept until the newline comes. It notices:
//! - *rename and a new file* (logrotate's default, newsyslog): the path names another inode;
//!   the old file is read to its end (Postfix may have written to it after the rename), then
//!   the new one from its start;
//! - *copytruncate*: the same inode got shorter than what was read; read again from its start
//!   (lines written between the copy and the truncation are lost, as for any reader);
//! - *missing or deleted*: logged once, the rest of an open file is read, and the path is
//!   tried again at each poll; a file that appears is read from its start.
//!
//! The first open starts at the end of the file: what was logged before the filter started
//! concerns messages it has no queue ID for.
//!
//! Reads are blocking; the caller runs polls off the async workers (`spawn_blocking`), so a
//! log on a slow or stuck filesystem delays only the follower.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// A line longer than this is cut to nothing (no Postfix line comes near it): the buffer for
/// a partial line stays bounded whatever the file holds.
const MAX_LINE: usize = 64 * 1024;
/// Bytes read per poll at most, so that a huge backlog is taken in steps.
const MAX_READ_PER_POLL: u64 = 8 * 1024 * 1024;

/// The file as opened: its identity and how far it was read.
struct Open {
    file: File,
    dev: u64,
    ino: u64,
    offset: u64,
}

/// What a poll found, besides the lines (for the logs and the tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The file was read from where the last poll stopped (possibly nothing new).
    Read,
    /// The file was opened for the first time (at its end at start, else at its start).
    Opened,
    /// The path names a new file: the old one was read to its end, the new one from its start.
    Rotated,
    /// The file got shorter than what was read (copytruncate): read again from its start.
    Truncated,
    /// No file at the path.
    Missing,
    /// The file cannot be read (permissions, I/O error).
    Unreadable,
}

/// A log file followed across rotations.
pub struct Follower {
    path: PathBuf,
    open: Option<Open>,
    partial: Vec<u8>,
    /// Bytes of an overlong line are being dropped until its newline.
    dropping: bool,
    /// The next open is the first one: start at the end of the file.
    first: bool,
    /// The last state logged as a problem, so a missing file is logged once, not every poll.
    complained: Option<Found>,
}

impl Follower {
    /// A follower of `path`; nothing is read before the first [`Follower::poll`].
    pub fn new(path: impl Into<PathBuf>) -> Follower {
        Follower { path: path.into(), open: None, partial: Vec::new(), dropping: false, first: true, complained: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what is new and hands each whole line (without its newline) to `on_line`.
    pub fn poll(&mut self, mut on_line: impl FnMut(&[u8])) -> Found {
        let first = std::mem::replace(&mut self.first, false);
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) => {
                let found = if e.kind() == ErrorKind::NotFound { Found::Missing } else { Found::Unreadable };
                if let Some(mut old) = self.open.take() {
                    // Deleted or renamed away: what was written to it is still there to read.
                    self.read_to_end(&mut old, u64::MAX, &mut on_line);
                    self.partial.clear();
                    self.dropping = false;
                    if found == Found::Missing {
                        // A rotation that has not created the new file yet, as often as not.
                        info!(file = %self.path.display(), "log file moved away or deleted; read to its end, waiting for the new one");
                        self.complained = Some(found);
                    }
                }
                self.complain(found, &e);
                return found;
            }
        };
        let mut found = Found::Read;
        match self.open.as_mut() {
            Some(open) if open.dev == meta.dev() && open.ino == meta.ino() => {
                if meta.len() < open.offset {
                    info!(file = %self.path.display(), "log file truncated (copytruncate); reading it from its start");
                    open.offset = 0;
                    self.partial.clear();
                    self.dropping = false;
                    found = Found::Truncated;
                }
            }
            Some(_) => {
                let mut old = self.open.take().expect("matched Some");
                self.read_to_end(&mut old, u64::MAX, &mut on_line);
                // A line the old file ends without a newline was cut by the rotation.
                self.partial.clear();
                self.dropping = false;
                info!(file = %self.path.display(), "log file rotated; following the new file from its start");
                found = Found::Rotated;
            }
            None => found = Found::Opened,
        }
        if self.open.is_none() {
            match File::open(&self.path) {
                Ok(file) => {
                    let offset = if first { meta.len() } else { 0 };
                    self.open = Some(Open { file, dev: meta.dev(), ino: meta.ino(), offset });
                    if self.complained.take().is_some() || first {
                        info!(file = %self.path.display(), "Postfix log opened");
                    }
                }
                Err(e) => {
                    self.complain(Found::Unreadable, &e);
                    return Found::Unreadable;
                }
            }
        }
        let mut open = self.open.take().expect("opened above");
        let ok = self.read_to_end(&mut open, MAX_READ_PER_POLL, &mut on_line);
        if ok {
            self.open = Some(open);
        } else {
            // Opened again at the next poll, from its start: a read error is rare enough that
            // reading some lines twice is better than guessing where the file stands.
            self.complained = Some(Found::Unreadable);
            self.first = false;
        }
        found
    }

    fn complain(&mut self, found: Found, e: &std::io::Error) {
        if self.complained != Some(found) {
            warn!(file = %self.path.display(), "cannot follow the Postfix log ({e}); trying again at each poll, mail is not held up");
            self.complained = Some(found);
        }
    }

    /// Reads from `open.offset` to the end (at most `limit` bytes); false on a read error.
    fn read_to_end(&mut self, open: &mut Open, limit: u64, on_line: &mut impl FnMut(&[u8])) -> bool {
        if let Err(e) = open.file.seek(SeekFrom::Start(open.offset)) {
            warn!(file = %self.path.display(), "cannot read the Postfix log: {e}");
            return false;
        }
        let mut buf = [0u8; 64 * 1024];
        let mut read = 0u64;
        while read < limit {
            let n = match open.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(file = %self.path.display(), "cannot read the Postfix log: {e}");
                    return false;
                }
            };
            read += n as u64;
            open.offset += n as u64;
            self.split(&buf[..n], on_line);
        }
        true
    }

    /// Hands over the whole lines of `chunk`, keeping a last partial line.
    fn split(&mut self, mut chunk: &[u8], on_line: &mut impl FnMut(&[u8])) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&chunk[..end], &chunk[end + 1..]);
            if std::mem::take(&mut self.dropping) {
                // The end of an overlong line.
            } else if self.partial.is_empty() {
                on_line(line);
            } else {
                self.partial.extend_from_slice(line);
                on_line(&self.partial);
                self.partial.clear();
            }
            chunk = rest;
        }
        if self.dropping {
            return;
        }
        if self.partial.len() + chunk.len() > MAX_LINE {
            self.partial.clear();
            self.dropping = true;
        } else {
            self.partial.extend_from_slice(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
    }

    fn poll(f: &mut Follower) -> (Found, Vec<String>) {
        let mut lines = Vec::new();
        let found = f.poll(|l| lines.push(String::from_utf8_lossy(l).into_owned()));
        (found, lines)
    }

    #[test]
    fn starts_at_the_end_and_keeps_a_partial_line_until_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log");
        append(&path, "before the start\n");
        let mut f = Follower::new(&path);
        assert_eq!(poll(&mut f), (Found::Opened, vec![]));
        append(&path, "one\ntw");
        assert_eq!(poll(&mut f), (Found::Read, vec!["one".into()]));
        assert_eq!(poll(&mut f), (Found::Read, vec![]));
        append(&path, "o\nthree\n");
        assert_eq!(poll(&mut f), (Found::Read, vec!["two".into(), "three".into()]));
    }

    #[test]
    fn rename_and_a_new_file_reads_the_old_to_its_end_then_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log");
        append(&path, "");
        let mut f = Follower::new(&path);
        poll(&mut f);
        append(&path, "a\n");
        std::fs::rename(&path, dir.path().join("mail.log.1")).unwrap();
        // Postfix still holds the old file for a moment after the rename.
        append(&dir.path().join("mail.log.1"), "late\ncut");
        // Between the rename and the new file: the old file's rest is read.
        assert_eq!(poll(&mut f), (Found::Missing, vec!["a".into(), "late".into()]));
        append(&path, "new\n");
        assert_eq!(poll(&mut f), (Found::Opened, vec!["new".into()]));
        // The rename and the new file between two polls.
        append(&path, "b\n");
        std::fs::rename(&path, dir.path().join("mail.log.2")).unwrap();
        append(&path, "c\n");
        assert_eq!(poll(&mut f), (Found::Rotated, vec!["b".into(), "c".into()]));
    }

    #[test]
    fn copytruncate_reads_again_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log");
        append(&path, "");
        let mut f = Follower::new(&path);
        poll(&mut f);
        append(&path, "first line, long enough\n");
        assert_eq!(poll(&mut f).1, vec!["first line, long enough".to_owned()]);
        std::fs::copy(&path, dir.path().join("mail.log.1")).unwrap();
        std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
        append(&path, "x\n");
        assert_eq!(poll(&mut f), (Found::Truncated, vec!["x".into()]));
        append(&path, "y\n");
        assert_eq!(poll(&mut f), (Found::Read, vec!["y".into()]));
    }

    #[test]
    fn a_missing_file_is_waited_for_and_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log");
        let mut f = Follower::new(&path);
        assert_eq!(poll(&mut f), (Found::Missing, vec![]));
        assert_eq!(poll(&mut f), (Found::Missing, vec![]));
        append(&path, "created\n");
        assert_eq!(poll(&mut f), (Found::Opened, vec!["created".into()]));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(poll(&mut f), (Found::Missing, vec![]));
        append(&path, "again\n");
        assert_eq!(poll(&mut f), (Found::Opened, vec!["again".into()]));
    }

    #[test]
    fn an_overlong_line_is_dropped_and_the_next_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mail.log");
        append(&path, "");
        let mut f = Follower::new(&path);
        poll(&mut f);
        append(&path, &"z".repeat(MAX_LINE + 10));
        assert_eq!(poll(&mut f).1, Vec::<String>::new());
        append(&path, "zzz\nok\n");
        assert_eq!(poll(&mut f).1, vec!["ok".to_owned()]);
    }
}
