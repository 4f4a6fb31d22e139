//! The engine's decisions for an account that is not restricted allocate nothing once the
//! account is known, also with `always_allowed_recipients` and `notify_sender` configured
//! (those are looked at only for a restricted account): counted with a global allocator in
//! this test binary only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use outbound_guard::config::Config;
use outbound_guard::metrics::Metrics;
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::engine::{Engine, Transaction};
use outbound_guard::policy::events::EventSink;
use outbound_guard::policy::{Decision, MailFacts, MessageFacts, Policy, RcptFacts};
use outbound_guard::state::memory::MemoryRestrictions;

thread_local! {
    // Per thread: the test harness runs other tests on other threads.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

const CONFIG: &str = "[organization]\nlocal_domains = [\"example.com\"]\n\
    [policy.default]\nrecipient_limit_external_per_hour = 100000\nrecipient_limit_per_day = 100000\n\
    notify_sender = true\nalways_allowed_recipients = [\"helpdesk@example.com\"]\n";

/// One authenticated message to two external recipients and one internal; every stage must
/// let it through.
fn one_message(engine: &Engine, tx: &mut Transaction, account: &[u8]) {
    let facts = MailFacts {
        sender: account,
        auth_login: Some(account),
        client_addr: None,
        queue_id: None,
        local_submission: false,
    };
    assert_eq!(engine.mail_from(tx, &facts), Decision::Continue);
    for to in [&b"a@example.net"[..], b"b@example.org", b"c@example.com"] {
        assert_eq!(engine.rcpt_to(tx, &RcptFacts { recipient: to }), Decision::Continue);
    }
    let outcome = engine.end_of_message(tx, &MessageFacts { queue_id: None, headers: &[], scanned: &[] });
    assert_eq!(outcome.decision, Decision::Continue);
    engine.end_transaction(tx);
}

#[test]
fn decisions_for_an_unrestricted_account_allocate_nothing() {
    let config = Arc::new(Config::parse(std::path::Path::new("alloc.toml"), CONFIG).unwrap());
    let (sink, _events) = EventSink::channel(16);
    let engine = Engine::new(
        config,
        Arc::new(MemoryRestrictions::default()),
        sink,
        EngineClock::System,
        Arc::new(Metrics::new()),
    );
    let mut tx = Transaction::default();
    // The first message makes the account's record and the transaction's buffers.
    one_message(&engine, &mut tx, b"alice@example.com");
    let before = allocations();
    // More than one timing sample's worth, so a timed decision is among them.
    for _ in 0..40 {
        one_message(&engine, &mut tx, b"alice@example.com");
    }
    assert_eq!(allocations() - before, 0, "allocations while deciding for an unrestricted account");
    // And the counter counts on this thread. (Not through a new account: whether its record
    // allocates depends on whether its map shard has room, which the hash seed decides.)
    let before = allocations();
    std::hint::black_box(Vec::<u8>::with_capacity(16));
    assert!(allocations() > before);
}
