//! Option negotiation: the protocol constants and what this filter asks the MTA for.
//!
//! The MTA offers actions and protocol steps in its `O` packet; we answer with the subset we
//! need. Every stage we skip (`NO*`) and every reply we waive (`NR_*`) is a round trip the MTA
//! does not make, so the request is computed from what the active policy actually uses
//! ([`Needs`]) and encoded once per configuration, not per connection.

use super::reply::{MacroRequests, NegotiateReply, Reply};
pub use crate::policy::Needs;

/// The protocol version we speak.
pub const VERSION: u32 = 6;

/// Actions (`SMFIF_*`): what the filter may do at end of message.
pub mod action {
    pub const ADD_HEADERS: u32 = 0x0001;
    pub const CHANGE_BODY: u32 = 0x0002;
    pub const ADD_RCPT: u32 = 0x0004;
    pub const DELETE_RCPT: u32 = 0x0008;
    pub const CHANGE_HEADERS: u32 = 0x0010;
    pub const QUARANTINE: u32 = 0x0020;
    pub const CHANGE_FROM: u32 = 0x0040;
    pub const ADD_RCPT_WITH_ARGS: u32 = 0x0080;
    pub const SET_SYMBOL_LIST: u32 = 0x0100;
}

/// Protocol steps (`SMFIP_*`): stages the MTA may skip and replies it need not wait for.
pub mod step {
    pub const NO_CONNECT: u32 = 0x0000_0001;
    pub const NO_HELO: u32 = 0x0000_0002;
    pub const NO_MAIL: u32 = 0x0000_0004;
    pub const NO_RCPT: u32 = 0x0000_0008;
    pub const NO_BODY: u32 = 0x0000_0010;
    pub const NO_HEADERS: u32 = 0x0000_0020;
    pub const NO_EOH: u32 = 0x0000_0040;
    pub const NR_HEADER: u32 = 0x0000_0080;
    pub const NO_UNKNOWN: u32 = 0x0000_0100;
    pub const NO_DATA: u32 = 0x0000_0200;
    pub const SKIP: u32 = 0x0000_0400;
    pub const RCPT_REJECTED: u32 = 0x0000_0800;
    pub const NR_CONNECT: u32 = 0x0000_1000;
    pub const NR_HELO: u32 = 0x0000_2000;
    pub const NR_MAIL: u32 = 0x0000_4000;
    pub const NR_RCPT: u32 = 0x0000_8000;
    pub const NR_DATA: u32 = 0x0001_0000;
    pub const NR_UNKNOWN: u32 = 0x0002_0000;
    pub const NR_EOH: u32 = 0x0004_0000;
    pub const NR_BODY: u32 = 0x0008_0000;
    pub const HEADER_LEADING_SPACE: u32 = 0x0010_0000;
    pub const MAX_DATA_256K: u32 = 0x1000_0000;
    pub const MAX_DATA_1M: u32 = 0x2000_0000;
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
    offered_actions: u32,
    offered_steps: u32,
    needs: Needs,
) -> Result<Negotiated, NegotiationError> {
    if offered_version < 2 {
        return Err(NegotiationError::Version(offered_version));
    }
    let mut actions = action::SET_SYMBOL_LIST;
    if needs.add_headers {
        actions |= action::ADD_HEADERS;
    }
    if needs.quarantine {
        actions |= action::QUARANTINE;
    }
    if needs.add_recipients {
        actions |= action::ADD_RCPT;
    }
    // The symbol list is a convenience: without it the MTA sends its default macros, which
    // include the ones we read (Postfix and Sendmail both send {auth_authen} with MAIL).
    if offered_actions & action::SET_SYMBOL_LIST == 0 {
        actions &= !action::SET_SYMBOL_LIST;
    }
    let missing_actions = actions & !offered_actions;
    if missing_actions != 0 {
        return Err(NegotiationError::Actions { wanted: actions, offered: offered_actions });
    }

    let mut skip = step::NO_CONNECT | step::NO_HELO | step::NO_UNKNOWN | step::NO_DATA;
    if !needs.headers {
        skip |= step::NO_HEADERS | step::NO_EOH;
    }
    if !needs.body {
        skip |= step::NO_BODY;
    }
    // Replies we never vary, so the MTA need not wait for them.
    let no_reply = step::NR_CONNECT
        | step::NR_HELO
        | step::NR_DATA
        | step::NR_UNKNOWN
        | step::NR_HEADER
        | step::NR_EOH
        | step::NR_BODY;
    // Only ask for what is offered; an old MTA that cannot skip a stage simply sends it and the
    // session answers it.
    let steps = (skip | no_reply | step::HEADER_LEADING_SPACE) & offered_steps;
    Ok(Negotiated {
        version: VERSION.min(offered_version),
        actions,
        steps,
        symbol_list: actions & action::SET_SYMBOL_LIST != 0,
    })
}

/// The agreed options of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u32,
    pub actions: u32,
    pub steps: u32,
    pub symbol_list: bool,
}

impl Negotiated {
    /// Whether the MTA waits for our reply after a command of this kind.
    pub fn expects_reply(&self, kind: u8) -> bool {
        let waived = match kind {
            b'C' => step::NR_CONNECT,
            b'H' => step::NR_HELO,
            b'M' => step::NR_MAIL,
            b'R' => step::NR_RCPT,
            b'T' => step::NR_DATA,
            b'U' => step::NR_UNKNOWN,
            b'L' => step::NR_HEADER,
            b'N' => step::NR_EOH,
            b'B' => step::NR_BODY,
            b'O' | b'E' => return true,
            // Macros, abort and quit are never answered.
            _ => return false,
        };
        self.steps & waived == 0
    }

    /// Whether header values arrive with their leading space kept.
    pub fn header_leading_space(&self) -> bool {
        self.steps & step::HEADER_LEADING_SPACE != 0
    }

    /// Encodes our `O` reply into `out`.
    pub fn encode_reply(&self, out: &mut Vec<u8>) {
        let list = if self.symbol_list { MacroRequests::encode_list(&symbol_list()) } else { Vec::new() };
        Reply::Negotiate(NegotiateReply {
            version: self.version,
            actions: self.actions,
            steps: self.steps,
            macros: MacroRequests::new(&list).expect("our own symbol list is well formed"),
        })
        .encode(out);
    }
}

fn symbol_list() -> [(u32, &'static [u8]); 3] {
    [
        (macro_stage::MAIL, MAIL_MACROS.as_bytes()),
        (macro_stage::RCPT, RCPT_MACROS.as_bytes()),
        (macro_stage::END_OF_MESSAGE, EOM_MACROS.as_bytes()),
    ]
}

/// Why the MTA's offer cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("the MTA offers milter protocol version {0}; version 2 or later is required")]
    Version(u32),
    #[error("the MTA does not offer the actions this policy needs (wanted {wanted:#x}, offered {offered:#x})")]
    Actions { wanted: u32, offered: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTFIX_ACTIONS: u32 = 0x1ff;
    const POSTFIX_STEPS: u32 = 0x1f_ffff;

    #[test]
    fn without_verdicts_only_mail_rcpt_and_eom_are_asked_for() {
        let n = answer(6, POSTFIX_ACTIONS, POSTFIX_STEPS, Needs::default()).unwrap();
        for skipped in [step::NO_CONNECT, step::NO_HELO, step::NO_HEADERS, step::NO_EOH, step::NO_BODY, step::NO_DATA] {
            assert_ne!(n.steps & skipped, 0, "stage {skipped:#x} should be skipped");
        }
        assert_eq!(n.steps & (step::NO_MAIL | step::NO_RCPT), 0);
        assert!(n.expects_reply(b'M') && n.expects_reply(b'R') && n.expects_reply(b'E'));
        assert!(!n.expects_reply(b'D') && !n.expects_reply(b'L') && !n.expects_reply(b'A'));
        assert_eq!(n.actions, action::SET_SYMBOL_LIST);
    }

    #[test]
    fn header_verdicts_keep_headers_and_waive_their_replies() {
        let needs = Needs { headers: true, add_headers: true, ..Needs::default() };
        let n = answer(6, POSTFIX_ACTIONS, POSTFIX_STEPS, needs).unwrap();
        assert_eq!(n.steps & step::NO_HEADERS, 0);
        assert_ne!(n.steps & step::NR_HEADER, 0);
        assert_ne!(n.actions & action::ADD_HEADERS, 0);
    }

    #[test]
    fn steps_not_offered_are_not_requested() {
        let n = answer(6, POSTFIX_ACTIONS, step::NO_CONNECT, Needs::default()).unwrap();
        assert_eq!(n.steps, step::NO_CONNECT);
        assert!(n.expects_reply(b'H'));
    }

    #[test]
    fn missing_action_is_refused() {
        let needs = Needs { quarantine: true, ..Needs::default() };
        assert!(matches!(answer(6, 0x1df, POSTFIX_STEPS, needs), Err(NegotiationError::Actions { .. })));
        assert_eq!(answer(1, 0x1ff, 0, Needs::default()), Err(NegotiationError::Version(1)));
    }
}
