//! The simulator's report as text for a terminal: what was read, who would have been
//! restricted, the busiest accounts against their limits, and the suggested limits.

use std::fmt::Write;

use super::report::{AccountSummary, Report};

/// `1234567` → `1,234,567` (the page uses it too).
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn share(peak: u32, limit: u32, percent: Option<u32>) -> String {
    match percent {
        Some(p) => format!("{peak}/{limit} ({p}%)"),
        None => format!("{peak} (no limit)"),
    }
}

fn account_line(out: &mut String, a: &AccountSummary) {
    let bounced = a.bounce_percent.map_or_else(|| "-".to_owned(), |p| format!("{p}%"));
    let _ = writeln!(
        out,
        "  {:<32} {:<12} {:>8} {:>10}  ext/h {:<16} int/h {:<16} day {:<16} bounced {:>6}{}",
        a.account,
        a.policy,
        thousands(a.messages),
        thousands(a.recipients_external + a.recipients_internal),
        share(a.peak_external_per_hour, a.limit_external_per_hour, a.percent_external_per_hour),
        share(a.peak_internal_per_hour, a.limit_internal_per_hour, a.percent_internal_per_hour),
        share(a.peak_per_day, a.limit_per_day, a.percent_per_day),
        bounced,
        if a.restricted { "  RESTRICTED" } else { "" },
    );
}

/// The whole report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let input = &report.input;
    let _ = writeln!(
        out,
        "Read {} lines ({} from Postfix) from {}: {} to {}",
        thousands(input.lines),
        thousands(input.postfix_lines),
        input.files.join(", "),
        input.first.as_deref().unwrap_or("-"),
        input.last.as_deref().unwrap_or("-"),
    );
    let unread: Vec<String> =
        input.unread.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{} {k}", thousands(*n))).collect();
    if !unread.is_empty() {
        let _ = writeln!(out, "Lines not read: {}", unread.join(", "));
    }
    let m = &report.messages;
    let _ = writeln!(
        out,
        "Messages: {} outbound ({} local submissions), {} inbound, {} exempt; {} outbound recipients",
        thousands(m.outbound),
        thousands(m.local_submissions),
        thousands(m.inbound),
        thousands(m.exempt),
        thousands(m.recipients),
    );
    let _ = writeln!(
        out,
        "Would have refused: {} messages, {} recipients",
        thousands(m.refused_messages),
        thousands(m.refused_recipients)
    );
    if m.not_queued + m.origin_unknown + m.incomplete > 0 {
        let _ = writeln!(
            out,
            "Not replayed: {} never queued, {} begun before the log; {} replayed without all their recipients",
            thousands(m.not_queued),
            thousands(m.origin_unknown),
            thousands(m.incomplete),
        );
    }

    let _ = writeln!(out, "\nWould have been restricted: {}", report.restricted.len());
    for r in &report.restricted {
        let _ = writeln!(
            out,
            "  {}  {}  (policy {}, {})\n      {}\n      until {}; then refused {} recipients, {} whole messages",
            r.at,
            r.account,
            r.policy,
            r.cause,
            r.reason,
            match (r.until.as_deref(), r.escalated) {
                (Some(until), _) => until,
                (None, false) => "released",
                (None, true) => "released (escalated: a repeat)",
            },
            thousands(r.refused_recipients),
            thousands(r.refused_messages),
        );
    }
    if !report.alerts.is_empty() {
        let _ = writeln!(out, "\nWould have alerted (delivered): {}", report.alerts.len());
        for a in &report.alerts {
            let _ = writeln!(out, "  {}  {}  {} alerts: {}", a.first_at, a.account, a.alerts, a.reason);
        }
    }

    let _ = writeln!(out, "\nBusiest accounts (peaks in any 60 minutes / 24 hours, against the limit):");
    let _ = writeln!(out, "  {:<32} {:<12} {:>8} {:>10}", "account", "policy", "messages", "recipients");
    for a in &report.top {
        account_line(&mut out, a);
    }

    let _ = writeln!(out, "\nPolicies (suggested limits are above every unrestricted account's peak):");
    for p in &report.policies {
        let _ = writeln!(
            out,
            "  {}: {} accounts, {} restricted",
            p.name,
            thousands(p.accounts),
            thousands(p.restricted_accounts)
        );
        let rows = [
            (
                "recipient_limit_external_per_hour",
                p.limits.recipient_limit_external_per_hour,
                p.peaks.recipient_limit_external_per_hour,
                p.suggested.map(|s| s.recipient_limit_external_per_hour),
            ),
            (
                "recipient_limit_internal_per_hour",
                p.limits.recipient_limit_internal_per_hour,
                p.peaks.recipient_limit_internal_per_hour,
                p.suggested.map(|s| s.recipient_limit_internal_per_hour),
            ),
            (
                "recipient_limit_per_day",
                p.limits.recipient_limit_per_day,
                p.peaks.recipient_limit_per_day,
                p.suggested.map(|s| s.recipient_limit_per_day),
            ),
        ];
        for (key, limit, peak, suggested) in rows {
            let suggested = suggested.map_or_else(|| "-".to_owned(), |s| s.to_string());
            let _ = writeln!(out, "    {key:<34} now {limit:>7}  peak {peak:>7}  suggested {suggested:>7}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
