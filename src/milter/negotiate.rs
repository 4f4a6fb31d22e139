//! Option negotiation: the protocol constants and what this filter asks the MTA for.
//!
//! The MTA offers actions and protocol steps in its `O` packet; we answer with the subset we
//! need. Every stage we skip (`NO*`) and every reply we waive (`NR_*`) is a round trip the MTA
//! does not make, so the request is computed from what the active policy actually uses
//! ([`Needs`]) and encoded once per configuration, not per connection.

use super::command::CommandKind;
use super::reply::{MacroRequests, NegotiateReply, Reply};
pub use crate::policy::Needs;

/// The protocol version we speak.
pub const VERSION: u32 = 6;

bitflags::bitflags! {
    /// Actions (`SMFIF_*`): what the filter may do at end of message.
    ///
    /// An offer or reply read from the wire keeps bits we do not know
    /// ([`Actions::from_bits_retain`]): they are compared and echoed as the MTA sent them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Actions: u32 {
        const ADD_HEADERS = 0x0001;
        const CHANGE_BODY = 0x0002;
        const ADD_RCPT = 0x0004;
        const DELETE_RCPT = 0x0008;
        const CHANGE_HEADERS = 0x0010;
        const QUARANTINE = 0x0020;
        const CHANGE_FROM = 0x0040;
        const ADD_RCPT_WITH_ARGS = 0x0080;
        const SET_SYMBOL_LIST = 0x0100;
    }
}

bitflags::bitflags! {
    /// Protocol steps (`SMFIP_*`): stages the MTA may skip and replies it need not wait for.
    ///
    /// As with [`Actions`], bits read from the wire are kept even when we do not know them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Steps: u32 {
        const NO_CONNECT = 0x0000_0001;
        const NO_HELO = 0x0000_0002;
        const NO_MAIL = 0x0000_0004;
        const NO_RCPT = 0x0000_0008;
        const NO_BODY = 0x0000_0010;
        const NO_HEADERS = 0x0000_0020;
        const NO_EOH = 0x0000_0040;
        const NR_HEADER = 0x0000_0080;
        const NO_UNKNOWN = 0x0000_0100;
        const NO_DATA = 0x0000_0200;
        const SKIP = 0x0000_0400;
        const RCPT_REJECTED = 0x0000_0800;
        const NR_CONNECT = 0x0000_1000;
        const NR_HELO = 0x0000_2000;
        const NR_MAIL = 0x0000_4000;
        const NR_RCPT = 0x0000_8000;
        const NR_DATA = 0x0001_0000;
        const NR_UNKNOWN = 0x0002_0000;
        const NR_EOH = 0x0004_0000;
        const NR_BODY = 0x0008_0000;
        const HEADER_LEADING_SPACE = 0x0010_0000;
        const MAX_DATA_256K = 0x1000_0000;
        const MAX_DATA_1M = 0x2000_0000;
    }
}

/// Macro stages (`SMFIM_*`) used in the symbol list of the negotiation reply.
pub mod macro_stage {
    pub const CONNECT: u32 = 0;
    pub const HELO: u32 = 1;
    pub const MAIL: u32 = 2;
    pub const RCPT: u32 = 3;
    pub const DATA: u32 = 4;
    pub const END_OF_MESSAGE: u32 = 5;
    pub const END_OF_HEADERS: u32 = 6;
}

/// Macros asked for at MAIL FROM: everything that identifies the account and the client.
/// Asking for them at this stage lets us skip CONNECT and HELO entirely.
pub const MAIL_MACROS: &str = "{auth_authen} {auth_type} {client_addr} {client_name} {daemon_name} i {mail_addr}";
/// Macros asked for at RCPT TO.
pub const RCPT_MACROS: &str = "{rcpt_addr} i";
/// Macros asked for at end of message (the queue id is only certain to exist by then).
pub const EOM_MACROS: &str = "i";

/// The reply to the MTA's offer, or why we cannot work with it.
///
/// # Errors
/// [`NegotiationError`] when the MTA speaks an older protocol or does not offer a step or action
/// we depend on.
pub fn answer(
    offered_version: u32,
    offered_actions: Actions,
    offered_steps: Steps,
    needs: Needs,
) -> Result<Negotiated, NegotiationError> {
    if offered_version < 2 {
        return Err(NegotiationError::Version(offered_version));
    }
    let mut actions = Actions::SET_SYMBOL_LIST;
    actions.set(Actions::ADD_HEADERS, needs.add_headers);
    actions.set(Actions::QUARANTINE, needs.quarantine);
    actions.set(Actions::ADD_RCPT, needs.add_recipients);
    // The symbol list is a convenience: without it the MTA sends its default macros, which
    // include the ones we read (Postfix and Sendmail both send {auth_authen} with MAIL).
    if !offered_actions.contains(Actions::SET_SYMBOL_LIST) {
        actions.remove(Actions::SET_SYMBOL_LIST);
    }
    if !offered_actions.contains(actions) {
        return Err(NegotiationError::Actions { wanted: actions, offered: offered_actions });
    }

    let mut skip = Steps::NO_CONNECT | Steps::NO_HELO | Steps::NO_UNKNOWN | Steps::NO_DATA;
    if !needs.headers {
        skip |= Steps::NO_HEADERS | Steps::NO_EOH;
    }
    if !needs.body {
        skip |= Steps::NO_BODY;
    }
    // Replies we never vary, so the MTA need not wait for them.
    let no_reply = Steps::NR_CONNECT
        | Steps::NR_HELO
        | Steps::NR_DATA
        | Steps::NR_UNKNOWN
        | Steps::NR_HEADER
        | Steps::NR_EOH
        | Steps::NR_BODY;
    // Only ask for what is offered; an old MTA that cannot skip a stage simply sends it and the
    // session answers it.
    let steps = (skip | no_reply | Steps::HEADER_LEADING_SPACE) & offered_steps;
    Ok(Negotiated {
        version: VERSION.min(offered_version),
        actions,
        steps,
        symbol_list: actions.contains(Actions::SET_SYMBOL_LIST),
    })
}

/// The agreed options of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u32,
    pub actions: Actions,
    pub steps: Steps,
    pub symbol_list: bool,
}

impl Negotiated {
    /// Whether the MTA waits for our reply after a command of this kind.
    pub fn expects_reply(&self, kind: CommandKind) -> bool {
        use CommandKind as K;
        let waived = match kind {
            K::Connect => Steps::NR_CONNECT,
            K::Helo => Steps::NR_HELO,
            K::MailFrom => Steps::NR_MAIL,
            K::RcptTo => Steps::NR_RCPT,
            K::Data => Steps::NR_DATA,
            K::Unknown => Steps::NR_UNKNOWN,
            K::Header => Steps::NR_HEADER,
            K::EndOfHeaders => Steps::NR_EOH,
            K::Body => Steps::NR_BODY,
            K::Negotiate | K::EndOfMessage => return true,
            // Macros, abort and quit are never answered.
            K::Macros | K::Abort | K::Quit | K::QuitNewConnection => return false,
        };
        !self.steps.intersects(waived)
    }

    /// Whether header values arrive with their leading space kept.
    pub fn header_leading_space(&self) -> bool {
        self.steps.contains(Steps::HEADER_LEADING_SPACE)
    }

    /// Encodes our `O` reply into `out`.
    pub fn encode_reply(&self, out: &mut Vec<u8>) {
        Reply::Negotiate(NegotiateReply {
            version: self.version,
            actions: self.actions,
            steps: self.steps,
            macros: if self.symbol_list { symbol_list() } else { MacroRequests::default() },
        })
        .encode(out);
    }
}

/// Our symbol list, encoded and checked once: built and checked per connection it cost about
/// 2,000 instructions, and Postfix opens a connection per message.
fn symbol_list() -> MacroRequests<'static> {
    static LIST: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        MacroRequests::encode_list(&[
            (macro_stage::MAIL, MAIL_MACROS.as_bytes()),
            (macro_stage::RCPT, RCPT_MACROS.as_bytes()),
            (macro_stage::END_OF_MESSAGE, EOM_MACROS.as_bytes()),
        ])
    });
    static CHECKED: std::sync::LazyLock<MacroRequests<'static>> =
        std::sync::LazyLock::new(|| MacroRequests::new(&LIST).expect("our own symbol list is well formed"));
    *CHECKED
}

/// Why the MTA's offer cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("the MTA offers milter protocol version {0}; version 2 or later is required")]
    Version(u32),
    #[error("the MTA does not offer the actions this policy needs (wanted {wanted:#x}, offered {offered:#x})")]
    Actions { wanted: Actions, offered: Actions },
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTFIX_ACTIONS: Actions = Actions::from_bits_retain(0x1ff);
    const POSTFIX_STEPS: Steps = Steps::from_bits_retain(0x1f_ffff);

    #[test]
    fn without_verdicts_only_mail_rcpt_and_eom_are_asked_for() {
        let n = answer(6, POSTFIX_ACTIONS, POSTFIX_STEPS, Needs::default()).unwrap();
        for skipped in
            [Steps::NO_CONNECT, Steps::NO_HELO, Steps::NO_HEADERS, Steps::NO_EOH, Steps::NO_BODY, Steps::NO_DATA]
        {
            assert!(n.steps.contains(skipped), "stage {skipped:?} should be skipped");
        }
        assert!(!n.steps.intersects(Steps::NO_MAIL | Steps::NO_RCPT));
        let expects = |kinds: &[CommandKind]| kinds.iter().map(|&k| n.expects_reply(k)).collect::<Vec<_>>();
        use CommandKind as K;
        assert_eq!(expects(&[K::MailFrom, K::RcptTo, K::EndOfMessage]), [true; 3]);
        assert_eq!(expects(&[K::Macros, K::Header, K::Abort]), [false; 3]);
        assert_eq!(n.actions, Actions::SET_SYMBOL_LIST);
    }

    #[test]
    fn header_verdicts_keep_headers_and_waive_their_replies() {
        let needs = Needs { headers: true, add_headers: true, ..Needs::default() };
        let n = answer(6, POSTFIX_ACTIONS, POSTFIX_STEPS, needs).unwrap();
        assert!(!n.steps.contains(Steps::NO_HEADERS));
        assert!(n.steps.contains(Steps::NR_HEADER));
        assert!(n.actions.contains(Actions::ADD_HEADERS));
    }

    #[test]
    fn steps_not_offered_are_not_requested() {
        let n = answer(6, POSTFIX_ACTIONS, Steps::NO_CONNECT, Needs::default()).unwrap();
        assert_eq!(n.steps, Steps::NO_CONNECT);
        assert!(n.expects_reply(CommandKind::Helo));
    }

    #[test]
    fn missing_action_is_refused() {
        let needs = Needs { quarantine: true, ..Needs::default() };
        let without_quarantine = Actions::from_bits_retain(0x1df);
        assert!(matches!(answer(6, without_quarantine, POSTFIX_STEPS, needs), Err(NegotiationError::Actions { .. })));
        assert_eq!(answer(1, POSTFIX_ACTIONS, Steps::empty(), Needs::default()), Err(NegotiationError::Version(1)));
    }

    #[test]
    fn unknown_offered_bits_are_kept_in_errors_and_never_requested() {
        let needs = Needs { quarantine: true, ..Needs::default() };
        let offered = Actions::from_bits_retain(0x8000_01df);
        let err = answer(6, offered, POSTFIX_STEPS, needs).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the MTA does not offer the actions this policy needs (wanted 0x120, offered 0x800001df)"
        );
        let n =
            answer(6, Actions::from_bits_retain(0xffff_ffff), Steps::from_bits_retain(0xffff_ffff), Needs::default())
                .unwrap();
        assert_eq!(n.actions, Actions::SET_SYMBOL_LIST);
        assert_eq!(n.steps.bits() & 0xffe0_0000, 0, "{:#x}", n.steps.bits());
    }
}
