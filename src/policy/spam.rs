//! Per-account spam accounting over a sliding window, in bounded memory.
//!
//! A ring of [`BUCKETS`] buckets, each `spam_window / BUCKETS` wide, counts the messages of
//! the account and how many of them were judged spam. Old buckets are cleared as time moves
//! on, so verdicts age out and an account is never held back by history alone (the failure
//! mode of a per-account counter that never forgets). The window slides in bucket steps: a
//! verdict counts for between `window - width` and `window`.
//!
//! Every outbound message counts, with a verdict or not (the share is of the account's
//! messages): the message when its first recipient is accepted, the verdict at its end. The
//! ring exists only while verdicts are enabled, and is 56 bytes.

use std::time::Duration;

/// Buckets per window.
pub const BUCKETS: usize = 12;

/// Spam and total message counts of one account over its window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpamWindow {
    /// Bucket width in seconds (the window divided by [`BUCKETS`]); a reload that changes the
    /// window starts a fresh ring.
    width_secs: u32,
    /// The bucket number (time / width) of the newest bucket written.
    newest: u32,
    spam: [u16; BUCKETS],
    total: [u16; BUCKETS],
}

/// Bytes of [`SpamWindow::to_bytes`].
pub const WINDOW_BYTES: usize = 8 + 4 * BUCKETS;

impl SpamWindow {
    fn width(window: Duration) -> u32 {
        ((window.as_secs() / BUCKETS as u64).max(1)).min(u64::from(u32::MAX)) as u32
    }

    /// An empty window of the given length.
    pub fn new(window: Duration) -> SpamWindow {
        SpamWindow { width_secs: Self::width(window), newest: 0, spam: [0; BUCKETS], total: [0; BUCKETS] }
    }

    /// Moves the ring to `now`, clearing buckets that fell out of the window.
    fn advance(&mut self, now_secs: u64, window: Duration) {
        let width = Self::width(window);
        if width != self.width_secs {
            *self = SpamWindow::new(window);
        }
        let bucket = (now_secs / u64::from(width)) as u32;
        if bucket <= self.newest {
            return;
        }
        let gap = (bucket - self.newest) as usize;
        for step in 1..=gap.min(BUCKETS) {
            let i = (self.newest as usize + step) % BUCKETS;
            self.spam[i] = 0;
            self.total[i] = 0;
        }
        self.newest = bucket;
    }

    /// Counts one message at `now`, judged spam or not.
    pub fn record(&mut self, now_secs: u64, window: Duration, spam: bool) {
        self.count_message(now_secs, window);
        if spam {
            self.count_spam(now_secs, window);
        }
    }

    /// Counts one message of the account at `now`, before (or without) its verdict.
    pub fn count_message(&mut self, now_secs: u64, window: Duration) {
        self.advance(now_secs, window);
        let i = self.newest as usize % BUCKETS;
        self.total[i] = self.total[i].saturating_add(1);
    }

    /// Counts a spam verdict at `now` on a message already counted.
    pub fn count_spam(&mut self, now_secs: u64, window: Duration) {
        self.advance(now_secs, window);
        let i = self.newest as usize % BUCKETS;
        self.spam[i] = self.spam[i].saturating_add(1);
    }

    /// (spam, total) within the window at `now`. A message counted in the bucket before its
    /// verdict's can leave the window first; the total is never less than the spam.
    pub fn counts(&self, now_secs: u64, window: Duration) -> (u32, u32) {
        let mut view = self.clone();
        view.advance(now_secs, window);
        let spam: u32 = view.spam.iter().map(|&n| u32::from(n)).sum();
        let total: u32 = view.total.iter().map(|&n| u32::from(n)).sum();
        (spam, total.max(spam))
    }

    /// Whether every bucket is empty at `now` under the window the ring was built for (the
    /// ring can be dropped).
    pub fn is_empty_at(&self, now_secs: u64) -> bool {
        let window = Duration::from_secs(u64::from(self.width_secs) * BUCKETS as u64);
        self.counts(now_secs, window).1 == 0
    }

    /// Fixed-size form for snapshots.
    pub fn to_bytes(&self) -> [u8; WINDOW_BYTES] {
        let mut out = [0u8; WINDOW_BYTES];
        out[..4].copy_from_slice(&self.width_secs.to_le_bytes());
        out[4..8].copy_from_slice(&self.newest.to_le_bytes());
        for i in 0..BUCKETS {
            out[8 + 2 * i..10 + 2 * i].copy_from_slice(&self.spam[i].to_le_bytes());
            out[8 + 2 * BUCKETS + 2 * i..10 + 2 * BUCKETS + 2 * i].copy_from_slice(&self.total[i].to_le_bytes());
        }
        out
    }

    /// The inverse of [`SpamWindow::to_bytes`].
    pub fn from_bytes(b: &[u8; WINDOW_BYTES]) -> SpamWindow {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        SpamWindow {
            width_secs: u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
            newest: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
            spam: std::array::from_fn(|i| u16_at(8 + 2 * i)),
            total: std::array::from_fn(|i| u16_at(8 + 2 * BUCKETS + 2 * i)),
        }
    }
}

/// Whether the thresholds are reached: at least `min_messages` spam verdicts and at least
/// `percent` of the messages. A `min_messages` of 0 with a `percent` of 0 never triggers.
pub fn over_threshold(spam: u32, total: u32, min_messages: u32, percent: u8) -> bool {
    if min_messages == 0 && percent == 0 {
        return false;
    }
    spam > 0 && spam >= min_messages && u64::from(spam) * 100 >= u64::from(total) * u64::from(percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const T0: u64 = 1_795_341_600;

    #[test]
    fn counts_within_the_window_and_ages_out() {
        let mut w = SpamWindow::new(DAY);
        for i in 0..10 {
            w.record(T0 + i * 60, DAY, i % 2 == 0);
        }
        assert_eq!(w.counts(T0 + 600, DAY), (5, 10));
        // Half a day later the same verdicts still count.
        assert_eq!(w.counts(T0 + 43_200, DAY), (5, 10));
        // A full window later they are gone.
        assert_eq!(w.counts(T0 + 86_400 + 7200, DAY), (0, 0));
        assert!(w.is_empty_at(T0 + 2 * 86_400));
        w.record(T0 + 2 * 86_400, DAY, true);
        assert_eq!(w.counts(T0 + 2 * 86_400, DAY), (1, 1));
    }

    #[test]
    fn messages_without_a_verdict_count_in_the_share() {
        let mut w = SpamWindow::new(DAY);
        for i in 0..20 {
            w.count_message(T0 + i, DAY);
        }
        w.count_spam(T0 + 20, DAY);
        assert_eq!(w.counts(T0 + 21, DAY), (1, 20));
        // The spam of a message counted in a bucket that has aged out: never more spam than
        // messages.
        let mut w = SpamWindow::new(DAY);
        w.count_spam(T0, DAY);
        assert_eq!(w.counts(T0, DAY), (1, 1));
    }

    #[test]
    fn thresholds_need_both_the_count_and_the_share() {
        assert!(over_threshold(10, 30, 10, 30));
        assert!(!over_threshold(9, 10, 10, 30), "too few spam messages");
        assert!(!over_threshold(10, 100, 10, 30), "too small a share");
        assert!(!over_threshold(0, 0, 0, 0));
        assert!(over_threshold(1, 1, 0, 100));
    }

    #[test]
    fn bytes_round_trip_and_a_new_window_length_resets() {
        let mut w = SpamWindow::new(DAY);
        w.record(T0, DAY, true);
        assert_eq!(SpamWindow::from_bytes(&w.to_bytes()), w);
        assert_eq!(w.counts(T0, Duration::from_secs(3600)), (0, 0));
    }
}
