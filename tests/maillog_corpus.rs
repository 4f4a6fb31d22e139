//! The Postfix log parser against real logs from public projects (kept beside the repository
//! in `../shared/data/postfix-logs`, with their sources and licences, not copied here): every
//! line is read or counted as skipped, never a panic, and what the parser finds matches the
//! counts derived independently with plain regular expressions (`expect.json` there): lines
//! with a syslog header by timestamp style, distinct queue IDs, smtpd lines with a SASL login,
//! pickup lines, and recipients' outcomes by status.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use outbound_guard::maillog::{self, Daemon, DeliveryStatus, Event, LogTime, event, header};

fn corpus_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/postfix-logs");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "the log corpus is missing: {}", dir.display());
    eprintln!("skipped: no log corpus at {}", dir.display());
    None
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    lines: u64,
    rfc3164: u64,
    rfc3339: u64,
    distinct_qids: u64,
    sasl_smtpd: u64,
    pickup: u64,
    status: BTreeMap<&'static str, u64>,
}

fn status_name(status: DeliveryStatus) -> Option<&'static str> {
    match status {
        DeliveryStatus::Sent => Some("sent"),
        DeliveryStatus::Bounced => Some("bounced"),
        DeliveryStatus::Deferred => Some("deferred"),
        DeliveryStatus::Expired => Some("expired"),
        DeliveryStatus::Other => None,
    }
}

impl Counts {
    fn note_event(&mut self, daemon: Daemon, e: &Event<'_>) {
        match e {
            Event::Client { sasl_username: Some(_), .. } if daemon == Daemon::Smtpd => self.sasl_smtpd += 1,
            Event::Delivery { status, .. } => {
                if let Some(name) = status_name(*status) {
                    *self.status.entry(name).or_default() += 1;
                }
            }
            // `force-expired` (postsuper -f) is an administrator's act, not a recipient's outcome.
            Event::Expired { forced: false, .. } => *self.status.entry("expired").or_default() += 1,
            _ => {}
        }
    }
}

/// Splits a file into lines as the reference count does (a last line without newline counts).
fn lines(data: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if v.last().is_some_and(|l| l.is_empty()) {
        v.pop();
    }
    v
}

fn count_log(data: &[u8]) -> Counts {
    let mut c = Counts::default();
    let mut qids = HashSet::new();
    for line in lines(data) {
        c.lines += 1;
        if let Some((h, message)) = header::header(line) {
            match h.time {
                LogTime::Syslog { .. } => c.rfc3164 += 1,
                LogTime::Instant { .. } => c.rfc3339 += 1,
            }
            if let (Some(qid), _) = event::split_queue_id(message) {
                qids.insert(qid.to_vec());
            }
        }
        if let Ok(parsed) = maillog::parse(line) {
            if parsed.daemon == Daemon::Pickup {
                c.pickup += 1;
            }
            c.note_event(parsed.daemon, &parsed.event);
        }
    }
    c.distinct_qids = qids.len() as u64;
    c
}

/// `PATTERN<TAB>message`: the message part only, its daemon named by the grok pattern.
fn count_tsv(data: &[u8]) -> Counts {
    let mut c = Counts::default();
    let mut qids = HashSet::new();
    for line in lines(data) {
        c.lines += 1;
        let Some(tab) = line.iter().position(|&b| b == b'\t') else { continue };
        let (pattern, message) = (&line[..tab], &line[tab + 1..]);
        let name = String::from_utf8_lossy(pattern.strip_prefix(b"POSTFIX_").unwrap_or(pattern)).to_lowercase();
        let daemon = Daemon::of(name.as_bytes());
        if pattern == b"POSTFIX_PICKUP" {
            c.pickup += 1;
        }
        let (qid, text) = event::split_queue_id(message);
        if let Some(qid) = qid {
            qids.insert(qid.to_vec());
        }
        if let Ok(e) = event::event(daemon, qid, text) {
            c.note_event(daemon, &e);
        }
    }
    c.distinct_qids = qids.len() as u64;
    c
}

fn expected(file: &serde_json::Value) -> Counts {
    let n = |v: &serde_json::Value| v.as_u64().expect("a count");
    Counts {
        lines: n(&file["lines"]),
        rfc3164: n(&file["timestamps"]["rfc3164"]),
        rfc3339: n(&file["timestamps"]["rfc3339"]),
        distinct_qids: n(&file["distinct_qids"]),
        sasl_smtpd: n(&file["sasl_smtpd"]),
        pickup: n(&file["pickup"]),
        status: ["bounced", "deferred", "expired", "sent"]
            .into_iter()
            .map(|s| (s, n(&file["delivery_status"][s])))
            .filter(|(_, n)| *n > 0)
            .collect(),
    }
}

/// Where this parser reads a line differently from the reference regexes, on purpose: the file,
/// the count, the difference, and a line that causes it (checked below to be read as claimed).
const READ_DIFFERENTLY: &[(&str, &str, i64, &[u8])] = &[
    // A failed login's warning names the user it tried; it is not the client of a message.
    (
        "fail2ban-postfix.log",
        "sasl_smtpd",
        -1,
        b"Nov  4 09:11:01 mail postfix/smtpd[1234]: warning: unknown[192.0.2.152]: SASL LOGIN authentication failed: (reason unavailable), sasl_username=admin",
    ),
    // `to=` without angle brackets (as local(8) wrote it) is still a recipient's outcome.
    ("whyscream-wrapped.log", "bounced", 1, b"Jan  1 00:00:00 mail postfix/local[1000]: 892A0205B6: to=ghdsgfhdslfh@localhost, relay=local, delay=0.05, delays=0.02/0/0/0.02, dsn=5.1.1, status=bounced (unknown user: \"ghdsgfhdslfh\")"),
    ("whyscream-messages.tsv", "bounced", 1, b""),
    // Short queue IDs longer than 12 hex digits (the inode part on a large file system).
    ("whyscream-wrapped.log", "distinct_qids", 3, b"Jan  1 00:00:00 mail postfix/error[1000]: 3E29030F8637E: to=<a@b>, relay=none, delay=0, delays=0/0/0/0, dsn=5.0.0, status=bounced (x)"),
    ("whyscream-messages.tsv", "distinct_qids", 3, b""),
    // `program[pid] QID:` without the colon after the pid: broken on purpose in that file, and
    // unreadable here (Postfix always writes `program[pid]: `).
    ("youyo-test-milter.log", "distinct_qids", -2, b"2021-02-19T14:32:14.936091+01:00 smtp01.example.org postfix/smtpd[58176] E89FA2DEDA: client=srv05.source.com[10.11.12.13]"),
    ("youyo-test-milter.log", "sasl_smtpd", -1, b""),
];

#[test]
fn the_lines_read_differently_are_read_as_claimed() {
    use outbound_guard::maillog::Skipped;
    let line = |file: &str, what: &str| {
        READ_DIFFERENTLY.iter().find(|(f, w, _, _)| *f == file && *w == what).expect("listed").3
    };
    assert_eq!(maillog::parse(line("fail2ban-postfix.log", "sasl_smtpd")).map(|l| l.event), Ok(Event::Other));
    assert!(matches!(
        maillog::parse(line("whyscream-wrapped.log", "bounced")).map(|l| l.event),
        Ok(Event::Delivery { status: DeliveryStatus::Bounced, to: b"ghdsgfhdslfh@localhost", .. })
    ));
    assert_eq!(
        maillog::parse(line("whyscream-wrapped.log", "distinct_qids")).map(|l| l.queue_id),
        Ok(Some(&b"3E29030F8637E"[..]))
    );
    assert_eq!(maillog::parse(line("youyo-test-milter.log", "distinct_qids")), Err(Skipped::Unreadable));
}

#[test]
fn every_corpus_file_gives_the_independently_derived_counts() {
    let Some(dir) = corpus_dir() else { return };
    let expect: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expect.json")).expect("expect.json")).expect("JSON");
    let files = expect["files"].as_object().expect("files");
    assert!(files.len() >= 10, "{files:?}");
    let mut wrong = Vec::new();
    for (name, want) in files {
        let data = std::fs::read(dir.join(name)).expect("corpus file");
        let got = if name.ends_with(".tsv") { count_tsv(&data) } else { count_log(&data) };
        let mut want = expected(want);
        for (_, what, delta, _) in READ_DIFFERENTLY.iter().filter(|(f, ..)| f == name) {
            let count = match *what {
                "sasl_smtpd" => &mut want.sasl_smtpd,
                "distinct_qids" => &mut want.distinct_qids,
                "bounced" => want.status.entry("bounced").or_default(),
                other => panic!("no count named {other}"),
            };
            *count = count.checked_add_signed(*delta).expect("a count");
        }
        if got != want {
            wrong.push(format!("{name}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_line_is_read_or_skipped_by_kind() {
    let Some(dir) = corpus_dir() else { return };
    let mut skipped: BTreeMap<&str, u64> = BTreeMap::new();
    let mut read = 0u64;
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        for line in lines(&std::fs::read(&path).expect("read")) {
            match maillog::parse(line) {
                Ok(_) => read += 1,
                Err(why) => *skipped.entry(why.name()).or_default() += 1,
            }
        }
    }
    // Most of a real log is Postfix lines we read; the rest is other programs (amavis, …),
    // comments and the deliberately broken lines of one file.
    assert!(read > 6_000, "read {read}, skipped {skipped:?}");
    assert!(skipped.get("unreadable").copied().unwrap_or(0) < 100, "{skipped:?}");
}

/// The log this repository's own real Postfix wrote (`fixtures/postfix/maillog.log`, recorded
/// by `tests/record_postfix_fixtures.rs`): every line is read, and the facts the filter needs
/// from it are there.
#[test]
fn the_log_our_real_postfix_wrote_is_read_whole() {
    let data = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/postfix/maillog.log")).expect("fixture");
    let mut events = Vec::new();
    for line in lines(&data) {
        let parsed = maillog::parse(line).unwrap_or_else(|why| panic!("{why:?}: {}", String::from_utf8_lossy(line)));
        events.push(parsed.event);
    }
    let has = |f: &dyn Fn(&Event<'_>) -> bool| events.iter().any(f);
    assert!(has(&|e| matches!(e, Event::Pickup { uid: 65534, sender: b"cron@example.com" })));
    assert!(has(&|e| matches!(e, Event::Client { sasl_username: Some(b"alice@example.com"), .. })));
    assert!(has(&|e| matches!(e, Event::QueueActive { sender: b"alice@example.com", nrcpt: 2, .. })));
    assert!(has(&|e| matches!(
        e,
        Event::Milter { action: maillog::MilterAction::Reject, stage: b"END-OF-MESSAGE", .. }
    )));
    assert!(has(&|e| matches!(e, Event::Milter { action: maillog::MilterAction::Reject, stage: b"MAIL", .. })));
    assert!(has(&|e| matches!(e, Event::Refused { stage: b"RCPT", recipient: Some(b"victim@example.org"), .. })));
    assert!(has(&|e| matches!(e, Event::Delivery { to: b"y@later.example", status: DeliveryStatus::Deferred, .. })));
    assert!(has(&|e| matches!(e, Event::Notification { kind: maillog::Notification::NonDelivery, .. })));
    let bounced =
        events.iter().filter(|e| matches!(e, Event::Delivery { status: DeliveryStatus::Bounced, .. })).count();
    assert_eq!(bounced, 6, "the six recipients of the local message over the cap");
}
