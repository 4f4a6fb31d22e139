//! Per-account spam accounting over a sliding window, in bounded memory.
//!
//! A ring of [`BUCKETS`] buckets, each `spam_window / BUCKETS` wide, counts the messages of
//! the account and how many of them were judged spam. Old buckets are cleared as time moves
//! on, so verdicts age out and an account is never held back by history alone (the failure
//! mode of a per-account counter that never forgets). The window slides in bucket steps: a
//! verdict counts for between `window - width` and `window`.
//!
//! Every outbound message counts, with a verdict or not (the share is of the account's
//! messages): the message when its first recipient is accepted, the verdict at its end.
//!
//! The ring (56 bytes, on the heap) exists only for accounts with a spam verdict in their
//! window. Until the first one, an account's messages are counted in the account record itself
//! ([`SpamSlot`], one word): the count of the current period of `spam_window` and of the one
//! before, from which the messages within the window are estimated as a sliding-window
//! counter does (the previous period weighted by how much of it is still inside). A million
//! accounts sending clean mail then cost no memory and no memory access beyond their record;
//! at the first spam verdict the estimate seeds the ring.

use std::time::Duration;

use super::clock::Timestamp;

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

    /// Takes back one message counted at `at_secs` that never reached its end; nothing when its
    /// bucket has left the window.
    pub fn uncount_message(&mut self, now_secs: u64, at_secs: u64, window: Duration) {
        self.advance(now_secs, window);
        let oldest = self.newest.saturating_sub(BUCKETS as u32 - 1);
        let bucket = (at_secs / u64::from(self.width_secs)).min(u64::from(u32::MAX)) as u32;
        if (oldest..=self.newest).contains(&bucket) {
            let i = bucket as usize % BUCKETS;
            self.total[i] = self.total[i].saturating_sub(1);
        }
    }

    /// Adds `n` messages counted at `at_secs` (clamped into the window at `now`: `0` for its
    /// oldest bucket), as the inline count hands them over.
    fn add_messages_at(&mut self, now_secs: u64, at_secs: u64, n: u32, window: Duration) {
        if n == 0 {
            return;
        }
        self.advance(now_secs, window);
        let oldest = self.newest.saturating_sub(BUCKETS as u32 - 1);
        let bucket =
            ((at_secs / u64::from(self.width_secs)).min(u64::from(u32::MAX)) as u32).clamp(oldest, self.newest);
        let i = bucket as usize % BUCKETS;
        self.total[i] = self.total[i].saturating_add(n.min(u32::from(u16::MAX)) as u16);
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

/// An account's spam accounting in one word of its record: nothing, the inline message count
/// (no spam verdict in the window yet), or its ring.
///
/// Encoding: `0` nothing; low bit `1` the inline count — bits 1–31 the minute its current
/// period started, bits 32–47 the previous period's messages, bits 48–63 the current
/// period's; otherwise a pointer from `Box::into_raw` (a ring is 4-aligned, so its low bit is
/// 0), owned by the slot.
#[derive(Default)]
pub struct SpamSlot(u64);

const INLINE: u64 = 1;

/// The inline count's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inline {
    start_min: u32,
    prev: u16,
    cur: u16,
}

impl Inline {
    fn decode(word: u64) -> Inline {
        Inline { start_min: ((word >> 1) & 0x7fff_ffff) as u32, prev: (word >> 32) as u16, cur: (word >> 48) as u16 }
    }

    fn encode(self) -> u64 {
        INLINE
            | (u64::from(self.start_min & 0x7fff_ffff) << 1)
            | (u64::from(self.prev) << 32)
            | (u64::from(self.cur) << 48)
    }

    /// Moves the periods on to `now_min` (a period is `period_min` long).
    fn roll(&mut self, now_min: u32, period_min: u32) {
        let elapsed = now_min.saturating_sub(self.start_min);
        if elapsed < period_min {
            return;
        }
        if elapsed < 2 * period_min {
            self.prev = self.cur;
            self.start_min += period_min;
        } else {
            self.prev = 0;
            self.start_min = now_min;
        }
        self.cur = 0;
    }

    /// The previous period's messages still inside the window at `now_min` (pro rata), after
    /// [`Inline::roll`].
    fn prev_in_window(self, now_min: u32, period_min: u32) -> u32 {
        let into = now_min.saturating_sub(self.start_min).min(period_min);
        u32::from(self.prev) * (period_min - into) / period_min
    }
}

fn minutes(secs: u64) -> u32 {
    (secs / 60).min(0x7fff_ffff) as u32
}

fn period_minutes(window: Duration) -> u32 {
    minutes(window.as_secs()).max(1)
}

impl SpamSlot {
    fn ring_ptr(&self) -> Option<*mut SpamWindow> {
        (self.0 != 0 && self.0 & INLINE == 0).then_some(self.0 as usize as *mut SpamWindow)
    }

    /// The ring, when the account has one.
    pub fn ring(&self) -> Option<&SpamWindow> {
        // SAFETY: a non-zero word with the low bit clear is a pointer from `Box::into_raw`
        // that this slot owns (see `set_ring`); it lives as long as the slot.
        self.ring_ptr().map(|p| unsafe { &*p })
    }

    fn ring_mut(&mut self) -> Option<&mut SpamWindow> {
        // SAFETY: as in `ring`; `&mut self` makes the borrow unique.
        self.ring_ptr().map(|p| unsafe { &mut *p })
    }

    /// Makes `ring` the slot's content, dropping what it held.
    pub fn set_ring(&mut self, ring: Box<SpamWindow>) {
        self.clear();
        self.0 = Box::into_raw(ring) as usize as u64;
    }

    fn clear(&mut self) {
        if let Some(p) = self.ring_ptr() {
            // SAFETY: the slot owns the pointer (from `Box::into_raw`) and forgets it here.
            drop(unsafe { Box::from_raw(p) });
        }
        self.0 = 0;
    }

    /// Counts one message of the account at `now`, before (or without) its verdict.
    pub fn count_message(&mut self, now: Timestamp, window: Duration) {
        let now_secs = whole_secs(now);
        if let Some(ring) = self.ring_mut() {
            ring.count_message(now_secs, window);
            return;
        }
        let now_min = minutes(now_secs);
        let mut inline =
            if self.0 == 0 { Inline { start_min: now_min, prev: 0, cur: 0 } } else { Inline::decode(self.0) };
        inline.roll(now_min, period_minutes(window));
        inline.cur = inline.cur.saturating_add(1);
        self.0 = inline.encode();
    }

    /// Counts a spam verdict at `now` on a message already counted; the first one moves the
    /// inline count into a ring.
    pub fn count_spam(&mut self, now: Timestamp, window: Duration) {
        let now_secs = whole_secs(now);
        if self.ring().is_none() {
            let mut ring = SpamWindow::new(window);
            if self.0 != 0 {
                let now_min = minutes(now_secs);
                let period = period_minutes(window);
                let mut inline = Inline::decode(self.0);
                inline.roll(now_min, period);
                let start_secs = u64::from(inline.start_min) * 60;
                ring.add_messages_at(now_secs, start_secs, u32::from(inline.cur), window);
                // The previous period's share in the window goes to its oldest bucket.
                ring.add_messages_at(now_secs, 0, inline.prev_in_window(now_min, period), window);
            }
            self.set_ring(Box::new(ring));
        }
        if let Some(ring) = self.ring_mut() {
            ring.count_spam(now_secs, window);
        }
    }

    /// Takes back one message counted at `at` (by [`SpamSlot::count_message`]) whose
    /// transaction ended before its end of message: the share is of the messages the account
    /// sent, and an aborted one, sent again, would otherwise count twice.
    pub fn uncount_message(&mut self, at: Timestamp, now: Timestamp, window: Duration) {
        let (at_secs, now_secs) = (whole_secs(at), whole_secs(now));
        if let Some(ring) = self.ring_mut() {
            ring.uncount_message(now_secs, at_secs, window);
            return;
        }
        if self.0 == 0 {
            return;
        }
        let (now_min, at_min, period) = (minutes(now_secs), minutes(at_secs), period_minutes(window));
        let mut inline = Inline::decode(self.0);
        inline.roll(now_min, period);
        if at_min >= inline.start_min {
            inline.cur = inline.cur.saturating_sub(1);
        } else if at_min >= inline.start_min.saturating_sub(period) {
            inline.prev = inline.prev.saturating_sub(1);
        }
        self.0 = inline.encode();
    }

    /// (spam, total) within the window at `now`.
    pub fn counts(&self, now: Timestamp, window: Duration) -> (u32, u32) {
        let now_secs = whole_secs(now);
        match self.ring() {
            Some(ring) => ring.counts(now_secs, window),
            None if self.0 == 0 => (0, 0),
            None => {
                let now_min = minutes(now_secs);
                let period = period_minutes(window);
                let mut inline = Inline::decode(self.0);
                inline.roll(now_min, period);
                (0, u32::from(inline.cur) + inline.prev_in_window(now_min, period))
            }
        }
    }

    /// Whether the slot holds nothing worth keeping at `now`: no ring, or a ring with every
    /// bucket empty. An inline count is not kept for its own sake: a record otherwise idle has
    /// sent nothing for about a day, which is the default window.
    pub fn is_empty_at(&self, now: Timestamp) -> bool {
        self.ring().is_none_or(|w| w.is_empty_at(whole_secs(now)))
    }

    /// The inline word for snapshots (`None` for a ring or nothing).
    pub fn inline_word(&self) -> Option<u64> {
        (self.0 & INLINE != 0).then_some(self.0)
    }

    /// The slot for an inline word read back from a snapshot.
    pub fn from_inline_word(word: u64) -> SpamSlot {
        SpamSlot(if word & INLINE != 0 { word } else { 0 })
    }
}

impl Drop for SpamSlot {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Clone for SpamSlot {
    fn clone(&self) -> Self {
        match self.ring() {
            Some(ring) => {
                let mut slot = SpamSlot(0);
                slot.set_ring(Box::new(ring.clone()));
                slot
            }
            None => SpamSlot(self.0),
        }
    }
}

impl PartialEq for SpamSlot {
    fn eq(&self, other: &Self) -> bool {
        match (self.ring(), other.ring()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.0 == other.0,
            _ => false,
        }
    }
}

impl Eq for SpamSlot {}

impl std::fmt::Debug for SpamSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ring() {
            Some(ring) => f.debug_tuple("SpamSlot::Ring").field(ring).finish(),
            None if self.0 == 0 => f.write_str("SpamSlot::Empty"),
            None => f.debug_tuple("SpamSlot::Inline").field(&Inline::decode(self.0)).finish(),
        }
    }
}

/// Seconds since the epoch, the resolution the window's buckets are kept in.
fn whole_secs(now: Timestamp) -> u64 {
    now.nanos() / 1_000_000_000
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

    /// The instant `n` seconds after the epoch.
    fn secs(n: u64) -> Timestamp {
        Timestamp::from_nanos(n * 1_000_000_000)
    }

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
    fn clean_mail_is_counted_inline_and_seeds_the_ring_at_the_first_spam() {
        let mut slot = SpamSlot::default();
        assert_eq!(slot.counts(secs(T0), DAY), (0, 0));
        for i in 0..20 {
            slot.count_message(secs(T0 + i * 600), DAY);
        }
        assert!(slot.ring().is_none() && slot.inline_word().is_some(), "no ring for clean mail");
        assert_eq!(slot.counts(secs(T0 + 20 * 600), DAY), (0, 20));
        // The first spam: 21 messages, one of them spam, now in a ring.
        slot.count_message(secs(T0 + 21 * 600), DAY);
        slot.count_spam(secs(T0 + 21 * 600), DAY);
        assert!(slot.ring().is_some());
        assert_eq!(slot.counts(secs(T0 + 21 * 600), DAY), (1, 21));
        let copy = slot.clone();
        assert_eq!(copy, slot);
        drop(slot);
        assert_eq!(copy.counts(secs(T0 + 21 * 600), DAY), (1, 21), "a clone owns its own ring");
    }

    #[test]
    fn the_inline_count_slides_like_a_window() {
        let mut slot = SpamSlot::default();
        for _ in 0..100 {
            slot.count_message(secs(T0), DAY);
        }
        // Half a window into the next period, half of the previous one still counts.
        assert_eq!(slot.counts(secs(T0 + 86_400 + 43_200), DAY), (0, 50));
        slot.count_message(secs(T0 + 86_400 + 43_200), DAY);
        assert_eq!(slot.counts(secs(T0 + 86_400 + 43_200), DAY), (0, 51));
        // Two windows on, nothing is left.
        assert_eq!(slot.counts(secs(T0 + 4 * 86_400), DAY), (0, 0));
        // Handed to the ring, the previous period's share lands in its oldest bucket.
        let mut slot = SpamSlot::default();
        for _ in 0..100 {
            slot.count_message(secs(T0), DAY);
        }
        slot.count_message(secs(T0 + 86_400 + 43_200), DAY);
        slot.count_spam(secs(T0 + 86_400 + 43_200), DAY);
        assert_eq!(slot.counts(secs(T0 + 86_400 + 43_200), DAY), (1, 51));
    }

    #[test]
    fn a_message_taken_back_leaves_the_count_as_before_inline_and_in_the_ring() {
        let mut slot = SpamSlot::default();
        slot.uncount_message(secs(T0), secs(T0), DAY);
        assert_eq!(slot.counts(secs(T0), DAY), (0, 0), "nothing to take back");
        for _ in 0..3 {
            slot.count_message(secs(T0), DAY);
        }
        slot.uncount_message(secs(T0), secs(T0 + 30), DAY);
        assert_eq!(slot.counts(secs(T0 + 30), DAY), (0, 2));
        // Counted in one period, taken back in the next: from the previous period's count.
        let next = T0 + DAY.as_secs();
        slot.count_message(secs(next), DAY);
        slot.uncount_message(secs(T0), secs(next), DAY);
        assert_eq!(slot.counts(secs(next), DAY), (0, 2));
        // With a ring: from the bucket it was counted in; never below the spam.
        slot.count_spam(secs(next), DAY);
        let before = slot.counts(secs(next + 60), DAY);
        slot.count_message(secs(next + 60), DAY);
        slot.uncount_message(secs(next + 60), secs(next + 120), DAY);
        assert_eq!(slot.counts(secs(next + 120), DAY), before);
        // Long gone from the window: nothing to take back.
        let later = next + 3 * DAY.as_secs();
        slot.count_message(secs(later), DAY);
        slot.uncount_message(secs(T0), secs(later), DAY);
        assert_eq!(slot.counts(secs(later), DAY), (0, 1));
    }

    #[test]
    fn inline_words_round_trip_and_nothing_else_is_taken_for_one() {
        let mut slot = SpamSlot::default();
        slot.count_message(secs(T0), DAY);
        let word = slot.inline_word().unwrap();
        assert_eq!(SpamSlot::from_inline_word(word), slot);
        assert_eq!(SpamSlot::from_inline_word(0x1000), SpamSlot::default(), "not a pointer from a file");
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
