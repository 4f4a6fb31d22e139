//! One milter connection's logic: the state machine, the macros, the hand-over to the policy,
//! and the single place where a policy [`Decision`] becomes a protocol [`Reply`].
//!
//! Pure and synchronous: it takes decoded commands and appends encoded replies to a buffer. The
//! connection layer owns sockets and timeouts.
//!
//! # States
//!
//! ```text
//! Negotiating --O--> Ready --M--> Message(Envelope) --R--> Message(Recipients) --T--> Data
//!     --L--> Headers --N--> EndOfHeaders --B--> Body --E--> Ready
//! ```
//! Within a message the phase only moves forward (a RCPT after a header is out of order);
//! `A` (abort) or a refused/accepted MAIL ends the message; `K` starts a new SMTP session on the
//! same connection without a new negotiation; `Q` ends the connection. `D` (macros) and `U`
//! (unknown SMTP command) may come at any time after negotiation. See [`transition`].

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use thiserror::Error;
use tracing::warn;

use super::command::{Command, CommandKind, printable};
use super::macros::{Macro, Macros};
use super::negotiate::{self, Actions, Negotiated, NegotiationError};
use super::reply::Reply;
use crate::config::{InternalErrorAction, ReplyTexts};
use crate::policy::{Decision, MailFacts, MessageFacts, Policy, RcptFacts, Refusal};
use crate::verdict::KeptHeaders;
use crate::verdict::kept::{HEADER_BUDGET, OverBudget};

/// Where in a message the MTA is; only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Envelope,
    Recipients,
    Data,
    Headers,
    EndOfHeaders,
    Body,
}

/// Where in the conversation a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing but the negotiation may come first.
    Negotiating,
    /// Between messages (CONNECT and HELO belong here).
    Ready,
    /// Inside a message.
    Message(Phase),
    /// After QUIT.
    Closed,
}

/// A command that may not come in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unexpected {} command {} while {}", .kind.name(), printable(.kind.code()), state_words(*.state))]
pub struct OutOfOrder {
    pub kind: CommandKind,
    pub state: State,
}

fn state_words(state: State) -> &'static str {
    match state {
        State::Negotiating => "waiting for the option negotiation",
        State::Ready => "no message is in progress (before MAIL)",
        State::Message(Phase::Envelope | Phase::Recipients) => "in the envelope of a message",
        State::Message(Phase::Data | Phase::Headers | Phase::EndOfHeaders) => "in the headers of a message",
        State::Message(Phase::Body) => "in the body of a message",
        State::Closed => "the connection is closing",
    }
}

/// The transition table: the state after `kind` arrives in `state`.
///
/// # Errors
/// [`OutOfOrder`] when `kind` may not come now.
pub fn transition(state: State, kind: CommandKind) -> Result<State, OutOfOrder> {
    use CommandKind as K;
    use State::*;
    let out_of_order = Err(OutOfOrder { kind, state });
    let within = |phase: Phase, to: Phase| {
        if phase <= to { Ok(Message(to)) } else { out_of_order }
    };
    match (state, kind) {
        (Closed, _) => out_of_order,
        (Negotiating, K::Negotiate) => Ok(Ready),
        (Negotiating, K::Quit) => Ok(Closed),
        (Negotiating, _) => out_of_order,
        (_, K::Negotiate) => out_of_order,
        (_, K::Quit) => Ok(Closed),
        (_, K::QuitNewConnection) => Ok(Ready),
        (_, K::Abort) => Ok(Ready),
        (s, K::Macros | K::Unknown) => Ok(s),
        (_, K::MailFrom) => Ok(Message(Phase::Envelope)),
        // HELO/EHLO resets an SMTP transaction; an MTA may not tell us with an abort first.
        (Ready | Message(_), K::Helo) => Ok(Ready),
        (Ready, K::Connect) => Ok(Ready),
        (Ready, _) => out_of_order,
        (Message(p), K::RcptTo) => within(p, Phase::Recipients),
        (Message(p), K::Data) => within(p, Phase::Data),
        (Message(p), K::Header) => within(p, Phase::Headers),
        (Message(p), K::EndOfHeaders) => within(p, Phase::EndOfHeaders),
        (Message(p), K::Body) => within(p, Phase::Body),
        (Message(_), K::EndOfMessage) => Ok(Ready),
        (Message(_), _) => out_of_order,
    }
}

/// Why a session must end.
#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    OutOfOrder(#[from] OutOfOrder),
    #[error("option negotiation failed: {0}")]
    Negotiation(#[from] NegotiationError),
}

/// What the connection should do after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    KeepOpen,
    Close,
    /// End of message with scanners to ask: the connection awaits [`Session::scan`] and then
    /// calls [`Session::finish_message`].
    Scan,
    /// MAIL FROM whose decision waits for the policy's asynchronous step: the connection
    /// awaits [`Session::prepare`], which writes the reply.
    Prepare,
}

/// The header name of the spam tag.
pub const SPAM_TAG_HEADER: &[u8] = b"X-Outbound-Guard-Spam";
/// Reason given to the MTA when a spam message is put on hold.
pub const QUARANTINE_REASON: &[u8] = b"outbound-guard: outbound message judged spam";

/// What the session keeps of the message in progress, for verdicts: the headers the header
/// verdict reads, bounded (see `verdict::kept`), and the first `max_scan_bytes` of the message
/// when scanners are on. Buffers are reused across messages.
#[derive(Default)]
struct MessageBuffer {
    kept: KeptHeaders,
    scan: Option<crate::verdict::ScanMessage>,
    sender: String,
    recipients: Vec<String>,
}

impl MessageBuffer {
    fn clear(&mut self) {
        self.kept.clear();
        if let Some(s) = self.scan.as_mut() {
            s.clear();
        }
        self.sender.clear();
        self.recipients.clear();
    }

    /// `Some` when this header took the message over its header budget.
    fn push_header(&mut self, name: &[u8], value: &[u8]) -> Option<OverBudget> {
        if let Some(s) = self.scan.as_mut() {
            // Counted against `max_scan_bytes` like the rest of the message.
            s.push_header(name, value);
        }
        self.kept.push(name, value)
    }
}

/// One connection's session.
pub struct Session<P: Policy> {
    policy: Arc<P>,
    replies: Arc<ArcSwap<ReplyTexts>>,
    state: State,
    negotiated: Option<Negotiated>,
    macros: Macros,
    tx: P::Transaction,
    needs: crate::policy::Needs,
    message: MessageBuffer,
    /// The MAIL FROM decision waiting for [`Session::prepare`].
    pending_mail: Option<Decision>,
    /// Whether this connection carries the MTA's local submissions (`milter.local_listen`).
    local_submissions: bool,
    /// Counts messages over the header budget (`milter_header_budget_exceeded`).
    over_budget: Option<Counter>,
}

impl<P: Policy> Session<P> {
    pub fn new(policy: Arc<P>, replies: Arc<ArcSwap<ReplyTexts>>) -> Self {
        Session {
            policy,
            replies,
            state: State::Negotiating,
            negotiated: None,
            macros: Macros::default(),
            tx: P::Transaction::default(),
            needs: crate::policy::Needs::default(),
            message: MessageBuffer::default(),
            pending_mail: None,
            local_submissions: false,
            over_budget: None,
        }
    }

    /// Counts each message over the header budget in `counter`.
    pub fn counting_header_budget(mut self, counter: Counter) -> Self {
        self.over_budget = Some(counter);
        self
    }

    /// The session of a connection on `milter.local_listen`: its transactions are local
    /// submissions.
    pub fn for_local_submissions(mut self) -> Self {
        self.local_submissions = true;
        self
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a message is in progress (graceful shutdown waits for it to end).
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Message(_))
    }

    /// Handles one command, appending any reply to `out`.
    ///
    /// # Errors
    /// [`SessionError`] when the command is out of order or the negotiation cannot succeed;
    /// the connection must then end.
    pub fn handle(&mut self, command: Command<'_>, out: &mut Vec<u8>) -> Result<Flow, SessionError> {
        let before = self.state;
        self.state = transition(before, command.kind())?;
        if matches!(before, State::Message(_))
            && !matches!(self.state, State::Message(_))
            && command.kind() != CommandKind::EndOfMessage
        {
            self.policy.end_transaction(&mut self.tx);
        }
        let reply = match command {
            Command::Negotiate(offer) => {
                self.needs = self.policy.needs();
                self.message.kept = KeptHeaders::new(self.policy.header_names());
                if self.needs.body {
                    self.message.scan = Some(crate::verdict::ScanMessage::new(self.needs.max_scan_bytes));
                }
                let agreed = negotiate::answer(offer.version, offer.actions, offer.steps, self.needs)?;
                agreed.encode_reply(out);
                self.negotiated = Some(agreed);
                return Ok(Flow::KeepOpen);
            }
            Command::Macros { stage, pairs } => {
                self.macros.apply(stage, pairs.pairs());
                None
            }
            Command::MailFrom(envelope) => {
                if matches!(before, State::Message(_)) {
                    // A new MAIL without an abort: the previous message was given up.
                    self.policy.end_transaction(&mut self.tx);
                }
                let facts = MailFacts {
                    sender: envelope.bare_address(),
                    auth_login: self.macros.get(Macro::AuthAuthen),
                    client_addr: self.macros.get(Macro::ClientAddr).and_then(parse_ip),
                    queue_id: self.macros.get(Macro::QueueId),
                    local_submission: self.local_submissions,
                };
                let decision = self.policy.mail_from(&mut self.tx, &facts);
                self.message.clear();
                if self.needs.body {
                    self.message.sender.push_str(&String::from_utf8_lossy(envelope.bare_address()));
                }
                if self.policy.prepares(&self.tx, decision) {
                    self.pending_mail = Some(decision);
                    return Ok(Flow::Prepare);
                }
                self.mail_decided(decision, out);
                return Ok(Flow::KeepOpen);
            }
            Command::RcptTo(envelope) => {
                let facts = RcptFacts { recipient: envelope.bare_address() };
                let decision = self.policy.rcpt_to(&mut self.tx, &facts);
                if self.needs.body && decision == Decision::Continue {
                    self.message.recipients.push(String::from_utf8_lossy(envelope.bare_address()).into_owned());
                }
                Some(decision)
            }
            Command::Header { name, value } => {
                if self.needs.headers
                    && let Some(over) = self.message.push_header(name, value)
                {
                    self.header_budget_exceeded(over);
                }
                Some(Decision::Continue)
            }
            Command::EndOfHeaders => {
                if let Some(s) = self.message.scan.as_mut() {
                    s.end_headers();
                }
                Some(Decision::Continue)
            }
            Command::Body(chunk) => {
                if let Some(s) = self.message.scan.as_mut() {
                    s.push_body(chunk);
                }
                Some(Decision::Continue)
            }
            Command::EndOfMessage(chunk) => {
                if let Some(s) = self.message.scan.as_mut() {
                    s.push_body(chunk);
                }
                if self.policy.scans() {
                    return Ok(Flow::Scan);
                }
                self.finish_message(&[], out);
                return Ok(Flow::KeepOpen);
            }
            Command::QuitNewConnection => {
                self.macros.clear();
                None
            }
            Command::Quit => return Ok(Flow::Close),
            // Stages the policy does not read: answered with "continue" when the MTA waits.
            Command::Connect { .. } | Command::Helo { .. } | Command::Data | Command::Unknown(_) => {
                Some(Decision::Continue)
            }
            Command::Abort => None,
        };
        if let Some(decision) = reply
            && self.expects_reply(command.kind())
        {
            self.replies.load().reply_for(decision).encode(out);
        }
        Ok(Flow::KeepOpen)
    }

    /// Runs the policy's step after MAIL FROM (after [`Flow::Prepare`]), at most `limit` long —
    /// past it the decision made without that step stands — and writes the MAIL FROM reply.
    pub async fn prepare(&mut self, limit: std::time::Duration, out: &mut Vec<u8>) {
        let Some(decision) = self.pending_mail.take() else { return };
        let decision =
            tokio::time::timeout(limit, self.policy.prepare(&mut self.tx, decision)).await.unwrap_or(decision);
        self.mail_decided(decision, out);
    }

    /// The MAIL FROM decision is final: end the transaction unless it goes on, and reply.
    fn mail_decided(&mut self, decision: Decision, out: &mut Vec<u8>) {
        if decision != Decision::Continue {
            // Accepted or refused: the MTA sends nothing more of this message.
            self.state = State::Ready;
            self.policy.end_transaction(&mut self.tx);
        }
        if self.expects_reply(CommandKind::MailFrom) {
            self.replies.load().reply_for(decision).encode(out);
        }
    }

    /// Asks the policy's scanners about the message in progress (after [`Flow::Scan`]).
    pub async fn scan(&self) -> Vec<crate::verdict::Verdict> {
        let Some(message) = self.message.scan.as_ref() else { return Vec::new() };
        let recipients: Vec<&str> = self.message.recipients.iter().map(String::as_str).collect();
        let user = self.macros.get(Macro::AuthAuthen).and_then(|u| std::str::from_utf8(u).ok());
        let queue_id = self.macros.get(Macro::QueueId).and_then(|q| std::str::from_utf8(q).ok());
        let request = crate::policy::ScanRequest {
            message: message.as_bytes(),
            user: user.or(Some(self.message.sender.as_str()).filter(|s| !s.is_empty())),
            ip: self.macros.get(Macro::ClientAddr).and_then(parse_ip),
            helo: None,
            from: Some(self.message.sender.as_str()),
            rcpt: &recipients,
            queue_id,
        };
        self.policy.scan(request).await
    }

    /// Ends the message in progress: the policy's outcome becomes modifications and the final
    /// reply.
    pub fn finish_message(&mut self, scanned: &[crate::verdict::Verdict], out: &mut Vec<u8>) {
        let headers = self.message.kept.pairs();
        let facts = MessageFacts { queue_id: self.macros.get(Macro::QueueId), headers: &headers, scanned };
        let outcome = self.policy.end_of_message(&mut self.tx, &facts);
        drop(headers);
        self.policy.end_transaction(&mut self.tx);
        self.message.clear();
        if outcome.decision == Decision::Continue {
            let actions = self.negotiated.map_or(Actions::empty(), |n| n.actions);
            if outcome.tag && actions.contains(Actions::ADD_HEADERS) {
                // With HDR_LEADSPC negotiated the MTA adds no space after the colon of a header
                // we add either: the value carries its own, or Postfix writes `Name:yes`, which
                // `header_checks` rules written as `Name: yes` do not match.
                let leading_space = self.negotiated.is_some_and(|n| n.header_leading_space());
                let value: &[u8] = if leading_space { b" yes" } else { b"yes" };
                Reply::AddHeader { name: SPAM_TAG_HEADER, value }.encode(out);
            }
            if actions.contains(Actions::ADD_RCPT) {
                for bcc in &outcome.bcc {
                    Reply::AddRecipient(format!("<{bcc}>").as_bytes()).encode(out);
                }
            }
            if outcome.quarantine && actions.contains(Actions::QUARANTINE) {
                Reply::Quarantine(QUARANTINE_REASON).encode(out);
            }
        }
        self.replies.load().reply_for(outcome.decision).encode(out);
    }

    /// One line and one count per message over the header budget, saying whose message it is
    /// and what happens to it.
    fn header_budget_exceeded(&self, over: OverBudget) {
        if let Some(counter) = &self.over_budget {
            counter.inc();
        }
        // Rare (a megabyte of headers each time), so the lossy copies cost nothing that matters.
        let text = |m| self.macros.get(m).map_or_else(|| "-".into(), String::from_utf8_lossy);
        warn!(
            login = %text(Macro::AuthAuthen),
            queue_id = %text(Macro::QueueId),
            seen = over.seen,
            budget = HEADER_BUDGET,
            "message headers went over the budget ({} bytes seen, budget {HEADER_BUDGET}): the \
             headers after it are not read for the header verdict",
            over.seen
        );
    }

    fn expects_reply(&self, kind: CommandKind) -> bool {
        self.negotiated.is_none_or(|n| n.expects_reply(kind))
    }
}

fn parse_ip(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?;
    let text = text.strip_prefix("IPv6:").unwrap_or(text);
    text.parse().ok()
}

impl<P: Policy> Drop for Session<P> {
    /// A connection lost (or cut by a timeout) in the middle of a message ends its
    /// transaction as an abort would: what it reserved is given back.
    fn drop(&mut self) {
        if matches!(self.state, State::Message(_)) {
            self.policy.end_transaction(&mut self.tx);
        }
    }
}

impl ReplyTexts {
    /// The one place where a decision becomes a reply: each refusal has its configured text.
    pub fn reply_for(&self, decision: Decision) -> Reply<'_> {
        match decision {
            Decision::Continue => Reply::Continue,
            Decision::Accept => Reply::Accept,
            Decision::Refuse(refusal) => Reply::ReplyCode(
                match refusal {
                    Refusal::AccountRestricted => &self.account_restricted,
                    Refusal::LimitReached => &self.limit_reached,
                    Refusal::TooManyRecipients => &self.too_many_recipients,
                    Refusal::Spam => &self.spam_rejected,
                    Refusal::TooManyRecipientsLocal => &self.too_many_recipients_local,
                }
                .as_bytes(),
            ),
            Decision::InternalError => match self.on_internal_error {
                InternalErrorAction::Tempfail => Reply::Tempfail,
                InternalErrorAction::Accept => Reply::Accept,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CommandKind as K;
    use State::*;

    #[test]
    fn transition_table() {
        let ok = [
            (Negotiating, K::Negotiate, Ready),
            (Ready, K::Connect, Ready),
            (Ready, K::Helo, Ready),
            (Ready, K::Macros, Ready),
            (Ready, K::MailFrom, Message(Phase::Envelope)),
            (Message(Phase::Envelope), K::RcptTo, Message(Phase::Recipients)),
            (Message(Phase::Recipients), K::RcptTo, Message(Phase::Recipients)),
            (Message(Phase::Recipients), K::Data, Message(Phase::Data)),
            (Message(Phase::Envelope), K::Header, Message(Phase::Headers)),
            (Message(Phase::Headers), K::Header, Message(Phase::Headers)),
            (Message(Phase::Headers), K::EndOfHeaders, Message(Phase::EndOfHeaders)),
            (Message(Phase::EndOfHeaders), K::Body, Message(Phase::Body)),
            (Message(Phase::Body), K::Body, Message(Phase::Body)),
            (Message(Phase::Body), K::EndOfMessage, Ready),
            (Message(Phase::Recipients), K::EndOfMessage, Ready),
            (Message(Phase::Body), K::Macros, Message(Phase::Body)),
            (Message(Phase::Headers), K::Abort, Ready),
            (Message(Phase::Recipients), K::MailFrom, Message(Phase::Envelope)),
            (Message(Phase::Recipients), K::Helo, Ready),
            (Ready, K::QuitNewConnection, Ready),
            (Message(Phase::Body), K::QuitNewConnection, Ready),
            (Ready, K::Quit, Closed),
            (Negotiating, K::Quit, Closed),
            (Ready, K::Unknown, Ready),
        ];
        for (from, kind, to) in ok {
            assert_eq!(transition(from, kind), Ok(to), "{from:?} --{}-->", kind.code() as char);
        }
        let refused = [
            (Negotiating, K::Connect),
            (Negotiating, K::MailFrom),
            (Negotiating, K::Macros),
            (Ready, K::Negotiate),
            (Ready, K::Body),
            (Ready, K::RcptTo),
            (Ready, K::EndOfMessage),
            (Ready, K::Data),
            (Message(Phase::Headers), K::RcptTo),
            (Message(Phase::Body), K::Header),
            (Message(Phase::Body), K::EndOfHeaders),
            (Message(Phase::Data), K::Connect),
            (Closed, K::MailFrom),
        ];
        for (from, kind) in refused {
            assert_eq!(
                transition(from, kind),
                Err(OutOfOrder { kind, state: from }),
                "{from:?} --{}-->",
                kind.code() as char
            );
        }
    }

    #[test]
    fn out_of_order_message_says_what_and_when() {
        let err = transition(Ready, K::Body).unwrap_err();
        assert_eq!(err.to_string(), "unexpected BODY command 'B' while no message is in progress (before MAIL)");
        let err = transition(Negotiating, K::Connect).unwrap_err();
        assert_eq!(err.to_string(), "unexpected CONNECT command 'C' while waiting for the option negotiation");
    }

    #[test]
    fn client_addresses_parse_with_and_without_ipv6_tag() {
        assert_eq!(parse_ip(b"192.0.2.1"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(parse_ip(b"IPv6:2001:db8::1"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_ip(b"unknown"), None);
    }
}
