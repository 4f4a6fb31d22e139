//! Spam verdicts for one message, from three sources: the headers a local scanner already
//! added ([`headers`]), a direct SpamAssassin spamd query ([`spamd`]) and a direct rspamd
//! `/checkv2` query ([`rspamd`]).
//!
//! This module only *finds* a verdict. Recording it, the per-account spam window and the
//! per-message action belong to the policy and the session.
//!
//! # When a scanner fails
//!
//! The scanner clients return `Err(`[`ScanError`]`)` for every failure — refused or timed-out
//! connection, a reply that is not the protocol, a scanner-side error. They never panic on a
//! reply and never retry. The caller logs the error, counts it in the metrics and carries on as
//! if that source had no verdict: **mail is never refused or delayed because a scanner is
//! down.** A missing verdict only means this message does not count towards the sender's spam
//! share; the recipient limits still apply.
//!
//! # What a scanner sees
//!
//! At most `verdict.max_scan_bytes` (default 512 KiB) of the message are sent: the first bytes
//! of the message as the MTA handed it to the milter (headers, blank line, start of the body),
//! cut at that length, with the length announced accordingly. So a scanner sees whole headers
//! and the beginning of the body — where the spam signals of outbound spam (subject, links,
//! the text of the pitch) almost always are — and a large attachment is cut short (its MIME
//! part may look truncated to the scanner). This differs from `spamc -s`, which skips
//! oversized messages entirely: we prefer a verdict on the first half-megabyte to none.
//! [`ScanMessage`] assembles that prefix from the milter's header and body events without
//! ever holding more than the cap.

pub mod headers;
pub mod kept;
pub mod rspamd;
pub mod spamd;

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use thiserror::Error;

pub use headers::HeaderJudge;
pub use kept::{HeaderNames, KeptHeaders};
pub use rspamd::RspamdClient;
pub use spamd::SpamdClient;

/// Where a verdict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A header a scanner in front of us added (SpamAssassin, rspamd, Amavis, Exchange Online
    /// Protection, or an administrator's rule).
    Headers,
    /// A direct SpamAssassin spamd query.
    Spamd,
    /// A direct rspamd `/checkv2` query.
    Rspamd,
}

impl Source {
    /// The name used in `[verdict] sources` and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Headers => "headers",
            Source::Spamd => "spamd",
            Source::Rspamd => "rspamd",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A spam verdict on one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub spam: bool,
    /// The scanner's score, when it gave one.
    pub score: Option<f64>,
    /// The score at which that scanner calls a message spam, when known.
    pub required: Option<f64>,
    pub source: Source,
    /// For logs and the audit trail: which header or reply decided, with its value
    /// (unfolded, at most [`DETAIL_MAX`] characters).
    pub detail: String,
}

/// Longest `Verdict::detail` we keep: enough for `X-Spam-Status` up to the test names, short
/// enough for a log line.
pub const DETAIL_MAX: usize = 200;

/// `text` cut to at most [`DETAIL_MAX`] characters (on a character boundary), with control
/// characters (CR, LF, escapes …) shown as spaces: a detail goes into log lines, the audit
/// trail and notices, and a header value is whatever the sender wrote.
pub(crate) fn clip(text: &str) -> Cow<'_, str> {
    let cut = if text.len() <= DETAIL_MAX {
        text // no more bytes than the limit, so no more characters
    } else {
        text.char_indices().nth(DETAIL_MAX).map_or(text, |(i, _)| &text[..i])
    };
    if cut.contains(char::is_control) {
        Cow::Owned(cut.chars().map(|c| if c.is_control() { ' ' } else { c }).collect())
    } else {
        Cow::Borrowed(cut)
    }
}

/// A failed scanner query. The caller logs it and counts it; it never refuses mail because of
/// one (see the module documentation).
#[derive(Debug, Error)]
pub enum ScanError {
    /// The scanner did not accept the connection (refused, unreachable, name not resolved,
    /// connect timeout).
    #[error("cannot connect to {scanner} at {addr:?}")]
    Connect {
        scanner: Source,
        addr: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The whole exchange did not finish within the configured `verdict.timeout`.
    #[error("{scanner} at {addr:?} did not answer within {after:?}")]
    Timeout { scanner: Source, addr: String, after: Duration },
    /// The connection broke after it was established.
    #[error("connection to {scanner} at {addr:?} failed")]
    Io {
        scanner: Source,
        addr: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The scanner answered something that is not a verdict: garbage, an error status, a
    /// reply over the size cap.
    #[error("{scanner} at {addr:?} answered {detail}")]
    Protocol { scanner: Source, addr: String, detail: String },
    /// A value from the transaction cannot be sent (a control character would let it inject
    /// protocol headers).
    #[error("cannot send {field} {value:?} to {scanner}: it contains a control character")]
    Request { scanner: Source, field: &'static str, value: String },
}

/// What a scanner is asked about: the message (the first `max_scan_bytes` are sent) and the
/// envelope facts rspamd uses (spamd only uses `user`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanRequest<'a> {
    /// The message as the MTA passed it: headers, blank line, body, CRLF line ends.
    pub message: &'a [u8],
    /// The sending account (SASL login or envelope sender), for per-user settings.
    pub user: Option<&'a str>,
    /// The SMTP client's address.
    pub ip: Option<IpAddr>,
    pub helo: Option<&'a str>,
    /// The envelope sender, without angle brackets.
    pub from: Option<&'a str>,
    /// The envelope recipients, without angle brackets.
    pub rcpt: &'a [&'a str],
    pub queue_id: Option<&'a str>,
}

/// True when `value` is safe as a protocol header value: no control characters (CR, LF, NUL,
/// ...), so it cannot end the header line early.
pub(crate) fn header_safe(value: &str) -> bool {
    !value.chars().any(char::is_control)
}

/// The first `cap` bytes of a message, assembled from milter events (header by header, body
/// chunk by chunk) without holding more than `cap` bytes.
///
/// Header values may arrive with LF-only folding (Postfix passes them that way); they are
/// written with CRLF line ends, as on the wire, so the scanner sees the message the way the
/// recipient will.
#[derive(Debug, Clone)]
pub struct ScanMessage {
    buf: Vec<u8>,
    cap: usize,
    total: usize,
}

impl ScanMessage {
    /// An empty message that keeps at most `cap` bytes.
    pub fn new(cap: usize) -> ScanMessage {
        ScanMessage {
            // Most messages are small: grow on demand instead of reserving the cap.
            buf: Vec::with_capacity(cap.min(16 * 1024)),
            cap,
            total: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len();
        let room = self.cap.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Adds one header as the milter received it (`value` without the colon, possibly with a
    /// leading space and LF- or CRLF-folded continuation lines).
    pub fn push_header(&mut self, name: &[u8], value: &[u8]) {
        if self.buf.len() >= self.cap {
            // Already full: count the header without walking its lines, so a message of
            // megabytes of headers costs no more than their length here.
            self.total = self.total.saturating_add(name.len() + value.len() + 4);
            return;
        }
        self.push(name);
        self.push(b":");
        // "Name: value" as usual, but no trailing blank before a value that starts on the
        // next line.
        if !matches!(value.first(), None | Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.push(b" ");
        }
        let mut rest = value;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let line = &rest[..i];
            self.push(line.strip_suffix(b"\r").unwrap_or(line));
            self.push(b"\r\n");
            rest = &rest[i + 1..];
        }
        self.push(rest);
        self.push(b"\r\n");
    }

    /// Ends the header section (the blank line).
    pub fn end_headers(&mut self) {
        self.push(b"\r\n");
    }

    /// Adds a body chunk (the milter sends the body with CRLF line ends already).
    pub fn push_body(&mut self, chunk: &[u8]) {
        self.push(chunk);
    }

    /// What is kept: the first `cap` bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The length of the whole message, including what was not kept (headers that came once
    /// the cap was full are counted as `Name: value` CRLF, without the CRs their LF-folded
    /// lines would get).
    pub fn total_len(&self) -> usize {
        self.total
    }

    /// True when the message was longer than the cap.
    pub fn is_truncated(&self) -> bool {
        self.total > self.buf.len()
    }

    /// Forgets the message (for the next one on the same SMTP session), keeping the buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.total = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_message_rebuilds_crlf_and_caps() {
        let mut m = ScanMessage::new(1024);
        m.push_header(b"Subject", b" hello\n\tworld");
        m.push_header(b"X-A", b"b\r\n c");
        m.end_headers();
        m.push_body(b"body\r\n");
        assert_eq!(m.as_bytes(), b"Subject: hello\r\n\tworld\r\nX-A: b\r\n c\r\n\r\nbody\r\n");
        assert!(!m.is_truncated());

        let mut m = ScanMessage::new(10);
        m.push_header(b"Subject", b"0123456789");
        m.end_headers();
        m.push_body(&[b'x'; 100]);
        assert_eq!(m.as_bytes(), b"Subject: 0");
        assert_eq!(m.total_len(), 9 + 10 + 2 + 2 + 100);
        assert!(m.is_truncated());
        m.clear();
        assert!(m.as_bytes().is_empty() && !m.is_truncated());
    }

    #[test]
    fn headers_count_against_the_cap_and_are_skipped_once_it_is_full() {
        let mut m = ScanMessage::new(16);
        m.push_header(b"Received", &[b'a'; 64]);
        assert_eq!(m.as_bytes().len(), 16, "a header fills the cap like body bytes do");
        m.push_header(b"X-Huge", &[b'b'; 1024]);
        assert_eq!(m.as_bytes(), b"Received: aaaaaa", "nothing past the cap is kept");
        assert_eq!(m.total_len(), (8 + 2 + 64 + 2) + (6 + 2 + 1024 + 2));
        assert!(m.is_truncated());
    }

    #[test]
    fn clip_stops_on_a_char_boundary() {
        let long = "é".repeat(DETAIL_MAX + 10);
        assert_eq!(clip(&long).chars().count(), DETAIL_MAX);
        assert_eq!(clip("short"), "short");
        assert_eq!(clip("Yes,\r\u{e} score=7.5\n"), "Yes,   score=7.5 ", "no control characters");
    }

    #[test]
    fn header_safe_refuses_line_breaks() {
        assert!(header_safe("alice@example.com"));
        assert!(header_safe("jörg@example.de"));
        assert!(!header_safe("alice\r\nUser: root"));
        assert!(!header_safe("a\0b"));
    }
}
