//! The simulator's input: log files (plain or gzip, told apart by their first bytes) or
//! standard input, read in the order of their first timestamp, each line handed over with its
//! time in seconds since the epoch.
//!
//! Lines are read in large blocks and split in place: nothing is copied or allocated per
//! line, except a line that straddles two blocks.
//!
//! A classic syslog timestamp has no year. Each source infers it from its anchor — the file's
//! modification time (the last line was written before it), or now for standard input — so
//! that the first line is not after the anchor; the year then moves on by one whenever the
//! month goes back by half a year or more (December → January). `--year` pins the first
//! line's year instead.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::SystemTime;

use flate2::read::MultiGzDecoder;

use crate::maillog::LogTime;
use crate::maillog::header::days_from_civil;

/// Bytes read at once.
const BLOCK: usize = 1 << 20;
/// A line longer than this is cut (the rest skipped): a log line is a few hundred bytes, and a
/// binary file without newlines must not be read into memory whole.
pub const MAX_LINE: usize = 64 * 1024;
/// Lines looked at for a source's first timestamp, when ordering files.
const FIRST_LINES: usize = 1000;

/// Where lines come from, as named on the command line (`-` is standard input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Stdin,
}

impl Source {
    pub fn from_arg(arg: &str) -> Source {
        if arg == "-" { Source::Stdin } else { Source::File(PathBuf::from(arg)) }
    }

    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Stdin => "-".to_owned(),
        }
    }
}

/// A source that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {source}")]
pub struct InputError {
    pub name: String,
    #[source]
    pub source: io::Error,
}

/// Turns a source's timestamps into seconds since the epoch.
#[derive(Debug, Clone)]
pub struct YearInference {
    /// The anchor: the source's last line is not after it (seconds).
    anchor: i64,
    /// The first line's year, when given.
    pinned: Option<i32>,
    /// The year and month of the last syslog line, once there is one.
    current: Option<(i32, u8)>,
}

impl YearInference {
    pub fn new(anchor: SystemTime, pinned: Option<i32>) -> YearInference {
        let anchor = anchor.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        YearInference { anchor, pinned, current: None }
    }

    /// Seconds since the epoch of a line written at `time` (syslog times taken as UTC).
    pub fn seconds(&mut self, time: LogTime) -> i64 {
        match time {
            LogTime::Instant { unix_micros } => unix_micros.div_euclid(1_000_000),
            LogTime::Syslog { month, day, second_of_day } => {
                let year = match self.current {
                    None => self.pinned.unwrap_or_else(|| self.first_year(month, day)),
                    // December → January: a new year. Half a year back, not one month, so that a
                    // line a few seconds out of order at a month's end changes nothing.
                    Some((year, last)) if month + 6 <= last => year + 1,
                    Some((year, _)) => year,
                };
                self.current = Some((year, month));
                days_from_civil(i64::from(year), u32::from(month), u32::from(day)) * 86_400 + i64::from(second_of_day)
            }
        }
    }

    /// The year that puts `month`/`day` at or before the anchor, within the year before it.
    fn first_year(&self, month: u8, day: u8) -> i32 {
        let anchor_day = self.anchor.div_euclid(86_400);
        let anchor_year = time::OffsetDateTime::from_unix_timestamp(self.anchor).map_or(1970, |t| t.year());
        // A day's grace: the anchor is the modification time in UTC, the line a local time.
        if days_from_civil(i64::from(anchor_year), u32::from(month), u32::from(day)) > anchor_day + 1 {
            anchor_year - 1
        } else {
            anchor_year
        }
    }
}

/// One opened source.
pub struct Reader {
    pub name: String,
    input: Box<dyn BufRead>,
    pub years: YearInference,
    /// A line cut by the end of a block, or longer than [`MAX_LINE`].
    partial: Vec<u8>,
    /// Skipping the rest of a line longer than [`MAX_LINE`].
    skipping: bool,
}

impl Reader {
    /// Opens `source`; a gzip file (by its magic bytes, whatever its name) is decompressed.
    ///
    /// # Errors
    /// When the file cannot be opened or read.
    pub fn open(source: &Source, year: Option<i32>) -> Result<Reader, InputError> {
        let name = source.name();
        let err = |source| InputError { name: name.clone(), source };
        let (raw, anchor): (Box<dyn Read>, SystemTime) = match source {
            Source::Stdin => (Box::new(io::stdin()), SystemTime::now()),
            Source::File(path) => {
                let file = File::open(path).map_err(err)?;
                let modified = file.metadata().and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
                (Box::new(file), modified)
            }
        };
        let mut buffered = BufReader::with_capacity(BLOCK, raw);
        let gzip = buffered.fill_buf().map_err(err)?.starts_with(&[0x1f, 0x8b]);
        let input: Box<dyn BufRead> = if gzip {
            Box::new(BufReader::with_capacity(BLOCK, MultiGzDecoder::new(buffered)))
        } else {
            Box::new(buffered)
        };
        Ok(Reader { name, input, years: YearInference::new(anchor, year), partial: Vec::new(), skipping: false })
    }

    /// Hands every line (without its `\n`) to `each`; stops early when `each` says so.
    ///
    /// # Errors
    /// A read error (a truncated gzip file is one, after the lines before the damage).
    pub fn for_each_line(&mut self, mut each: impl FnMut(&[u8], &mut YearInference) -> bool) -> Result<(), InputError> {
        loop {
            let block = match self.input.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(InputError { name: self.name.clone(), source }),
            };
            if block.is_empty() {
                if !self.partial.is_empty() && !self.skipping {
                    each(&self.partial, &mut self.years);
                }
                self.partial.clear();
                return Ok(());
            }
            let len = block.len();
            let mut start = 0;
            let mut go_on = true;
            for end in memchr::memchr_iter(b'\n', block) {
                let piece = &block[start..end];
                start = end + 1;
                if self.skipping {
                    self.skipping = false;
                    continue;
                }
                let line = if self.partial.is_empty() {
                    &piece[..piece.len().min(MAX_LINE)]
                } else {
                    let room = MAX_LINE.saturating_sub(self.partial.len());
                    self.partial.extend_from_slice(&piece[..piece.len().min(room)]);
                    &self.partial
                };
                go_on = each(line, &mut self.years);
                self.partial.clear();
                if !go_on {
                    break;
                }
            }
            if go_on && start < len && !self.skipping {
                let rest = &block[start..];
                let room = MAX_LINE.saturating_sub(self.partial.len());
                self.partial.extend_from_slice(&rest[..rest.len().min(room)]);
                if self.partial.len() >= MAX_LINE {
                    // Hand the cut line over now and skip the rest of it.
                    go_on = each(&self.partial, &mut self.years);
                    self.partial.clear();
                    self.skipping = true;
                }
            }
            let consumed = if go_on { len } else { start };
            self.input.consume(consumed);
            if !go_on {
                return Ok(());
            }
        }
    }
}

/// The first timestamp of `source` (seconds), from its first [`FIRST_LINES`] lines; `None`
/// when none of them has one.
fn first_timestamp(source: &Source, year: Option<i32>) -> Result<Option<i64>, InputError> {
    let mut reader = Reader::open(source, year)?;
    let mut seen = 0;
    let mut first = None;
    reader.for_each_line(|line, years| {
        seen += 1;
        if let Some((header, _)) = crate::maillog::header::header(line) {
            first = Some(years.seconds(header.time));
            return false;
        }
        seen < FIRST_LINES
    })?;
    Ok(first)
}

/// The sources in the order of their first timestamp (standard input, read once, stays
/// where it was given: it cannot be looked at twice). Sources with no timestamp go last, in
/// the order given.
///
/// # Errors
/// A file that cannot be opened or read.
pub fn in_time_order(sources: &[Source], year: Option<i32>) -> Result<Vec<Source>, InputError> {
    let mut keyed = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        let first = match s {
            Source::Stdin => Some(i64::MIN),
            Source::File(_) => first_timestamp(s, year)?,
        };
        keyed.push((first.is_none(), first.unwrap_or(0), i, s.clone()));
    }
    keyed.sort_by_key(|(none, first, i, _)| (*none, *first, *i));
    Ok(keyed.into_iter().map(|(.., s)| s).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn at(y: i32, m: u8, d: u8) -> SystemTime {
        let days = days_from_civil(i64::from(y), u32::from(m), u32::from(d));
        SystemTime::UNIX_EPOCH + Duration::from_secs(days as u64 * 86_400 + 12 * 3600)
    }

    fn syslog(month: u8, day: u8) -> LogTime {
        LogTime::Syslog { month, day, second_of_day: 0 }
    }

    fn year_of(secs: i64) -> i32 {
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap().year()
    }

    #[test]
    fn the_year_is_the_anchors_unless_that_puts_the_line_after_it() {
        let mut y = YearInference::new(at(2026, 3, 10), None);
        assert_eq!(year_of(y.seconds(syslog(2, 1))), 2026);
        let mut y = YearInference::new(at(2026, 3, 10), None);
        assert_eq!(year_of(y.seconds(syslog(12, 28))), 2025);
        let mut y = YearInference::new(at(2026, 3, 10), Some(2019));
        assert_eq!(year_of(y.seconds(syslog(12, 28))), 2019);
    }

    #[test]
    fn new_year_moves_the_year_on_and_a_late_line_does_not() {
        let mut y = YearInference::new(at(2026, 1, 2), None);
        assert_eq!(year_of(y.seconds(syslog(12, 31))), 2025);
        assert_eq!(year_of(y.seconds(syslog(1, 1))), 2026);
        // A line a little out of order across the month's end stays in its year.
        let mut y = YearInference::new(at(2026, 5, 2), None);
        y.seconds(syslog(5, 1));
        assert_eq!(year_of(y.seconds(syslog(4, 30))), 2026);
        let rfc = LogTime::Instant { unix_micros: 1_700_000_000_500_000 };
        assert_eq!(y.seconds(rfc), 1_700_000_000);
    }

    fn lines_of(reader: &mut Reader) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        reader
            .for_each_line(|l, _| {
                lines.push(l.to_vec());
                true
            })
            .unwrap();
        lines
    }

    #[test]
    fn plain_and_gzip_files_read_the_same_lines_and_a_long_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        let mut text = b"one\ntwo\n".to_vec();
        text.extend_from_slice(&long);
        text.extend_from_slice(b"\nlast without newline");
        let plain = dir.path().join("mail.log");
        std::fs::write(&plain, &text).unwrap();
        let gz = dir.path().join("mail.log.1.gz");
        let mut enc = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(&text).unwrap();
        enc.finish().unwrap();
        for path in [plain, gz] {
            let lines = lines_of(&mut Reader::open(&Source::File(path), None).unwrap());
            assert_eq!(lines.len(), 4);
            assert_eq!(lines[0], b"one");
            assert_eq!(lines[2].len(), MAX_LINE);
            assert_eq!(lines[3], b"last without newline");
        }
    }

    #[test]
    fn files_are_ordered_by_their_first_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            Source::File(p)
        };
        let newer = write("mail.log", "garbage\nMar  2 00:00:00 mx postfix/qmgr[1]: x\n");
        let older = write("mail.log.1", "Mar  1 00:00:00 mx postfix/qmgr[1]: x\n");
        let none = write("empty.log", "");
        let ordered = in_time_order(&[none.clone(), newer.clone(), older.clone()], Some(2026)).unwrap();
        assert_eq!(ordered, vec![older, newer, none]);
        let missing = Source::File(dir.path().join("nope"));
        assert!(in_time_order(&[missing], None).unwrap_err().to_string().contains("nope"));
    }
}
