//! Prometheus metrics (`outbound_guard_` prefix). Label sets are resolved once into plain
//! counter handles, so the milter path pays an atomic add, never a map lookup or a lock.
//! Values that are cheaper to read than to track (restrictions in force, tracked accounts,
//! notification counts) are set when `/metrics` is scraped.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// The counters of one label set, by name.
fn counter(family: &Family<Labels, Counter>, labels: &[(&'static str, &'static str)]) -> Counter {
    family.get_or_create(&labels.to_vec()).clone()
}

/// Message outcomes per direction.
pub struct MessageCounters {
    pub inbound_accepted: Counter,
    pub outbound_refused: Counter,
    pub outbound_checked: Counter,
    pub outbound_exempt: Counter,
    pub outbound_delivered: Counter,
    pub outbound_rejected: Counter,
}

/// Recipient outcomes per class.
pub struct RecipientCounters {
    pub internal_accepted: Counter,
    pub external_accepted: Counter,
    pub internal_refused: Counter,
    pub external_refused: Counter,
    pub deferred_over_cap: Counter,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub messages: MessageCounters,
    pub recipients: RecipientCounters,
    restrictions: Family<Labels, Counter>,
    releases: Family<Labels, Counter>,
    verdicts: Family<Labels, Counter>,
    notifications: Family<Labels, Counter>,
    pub restrictions_active: Gauge,
    pub tracked_accounts: Gauge,
    pub milter_connections_open: Gauge,
    pub milter_connections: Counter,
    pub milter_connection_errors: Counter,
    pub events_dropped: Gauge,
    pub decision_seconds: Histogram,
    pub redis_up: Gauge,
    /// Messages decided on the local view alone in cluster mode (Redis unreachable or slow).
    pub redis_local_decisions: Counter,
    redis_errors: Family<Labels, Counter>,
    notifications_pending: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("outbound_guard");
        let messages_family = Family::<Labels, Counter>::default();
        let recipients_family = Family::<Labels, Counter>::default();
        registry.register(
            "messages",
            "Messages seen at MAIL FROM and end of message, by direction and outcome",
            messages_family.clone(),
        );
        registry.register(
            "recipients",
            "Recipients of outbound messages by class and outcome",
            recipients_family.clone(),
        );
        let restrictions = Family::<Labels, Counter>::default();
        registry.register("restrictions", "Accounts restricted, by reason", restrictions.clone());
        let releases = Family::<Labels, Counter>::default();
        registry.register(
            "releases",
            "Restrictions lifted by an administrator, by the restriction's reason",
            releases.clone(),
        );
        let verdicts = Family::<Labels, Counter>::default();
        registry.register("verdicts", "Spam verdicts by source and result", verdicts.clone());
        let notifications = Family::<Labels, Counter>::default();
        registry.register("notifications", "Notification deliveries by channel and outcome", notifications.clone());
        let restrictions_active = Gauge::default();
        registry.register("restrictions_active", "Restrictions in force", restrictions_active.clone());
        let tracked_accounts = Gauge::default();
        registry.register("tracked_accounts", "Accounts with live counters in memory", tracked_accounts.clone());
        let milter_connections_open = Gauge::default();
        registry.register("milter_connections_open", "Milter connections open now", milter_connections_open.clone());
        let milter_connections = Counter::default();
        registry.register("milter_connections", "Milter connections accepted", milter_connections.clone());
        let milter_connection_errors = Counter::default();
        registry.register(
            "milter_connection_errors",
            "Milter connections ended by an error (bad input, timeout)",
            milter_connection_errors.clone(),
        );
        let events_dropped = Gauge::default();
        registry.register(
            "events_dropped",
            "Events dropped because the notifier queue was full",
            events_dropped.clone(),
        );
        let decision_seconds = Histogram::new(exponential_buckets(1e-6, 4.0, 10));
        registry.register(
            "decision_seconds",
            "Time the policy engine takes per MAIL FROM or RCPT TO decision (one decision in 16 is timed)",
            decision_seconds.clone(),
        );
        let notifications_pending = Family::<Labels, Gauge>::default();
        registry.register(
            "notifications_pending",
            "Notifications waiting in the spool for delivery, by channel",
            notifications_pending.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "redis_up",
            "1 when the shared Redis state is reachable (redis backend only)",
            redis_up.clone(),
        );
        let redis_local_decisions = Counter::default();
        registry.register(
            "redis_local_decisions",
            "Messages decided on this node's local view alone because Redis was unreachable or slow (redis backend)",
            redis_local_decisions.clone(),
        );
        let redis_errors = Family::<Labels, Counter>::default();
        registry.register(
            "redis_errors",
            "Redis requests that failed or timed out, by operation (redis backend)",
            redis_errors.clone(),
        );

        let m = |d, o| counter(&messages_family, &[("direction", d), ("outcome", o)]);
        let messages = MessageCounters {
            inbound_accepted: m("inbound", "accepted"),
            outbound_refused: m("outbound", "refused"),
            outbound_checked: m("outbound", "checked"),
            outbound_exempt: m("outbound", "exempt"),
            outbound_delivered: m("outbound", "delivered"),
            outbound_rejected: m("outbound", "rejected"),
        };
        let r = |c, o| counter(&recipients_family, &[("class", c), ("outcome", o)]);
        let recipients = RecipientCounters {
            internal_accepted: r("internal", "accepted"),
            external_accepted: r("external", "accepted"),
            internal_refused: r("internal", "refused"),
            external_refused: r("external", "refused"),
            deferred_over_cap: r("any", "deferred"),
        };
        Metrics {
            registry,
            messages,
            recipients,
            restrictions,
            releases,
            verdicts,
            notifications,
            restrictions_active,
            tracked_accounts,
            milter_connections_open,
            milter_connections,
            milter_connection_errors,
            events_dropped,
            decision_seconds,
            redis_up,
            redis_local_decisions,
            redis_errors,
            notifications_pending,
        }
    }

    /// Sets the number of notifications waiting in the spool.
    pub fn notifications_pending(&self, channel: &'static str, pending: u64) {
        self.notifications_pending.get_or_create(&vec![("channel", channel)]).set(pending as i64);
    }

    /// Counts a restriction with its reason (`recipient_limit_external_per_hour`, `spam`, `manual` …).
    pub fn restricted(&self, reason: &'static str) {
        self.restrictions.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Counts a release, labelled with the restriction's cause (the same values as
    /// [`Metrics::restricted`]'s reasons).
    pub fn released(&self, reason: &'static str) {
        self.releases.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Counts a failed Redis request (`fetch`, `commit`, `publish`, `reconcile`, `ping`).
    pub fn redis_error(&self, op: &'static str) {
        self.redis_errors.get_or_create(&vec![("op", op)]).inc();
    }

    /// Counts a verdict.
    pub fn verdict(&self, source: &'static str, result: &'static str) {
        self.verdicts.get_or_create(&vec![("source", source), ("result", result)]).inc();
    }

    /// Sets a notification total (the notifier keeps its own counts; copied at scrape).
    pub fn set_notifications(&self, channel: &'static str, outcome: &'static str, total: u64) {
        let c = self.notifications.get_or_create(&vec![("channel", channel), ("outcome", outcome)]);
        let now = c.get();
        if total > now {
            c.inc_by(total - now);
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_prefix_and_labels() {
        let m = Metrics::new();
        m.messages.inbound_accepted.inc();
        m.restricted("recipient_limit_external_per_hour");
        m.decision_seconds.observe(2e-6);
        let text = m.render();
        assert!(text.contains("outbound_guard_messages_total{direction=\"inbound\",outcome=\"accepted\"} 1"), "{text}");
        assert!(
            text.contains("outbound_guard_restrictions_total{reason=\"recipient_limit_external_per_hour\"} 1"),
            "{text}"
        );
        assert!(text.contains("outbound_guard_decision_seconds_bucket"), "{text}");
    }
}
