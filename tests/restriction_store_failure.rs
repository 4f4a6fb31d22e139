//! A restriction the store cannot record is never announced: the MTA gets a temporary failure
//! (`milter.on_internal_error = "tempfail"`, the default) instead of `550 5.2.2`, nothing is
//! restricted, no event is raised, and once the store works again the limit restricts as usual.
//! The store here fails the way a full disk or a broken state directory makes the durable one
//! fail: its `restrict` returns an I/O error.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use common::mta::code;
use outbound_guard::config::ReplyTexts;
use outbound_guard::config::{Config, ListenAddr};
use outbound_guard::metrics::Metrics;
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
use outbound_guard::milter::connection::Timeouts;
use outbound_guard::milter::server::{self, Listener, ServerSettings};
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::engine::Engine;
use outbound_guard::policy::events::{Event, EventKind, EventSink};
use outbound_guard::policy::restriction::{AuditEntry, Restriction, RestrictionStore, StoreError};
use outbound_guard::state::memory::MemoryRestrictions;
use tokio::sync::watch;

/// The in-memory store, with writes that fail while `broken` is set.
#[derive(Default)]
struct FlakyStore {
    inner: MemoryRestrictions,
    broken: AtomicBool,
}

impl RestrictionStore for FlakyStore {
    fn is_restricted(&self, account: &str, now_secs: i64) -> bool {
        self.inner.is_restricted(account, now_secs)
    }
    fn get(&self, account: &str, now_secs: i64) -> Option<Restriction> {
        self.inner.get(account, now_secs)
    }
    fn restrict(&self, restriction: Restriction, by: &str, notice: Option<&Event>) -> Result<bool, StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("No space left on device").into());
        }
        self.inner.restrict(restriction, by, notice)
    }
    fn replace(
        &self,
        account: &str,
        reason: &str,
        until: Option<time::OffsetDateTime>,
        now_secs: i64,
        by: &str,
    ) -> Result<Option<(Restriction, Restriction)>, StoreError> {
        self.inner.replace(account, reason, until, now_secs, by)
    }
    fn release(
        &self,
        account: &str,
        now_secs: i64,
        by: &str,
        reason: &str,
        notice: Option<&Event>,
    ) -> Result<Option<Restriction>, StoreError> {
        self.inner.release(account, now_secs, by, reason, notice)
    }
    fn list(&self, now_secs: i64) -> Vec<Restriction> {
        self.inner.list(now_secs)
    }
    fn history(&self, account: &str) -> Vec<AuditEntry> {
        self.inner.history(account)
    }
}

#[tokio::test]
async fn a_restriction_that_cannot_be_recorded_tempfails_instead_of_refusing() {
    let text = "[organization]\nlocal_domains = [\"example.com\"]\n[policy.default]\n\
                recipient_limit_external_per_hour = 1\naction_when_threshold_reached = \"block\"\n";
    let config = Arc::new(Config::parse(Path::new("t.toml"), text).unwrap());
    let store = Arc::new(FlakyStore::default());
    let (sink, mut events) = EventSink::channel(64);
    let clock = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(1_795_341_600));
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(Engine::new(config, store.clone(), sink, clock, metrics.clone()));
    let listener = Listener::bind(&ListenAddr::Inet("127.0.0.1:0".parse().unwrap()), 0o660).await.unwrap();
    let Ok(ListenAddr::Inet(addr)) = listener.local_addr() else { panic!("not an inet listener") };
    let settings = ServerSettings {
        timeouts: Timeouts { io: Duration::from_secs(10), idle: Duration::from_secs(60) },
        max_connections: 4,
        replies: Arc::new(ArcSwap::from_pointee(ReplyTexts::default())),
        metrics,
        local_submissions: false,
    };
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(server::run(listener, engine, settings, stopped));

    let mut c = MtaClient::connect(addr).await.unwrap();
    c.negotiate(POSTFIX_OFFER).await.unwrap();
    c.macros(b'C', &[("{client_addr}", "127.0.0.1")]).await.unwrap();
    let message = async |c: &mut MtaClient<tokio::net::TcpStream>| {
        c.macros(b'M', &[("{auth_authen}", "kim@example.com")]).await.unwrap();
        let mail = code(&c.mail_from("<kim@example.com>", &[]).await.unwrap());
        let mut codes = vec![mail.clone()];
        if mail == "c" {
            for to in ["<a@example.net>", "<b@example.net>"] {
                codes.push(code(&c.rcpt_to(to).await.unwrap()));
            }
        }
        // Delivered when a recipient was accepted (only then do its recipients count).
        if codes[1..].iter().any(|c| c == "c") {
            c.message(&[("Subject", "x")], b"x\r\n").await.unwrap();
        } else {
            c.write(outbound_guard::milter::command::Command::Abort).await.unwrap();
        }
        codes
    };

    store.broken.store(true, Ordering::SeqCst);
    // The second recipient reaches the limit; the restriction cannot be written: 't', not 550.
    assert_eq!(message(&mut c).await, ["c", "c", "t"]);
    assert!(!store.is_restricted("kim@example.com", 1_795_341_600), "nothing recorded, nothing in force");
    let mut kinds = Vec::new();
    while let Ok(event) = events.try_recv() {
        kinds.push(event.kind);
    }
    assert!(!kinds.contains(&EventKind::SenderRestricted), "a restriction was announced: {kinds:?}");

    store.broken.store(false, Ordering::SeqCst);
    // Writable again: the next recipient over the limit restricts the account, the rest of the
    // message and its next MAIL FROM are refused as restricted.
    assert_eq!(message(&mut c).await, ["c", "550 5.2.2", "550 5.1.8"]);
    assert!(store.is_restricted("kim@example.com", 1_795_341_600));
    assert_eq!(message(&mut c).await, ["550 5.1.8"]);

    drop(c);
    stop.send(true).unwrap();
    server.await.unwrap();
}
