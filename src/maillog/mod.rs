//! Postfix log lines as typed facts: the parser shared by the delivery follower (what became
//! of each accepted message) and the simulator (what a policy would have done to a log).
//!
//! [`parse`] takes one line — syslog (RFC 3164 or RFC 3339 timestamps) or Postfix's own
//! `maillog_file` — and borrows everything from it: no allocation, so a log is read at the
//! speed of the disk. A line it cannot use is a [`Skipped`] kind, counted by the caller and
//! never fatal: logs mix programs (amavis, dovecot, the kernel), carry lines cut by a full disk
//! or a rotation, and other syslog daemons' quirks.
//!
//! - [`header`]: timestamp, host, program, pid.
//! - [`event`]: the queue ID and what the line says about that message.

pub mod event;
pub mod header;

pub use event::{Daemon, DeliveryStatus, Event, MilterAction, Notification, PostsuperAction};
pub use header::{Header, LogTime};

/// One Postfix log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLine<'a> {
    pub time: LogTime,
    pub host: &'a [u8],
    /// The program as logged, e.g. `postfix/submission/smtpd`.
    pub program: &'a [u8],
    pub daemon: Daemon,
    /// The message the line is about (`None` for `NOQUEUE` and lines about no message).
    pub queue_id: Option<&'a [u8]>,
    pub event: Event<'a>,
}

/// Why a line gives nothing (each counted by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skipped {
    /// No timestamp, host and `program[pid]: ` where a syslog line has them (blank lines,
    /// comments, a line cut in the middle, another log format).
    Unreadable,
    /// A line of another program than Postfix.
    NotPostfix,
    /// A Postfix line of a kind we read whose fields are not where Postfix writes them.
    Malformed,
}

impl Skipped {
    pub const ALL: [Skipped; 3] = [Skipped::Unreadable, Skipped::NotPostfix, Skipped::Malformed];

    /// The name used in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Skipped::Unreadable => "unreadable",
            Skipped::NotPostfix => "not_postfix",
            Skipped::Malformed => "malformed",
        }
    }
}

/// A Postfix program: `postfix/…`, or an instance's `postfix-NAME/…` (`multi_instance_name`,
/// `syslog_name`).
fn is_postfix(program: &[u8]) -> bool {
    let first = program.split(|&b| b == b'/').next().unwrap_or_default();
    first == b"postfix" || first.starts_with(b"postfix-")
}

/// Parses one line (without its line ending; a trailing `\r` is ignored).
///
/// # Errors
/// [`Skipped`] says why the line gives nothing.
pub fn parse(line: &[u8]) -> Result<LogLine<'_>, Skipped> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (header, message) = header::header(line).ok_or(Skipped::Unreadable)?;
    if !is_postfix(header.program) {
        return Err(Skipped::NotPostfix);
    }
    let name = header.program.rsplit(|&b| b == b'/').next().unwrap_or_default();
    let daemon = Daemon::of(name);
    let (queue_id, text) = event::split_queue_id(message);
    let event = event::event(daemon, queue_id, text).map_err(|_| Skipped::Malformed)?;
    Ok(LogLine { time: header.time, host: header.host, program: header.program, daemon, queue_id, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_line_from_postfixs_own_maillog_file() {
        let line = b"Dec  7 16:07:48 mta postfix/pickup[4900]: 7A8A19D4032: uid=102 from=<cron@example.com> orig_id=4A4419D402D";
        let parsed = parse(line).unwrap();
        assert_eq!(parsed.daemon, Daemon::Pickup);
        assert_eq!(parsed.queue_id, Some(&b"7A8A19D4032"[..]));
        assert_eq!(parsed.event, Event::Pickup { uid: 102, sender: b"cron@example.com" });
    }

    #[test]
    fn instance_and_service_names_are_postfix_too() {
        let line = b"Jan  1 00:00:01 mx postfix-smo/submission/smtpd[12]: ABCDE12345: client=x[10.0.0.1], sasl_method=LOGIN, sasl_username=a@b";
        let parsed = parse(line).unwrap();
        assert_eq!(parsed.daemon, Daemon::Smtpd);
        assert!(matches!(parsed.event, Event::Client { sasl_username: Some(b"a@b"), .. }));
    }

    #[test]
    fn lines_that_give_nothing_say_why() {
        assert_eq!(parse(b""), Err(Skipped::Unreadable));
        assert_eq!(parse(b"# a comment"), Err(Skipped::Unreadable));
        assert_eq!(parse(b"Jan  1 00:00:01 mx amavis[12]: (12-01) Passed CLEAN"), Err(Skipped::NotPostfix));
        assert_eq!(
            parse(b"Jan  1 00:00:01 mx postfix/qmgr[3]: ABCDE1: from=<a@b>, size=, nrcpt=1 (queue active)"),
            Err(Skipped::Malformed)
        );
        assert_eq!(
            parse(b"Jan  1 00:00:01 mx postfix/anvil[3]: statistics: max connection rate 1/60s").map(|l| l.event),
            Ok(Event::Other)
        );
    }
}
