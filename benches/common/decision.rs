//! The decision workload the policy bench times and `examples/decision_cost.rs` counts: one
//! outbound message with three recipients (MAIL FROM, 3 × RCPT TO, end of message) for one of a
//! million resident accounts.

use std::hint::black_box;
use std::sync::Arc;

use outbound_guard::config::Config;
use outbound_guard::metrics::Metrics;
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::engine::{Engine, Transaction};
use outbound_guard::policy::events::{Event, EventSink};
use outbound_guard::policy::{MailFacts, MessageFacts, Policy, RcptFacts};
use outbound_guard::state::memory::MemoryRestrictions;

pub const ACCOUNTS: usize = 1_000_000;

/// A stride through the accounts that defeats the cache, as real traffic would (prime, so
/// every account comes round).
pub const STRIDE: usize = 7919;

const CONFIG: &str = "[organization]\nlocal_domains = [\"example.com\"]\n\
    [policy.default]\nrecipient_limit_external_per_hour = 100000\nrecipient_limit_internal_per_hour = 100000\n\
    recipient_limit_per_day = 100000\n";

/// An engine with limits high enough that nothing is refused, on the system clock as in
/// production (its reads are part of the decision's cost). Keep the receiver: events go there.
pub fn engine() -> (Engine, tokio::sync::mpsc::Receiver<Event>) {
    engine_with(std::path::Path::new("bench.toml"), "")
}

/// [`engine`] with `extra` configuration after the limits (more `[policy.default]` keys, then
/// other tables), read as if from `file` (relative paths in `extra` are relative to it).
pub fn engine_with(file: &std::path::Path, extra: &str) -> (Engine, tokio::sync::mpsc::Receiver<Event>) {
    let config = Arc::new(Config::parse(file, &format!("{CONFIG}{extra}")).unwrap());
    let (sink, rx) = EventSink::channel(1024);
    let engine = Engine::new(
        config,
        Arc::new(MemoryRestrictions::default()),
        sink,
        EngineClock::System,
        Arc::new(Metrics::new()),
    );
    (engine, rx)
}

/// Account `i`'s address, written into `buf` as the codec hands the sender to the policy: in a
/// buffer just filled from the connection, so already in the cache. (Picking it from a
/// million strings made in advance would add a cache miss that production does not have.)
pub fn account(buf: &mut [u8; 32], i: usize) -> &[u8] {
    let mut digits = [0u8; 20];
    let mut n = i;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let parts: [&[u8]; 3] = [b"user", &digits[at..], b"@example.com"];
    let mut len = 0;
    for part in parts {
        buf[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    &buf[..len]
}

/// One authenticated message: two external recipients and one internal.
pub fn one_message(engine: &Engine, tx: &mut Transaction, account: &[u8]) {
    one_message_from(engine, tx, account, None);
}

/// [`one_message`] from the SMTP client at `client`.
pub fn one_message_from(engine: &Engine, tx: &mut Transaction, account: &[u8], client: Option<std::net::IpAddr>) {
    let facts = MailFacts {
        sender: account,
        auth_login: Some(account),
        client_addr: client,
        queue_id: None,
        local_submission: false,
    };
    black_box(engine.mail_from(tx, &facts));
    for to in [&b"a@example.net"[..], b"b@example.org", b"c@example.com"] {
        black_box(engine.rcpt_to(tx, &RcptFacts { recipient: to }));
    }
    black_box(engine.end_of_message(tx, &MessageFacts { queue_id: None, headers: &[], scanned: &[] }));
    engine.end_transaction(tx);
}

/// One message for each of the [`ACCOUNTS`], so that all are resident.
pub fn fill(engine: &Engine) {
    let mut buf = [0u8; 32];
    let mut tx = Transaction::default();
    for i in 0..ACCOUNTS {
        one_message(engine, &mut tx, account(&mut buf, i));
    }
}
