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

/// Current macro values of one connection.
#[derive(Debug, Default)]
pub struct Macros {
    values: [Option<Vec<u8>>; COUNT],
    present: [bool; COUNT],
}

impl Macros {
    /// Applies a `D` packet for `stage`.
    pub fn apply<'a>(&mut self, stage: u8, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        self.forget_stage(stage);
        for (name, value) in pairs {
            if let Some(m) = Macro::from_name(name) {
                let slot = self.values[m as usize].get_or_insert_with(Vec::new);
                slot.clear();
                slot.extend_from_slice(value);
                self.present[m as usize] = true;
            }
        }
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
        for m in ALL {
            if forget.contains(&m.owner()) {
                self.present[m as usize] = false;
            }
        }
    }

    /// Forgets everything (a new SMTP session on the same connection).
    pub fn clear(&mut self) {
        self.present = [false; COUNT];
    }

    /// The value of `m`, if the MTA sent it and it is not empty.
    pub fn get(&self, m: Macro) -> Option<&[u8]> {
        if !self.present[m as usize] {
            return None;
        }
        self.values[m as usize].as_deref().filter(|v| !v.is_empty())
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
    fn header_stage_macros_do_not_reset_the_message() {
        let mut m = Macros::default();
        m.apply(b'M', pairs(&[(b"i", b"ABC")]));
        m.apply(b'L', pairs(&[(b"j", b"mx")]));
        assert_eq!(m.get(Macro::QueueId), Some(&b"ABC"[..]));
    }
}
