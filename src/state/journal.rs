//! An append-only file of records, each on its own line with a checksum: `CRC32HEX JSON\n`.
//!
//! Every append is written and `fdatasync`ed before it returns, so a record acknowledged to the
//! caller survives `kill -9` and power loss. An append that fails (a full disk) is cut back off
//! the file before the error is returned, so the next record never lands on the same line as a
//! fragment; if even the cut fails, the next append makes it first and is refused while it
//! cannot. Reading skips what cannot be trusted — a torn last record (the process died
//! mid-write), a line whose checksum does not match — with a log line, never a failed start;
//! a whole record found after a fragment on one line (written by a version without the cut) is
//! kept. [`rewrite`] replaces a file atomically (temp file, fsync, rename,
//! fsync of the directory), which is how journals are compacted; [`compact`] does the same
//! to a journal in use.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

/// An open journal, positioned for appending.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Where the last whole record ends: the file's length as far as anyone was told.
    end: u64,
    /// A failed append or roll-back left bytes after `end` that are still to be cut off.
    dirty: bool,
    /// Bytes of a torn last record cut off when the journal was opened (0: none).
    torn_cut: u64,
}

pub(crate) fn frame(json: &str) -> String {
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()))
}

fn unframe(line: &str) -> Option<&str> {
    let (crc, json) = line.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    (crc32fast::hash(json.as_bytes()) == crc).then_some(json)
}

impl Journal {
    /// Opens (creating) a journal for appending.
    ///
    /// A torn last record (the process stopped while writing it, so it was never acknowledged)
    /// is cut off first: appended after it, the next record would share its line and be lost
    /// with it at the next read.
    ///
    /// # Errors
    /// When the file cannot be opened, or its torn tail cannot be cut.
    pub fn open(path: &Path) -> io::Result<Journal> {
        let file = OpenOptions::new().create(true).read(true).append(true).open(path)?;
        let torn_cut = cut_torn_tail(&file, path)?;
        let end = file.metadata()?.len();
        Ok(Journal { path: path.to_owned(), file, end, dirty: false, torn_cut })
    }

    /// Bytes of a torn last record that [`Journal::open`] cut off (0 when the file ended with
    /// a whole record): a record lost, for a load to report.
    pub fn torn_bytes_cut(&self) -> u64 {
        self.torn_cut
    }

    /// Appends one record and waits until it is on disk.
    ///
    /// # Errors
    /// When the record cannot be written or synced; the journal is then as it was before the
    /// call (or, if the file could not even be cut back, marked so that the next append cuts
    /// it first).
    pub fn append<T: Serialize>(&mut self, record: &T) -> io::Result<()> {
        let json = serde_json::to_string(record).map_err(io::Error::other)?;
        let framed = frame(&json);
        if self.dirty {
            // Never after a fragment: a record glued to it would be read as damage.
            self.cut_back()?;
        }
        let written = self.file.write_all(framed.as_bytes()).and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.end += framed.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Not acknowledged, so not kept: whatever part of it reached the file goes.
                self.dirty = true;
                if let Err(cut) = self.cut_back() {
                    warn!(file = %self.path.display(), "failed record not cut off yet, trying again before the next one: {cut}");
                }
                Err(e)
            }
        }
    }

    /// [`Journal::append`], returning where the record lies in the file (for [`read_span`]).
    ///
    /// # Errors
    /// As [`Journal::append`].
    pub fn append_span<T: Serialize>(&mut self, record: &T) -> io::Result<Span> {
        let offset = self.end;
        self.append(record)?;
        // The frame without its newline.
        Ok(Span { offset, len: (self.end - offset - 1) as u32 })
    }

    /// Where the next record will start: a mark for [`Journal::roll_back`].
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Takes back what was appended since `mark` (from [`Journal::end`]): for a change written
    /// to two journals of which the second refused it.
    ///
    /// # Errors
    /// When the file cannot be cut; the next append tries again first.
    pub fn roll_back(&mut self, mark: u64) -> io::Result<()> {
        if mark < self.end {
            self.end = mark;
            self.dirty = true;
        }
        if self.dirty { self.cut_back() } else { Ok(()) }
    }

    /// Truncates the file to `end` and syncs it.
    fn cut_back(&mut self) -> io::Result<()> {
        self.file.set_len(self.end)?;
        self.file.sync_data()?;
        self.dirty = false;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Truncates `file` after its last complete line, if anything follows it; returns how many
/// bytes it cut.
fn cut_torn_tail(file: &File, path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut last = [0u8; 1];
    if len == 0 || (file.read_exact_at(&mut last, len - 1).is_ok() && last[0] == b'\n') {
        return Ok(0);
    }
    // Backwards a block at a time to the last newline; a torn record is one short line.
    let mut block = [0u8; 4096];
    let mut end = len;
    let keep = loop {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(at) = chunk.iter().rposition(|&b| b == b'\n') {
            break start + at as u64 + 1;
        }
        if start == 0 {
            break 0;
        }
        end = start;
    };
    warn!(file = %path.display(), bytes = len - keep, "torn last record cut off (the process stopped while writing it)");
    file.set_len(keep)?;
    file.sync_data()?;
    Ok(len - keep)
}

/// Where one record's frame (`CRC32HEX JSON`, without the newline) lies in a journal file:
/// what [`read_span`] reads back without reading anything else of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u32,
}

/// Reads every trustworthy record of a journal (none if it does not exist).
///
/// # Errors
/// Only when the file exists but cannot be read at all.
pub fn read_all<T: DeserializeOwned>(path: &Path) -> io::Result<Vec<T>> {
    Ok(read_all_spans(path)?.into_iter().map(|(_, record)| record).collect())
}

/// [`read_all`] with where each record lies in the file, for an index that reads records
/// back one at a time ([`read_span`]).
///
/// # Errors
/// Only when the file exists but cannot be read at all.
pub fn read_all_spans<T: DeserializeOwned>(path: &Path) -> io::Result<Vec<(Span, T)>> {
    Ok(read_counted(path)?.records)
}

/// What [`read_counted`] found in a journal: the records it trusts, and how many lines it
/// could not (each also logged), so a caller can say what a damaged journal lost.
#[derive(Debug)]
pub struct ReadOutcome<T> {
    pub records: Vec<(Span, T)>,
    /// Lines skipped: torn, failing their checksum, or not a record of this type. A line whose
    /// fragment was skipped but whose record after it was kept is not counted.
    pub dropped: usize,
}

/// [`read_all_spans`] that also counts the lines it skipped.
///
/// # Errors
/// Only when the file exists but cannot be read at all.
pub fn read_counted<T: DeserializeOwned>(path: &Path) -> io::Result<ReadOutcome<T>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ReadOutcome { records: Vec::new(), dropped: 0 }),
        Err(e) => return Err(e),
    };
    let mut dropped = 0usize;
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut raw = Vec::new();
    let mut number = 0usize;
    let mut offset = 0u64;
    loop {
        raw.clear();
        let read = reader.read_until(b'\n', &mut raw)?;
        if read == 0 {
            break;
        }
        let line_start = offset;
        offset += read as u64;
        number += 1;
        let complete = raw.last() == Some(&b'\n');
        let content = if complete { raw.len() - 1 } else { raw.len() };
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches('\n');
        // A record is always the end of its line, and valid UTF-8: its span is the line's last
        // bytes, whatever a lossy decoding did to a fragment before it.
        let span = |text: &str| Span { offset: line_start + (content - text.len()) as u64, len: text.len() as u32 };
        let parsed = parse_record::<T>(line);
        match parsed {
            Some(record) if complete => records.push((span(line), record)),
            _ if !complete => {
                dropped += 1;
                warn!(file = %path.display(), line = number, "torn last record skipped (the process stopped while writing it)")
            }
            _ => match after_fragment::<T>(line) {
                Some((text, record)) => {
                    warn!(file = %path.display(), line = number, "fragment of a failed write skipped; the record after it kept");
                    records.push((span(text), record));
                }
                None => {
                    dropped += 1;
                    warn!(file = %path.display(), line = number, "corrupt record skipped (checksum or format mismatch)")
                }
            },
        }
    }
    Ok(ReadOutcome { records, dropped })
}

/// Reads the one record at `span` of `file` (from [`read_all_spans`] or
/// [`Journal::append_span`]): `len` bytes, checksum verified; `None` when they are not a
/// whole record of type `T`.
///
/// # Errors
/// When the bytes cannot be read.
pub fn read_span<T: DeserializeOwned>(file: &File, span: Span) -> io::Result<Option<T>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; span.len as usize];
    file.read_exact_at(&mut buf, span.offset)?;
    Ok(std::str::from_utf8(&buf).ok().and_then(parse_record))
}

fn parse_record<T: DeserializeOwned>(line: &str) -> Option<T> {
    unframe(line).and_then(|json| serde_json::from_str::<T>(json).ok())
}

/// The whole record at the end of a line that starts with something else: what an append
/// after a failed one wrote before appends cut failures back (the fragment has no newline, so
/// the good record shares its line). A checksum frame (`8 hex digits, space, {`) is looked
/// for at every later position; the first that checks out and parses is the record.
fn after_fragment<T: DeserializeOwned>(line: &str) -> Option<(&str, T)> {
    let bytes = line.as_bytes();
    (1..bytes.len().saturating_sub(10))
        .filter(|&at| {
            bytes[at + 8] == b' '
                && bytes[at + 9] == b'{'
                && bytes[at..at + 8].iter().all(u8::is_ascii_hexdigit)
                && line.is_char_boundary(at)
        })
        .find_map(|at| parse_record(&line[at..]).map(|record| (&line[at..], record)))
}

/// Replaces `path` with exactly `records`, atomically.
///
/// # Errors
/// When the new file cannot be written, synced or renamed into place.
pub fn rewrite<T: Serialize>(path: &Path, records: &[T]) -> io::Result<()> {
    let (tmp, _) = write_synced(path, records)?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Replaces the open journal's file with exactly `records`, atomically, and leaves the
/// journal positioned after them. The new file is opened for appending before it is renamed
/// into place, so the journal never appends to a file that is no longer the one at its path;
/// on any failure the old file and the journal's handle stay as they were.
///
/// # Errors
/// When the new file cannot be written, synced, opened or renamed into place.
pub fn compact<T: Serialize>(journal: &mut Journal, records: &[T]) -> io::Result<()> {
    let (tmp, len) = write_synced(&journal.path, records)?;
    let opened = OpenOptions::new().append(true).open(&tmp).and_then(|file| {
        std::fs::rename(&tmp, &journal.path)?;
        Ok(file)
    });
    let file = match opened {
        Ok(file) => file,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // The rename is done: from here on the new file is the journal whatever happens; a failed
    // directory sync leaves only the rename itself to a power loss, after which the old file,
    // which holds the same restrictions, is read.
    journal.file = file;
    journal.end = len;
    journal.dirty = false;
    if let Err(e) = sync_dir(&journal.path) {
        warn!(path = %journal.path.display(), "directory not synced after compaction: {e}");
    }
    Ok(())
}

/// Writes `records` to the temp file beside `path` and syncs it; returns its path and length.
fn write_synced<T: Serialize>(path: &Path, records: &[T]) -> io::Result<(PathBuf, u64)> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    let mut buf = String::new();
    for r in records {
        buf.push_str(&frame(&serde_json::to_string(r).map_err(io::Error::other)?));
    }
    file.write_all(buf.as_bytes())?;
    file.sync_all()?;
    Ok((tmp, buf.len() as u64))
}

/// Syncs the directory holding `path`, so a rename or a new file survives power loss.
///
/// # Errors
/// When the directory cannot be opened or synced.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_records_read_back_and_damage_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::open(&path).unwrap();
        for n in 0..3u32 {
            j.append(&n).unwrap();
        }
        assert_eq!(read_all::<u32>(&path).unwrap(), [0, 1, 2]);

        // A flipped byte in the middle, and a torn tail.
        let mut text = std::fs::read_to_string(&path).unwrap();
        let second = text.find('\n').unwrap() + 10;
        text.replace_range(second..second + 1, "9");
        text.push_str("0badc0de {\"half");
        std::fs::write(&path, text).unwrap();
        assert_eq!(read_all::<u32>(&path).unwrap(), [0, 2]);

        // Opened for appending again, the torn tail is cut: the next record gets a line of its own.
        let mut j = Journal::open(&path).unwrap();
        j.append(&3u32).unwrap();
        assert_eq!(read_all::<u32>(&path).unwrap(), [0, 2, 3]);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("3\n"));

        // A journal that is nothing but a torn record becomes empty.
        std::fs::write(&path, "0badc0de {\"half").unwrap();
        Journal::open(&path).unwrap().append(&4u32).unwrap();
        assert_eq!(read_all::<u32>(&path).unwrap(), [4]);

        rewrite(&path, &[7u32, 8]).unwrap();
        assert_eq!(read_all::<u32>(&path).unwrap(), [7, 8]);
        assert!(read_all::<u32>(&dir.path().join("missing")).unwrap().is_empty());
    }

    /// What an append onto a fragment wrote before failed appends were cut back: the good
    /// record shares the fragment's line, and reading keeps it.
    #[test]
    fn a_whole_record_after_a_fragment_on_its_line_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let good = frame("{\"n\":2}");
        std::fs::write(&path, format!("{}0badc0de {{\"n\":1, \"trunc{good}{}", frame("{\"n\":0}"), frame("{\"n\":3}")))
            .unwrap();
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct N {
            n: u32,
        }
        let read: Vec<u32> = read_all::<N>(&path).unwrap().into_iter().map(|r| r.n).collect();
        assert_eq!(read, [0, 2, 3]);
        // A damaged line with nothing whole after the damage is still skipped.
        std::fs::write(&path, format!("{}0badc0de {{\"n\":1}}\n", frame("{\"n\":0}"))).unwrap();
        assert_eq!(read_all::<N>(&path).unwrap(), [N { n: 0 }]);
    }

    #[test]
    fn a_roll_back_takes_back_what_was_appended_since_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut j = Journal::open(&path).unwrap();
        j.append(&1u32).unwrap();
        let mark = j.end();
        j.append(&2u32).unwrap();
        j.append(&3u32).unwrap();
        j.roll_back(mark).unwrap();
        assert_eq!(read_all::<u32>(&path).unwrap(), [1]);
        j.append(&4u32).unwrap();
        assert_eq!(read_all::<u32>(&path).unwrap(), [1, 4]);
        assert_eq!(j.end(), std::fs::metadata(&path).unwrap().len());
    }

    /// `/dev/full` refuses every write with ENOSPC, as a full disk does, and cannot be
    /// truncated either: the journal then refuses the next append too rather than write after
    /// bytes it could not take back.
    #[test]
    fn an_append_that_cannot_be_cut_back_blocks_the_next_one() {
        let mut j = Journal::open(Path::new("/dev/full")).unwrap();
        let err = j.append(&1u32).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert!(j.dirty, "the failed bytes are still to be cut");
        assert!(j.append(&2u32).is_err());
        assert_eq!(j.end(), 0);
    }
}
