//! The policy seam: what the milter session asks, in plain facts, and what it is told.
//!
//! Nothing here knows the milter protocol. The session hands over the facts of each stage
//! (envelope addresses, the SASL login, the client address) and maps the returned
//! [`Decision`] to a protocol reply in one place (`milter::session`).

pub mod account;
pub mod accounts;
pub mod clock;
pub mod compiled;
pub mod engine;
pub mod events;
pub mod hourly;
pub mod limits;
pub mod logins;
pub mod record;
pub mod restriction;
pub mod rules;
pub mod spam;

use std::net::IpAddr;

/// What the policy needs to see of a transaction; everything else the MTA may skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// Header verdicts read the headers.
    pub headers: bool,
    /// A scanner query (spamd, rspamd) needs the body too.
    pub body: bool,
    /// End-of-message actions that may be taken (tag, quarantine, bcc).
    pub add_headers: bool,
    pub quarantine: bool,
    pub add_recipients: bool,
    /// Bytes of a message kept for a scanner.
    pub max_scan_bytes: usize,
}

/// Facts of a MAIL FROM.
#[derive(Debug, Clone, Copy)]
pub struct MailFacts<'a> {
    /// The envelope sender without angle brackets; empty for the null sender `<>`.
    pub sender: &'a [u8],
    /// The SASL login (`{auth_authen}`), when the client authenticated.
    pub auth_login: Option<&'a [u8]>,
    /// The SMTP client's address (`{client_addr}`), when the MTA told us.
    pub client_addr: Option<IpAddr>,
    /// The MTA's queue id (`i`), when known at this stage.
    pub queue_id: Option<&'a [u8]>,
    /// Whether the message is a local submission (it arrived on `milter.local_listen`):
    /// outbound whatever the client address, decided whole at its end.
    pub local_submission: bool,
}

/// Facts of a RCPT TO.
#[derive(Debug, Clone, Copy)]
pub struct RcptFacts<'a> {
    /// The recipient address without angle brackets.
    pub recipient: &'a [u8],
}

/// Facts at end of message.
#[derive(Debug, Clone, Copy)]
pub struct MessageFacts<'a> {
    pub queue_id: Option<&'a [u8]>,
    /// The message's headers the policy reads (name, value): of each name in
    /// [`Policy::header_names`] the last occurrence, cut to a bounded length; none past the
    /// per-message header budget.
    pub headers: &'a [(&'a [u8], &'a [u8])],
    /// Verdicts of the scanners queried directly (spamd, rspamd), if any.
    pub scanned: &'a [Verdict],
}

/// The policy's word on a whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageOutcome {
    pub decision: Decision,
    /// Add the header that says the message was judged spam.
    pub tag: bool,
    /// Put the message on hold.
    pub quarantine: bool,
    /// Add these recipients (copies of outbound spam).
    pub bcc: Vec<String>,
}

impl MessageOutcome {
    /// Deliver as it is.
    pub const fn deliver() -> MessageOutcome {
        MessageOutcome { decision: Decision::Continue, tag: false, quarantine: false, bcc: Vec::new() }
    }
}

/// What a scanner is asked, for [`Policy::scan`].
pub use crate::verdict::ScanRequest;
use crate::verdict::{HeaderNames, Verdict};

/// What to do with the transaction at this stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go on with the transaction.
    Continue,
    /// Not our business (inbound mail): accept the message, no further events for it.
    Accept,
    /// Refuse, for the given reason; the session picks the reply text.
    Refuse(Refusal),
    /// The engine could not decide (e.g. a restriction could not be recorded): the MTA gets
    /// what `on_internal_error` says.
    InternalError,
}

/// Why a stage is refused. Each maps to one configurable SMTP reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// MAIL FROM of a restricted account (`550 5.1.8`).
    AccountRestricted,
    /// The recipient that reached a limit (`550 5.2.2`).
    LimitReached,
    /// Over the per-message recipient cap (`452 4.5.3`).
    TooManyRecipients,
    /// A message judged spam under `spam_message_action = "reject"` (`550 5.7.1`).
    Spam,
    /// A local submission over the per-message cap, refused whole (`550 5.5.3`).
    TooManyRecipientsLocal,
}

/// The policy engine as the milter session sees it.
pub trait Policy: Send + Sync + 'static {
    /// Per-transaction scratch state the engine keeps between stages.
    type Transaction: Default + Send + Sync;

    /// Which stages and actions the MTA must offer for the current configuration.
    fn needs(&self) -> Needs;

    /// The names of the headers [`Policy::end_of_message`] reads (in [`MessageFacts::headers`]);
    /// a session keeps only those (see `verdict::kept`). None by default.
    fn header_names(&self) -> std::sync::Arc<HeaderNames> {
        std::sync::Arc::default()
    }

    /// MAIL FROM: is this outbound mail of an account that may send?
    fn mail_from(&self, tx: &mut Self::Transaction, facts: &MailFacts<'_>) -> Decision;

    /// Whether the MAIL FROM decision just made needs [`Policy::prepare`] before it is final
    /// (cluster mode: the account's shared state is read first).
    fn prepares(&self, _tx: &Self::Transaction, _decision: Decision) -> bool {
        false
    }

    /// The asynchronous step after MAIL FROM; may change the decision. The caller bounds it in
    /// time and keeps `decision` when it runs out, so dropping the future early must be safe.
    fn prepare<'a>(
        &'a self,
        _tx: &'a mut Self::Transaction,
        decision: Decision,
    ) -> impl std::future::Future<Output = Decision> + Send + 'a {
        async move { decision }
    }

    /// RCPT TO: may this recipient be added?
    fn rcpt_to(&self, tx: &mut Self::Transaction, facts: &RcptFacts<'_>) -> Decision;

    /// Whether messages must be sent to a scanner at end of message ([`Policy::scan`]).
    fn scans(&self) -> bool {
        false
    }

    /// Asks the scanners about a message; a scanner that fails gives no verdict (never a
    /// refusal).
    fn scan<'a>(&'a self, _request: ScanRequest<'a>) -> impl std::future::Future<Output = Vec<Verdict>> + Send + 'a {
        async { Vec::new() }
    }

    /// End of message: the final word on the message.
    fn end_of_message(&self, tx: &mut Self::Transaction, facts: &MessageFacts<'_>) -> MessageOutcome;

    /// The transaction ended (end of message, abort, RSET, a refused stage): forget it.
    fn end_transaction(&self, tx: &mut Self::Transaction) {
        *tx = Self::Transaction::default();
    }
}

/// A policy that lets everything through: the seam's pass-through, used where only the
/// protocol is under test.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl Policy for PassThrough {
    type Transaction = ();
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn mail_from(&self, _: &mut (), _: &MailFacts<'_>) -> Decision {
        Decision::Continue
    }
    fn rcpt_to(&self, _: &mut (), _: &RcptFacts<'_>) -> Decision {
        Decision::Continue
    }
    fn end_of_message(&self, _: &mut (), _: &MessageFacts<'_>) -> MessageOutcome {
        MessageOutcome::deliver()
    }
}
