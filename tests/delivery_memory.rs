//! The delivery follower's memory stays flat however many outcomes its accounts have: a long
//! generated Postfix log, hours of it by the engine's manual clock, followed in process, with
//! the live heap bytes counted by a global allocator in this test binary only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outbound_guard::config::Config;
use outbound_guard::delivery::Delivery;
use outbound_guard::metrics::Metrics;
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::engine::{Engine, Transaction};
use outbound_guard::policy::events::EventSink;
use outbound_guard::policy::{Decision, MailFacts, MessageFacts, Policy, RcptFacts};
use outbound_guard::state::memory::MemoryRestrictions;

thread_local! {
    // Per thread: the harness runs other tests on other threads, and the follower is polled
    // on this one.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|n| n.set(n.get() + layout.size() as isize));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|n| n.set(n.get() - layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LIVE.try_with(|n| n.set(n.get() + new_size as isize - layout.size() as isize));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

// Limits out of reach; the bounce signal at its default, off: outcomes are counted, no
// account is judged (as in `scripts/soak`).
const CONFIG: &str = "[organization]\nlocal_domains = [\"example.com\"]\n\
    [policy.default]\nrecipient_limit_external_per_hour = 10000000\nrecipient_limit_per_day = 100000000\n";

const ACCOUNTS: usize = 10;

/// One round: a message of each account to two recipients, one of them deferred first, every
/// 50th bounced; their lines and removal logged; the follower polled; the clock 3 s on.
fn round(engine: &Engine, delivery: &mut Delivery, log: &Path, n: usize) {
    let mut lines = String::new();
    for a in 0..ACCOUNTS {
        let account = format!("user{a}@example.com");
        let id = format!("{:X}", 0x1000_0000 + n * ACCOUNTS + a);
        let mut tx = Transaction::default();
        let facts = MailFacts {
            sender: account.as_bytes(),
            auth_login: Some(account.as_bytes()),
            client_addr: None,
            queue_id: None,
            local_submission: false,
        };
        assert_eq!(engine.mail_from(&mut tx, &facts), Decision::Continue);
        for to in [&b"x@remote.example"[..], b"y@remote.example"] {
            assert_eq!(engine.rcpt_to(&mut tx, &RcptFacts { recipient: to }), Decision::Continue);
        }
        let facts = MessageFacts { queue_id: Some(id.as_bytes()), headers: &[], scanned: &[] };
        assert_eq!(engine.end_of_message(&mut tx, &facts).decision, Decision::Continue);
        engine.end_transaction(&mut tx);
        let y = if (n + a).is_multiple_of(50) { ("5.1.1", "bounced") } else { ("2.0.0", "sent") };
        for (to, (dsn, status)) in [("x", ("4.2.0", "deferred")), ("x", ("2.0.0", "sent")), ("y", y)] {
            writeln!(
                lines,
                "Dec  7 16:07:48 mta postfix/smtp[4901]: {id}: to=<{to}@remote.example>, \
                 relay=mx.remote.example[192.0.2.7]:25, delay=0.2, delays=0.1/0/0.05/0.05, dsn={dsn}, \
                 status={status} (remote said something)"
            )
            .unwrap();
        }
        writeln!(lines, "Dec  7 16:07:48 mta postfix/qmgr[3]: {id}: removed").unwrap();
    }
    std::fs::OpenOptions::new().append(true).open(log).unwrap().write_all(lines.as_bytes()).unwrap();
    delivery.poll();
    engine.clock().advance(Duration::from_secs(3));
}

#[test]
fn the_followers_memory_is_flat_however_many_outcomes_an_account_has() {
    let config = Arc::new(Config::parse(Path::new("memory.toml"), CONFIG).unwrap());
    let (sink, _events) = EventSink::channel(16);
    let clock = EngineClock::manual(std::time::UNIX_EPOCH + Duration::from_secs(1_795_300_000));
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(Engine::new(config, Arc::new(MemoryRestrictions::default()), sink, clock, metrics));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    std::fs::write(&log, "").unwrap();
    let mut delivery = Delivery::new(engine.clone(), &log).expect("the follower");
    delivery.poll();

    // Past the window (1h = 1,200 rounds of 3 s) so the counts have their steady size:
    // 2,400 outcomes an account.
    let mut n = 0;
    while n < 1_500 {
        round(&engine, &mut delivery, &log, n);
        n += 1;
    }
    let before = live();
    // Three more hours: 7,200 more outcomes an account.
    while n < 5_100 {
        round(&engine, &mut delivery, &log, n);
        n += 1;
    }
    let after = live();
    assert_eq!(delivery.followed(), 0, "every message removed");
    println!("live heap after 3,000 outcomes an account: {before} B; after 10,200: {after} B ({:+} B)", after - before);
    assert!(after - before < 16 * 1024, "the follower grew by {} B over 7,200 outcomes an account", after - before);
}
