//! The counters snapshot: every tracked account's record, written at graceful shutdown and read
//! at start, so a restart does not hand every account a fresh quota.
//!
//! Format: `OGSNAP04`, then per account a u16 key length, the key, the fixed-size record
//! ([`RECORD_BYTES`]), a flag byte and, when it is 1, the spam window
//! (`policy::spam::WINDOW_BYTES`), when it is 2 the inline message count (8 bytes, see
//! `policy::spam::SpamSlot`); then a CRC32 of everything before it. (`OGSNAP03` is the same
//! without flag 2; a new magic so that an older version ignores a snapshot it cannot read.) Written to a temp
//! file, synced and renamed into place. A snapshot that does not check out is ignored with a
//! log line: counters start empty rather than wrong. A snapshot of the previous format
//! (`OGSNAP02`, larger records) is still read, so an upgrade keeps the counters.

use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use compact_str::CompactString;

use crate::policy::limits::LimitKind;
use crate::policy::record::{AccountRecord, HourlyNotice};
use crate::policy::spam::{SpamSlot, SpamWindow, WINDOW_BYTES};

/// Size of [`record_to_bytes`].
pub const RECORD_BYTES: usize = 3 * 8 + 2 + 4 + 2;

/// Size of a record in the previous snapshot format (`OGSNAP02`): an hour number per notice.
pub const RECORD_BYTES_V2: usize = 3 * 8 + 2 + 3 * 4 + 3 * 4 + 4 + 4;

/// Fixed-size little-endian form for snapshots.
fn record_to_bytes(record: &AccountRecord) -> [u8; RECORD_BYTES] {
    let mut out = [0u8; RECORD_BYTES];
    for (i, t) in record.tat.iter().enumerate() {
        out[8 * i..8 * i + 8].copy_from_slice(&t.to_le_bytes());
    }
    out[24..26].copy_from_slice(&record.policy.to_le_bytes());
    out[26..30].copy_from_slice(&record.notices.to_le_bytes());
    out[30..32].copy_from_slice(&record.released_day.to_le_bytes());
    out
}

/// The inverse of [`record_to_bytes`].
fn record_from_bytes(b: &[u8; RECORD_BYTES]) -> AccountRecord {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    AccountRecord {
        tat: [u64_at(0), u64_at(8), u64_at(16)],
        policy: u16::from_le_bytes([b[24], b[25]]),
        notices: u32::from_le_bytes(b[26..30].try_into().expect("4 bytes")),
        released_day: u16::from_le_bytes([b[30], b[31]]),
        spam: SpamSlot::default(),
    }
}

/// A record of the previous snapshot format, which kept an hour number per notice: the
/// notices of the latest of those hours are kept, older ones had lapsed anyway.
fn record_from_v2_bytes(b: &[u8; RECORD_BYTES_V2]) -> AccountRecord {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let mut record = AccountRecord {
        tat: [u64_at(0), u64_at(8), u64_at(16)],
        policy: u16::from_le_bytes([b[24], b[25]]),
        ..Default::default()
    };
    record.set_released(u32_at(50));
    let mut notices: Vec<(u32, HourlyNotice)> = Vec::with_capacity(7);
    for (i, kind) in LimitKind::ALL.into_iter().enumerate() {
        notices.push((u32_at(26 + 4 * i), HourlyNotice::LimitAlert(kind)));
        notices.push((u32_at(38 + 4 * i), HourlyNotice::Warning(kind)));
    }
    notices.push((u32_at(54), HourlyNotice::SpamAlert));
    let latest = notices.iter().map(|(hour, _)| *hour).max().unwrap_or(0);
    if latest != 0 {
        for (hour, notice) in notices {
            if hour == latest {
                record.first_notice_this_hour(notice, hour);
            }
        }
    }
    record
}

const MAGIC: &[u8; 8] = b"OGSNAP04";
/// The same layout without inline message counts (flag 2): read as it is.
const MAGIC_V3: &[u8; 8] = b"OGSNAP03";
const MAGIC_V2: &[u8; 8] = b"OGSNAP02";

/// Writes `records` to `path` atomically; returns how many were written.
///
/// # Errors
/// When the file cannot be written, synced or renamed.
pub fn write<'a>(path: &Path, records: impl Iterator<Item = (String, AccountRecord)> + 'a) -> io::Result<usize> {
    let tmp = path.with_extension("tmp");
    let file = std::fs::File::create(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut crc = crc32fast::Hasher::new();
    let mut put = |out: &mut BufWriter<std::fs::File>, bytes: &[u8]| -> io::Result<()> {
        crc.update(bytes);
        out.write_all(bytes)
    };
    put(&mut out, MAGIC)?;
    let mut count = 0;
    for (key, record) in records {
        let Ok(len) = u16::try_from(key.len()) else { continue };
        put(&mut out, &len.to_le_bytes())?;
        put(&mut out, key.as_bytes())?;
        put(&mut out, &record_to_bytes(&record))?;
        match (record.spam.ring(), record.spam.inline_word()) {
            (Some(w), _) => {
                put(&mut out, &[1])?;
                put(&mut out, &w.to_bytes())?;
            }
            (None, Some(word)) => {
                put(&mut out, &[2])?;
                put(&mut out, &word.to_le_bytes())?;
            }
            (None, None) => put(&mut out, &[0])?,
        }
        count += 1;
    }
    let sum = crc.finalize();
    out.write_all(&sum.to_le_bytes())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    super::journal::sync_dir(path)?;
    Ok(count)
}

/// Reads a snapshot; `Ok(None)` when there is none.
///
/// # Errors
/// When the file exists but is damaged or unreadable; the caller starts with empty counters.
pub fn read(path: &Path) -> io::Result<Option<Vec<(CompactString, AccountRecord)>>> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |what: &str| {
        io::Error::new(io::ErrorKind::InvalidData, format!("counters snapshot {}: {what}", path.display()))
    };
    if bytes.len() < MAGIC.len() + 4 {
        return Err(bad("not a snapshot file"));
    }
    let record_bytes = match &bytes[..MAGIC.len()] {
        m if m == MAGIC || m == MAGIC_V3 => RECORD_BYTES,
        m if m == MAGIC_V2 => RECORD_BYTES_V2,
        _ => return Err(bad("not a snapshot file")),
    };
    let (body, sum) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(sum.try_into().expect("4 bytes")) {
        return Err(bad("checksum mismatch (incomplete or damaged)"));
    }
    let mut rest = &body[MAGIC.len()..];
    let mut records = Vec::with_capacity(body.len() / (record_bytes + 24));
    while !rest.is_empty() {
        let (len, after) = rest.split_first_chunk::<2>().ok_or_else(|| bad("truncated entry"))?;
        let len = u16::from_le_bytes(*len) as usize;
        if after.len() < len + record_bytes + 1 {
            return Err(bad("truncated entry"));
        }
        // Straight into the map's key type: most names fit inline, so no allocation each.
        let key = std::str::from_utf8(&after[..len])
            .map(CompactString::from)
            .map_err(|_| bad("account name is not UTF-8"))?;
        let fixed = &after[len..len + record_bytes];
        let mut record = match fixed.try_into() {
            Ok(current) => record_from_bytes(current),
            Err(_) => record_from_v2_bytes(fixed.try_into().expect("previous record size")),
        };
        let mut next = &after[len + record_bytes..];
        let (&flag, tail) = next.split_first().ok_or_else(|| bad("truncated entry"))?;
        next = tail;
        match flag {
            1 => {
                let (window, tail) = next.split_first_chunk::<WINDOW_BYTES>().ok_or_else(|| bad("truncated entry"))?;
                record.spam.set_ring(Box::new(SpamWindow::from_bytes(window)));
                next = tail;
            }
            2 => {
                let (word, tail) = next.split_first_chunk::<8>().ok_or_else(|| bad("truncated entry"))?;
                record.spam = SpamSlot::from_inline_word(u64::from_le_bytes(*word));
                next = tail;
            }
            _ => {}
        }
        records.push((key, record));
        rest = next;
    }
    Ok(Some(records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::clock::Timestamp;

    #[test]
    fn round_trip_and_damage_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters.snapshot");
        assert!(read(&path).unwrap().is_none());
        let records = vec![
            ("a@example.com".to_owned(), AccountRecord { tat: [5, 6, 7], ..Default::default() }),
            ("ælfrida@xn--bcher-kva.example".to_owned(), {
                let mut r = AccountRecord::default();
                r.set_released(3);
                r
            }),
            (
                "spammer@example.com".to_owned(),
                AccountRecord {
                    spam: {
                        let mut slot = SpamSlot::default();
                        slot.set_ring(Box::new({
                            let mut w = SpamWindow::new(std::time::Duration::from_secs(86_400));
                            w.record(1_795_341_600, std::time::Duration::from_secs(86_400), true);
                            w
                        }));
                        slot
                    },
                    ..Default::default()
                },
            ),
            ("clean@example.com".to_owned(), {
                let mut r = AccountRecord::default();
                r.spam.count_message(Timestamp::from_secs(1_795_341_600), std::time::Duration::from_secs(86_400));
                r
            }),
        ];
        assert_eq!(write(&path, records.clone().into_iter()).unwrap(), 4);
        let expected: Vec<_> = records.into_iter().map(|(k, r)| (CompactString::from(k), r)).collect();
        assert_eq!(read(&path).unwrap().unwrap(), expected);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(&path).is_err());
    }

    #[test]
    fn a_snapshot_of_the_previous_format_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters.snapshot");
        let mut body = MAGIC_V2.to_vec();
        let key = b"a@example.com";
        body.extend_from_slice(&(key.len() as u16).to_le_bytes());
        body.extend_from_slice(key);
        let mut record = [0u8; RECORD_BYTES_V2];
        record[0..8].copy_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&record);
        body.push(0);
        let sum = crc32fast::hash(&body);
        body.extend_from_slice(&sum.to_le_bytes());
        std::fs::write(&path, &body).unwrap();
        let records = read(&path).unwrap().unwrap();
        assert_eq!(records, vec![("a@example.com".into(), AccountRecord { tat: [7, 0, 0], ..Default::default() })]);
    }

    #[test]
    fn a_record_round_trips_through_its_bytes() {
        let mut r = AccountRecord { tat: [1, 2, 3], policy: 7, ..Default::default() };
        r.set_released(10);
        r.first_notice_this_hour(HourlyNotice::Warning(LimitKind::PerDay), 11);
        r.first_notice_this_hour(HourlyNotice::SpamAlert, 11);
        assert_eq!(record_from_bytes(&record_to_bytes(&r)), r);
    }

    #[test]
    fn a_previous_format_record_keeps_its_latest_notices() {
        let mut b = [0u8; RECORD_BYTES_V2];
        b[0..8].copy_from_slice(&42u64.to_le_bytes());
        b[24..26].copy_from_slice(&3u16.to_le_bytes());
        b[26..30].copy_from_slice(&100u32.to_le_bytes()); // limit alert, external: older hour
        b[42..46].copy_from_slice(&101u32.to_le_bytes()); // warning, internal: latest hour
        b[50..54].copy_from_slice(&20_779u32.to_le_bytes()); // released
        b[54..58].copy_from_slice(&101u32.to_le_bytes()); // spam alert: latest hour
        let mut r = record_from_v2_bytes(&b);
        assert_eq!((r.tat[0], r.policy), (42, 3));
        assert!(r.released_on(20_779));
        assert!(!r.first_notice_this_hour(HourlyNotice::Warning(LimitKind::InternalPerHour), 101));
        assert!(!r.first_notice_this_hour(HourlyNotice::SpamAlert, 101));
        assert!(r.first_notice_this_hour(HourlyNotice::LimitAlert(LimitKind::ExternalPerHour), 101));
    }
}
