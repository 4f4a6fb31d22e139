//! The engine's side of the login-spread signal: at the MAIL FROM of authenticated mail, the
//! client's network (and country, with `[geoip] database`) is noted for the account
//! ([`crate::policy::logins`]); the message that makes it more distinct networks in an hour
//! than `max_client_networks_per_hour`, or more countries in a day than
//! `max_client_countries_per_day`, restricts the account and is refused as a restricted
//! account's, or, under `login_spread_action = "alert"`, alerts at most once an hour.
//!
//! Only reached when some policy has the signal on (one branch in `decide_mail` otherwise),
//! and for an account whose own policy has it off, only a look at two numbers.

use std::net::IpAddr;

use tracing::warn;

use super::{Engine, Transaction};
use crate::config::{CountryCode, LimitAction, PolicySettings};
use crate::policy::clock::Timestamp;
use crate::policy::compiled::Compiled;
use crate::policy::events::{Event, EventKind};
use crate::policy::logins::{LoginEntry, Network, Spread};
use crate::policy::restriction::Restriction;
use crate::policy::{Decision, Refusal};

/// The restriction cause and metrics reason of the login-spread signal.
pub const CAUSE: &str = "login_spread";

/// `now` in the login table's unit: seconds since the epoch in a `u32`.
pub(super) fn secs(now: Timestamp) -> u32 {
    u32::try_from(now.secs()).unwrap_or(u32::MAX)
}

/// What the spread of an account passed, with the evidence, read while its entry is locked.
struct Passed {
    reason: String,
    /// Under the `alert` action: whether this hour's alert is still to go out.
    alert_due: bool,
}

impl Engine {
    /// Notes the authenticated MAIL FROM of `tx`'s account from `client`; `Some` refusal when
    /// it passes the account's login-spread limits and the action restricts.
    pub(super) fn note_login(&self, tx: &Transaction, compiled: &Compiled, client: IpAddr) -> Option<Decision> {
        let settings = compiled.policies.settings(tx.policy);
        let (max_networks, max_countries) =
            (settings.max_client_networks_per_hour, settings.max_client_countries_per_day);
        if max_networks == 0 && max_countries == 0 {
            return None;
        }
        let country = match &compiled.config.geoip {
            Some(db) if max_countries > 0 => db.country(client),
            _ => None,
        };
        let network = Network::of(client);
        let now = self.clock.now();
        let at = secs(now);
        let passed = self.logins.note(&tx.account, network, country, at, |spread, entry| {
            let over = |n: u32, max: u32| max > 0 && n > max;
            if !over(spread.networks, max_networks) && !over(spread.countries, max_countries) {
                return None;
            }
            let reason = spread_reason(spread, settings, entry);
            let alert_due =
                settings.login_spread_action == LimitAction::Alert && entry.first_alert_this_hour(now.hour());
            if settings.login_spread_action != LimitAction::Alert {
                // The evidence is in the reason; after a release the account starts afresh.
                entry.restart(network, country, at);
            }
            Some(Passed { reason, alert_due })
        })?;
        self.login_spread_reached(tx, compiled, settings, passed, now)
    }

    #[cold]
    fn login_spread_reached(
        &self,
        tx: &Transaction,
        compiled: &Compiled,
        settings: &PolicySettings,
        passed: Passed,
        now: Timestamp,
    ) -> Option<Decision> {
        let account = tx.account.as_str();
        let node = &compiled.config.notify.node_name;
        let action = settings.login_spread_action;
        if action == LimitAction::Alert {
            if passed.alert_due {
                warn!(account, "{}; delivering (alert only)", passed.reason);
                self.events.emit(Event {
                    reason: passed.reason,
                    counters: self.counters(account),
                    cause: CAUSE.to_owned(),
                    ..Event::alert(EventKind::SendingLimitExceeded, account, &settings.name, node, now.datetime())
                });
            }
            return None;
        }
        let until = (action == LimitAction::BlockUntilTomorrow).then(|| now.next_utc_midnight().datetime());
        let restriction = Restriction::by_policy(
            account,
            &passed.reason,
            &settings.name,
            now.datetime(),
            until,
            self.counters(account),
            CAUSE,
        );
        // Through the one path of policy restrictions: a repeat offender is escalated here too.
        let decision = match self.restrict_by_policy(restriction, settings, None, node) {
            Ok(_) => {
                self.metrics.messages.outbound_refused.inc();
                Decision::Refuse(Refusal::AccountRestricted)
            }
            Err(e) => {
                // Never tell the MTA 5xx for a restriction that is not recorded.
                tracing::error!(account, "cannot record restriction: {e}");
                Decision::InternalError
            }
        };
        Some(decision)
    }
}

/// The reason of a login-spread restriction or alert: what was counted, and the limits.
fn spread_reason(spread: Spread, settings: &PolicySettings, entry: &LoginEntry<'_>) -> String {
    let mut parts = Vec::new();
    let max = settings.max_client_networks_per_hour;
    if max > 0 && spread.networks > max {
        let list = entry.recent_networks();
        parts.push(format!(
            "sent from {} client networks within an hour ({}; limit {max})",
            spread.networks,
            list.join(", ")
        ));
    }
    let max = settings.max_client_countries_per_day;
    if max > 0 && spread.countries > max {
        let list: Vec<String> = entry.recent_countries().iter().map(CountryCode::to_string).collect();
        parts.push(format!("sent from {} countries within a day ({}; limit {max})", spread.countries, list.join(", ")));
    }
    format!("authenticated login {}", parts.join(", and "))
}

/// The signal on a manual clock: what is counted, when it restricts or alerts.
#[cfg(test)]
mod tests {
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

    use crate::config::geoip::test_mmdb as mmdb;

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
        let (engine, _events) = engine(
            "[policy.default]\nmax_client_networks_per_hour = 1\nlogin_spread_action = \"block_until_tomorrow\"\n",
        );
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
        assert!(!engine.logins.contains("alice@example.com"), "nothing kept for an account with it off");
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
    fn the_highest_limits_work_eleven_networks_and_five_countries() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = mmdb::documentation_countries();
        db.insert("192.0.3.0/24", "NO");
        db.write(&dir.path().join("countries.mmdb"));
        let (engine, _events) = engine_in(
            dir.path(),
            "[geoip]\ndatabase = \"countries.mmdb\"\n[policy.default]\nmax_client_networks_per_hour = 11\n\
             max_client_countries_per_day = 5\n",
        );
        assert_eq!((engine.logins.layout().networks(), engine.logins.layout().countries()), (12, 6));
        // Eleven networks, five of them in five countries, pass; the twelfth network restricts.
        let alice = "alice@example.com";
        let countries = ["192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8:1::1", "2001:db8:2::1"];
        let elsewhere: Vec<String> = (0..6).map(|i| format!("100.64.{i}.1")).collect();
        for client in countries.iter().copied().chain(elsewhere.iter().map(String::as_str)) {
            assert_eq!(from(&engine, alice, client), Decision::Continue, "{client}");
        }
        assert_eq!(from(&engine, alice, "100.64.6.1"), REFUSED, "the twelfth network");
        let r = restricted(&engine, alice).unwrap();
        assert!(r.reason.contains("12 client networks within an hour (192.0.2.0/24, "), "{}", r.reason);
        assert!(r.reason.contains("2001:db8:2::/48, 100.64.0.0/24"), "{}", r.reason);
        assert!(!r.reason.contains("countries"), "five countries are within the limit: {}", r.reason);
        // Five countries pass; the sixth restricts.
        let bob = "bob@example.com";
        for client in countries {
            assert_eq!(from(&engine, bob, client), Decision::Continue, "{client}");
        }
        assert_eq!(from(&engine, bob, "192.0.3.1"), REFUSED, "a sixth country");
        let r = restricted(&engine, bob).unwrap();
        assert!(r.reason.contains("6 countries within a day (SE, DE, US, NL, DK, NO; limit 5)"), "{}", r.reason);
    }

    #[test]
    fn a_reload_that_raises_the_limit_keeps_what_was_counted() {
        let (engine, _events) = engine("[policy.default]\nmax_client_networks_per_hour = 2\n");
        assert_eq!(engine.logins.layout().networks(), 3);
        let alice = "alice@example.com";
        assert_eq!(from(&engine, alice, "192.0.2.1"), Decision::Continue);
        assert_eq!(from(&engine, alice, "198.51.100.1"), Decision::Continue);
        let raised = format!("{ORG}[policy.default]\nmax_client_networks_per_hour = 11\n");
        engine.reload(Arc::new(Config::parse(Path::new("plugin.toml"), &raised).unwrap()));
        assert_eq!(engine.logins.layout().networks(), 12);
        for i in 3..=11 {
            assert_eq!(from(&engine, alice, &format!("100.64.{i}.1")), Decision::Continue, "network {i}");
        }
        assert_eq!(from(&engine, alice, "203.0.113.1"), REFUSED, "the twelfth, counting the two from before");
        let r = restricted(&engine, alice).unwrap();
        assert!(
            r.reason.contains("12 client networks within an hour (192.0.2.0/24, 198.51.100.0/24, "),
            "{}",
            r.reason
        );
        // Lowered again: the slots follow, and the limit of 2 holds at once.
        let lowered = format!("{ORG}[policy.default]\nmax_client_networks_per_hour = 2\n");
        engine.reload(Arc::new(Config::parse(Path::new("plugin.toml"), &lowered).unwrap()));
        assert_eq!(engine.logins.layout().networks(), 3);
        let bob = "bob@example.com";
        assert_eq!(from(&engine, bob, "192.0.2.1"), Decision::Continue);
        assert_eq!(from(&engine, bob, "198.51.100.1"), Decision::Continue);
        assert_eq!(from(&engine, bob, "203.0.113.1"), REFUSED);
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
}
