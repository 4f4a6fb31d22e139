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

/// `domain="…"`: only a domain of a configured `[[policy.domain]]` cap gets one, so the
/// configuration bounds how many there are.
type DomainLabel = Vec<(&'static str, String)>;

/// A domain cap's recipients in use now, as `/metrics` shows them; `None` for a limit the cap
/// does not set (nothing is counted for it).
pub struct DomainUsage {
    pub domain: String,
    pub external_last_hour: Option<u32>,
    pub last_day: Option<u32>,
}

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
    escalations: Family<Labels, Counter>,
    releases: Family<Labels, Counter>,
    verdicts: Family<Labels, Counter>,
    notifications: Family<Labels, Counter>,
    pub restrictions_active: Gauge,
    pub tracked_accounts: Gauge,
    /// The system clock minus the filter's time, while the filter follows a clock step.
    pub clock_behind_seconds: Gauge,
    pub milter_connections_open: Gauge,
    pub milter_connections: Counter,
    pub milter_connection_errors: Counter,
    /// Connections closed as soon as accepted because `max_connections` were open.
    pub milter_connections_refused: Counter,
    /// Messages whose headers went over the per-message header budget (`verdict::kept`).
    pub milter_header_budget_exceeded: Counter,
    pub admin_connections_open: Gauge,
    /// Admin API connections closed at once because `admin::serve::MAX_CONNECTIONS` were open.
    pub admin_connections_refused: Counter,
    events_dropped: Counter,
    pub decision_seconds: Histogram,
    pub redis_up: Gauge,
    /// Messages decided on the local view alone in cluster mode (Redis unreachable or slow).
    pub redis_local_decisions: Counter,
    /// Outbound messages whose MAIL FROM read the shared state from Redis (redis backend).
    pub redis_reads_done: Counter,
    /// Outbound messages whose MAIL FROM skipped that read: every account of the message was
    /// read moments before, is not restricted here and is far from its limits.
    pub redis_reads_skipped: Counter,
    redis_errors: Family<Labels, Counter>,
    notifications_pending: Family<Labels, Gauge>,
    delivery_outcomes: Family<Labels, Counter>,
    domain_restrictions: Family<DomainLabel, Counter>,
    domain_recipients_last_hour: Family<DomainLabel, Gauge>,
    domain_recipients_last_day: Family<DomainLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The metrics of a filter on the memory backend.
    pub fn new() -> Metrics {
        Self::build(false)
    }

    /// The metrics of a node on the redis backend: also `redis_up`, `redis_local_decisions`
    /// and `redis_errors` (left out otherwise, where a `redis_up 0` would wake an alert on a
    /// filter that has no Redis).
    pub fn for_cluster() -> Metrics {
        Self::build(true)
    }

    fn build(cluster: bool) -> Metrics {
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
        let escalations = Family::<Labels, Counter>::default();
        registry.register(
            "escalations",
            "Policy restrictions made until released as repeats within escalate_window, by reason",
            escalations.clone(),
        );
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
        let clock_behind_seconds = Gauge::default();
        registry.register(
            "clock_behind_seconds",
            "The system clock minus the filter's time: non-zero while a clock step is followed gradually",
            clock_behind_seconds.clone(),
        );
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
        let milter_connections_refused = Counter::default();
        registry.register(
            "milter_connections_refused",
            "Milter connections closed as soon as accepted because max_connections were open",
            milter_connections_refused.clone(),
        );
        let milter_header_budget_exceeded = Counter::default();
        registry.register(
            "milter_header_budget_exceeded",
            "Messages whose headers went over the per-message header budget (1 MiB); headers past it were not read",
            milter_header_budget_exceeded.clone(),
        );
        let admin_connections_open = Gauge::default();
        registry.register("admin_connections_open", "Admin API connections open now", admin_connections_open.clone());
        let admin_connections_refused = Counter::default();
        registry.register(
            "admin_connections_refused",
            "Admin API connections closed at once because the connection cap was reached",
            admin_connections_refused.clone(),
        );
        let events_dropped = Counter::default();
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
        let delivery_outcomes = Family::<Labels, Counter>::default();
        registry.register(
            "delivery_outcomes",
            "Recipients of accepted messages by outcome as the Postfix log tells it ([delivery] postfix_log)",
            delivery_outcomes.clone(),
        );
        let domain_restrictions = Family::<DomainLabel, Counter>::default();
        registry.register(
            "domain_restrictions",
            "Domains restricted as a unit ([[policy.domain]] caps and restricted add @domain), by domain",
            domain_restrictions.clone(),
        );
        let domain_recipients_last_hour = Family::<DomainLabel, Gauge>::default();
        registry.register(
            "domain_recipients_last_hour",
            "External recipients of all accounts of a capped domain in the last hour, by domain (caps with an hourly limit)",
            domain_recipients_last_hour.clone(),
        );
        let domain_recipients_last_day = Family::<DomainLabel, Gauge>::default();
        registry.register(
            "domain_recipients_last_day",
            "Recipients of all accounts of a capped domain in the last 24 hours, by domain (caps with a daily limit)",
            domain_recipients_last_day.clone(),
        );
        let redis_up = Gauge::default();
        let redis_local_decisions = Counter::default();
        let redis_errors = Family::<Labels, Counter>::default();
        let redis_reads = Family::<Labels, Counter>::default();
        let redis_reads_done = counter(&redis_reads, &[("outcome", "read")]);
        let redis_reads_skipped = counter(&redis_reads, &[("outcome", "skipped")]);
        if cluster {
            registry.register(
                "redis_mail_reads",
                "Outbound messages by whether MAIL FROM read the account's shared state from Redis or skipped it (read moments before, far from any limit, not restricted; redis backend)",
                redis_reads,
            );
            registry.register(
                "redis_up",
                "1 when the shared Redis state is reachable (redis backend only)",
                redis_up.clone(),
            );
            registry.register(
                "redis_local_decisions",
                "Messages decided on this node's local view alone because Redis was unreachable or slow (redis backend)",
                redis_local_decisions.clone(),
            );
            registry.register(
                "redis_errors",
                "Redis requests that failed or timed out, by operation (redis backend)",
                redis_errors.clone(),
            );
        }

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
            escalations,
            releases,
            verdicts,
            notifications,
            restrictions_active,
            tracked_accounts,
            clock_behind_seconds,
            milter_connections_open,
            milter_connections,
            milter_connection_errors,
            milter_connections_refused,
            milter_header_budget_exceeded,
            admin_connections_open,
            admin_connections_refused,
            events_dropped,
            decision_seconds,
            redis_up,
            redis_local_decisions,
            redis_reads_done,
            redis_reads_skipped,
            redis_errors,
            notifications_pending,
            delivery_outcomes,
            domain_restrictions,
            domain_recipients_last_hour,
            domain_recipients_last_day,
        }
    }

    /// Counts a restriction of a domain as a unit (`domain` without its `@`), beside the
    /// count by cause that [`Metrics::restricted`] keeps.
    pub fn domain_restricted(&self, domain: &str) {
        self.domain_restrictions.get_or_create(&vec![("domain", domain.to_owned())]).inc();
    }

    /// Sets the capped domains' recipients in use (at scrape), for the limits each cap sets. The gauges of a domain whose
    /// cap a reload removed go with it; each capped domain shows a restriction count, 0 until
    /// it is first restricted, so that a rate over it starts from the beginning.
    pub fn set_domain_usage(&self, usage: &[DomainUsage]) {
        self.domain_recipients_last_hour.clear();
        self.domain_recipients_last_day.clear();
        for u in usage {
            let label = vec![("domain", u.domain.clone())];
            if let Some(n) = u.external_last_hour {
                self.domain_recipients_last_hour.get_or_create(&label).set(i64::from(n));
            }
            if let Some(n) = u.last_day {
                self.domain_recipients_last_day.get_or_create(&label).set(i64::from(n));
            }
            let _ = self.domain_restrictions.get_or_create(&label);
        }
    }

    /// Counts a recipient outcome read from the MTA's log: `delivered`, `bounced` or
    /// `deferred` (each deferral; not final).
    pub fn delivery_outcome(&self, outcome: &'static str) {
        self.delivery_outcomes.get_or_create(&vec![("outcome", outcome)]).inc();
    }

    /// Sets the number of notifications waiting in the spool.
    pub fn notifications_pending(&self, channel: &'static str, pending: u64) {
        self.notifications_pending.get_or_create(&vec![("channel", channel)]).set(pending as i64);
    }

    /// Counts a restriction with its reason (`recipient_limit_external_per_hour`, `spam`, `manual` …).
    pub fn restricted(&self, reason: &'static str) {
        self.restrictions.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Counts a restriction escalated to "until released" (`escalate_after`), with the same
    /// reason as [`Metrics::restricted`] counted it under.
    pub fn escalated(&self, reason: &'static str) {
        self.escalations.get_or_create(&vec![("reason", reason)]).inc();
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

    /// Sets the count of events dropped (the event sink keeps the total; copied at scrape).
    pub fn set_events_dropped(&self, total: u64) {
        let now = self.events_dropped.get();
        if total > now {
            self.events_dropped.inc_by(total - now);
        }
    }

    /// The OpenMetrics text exposition (`application/openmetrics-text; version=1.0.0`).
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), what a scraper that
    /// does not ask for OpenMetrics reads.
    pub fn render(&self) -> String {
        to_prometheus_text(&self.render_openmetrics())
    }
}

/// OpenMetrics text to the Prometheus text format 0.0.4. The two differ, for what this crate
/// writes, in three things: a counter family is named without its `_total` suffix in
/// OpenMetrics and with it in 0.0.4 (whose parsers would otherwise see samples of an
/// undeclared family and a declared family without samples); OpenMetrics has `# UNIT` lines;
/// and it ends with `# EOF`.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let metadata = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match metadata {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{kind}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_prefix_and_labels() {
        let m = Metrics::new();
        m.messages.inbound_accepted.inc();
        m.restricted("recipient_limit_external_per_hour");
        m.escalated("spam");
        m.decision_seconds.observe(2e-6);
        let text = m.render();
        assert!(text.contains("outbound_guard_escalations_total{reason=\"spam\"} 1"), "{text}");
        assert!(text.contains("outbound_guard_messages_total{direction=\"inbound\",outcome=\"accepted\"} 1"), "{text}");
        assert!(
            text.contains("outbound_guard_restrictions_total{reason=\"recipient_limit_external_per_hour\"} 1"),
            "{text}"
        );
        assert!(text.contains("outbound_guard_decision_seconds_bucket"), "{text}");
    }

    /// Every sample of the 0.0.4 text belongs to a family its `# TYPE` line declares (a
    /// counter's family is named with `_total` there), as Prometheus's classic parser wants.
    #[test]
    fn the_prometheus_text_declares_every_sample_family() {
        let m = Metrics::for_cluster();
        m.messages.inbound_accepted.inc();
        m.set_events_dropped(3);
        m.decision_seconds.observe(2e-6);
        let text = m.render();
        let declared: Vec<(&str, &str)> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' ')).collect();
        assert!(declared.contains(&("outbound_guard_messages_total", "counter")), "{text}");
        assert!(declared.contains(&("outbound_guard_events_dropped_total", "counter")), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        for sample in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let name = sample.split(['{', ' ']).next().unwrap();
            let family = declared.iter().find(|(f, kind)| {
                name == *f
                    || (*kind == "histogram"
                        && ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s) == Some(*f)))
            });
            assert!(family.is_some(), "{name} has no # TYPE line:\n{text}");
        }
        assert!(text.contains("outbound_guard_events_dropped_total 3"), "{text}");
        // OpenMetrics, for a scraper that asks for it, keeps its own naming and end marker.
        let om = m.render_openmetrics();
        assert!(om.contains("# TYPE outbound_guard_messages counter") && om.ends_with("# EOF\n"), "{om}");
    }

    #[test]
    fn domain_metrics_follow_the_configured_caps() {
        let m = Metrics::new();
        let usage =
            |domain: &str| DomainUsage { domain: domain.to_owned(), external_last_hour: Some(4), last_day: Some(9) };
        m.set_domain_usage(&[usage("a.example"), usage("b.example")]);
        m.domain_restricted("a.example");
        let text = m.render();
        assert!(text.contains("outbound_guard_domain_restrictions_total{domain=\"a.example\"} 1"), "{text}");
        assert!(text.contains("outbound_guard_domain_restrictions_total{domain=\"b.example\"} 0"), "{text}");
        assert!(text.contains("outbound_guard_domain_recipients_last_hour{domain=\"b.example\"} 4"), "{text}");
        assert!(text.contains("outbound_guard_domain_recipients_last_day{domain=\"a.example\"} 9"), "{text}");
        // A cap removed by a reload takes its gauges along; its count of restrictions stays.
        m.set_domain_usage(&[usage("a.example")]);
        let text = m.render();
        assert!(!text.contains("outbound_guard_domain_recipients_last_hour{domain=\"b.example\"}"), "{text}");
        assert!(text.contains("outbound_guard_domain_restrictions_total{domain=\"a.example\"} 1"), "{text}");
    }

    #[test]
    fn redis_metrics_only_on_the_redis_backend() {
        assert!(!Metrics::new().render().contains("redis_up"));
        assert!(Metrics::for_cluster().render().contains("outbound_guard_redis_up 0"));
    }
}
