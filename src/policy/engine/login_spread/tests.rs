//! The login-spread signal on a manual clock: what is counted, when it restricts or alerts.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::mpsc::Receiver;

use super::CAUSE;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::clock::EngineClock;
use crate::policy::engine::{Engine, Transaction};
use crate::policy::events::{Event, EventKind, EventSink};
use crate::policy::{Decision, MailFacts, Policy, Refusal};
use crate::state::memory::MemoryRestrictions;

#[path = "../../../../tests/common/mmdb.rs"]
mod mmdb;

const ORG: &str = "[organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"10.0.0.0/8\"]\n";

fn engine_in(dir: &Path, policy: &str) -> (Engine, Receiver<Event>) {
    let file = dir.join("plugin.toml");
    let config = Arc::new(Config::parse(&file, &format!("{ORG}{policy}")).unwrap());
    let (sink, events) = EventSink::channel(64);
    let clock = EngineClock::manual(UNIX_EPOCH + Duration::from_secs(1_795_300_000));
    (Engine::new(config, Arc::new(MemoryRestrictions::default()), sink, clock, Arc::new(Metrics::new())), events)
}

fn engine(policy: &str) -> (Engine, Receiver<Event>) {
    engine_in(Path::new("."), policy)
}

/// The MAIL FROM of `login` (authenticated when `Some`) from `client`.
fn mail(engine: &Engine, login: Option<&str>, sender: &str, client: &str) -> Decision {
    let mut tx = Transaction::default();
    let facts = MailFacts {
        sender: sender.as_bytes(),
        auth_login: login.map(str::as_bytes),
        client_addr: Some(client.parse().unwrap()),
        queue_id: None,
        local_submission: false,
    };
    let decision = engine.mail_from(&mut tx, &facts);
    engine.end_transaction(&mut tx);
    decision
}

fn from(engine: &Engine, login: &str, client: &str) -> Decision {
    mail(engine, Some(login), login, client)
}

fn restricted(engine: &Engine, account: &str) -> Option<crate::policy::restriction::Restriction> {
    engine.restrictions().get(account, engine.clock().now().secs())
}

const REFUSED: Decision = Decision::Refuse(Refusal::AccountRestricted);

#[test]
fn n_networks_pass_and_the_next_one_restricts() {
    let (engine, mut events) = engine("[policy.default]\nmax_client_networks_per_hour = 2\n");
    let alice = "alice@example.com";
    assert_eq!(from(&engine, alice, "192.0.2.10"), Decision::Continue);
    assert_eq!(from(&engine, alice, "198.51.100.20"), Decision::Continue);
    assert_eq!(from(&engine, alice, "192.0.2.11"), Decision::Continue, "the same networks again");
    assert!(restricted(&engine, alice).is_none());

    assert_eq!(from(&engine, alice, "203.0.113.30"), REFUSED, "the third network");
    let r = restricted(&engine, alice).expect("restricted");
    assert_eq!(r.cause(), CAUSE);
    assert_eq!(r.until, None, "block: until released");
    assert!(r.reason.contains("3 client networks within an hour"), "{}", r.reason);
    assert!(r.reason.contains("192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24; limit 2"), "{}", r.reason);
    let event = events.try_recv().expect("the restriction's event");
    assert_eq!(event.kind, EventKind::SenderRestricted);
    assert_eq!(event.cause, CAUSE);
    assert_eq!(from(&engine, alice, "192.0.2.10"), REFUSED, "restricted from then on");
    assert_eq!(from(&engine, "bob@example.com", "203.0.113.30"), Decision::Continue, "per account");
}

#[test]
fn one_slash_24_counts_once_and_ipv6_counts_per_slash_48() {
    let (engine, _events) = engine("[policy.default]\nmax_client_networks_per_hour = 2\n");
    let alice = "alice@example.com";
    for host in 1..=50 {
        assert_eq!(from(&engine, alice, &format!("192.0.2.{host}")), Decision::Continue);
    }
    assert_eq!(from(&engine, alice, "2001:db8:1::1"), Decision::Continue);
    assert_eq!(from(&engine, alice, "2001:db8:1:ffff::2"), Decision::Continue, "the same /48");
    assert_eq!(from(&engine, alice, "::ffff:192.0.2.99"), Decision::Continue, "IPv4-mapped: the same /24");
    assert_eq!(from(&engine, alice, "2001:db8:2::1"), REFUSED, "another /48");
}

#[test]
fn networks_older_than_an_hour_are_forgotten() {
    let (engine, _events) = engine("[policy.default]\nmax_client_networks_per_hour = 2\n");
    let alice = "alice@example.com";
    assert_eq!(from(&engine, alice, "192.0.2.1"), Decision::Continue);
    assert_eq!(from(&engine, alice, "198.51.100.1"), Decision::Continue);
    engine.clock().advance(Duration::from_secs(3600));
    assert_eq!(from(&engine, alice, "203.0.113.1"), Decision::Continue);
    assert_eq!(from(&engine, alice, "192.0.2.1"), Decision::Continue, "two within the hour");
    assert_eq!(from(&engine, alice, "198.51.100.1"), REFUSED);
}

#[test]
fn alert_restricts_nothing_and_alerts_once_an_hour() {
    let (engine, mut events) =
        engine("[policy.default]\nmax_client_networks_per_hour = 1\nlogin_spread_action = \"alert\"\n");
    let alice = "alice@example.com";
    assert_eq!(from(&engine, alice, "192.0.2.1"), Decision::Continue);
    for client in ["198.51.100.1", "203.0.113.1", "192.0.2.1"] {
        assert_eq!(from(&engine, alice, client), Decision::Continue);
    }
    assert!(restricted(&engine, alice).is_none());
    let alert = events.try_recv().expect("an alert");
    assert_eq!(alert.kind, EventKind::SendingLimitExceeded);
    assert_eq!(alert.cause, CAUSE);
    assert!(alert.reason.contains("client networks within an hour"), "{}", alert.reason);
    assert!(events.try_recv().is_err(), "once in the hour");

    engine.clock().advance(Duration::from_secs(3600));
    assert_eq!(from(&engine, alice, "192.0.2.1"), Decision::Continue);
    assert_eq!(from(&engine, alice, "198.51.100.1"), Decision::Continue);
    assert!(events.try_recv().is_ok(), "the next hour's alert");
    assert!(restricted(&engine, alice).is_none());
}

#[test]
fn block_until_tomorrow_restricts_until_midnight() {
    let (engine, _events) =
        engine("[policy.default]\nmax_client_networks_per_hour = 1\nlogin_spread_action = \"block_until_tomorrow\"\n");
    assert_eq!(from(&engine, "alice@example.com", "192.0.2.1"), Decision::Continue);
    assert_eq!(from(&engine, "alice@example.com", "198.51.100.1"), REFUSED);
    let until = restricted(&engine, "alice@example.com").unwrap().until.expect("until tomorrow");
    assert_eq!(until, engine.clock().now().next_utc_midnight().datetime());
}

#[test]
fn unauthenticated_mail_and_local_submissions_are_not_counted() {
    let (engine, _events) = engine("[policy.default]\nmax_client_networks_per_hour = 1\n");
    let alice = "alice@example.com";
    // Outbound from the internal networks, without a login.
    for client in ["10.1.0.1", "10.2.0.1", "10.3.0.1"] {
        assert_eq!(mail(&engine, None, alice, client), Decision::Continue);
    }
    for client in ["10.4.0.1", "10.5.0.1"] {
        let mut tx = Transaction::default();
        let facts = MailFacts {
            sender: alice.as_bytes(),
            auth_login: None,
            client_addr: Some(client.parse().unwrap()),
            queue_id: None,
            local_submission: true,
        };
        assert_eq!(engine.mail_from(&mut tx, &facts), Decision::Continue);
        engine.end_transaction(&mut tx);
    }
    assert!(engine.logins.is_empty());
    assert_eq!(from(&engine, alice, "192.0.2.1"), Decision::Continue, "the first network counted");
}

#[test]
fn a_rule_overrides_the_key_and_off_tracks_nothing() {
    let (engine, _events) = engine(
        "[policy.default]\nmax_client_networks_per_hour = 0\n\
         [[policy.rule]]\nname = \"travellers\"\npriority = 1\nfrom = [\"bob@example.com\"]\n\
         max_client_networks_per_hour = 1\n",
    );
    for client in ["192.0.2.1", "198.51.100.1", "203.0.113.1"] {
        assert_eq!(from(&engine, "alice@example.com", client), Decision::Continue, "off by default");
    }
    assert!(engine.logins.get("alice@example.com").is_none(), "nothing kept for an account with it off");
    assert_eq!(from(&engine, "bob@example.com", "192.0.2.1"), Decision::Continue);
    assert_eq!(from(&engine, "bob@example.com", "198.51.100.1"), REFUSED);
    assert_eq!(restricted(&engine, "bob@example.com").unwrap().policy, "travellers");

    let (off, _events) = self::engine("");
    assert!(!off.current.load().login_spread, "off everywhere: one branch at MAIL FROM");
}

#[test]
fn three_countries_in_a_day_with_a_limit_of_two_restrict() {
    let dir = tempfile::tempdir().unwrap();
    mmdb::documentation_countries().write(&dir.path().join("countries.mmdb"));
    let (engine, _events) = engine_in(
        dir.path(),
        "[geoip]\ndatabase = \"countries.mmdb\"\n[policy.default]\nmax_client_countries_per_day = 2\n",
    );
    let geoip = engine.config().geoip.clone().expect("the database");
    assert_eq!(geoip.country("192.0.2.1".parse().unwrap()).unwrap().to_string(), "SE");
    assert_eq!(geoip.country("::ffff:198.51.100.1".parse().unwrap()).unwrap().to_string(), "DE");
    assert_eq!(geoip.country("2001:db8:1::5".parse().unwrap()).unwrap().to_string(), "NL");
    assert_eq!(geoip.country("100.64.0.1".parse().unwrap()), None);

    let alice = "alice@example.com";
    assert_eq!(from(&engine, alice, "192.0.2.1"), Decision::Continue, "SE");
    engine.clock().advance(Duration::from_secs(5 * 3600));
    assert_eq!(from(&engine, alice, "::ffff:198.51.100.1"), Decision::Continue, "DE");
    assert_eq!(from(&engine, alice, "100.64.0.1"), Decision::Continue, "unknown: no country");
    assert_eq!(from(&engine, alice, "192.0.2.200"), Decision::Continue, "SE again");
    engine.clock().advance(Duration::from_secs(18 * 3600));
    assert_eq!(from(&engine, alice, "2001:db8:1::7"), REFUSED, "NL: a third country within 24 h");
    let r = restricted(&engine, alice).unwrap();
    assert_eq!(r.cause(), CAUSE);
    assert!(r.reason.contains("3 countries within a day (SE, DE, NL; limit 2)"), "{}", r.reason);

    // A day later the first ones no longer count.
    let bob = "bob@example.com";
    assert_eq!(from(&engine, bob, "192.0.2.1"), Decision::Continue);
    assert_eq!(from(&engine, bob, "198.51.100.1"), Decision::Continue);
    engine.clock().advance(Duration::from_secs(24 * 3600));
    assert_eq!(from(&engine, bob, "203.0.113.1"), Decision::Continue);
}

#[test]
fn idle_entries_are_evicted() {
    let (engine, _events) = engine("[policy.default]\nmax_client_networks_per_hour = 3\n");
    assert_eq!(from(&engine, "alice@example.com", "192.0.2.1"), Decision::Continue);
    assert_eq!(engine.logins.len(), 1);
    engine.clock().advance(Duration::from_secs(24 * 3600));
    engine.evict_idle();
    assert!(engine.logins.is_empty());
}
