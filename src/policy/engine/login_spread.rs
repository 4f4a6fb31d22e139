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
use crate::policy::clock::{Timestamp, rfc3339};
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
            let reason = spread_reason(spread, settings, entry, at);
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
        let event = Event::restricted(&restriction, None, node, None);
        let decision = match self.restrictions.restrict(restriction, "policy", Some(&event)) {
            Ok(created) => {
                if created {
                    self.metrics.restricted(CAUSE);
                    let until_text = until.map_or_else(|| "until released".to_owned(), rfc3339);
                    warn!(account, until = %until_text, "account restricted: {}", passed.reason);
                    self.events.emit(event);
                }
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
fn spread_reason(spread: Spread, settings: &PolicySettings, entry: &LoginEntry, now: u32) -> String {
    let mut parts = Vec::new();
    let max = settings.max_client_networks_per_hour;
    if max > 0 && spread.networks > max {
        let list: Vec<String> = entry.recent_networks(now).iter().map(Network::to_string).collect();
        parts.push(format!(
            "sent from {} client networks within an hour ({}; limit {max})",
            spread.networks,
            list.join(", ")
        ));
    }
    let max = settings.max_client_countries_per_day;
    if max > 0 && spread.countries > max {
        let list: Vec<String> = entry.recent_countries(now).iter().map(CountryCode::to_string).collect();
        parts.push(format!("sent from {} countries within a day ({}; limit {max})", spread.countries, list.join(", ")));
    }
    format!("authenticated login {}", parts.join(", and "))
}

#[cfg(test)]
mod tests;
