//! What of a message's headers the header verdict reads, kept in bounded memory.
//!
//! The MTA hands the milter every header of a message; the header verdict reads a handful of
//! them (the scanner headers of [`super::headers`] and the administrator's `[[verdict.rule]]`
//! headers). Keeping every header let one message of 100 MiB of headers hold 100 MiB of memory
//! until its end. So only the headers whose names the verdict reads are kept, and of each name
//! only the **last** occurrence — the only one [`super::HeaderJudge`] consults — cut at
//! [`VALUE_MAX`] bytes. What a message can hold is then bounded by the number of names times
//! [`VALUE_MAX`], whatever it sends.
//!
//! On top of that, each message has a header budget, [`HEADER_BUDGET`] bytes of headers as the
//! MTA sent them (all of them, kept or not). Past it no further header is kept for that message:
//! the verdict reads the headers before the budget ran out, as if the rest were absent. The
//! caller is told once per message, to log and count it.

use std::sync::Arc;

/// Bytes of headers one message may send before its further headers are ignored. Exchange
/// Online refuses messages with more than 256 KiB of headers and Sendmail's `MaxHeadersLength`
/// is 32 KiB: legitimate mail stays far below 1 MiB, a message above it is abuse or a broken
/// client.
pub const HEADER_BUDGET: usize = 1024 * 1024;

/// Bytes of one kept header value. Every rule reads the start of its header (the verdict,
/// score and threshold of `X-Spam-Status` or `X-Spamd-Result` come first; SCL sits in the
/// first few hundred bytes of `X-Forefront-Antispam-Report`); the longest real ones (rspamd's
/// symbol list) stay under a few KiB.
pub const VALUE_MAX: usize = 8 * 1024;

/// The header names a header verdict reads, compared without regard to ASCII case.
#[derive(Debug, Default)]
pub struct HeaderNames {
    names: Vec<String>,
}

impl HeaderNames {
    /// `names` without duplicates (an administrator rule may name a built-in header).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> HeaderNames {
        let mut unique: Vec<String> = Vec::new();
        for name in names {
            if !unique.iter().any(|u| u.eq_ignore_ascii_case(name)) {
                unique.push(name.to_owned());
            }
        }
        HeaderNames { names: unique }
    }

    /// Where a header called `name` is kept, if the verdict reads it. No allocation: it runs
    /// for every header of every message.
    pub fn slot(&self, name: &[u8]) -> Option<usize> {
        self.names.iter().position(|n| name.eq_ignore_ascii_case(n.as_bytes()))
    }
}

/// The budget was crossed by the header just pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget {
    /// Header bytes the message sent, up to and including the header that crossed it.
    pub seen: usize,
}

/// The headers of the message in progress that the verdict reads; buffers are reused across
/// messages.
#[derive(Debug, Default)]
pub struct KeptHeaders {
    names: Arc<HeaderNames>,
    /// Per slot: the last value seen (cut at [`VALUE_MAX`]); its buffer outlives the message.
    values: Vec<Vec<u8>>,
    /// Per slot: whether this message had the header.
    present: Vec<bool>,
    /// Header bytes of this message so far, kept or not.
    seen: usize,
}

impl KeptHeaders {
    /// Keeps the headers called by one of `names`.
    pub fn new(names: Arc<HeaderNames>) -> KeptHeaders {
        let n = names.names.len();
        KeptHeaders { names, values: vec![Vec::new(); n], present: vec![false; n], seen: 0 }
    }

    /// Takes one header. `Some` exactly once per message: when this header took the message
    /// over [`HEADER_BUDGET`]; from then on nothing more is kept.
    pub fn push(&mut self, name: &[u8], value: &[u8]) -> Option<OverBudget> {
        let before = self.seen;
        // As on the wire: "Name:" value CRLF.
        self.seen = self.seen.saturating_add(name.len() + value.len() + 3);
        if self.seen > HEADER_BUDGET {
            return (before <= HEADER_BUDGET).then_some(OverBudget { seen: self.seen });
        }
        if let Some(slot) = self.names.slot(name) {
            self.present[slot] = true;
            let kept = &mut self.values[slot];
            kept.clear();
            kept.extend_from_slice(&value[..value.len().min(VALUE_MAX)]);
        }
        None
    }

    /// Whether the message went over the budget.
    pub fn over_budget(&self) -> bool {
        self.seen > HEADER_BUDGET
    }

    /// The kept headers as (name, value) pairs, for the verdict.
    pub fn pairs(&self) -> Vec<(&[u8], &[u8])> {
        self.names
            .names
            .iter()
            .zip(self.values.iter().zip(&self.present))
            .filter(|(_, (_, present))| **present)
            .map(|(name, (value, _))| (name.as_bytes(), value.as_slice()))
            .collect()
    }

    /// Forgets the message, keeping the buffers.
    pub fn clear(&mut self) {
        self.present.iter_mut().for_each(|p| *p = false);
        self.seen = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(names: &[&str]) -> KeptHeaders {
        KeptHeaders::new(Arc::new(HeaderNames::new(names.iter().copied())))
    }

    #[test]
    fn keeps_only_the_last_value_of_names_read() {
        let mut k = kept(&["X-Spam-Flag", "X-Spam-Status", "x-spam-flag"]);
        assert_eq!(k.push(b"Subject", b" hello"), None);
        assert_eq!(k.push(b"x-spam-flag", b" NO"), None);
        assert_eq!(k.push(b"X-SPAM-FLAG", b" YES"), None);
        let pairs = k.pairs();
        assert_eq!(pairs, vec![(&b"X-Spam-Flag"[..], &b" YES"[..])]);
    }

    #[test]
    fn values_are_cut() {
        let mut k = kept(&["X-Spam"]);
        k.push(b"X-Spam", &vec![b'y'; VALUE_MAX * 4]);
        assert_eq!(k.pairs()[0].1.len(), VALUE_MAX);
    }

    #[test]
    fn budget_is_crossed_once_and_stops_keeping() {
        let mut k = kept(&["X-Spam"]);
        let big = vec![b'a'; 256 * 1024];
        let mut crossings = Vec::new();
        for _ in 0..8 {
            crossings.extend(k.push(b"Received", &big));
        }
        assert_eq!(crossings.len(), 1, "told once: {crossings:?}");
        assert!(crossings[0].seen > HEADER_BUDGET);
        assert!(k.over_budget());
        k.push(b"X-Spam", b" Yes");
        assert!(k.pairs().is_empty(), "nothing kept past the budget");
        k.clear();
        assert!(!k.over_budget());
        k.push(b"X-Spam", b" Yes");
        assert_eq!(k.pairs().len(), 1, "the next message starts a new budget");
    }

    #[test]
    fn clear_forgets_values() {
        let mut k = kept(&["X-Spam"]);
        k.push(b"X-Spam", b" Yes");
        k.clear();
        assert!(k.pairs().is_empty());
    }
}
