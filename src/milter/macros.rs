//! The macro values a session keeps: only the ones the policy reads, in buffers reused across
//! transactions so a steady stream of messages allocates nothing here.
//!
//! MTAs send `D` packets before the command they belong to, and Postfix sends them even for
//! stages the filter declined and before every header and body chunk. A `D` for a stage first
//! forgets what that stage owns, so a value never leaks from one message into the next (a
//! message without `{auth_authen}` after an authenticated one is unauthenticated).

use super::command::CommandKind;

/// The macros we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Macro {
    AuthAuthen,
    AuthType,
    ClientAddr,
    ClientName,
    DaemonName,
    QueueId,
    MailAddr,
    RcptAddr,
}

const COUNT: usize = 8;

impl Macro {
    /// Recognises a macro name with or without its braces.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        let bare = match name {
            [b'{', inner @ .., b'}'] => inner,
            other => other,
        };
        Some(match bare {
            b"auth_authen" => Macro::AuthAuthen,
            b"auth_type" => Macro::AuthType,
            b"client_addr" => Macro::ClientAddr,
            b"client_name" => Macro::ClientName,
            b"daemon_name" => Macro::DaemonName,
            b"i" => Macro::QueueId,
            b"mail_addr" => Macro::MailAddr,
            b"rcpt_addr" => Macro::RcptAddr,
            _ => return None,
        })
    }

    /// The stage whose `D` packet resets this macro: connection facts at CONNECT, the rest with
    /// the message or recipient they describe.
    fn owner(self) -> CommandKind {
        match self {
            Macro::ClientAddr | Macro::ClientName | Macro::DaemonName => CommandKind::Connect,
            Macro::AuthAuthen | Macro::AuthType | Macro::MailAddr | Macro::QueueId => CommandKind::MailFrom,
            Macro::RcptAddr => CommandKind::RcptTo,
        }
    }
}

/// Current macro values of one connection: the values back to back in one buffer, so a
/// connection allocates once for them, not once per macro (with a connection per message, as
/// Postfix opens them, that was eight allocations a message).
#[derive(Debug, Default)]
pub struct Macros {
    bytes: Vec<u8>,
    /// Where each present value lies in `bytes`: start and length.
    spans: [Option<(u32, u32)>; COUNT],
}

/// Room reserved for the values at the first `D` packet: what an ordinary transaction sends.
const INITIAL_BYTES: usize = 256;
/// Replaced values are left behind in the buffer until it holds this much more than the live
/// ones; then the live values are copied together (amortised: each copy follows as many bytes
/// appended).
const SLACK: usize = 1024;

impl Macros {
    /// Applies a `D` packet for `stage`.
    pub fn apply<'a>(&mut self, stage: u8, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        self.forget_stage(stage);
        for (name, value) in pairs {
            if let Some(m) = Macro::from_name(name) {
                self.set(m, value);
            }
        }
    }

    fn set(&mut self, m: Macro, value: &[u8]) {
        if self.bytes.capacity() == 0 {
            self.bytes.reserve(INITIAL_BYTES.max(value.len()));
        }
        if self.bytes.len() > SLACK + 2 * self.live() {
            self.compact();
        }
        let (Ok(start), Ok(len)) = (u32::try_from(self.bytes.len()), u32::try_from(value.len())) else {
            // Four gigabytes of macros cannot arrive in packets of at most a few megabytes.
            self.spans[m as usize] = None;
            return;
        };
        self.bytes.extend_from_slice(value);
        self.spans[m as usize] = Some((start, len));
    }

    /// Bytes of the values present.
    fn live(&self) -> usize {
        self.spans.iter().flatten().map(|&(_, len)| len as usize).sum()
    }

    /// Copies the present values together at the start of the buffer.
    fn compact(&mut self) {
        let mut order: [usize; COUNT] = std::array::from_fn(|i| i);
        order.sort_unstable_by_key(|&i| self.spans[i].map_or(u32::MAX, |(start, _)| start));
        let mut end = 0usize;
        for i in order {
            let Some((start, len)) = self.spans[i] else { break };
            let (start, len) = (start as usize, len as usize);
            // Values in ascending order move down only, so none overwrites one not yet moved.
            self.bytes.copy_within(start..start + len, end);
            self.spans[i] = Some((end as u32, len as u32));
            end += len;
        }
        self.bytes.truncate(end);
    }

    /// Forgets the values owned by `stage` and by the stages after it within a transaction.
    pub fn forget_stage(&mut self, stage: u8) {
        use CommandKind as K;
        let forget: &[CommandKind] = match CommandKind::from_byte(stage) {
            Some(K::Connect) => &[K::Connect, K::MailFrom, K::RcptTo],
            Some(K::MailFrom) => &[K::MailFrom, K::RcptTo],
            Some(K::RcptTo) => &[K::RcptTo],
            _ => &[],
        };
        if forget.is_empty() {
            return;
        }
        for m in ALL {
            if forget.contains(&m.owner()) {
                self.spans[m as usize] = None;
            }
        }
        if self.spans.iter().all(Option::is_none) {
            self.bytes.clear();
        }
    }

    /// Forgets everything (a new SMTP session on the same connection).
    pub fn clear(&mut self) {
        self.spans = [None; COUNT];
        self.bytes.clear();
    }

    /// The value of `m`, if the MTA sent it and it is not empty.
    pub fn get(&self, m: Macro) -> Option<&[u8]> {
        let (start, len) = self.spans[m as usize]?;
        self.bytes.get(start as usize..start as usize + len as usize).filter(|v| !v.is_empty())
    }
}

const ALL: [Macro; COUNT] = [
    Macro::AuthAuthen,
    Macro::AuthType,
    Macro::ClientAddr,
    Macro::ClientName,
    Macro::DaemonName,
    Macro::QueueId,
    Macro::MailAddr,
    Macro::RcptAddr,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs<'a>(list: &'a [(&'a [u8], &'a [u8])]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        list.iter().copied()
    }

    #[test]
    fn names_with_and_without_braces() {
        assert_eq!(Macro::from_name(b"{auth_authen}"), Some(Macro::AuthAuthen));
        assert_eq!(Macro::from_name(b"auth_authen"), Some(Macro::AuthAuthen));
        assert_eq!(Macro::from_name(b"i"), Some(Macro::QueueId));
        assert_eq!(Macro::from_name(b"{j}"), None);
    }

    #[test]
    fn a_new_message_forgets_the_previous_login_but_keeps_the_client() {
        let mut m = Macros::default();
        m.apply(b'C', pairs(&[(b"{client_addr}", b"192.0.2.1")]));
        m.apply(b'M', pairs(&[(b"{auth_authen}", b"alice")]));
        assert_eq!(m.get(Macro::AuthAuthen), Some(&b"alice"[..]));
        m.apply(b'M', pairs(&[(b"{mail_addr}", b"x@example.com")]));
        assert_eq!(m.get(Macro::AuthAuthen), None);
        assert_eq!(m.get(Macro::ClientAddr), Some(&b"192.0.2.1"[..]));
    }

    #[test]
    fn empty_values_count_as_absent_and_unknown_names_are_ignored() {
        let mut m = Macros::default();
        m.apply(b'M', pairs(&[(b"{auth_authen}", b""), (b"{other}", b"x")]));
        assert_eq!(m.get(Macro::AuthAuthen), None);
    }

    #[test]
    fn values_replaced_many_times_keep_the_buffer_bounded_and_the_others_intact() {
        let mut m = Macros::default();
        m.apply(b'C', pairs(&[(b"{client_addr}", b"192.0.2.1")]));
        m.apply(b'M', pairs(&[(b"{auth_authen}", b"alice"), (b"i", b"ABC")]));
        for n in 0..10_000u32 {
            let rcpt = format!("rcpt{n}@example.com");
            m.apply(b'R', pairs(&[(b"{rcpt_addr}", rcpt.as_bytes())]));
            assert_eq!(m.get(Macro::RcptAddr), Some(rcpt.as_bytes()));
        }
        assert!(m.bytes.len() <= SLACK + 2 * m.live() + 64, "buffer grew to {}", m.bytes.len());
        assert_eq!(m.get(Macro::ClientAddr), Some(&b"192.0.2.1"[..]));
        assert_eq!(m.get(Macro::AuthAuthen), Some(&b"alice"[..]));
        assert_eq!(m.get(Macro::QueueId), Some(&b"ABC"[..]));
        // A value longer than the room first reserved.
        let long = vec![b'x'; 5000];
        m.apply(b'M', pairs(&[(b"{auth_authen}", &long[..])]));
        assert_eq!(m.get(Macro::AuthAuthen), Some(&long[..]));
        assert_eq!(m.get(Macro::QueueId), None);
        assert_eq!(m.get(Macro::ClientAddr), Some(&b"192.0.2.1"[..]));
    }

    #[test]
    fn header_stage_macros_do_not_reset_the_message() {
        let mut m = Macros::default();
        m.apply(b'M', pairs(&[(b"i", b"ABC")]));
        m.apply(b'L', pairs(&[(b"j", b"mx")]));
        assert_eq!(m.get(Macro::QueueId), Some(&b"ABC"[..]));
    }
}
