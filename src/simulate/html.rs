//! The simulator's report as one self-contained HTML page (`--html FILE`): inline CSS and
//! inline SVG charts ([`super::plot`]), no script and no external asset, so it opens from a
//! file:// URL or as a mail attachment. A content security policy in the page forbids loading
//! anything, so even a mistake here cannot make it reach the network.
//!
//! Everything from the log or the configuration (file names, accounts, policies, reasons) is
//! escaped before it is written.

use std::fmt::Write;

use super::plot::{self, AccountChart};
use super::report::{AccountSummary, Report};
use super::text::thousands;

/// Text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const HEAD: &str = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<title>outbound-guard simulation</title>\n<style>\n\
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}\n\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}\n\
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}\n\
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\n\
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}\n\
tr.restricted td{background:#fdecea}.over{color:#b00020;font-weight:bold}\n\
figure{margin:1em 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}\n\
figcaption{font-size:.85em;color:#555}.none{color:#777;font-style:italic}\n\
</style></head><body>\n";

/// A peak against its limit: `12 / 10 (120%)`, over the limit highlighted.
fn share(peak: u32, limit: u32, percent: Option<u32>) -> String {
    match percent {
        Some(p) if p >= 100 => format!("<span class=\"over\">{peak} / {limit} ({p}%)</span>"),
        Some(p) => format!("{peak} / {limit} ({p}%)"),
        None => format!("{peak} (no limit)"),
    }
}

fn limit(n: u32) -> String {
    if n == 0 { "no limit".to_owned() } else { thousands(u64::from(n)) }
}

/// A chart in a figure, or the reason there is none.
fn figure(out: &mut String, account: &str, svg: Result<String, Box<dyn std::error::Error>>, caption: &str) {
    let _ = write!(out, "<figure class=\"plot\" data-account=\"{}\">", escape(account));
    match svg {
        Ok(svg) => out.push_str(&svg),
        Err(e) => {
            let _ = write!(out, "<p class=\"none\">no chart: {}</p>", escape(&e.to_string()));
        }
    }
    let _ = writeln!(out, "<figcaption>{caption}</figcaption></figure>");
}

fn summary(out: &mut String, report: &Report) {
    let input = &report.input;
    let m = &report.messages;
    out.push_str("<h2>Input</h2>\n<table id=\"summary\">\n");
    let mut row = |name: &str, value: String| {
        let _ = writeln!(out, "<tr><th>{name}</th><td>{value}</td></tr>");
    };
    row("files", input.files.iter().map(|f| escape(f)).collect::<Vec<_>>().join("<br>"));
    row("from", escape(input.first.as_deref().unwrap_or("-")));
    row("to", escape(input.last.as_deref().unwrap_or("-")));
    row("lines", format!("{} ({} from Postfix)", thousands(input.lines), thousands(input.postfix_lines)));
    let unread: Vec<String> =
        input.unread.iter().map(|(kind, n)| format!("{} {}", thousands(*n), escape(kind))).collect();
    row("lines not read", unread.join(", "));
    row(
        "messages",
        format!(
            "{} outbound ({} local submissions), {} inbound, {} exempt",
            thousands(m.outbound),
            thousands(m.local_submissions),
            thousands(m.inbound),
            thousands(m.exempt)
        ),
    );
    row("outbound recipients", thousands(m.recipients));
    row(
        "would have refused",
        format!("{} messages, {} recipients", thousands(m.refused_messages), thousands(m.refused_recipients)),
    );
    row(
        "not replayed in full",
        format!(
            "{} never queued, {} queued before the log began, {} with recipients missing from the log",
            thousands(m.not_queued),
            thousands(m.origin_unknown),
            thousands(m.incomplete)
        ),
    );
    out.push_str("</table>\n");
}

fn restricted(out: &mut String, report: &Report) {
    out.push_str("<h2>Would have been restricted</h2>\n");
    if report.restricted.is_empty() {
        out.push_str("<p class=\"none\">No account would have been restricted.</p>\n");
        return;
    }
    out.push_str(
        "<table id=\"restricted\">\n<tr><th>when</th><th>account</th><th>policy</th><th>cause</th>\
         <th>reason</th><th>until</th><th>counters then</th><th>refused after</th></tr>\n",
    );
    for r in &report.restricted {
        let c = &r.counters;
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>external {} / {}, internal {} / {}, day {} / {}</td>\
             <td class=\"n\">{} recipients, {} messages</td></tr>",
            escape(&r.at),
            escape(&r.account),
            escape(&r.policy),
            escape(&r.cause),
            escape(&r.reason),
            escape(&match (r.until.as_deref(), r.escalated) {
                (Some(until), _) => until.to_owned(),
                (None, false) => "until released".to_owned(),
                (None, true) => "until released (escalated: a repeat)".to_owned(),
            }),
            c.external_last_hour,
            limit(c.external_limit_per_hour),
            c.internal_last_hour,
            limit(c.internal_limit_per_hour),
            c.last_day,
            limit(c.limit_per_day),
            thousands(r.refused_recipients),
            thousands(r.refused_messages),
        );
    }
    out.push_str("</table>\n");
    for r in &report.restricted {
        let svg = plot::account(&AccountChart {
            account: &r.account,
            series: &r.series,
            limit: r.counters.external_limit_per_hour,
            restricted_at: Some(&r.at),
        });
        let caption = format!(
            "{}: recipients per hour against the limit of {} external recipients an hour; \
             the vertical line is the restriction ({}).",
            escape(&r.account),
            limit(r.counters.external_limit_per_hour),
            escape(&r.at)
        );
        figure(out, &r.account, svg, &caption);
    }
}

fn alerts(out: &mut String, report: &Report) {
    out.push_str("<h2>Alerts</h2>\n");
    if report.alerts.is_empty() {
        out.push_str("<p class=\"none\">No alert.</p>\n");
        return;
    }
    out.push_str("<table id=\"alerts\">\n<tr><th>first</th><th>account</th><th>alerts</th><th>reason</th></tr>\n");
    for a in &report.alerts {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(&a.first_at),
            escape(&a.account),
            thousands(a.alerts),
            escape(&a.reason)
        );
    }
    out.push_str("</table>\n");
}

fn top_row(out: &mut String, a: &AccountSummary) {
    let bounced = a.bounce_percent.map_or_else(|| "-".to_owned(), |p| format!("{p}%"));
    let _ = writeln!(
        out,
        "<tr{}><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td>{}</td></tr>",
        if a.restricted { " class=\"restricted\"" } else { "" },
        escape(&a.account),
        escape(&a.policy),
        thousands(a.messages),
        thousands(a.recipients_external),
        thousands(a.recipients_internal),
        share(a.peak_external_per_hour, a.limit_external_per_hour, a.percent_external_per_hour),
        share(a.peak_internal_per_hour, a.limit_internal_per_hour, a.percent_internal_per_hour),
        share(a.peak_per_day, a.limit_per_day, a.percent_per_day),
        bounced,
        thousands(a.refused_recipients),
        if a.restricted { "restricted" } else { "" },
    );
}

fn top(out: &mut String, report: &Report) {
    out.push_str("<h2>Busiest accounts</h2>\n");
    if report.top.is_empty() {
        out.push_str("<p class=\"none\">No outbound mail.</p>\n");
        return;
    }
    out.push_str(
        "<table id=\"top\">\n<tr><th>account</th><th>policy</th><th>messages</th><th>external</th>\
         <th>internal</th><th>peak external/h</th><th>peak internal/h</th><th>peak/day</th>\
         <th>bounced</th><th>refused</th><th></th></tr>\n",
    );
    for a in &report.top {
        top_row(out, a);
    }
    out.push_str("</table>\n");
    for a in &report.top {
        let svg = plot::account(&AccountChart {
            account: &a.account,
            series: &a.series,
            limit: a.limit_external_per_hour,
            restricted_at: None,
        });
        let caption = format!(
            "{}: recipients per hour against the limit of {} external recipients an hour.",
            escape(&a.account),
            limit(a.limit_external_per_hour)
        );
        figure(out, &a.account, svg, &caption);
    }
}

fn policies(out: &mut String, report: &Report) {
    out.push_str("<h2>Policies</h2>\n");
    if report.policies.is_empty() {
        out.push_str("<p class=\"none\">No account.</p>\n");
        return;
    }
    out.push_str(
        "<table id=\"policies\">\n<tr><th rowspan=\"2\">policy</th><th rowspan=\"2\">accounts</th>\
         <th rowspan=\"2\">restricted</th><th colspan=\"3\">external/h</th><th colspan=\"3\">internal/h</th>\
         <th colspan=\"3\">per day</th></tr>\n<tr>",
    );
    for _ in 0..3 {
        out.push_str("<th>limit now</th><th>peak</th><th>suggested</th>");
    }
    out.push_str("</tr>\n");
    for p in &report.policies {
        let s = p.suggested.as_ref();
        let suggested = |f: fn(&super::report::LimitSet) -> u32| s.map_or_else(|| "-".to_owned(), |s| limit(f(s)));
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&p.name),
            thousands(p.accounts),
            thousands(p.restricted_accounts),
            limit(p.limits.recipient_limit_external_per_hour),
            p.peaks.recipient_limit_external_per_hour,
            suggested(|l| l.recipient_limit_external_per_hour),
            limit(p.limits.recipient_limit_internal_per_hour),
            p.peaks.recipient_limit_internal_per_hour,
            suggested(|l| l.recipient_limit_internal_per_hour),
            limit(p.limits.recipient_limit_per_day),
            p.peaks.recipient_limit_per_day,
            suggested(|l| l.recipient_limit_per_day),
        );
    }
    out.push_str(
        "</table>\n<p>Peaks are those of the accounts that would not have been restricted; \
         a suggestion is above all of them, with a margin.</p>\n",
    );
    for p in &report.policies {
        let limit_now = p.limits.recipient_limit_external_per_hour;
        let suggested = p.suggested.map(|s| s.recipient_limit_external_per_hour);
        let svg = plot::peaks(&p.name, &p.peak_distribution, limit_now, suggested);
        let caption = format!(
            "Policy {}: how many accounts peaked at how many external recipients in an hour, \
             against its limit ({}) and the suggested one ({}).",
            escape(&p.name),
            limit(limit_now),
            suggested.map_or_else(|| "none".to_owned(), limit)
        );
        figure(out, &p.name, svg, &caption);
    }
}

/// The page.
pub fn render(report: &Report) -> String {
    let mut out = String::from(HEAD);
    out.push_str("<h1>What this policy would have done</h1>\n");
    let _ = writeln!(out, "<p>A replay of the mail log through the filter's policy; nothing was refused for real.</p>");
    summary(&mut out, report);
    restricted(&mut out, report);
    alerts(&mut out, report);
    top(&mut out, report);
    policies(&mut out, report);
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::policy::restriction::Counters;
    use crate::simulate::report::{
        AlertSummary, HourPoint, InputSummary, LimitSet, MessageSummary, PeakBucket, PolicySummary, RestrictedAccount,
    };

    const HOSTILE: &str = "<script>alert(\"x\")</script>'o@example.com";

    fn hours(from: u32) -> Vec<HourPoint> {
        vec![
            HourPoint { hour: from, external: 1, internal: 2, refused: 0 },
            HourPoint { hour: from + 3, external: 5, internal: 0, refused: 3 },
        ]
    }

    fn summary(account: &str, restricted: bool) -> AccountSummary {
        AccountSummary {
            account: account.to_owned(),
            policy: "default".to_owned(),
            messages: 3,
            recipients_external: 6,
            recipients_internal: 2,
            peak_external_per_hour: 5,
            peak_internal_per_hour: 2,
            peak_per_day: 8,
            limit_external_per_hour: 2,
            limit_internal_per_hour: 0,
            limit_per_day: 100,
            percent_external_per_hour: Some(250),
            percent_internal_per_hour: None,
            percent_per_day: Some(8),
            delivered: 4,
            bounced: 1,
            deferred: 0,
            bounce_percent: Some(20.0),
            refused_recipients: 3,
            restricted,
            series: hours(490_000),
        }
    }

    fn report(account: &str) -> Report {
        let counters = Counters { external_last_hour: 3, external_limit_per_hour: 2, ..Counters::default() };
        Report {
            input: InputSummary {
                files: vec!["mail<1>.log".to_owned()],
                lines: 10,
                postfix_lines: 9,
                unread: BTreeMap::from([("malformed".to_owned(), 1)]),
                first: Some("2025-11-24T10:00:00Z".to_owned()),
                last: Some("2025-11-24T14:00:00Z".to_owned()),
            },
            messages: MessageSummary { outbound: 3, ..MessageSummary::default() },
            restricted: vec![RestrictedAccount {
                account: account.to_owned(),
                policy: "default".to_owned(),
                at: "2025-11-24T13:20:00Z".to_owned(),
                cause: "recipient_limit_external_per_hour".to_owned(),
                reason: format!("too many <b>recipients</b> from {account}"),
                until: None,
                escalated: false,
                counters,
                refused_recipients: 3,
                refused_messages: 1,
                series: hours(490_000),
            }],
            alerts: vec![AlertSummary {
                account: account.to_owned(),
                first_at: "2025-11-24T12:00:00Z".to_owned(),
                alerts: 2,
                reason: "bounces".to_owned(),
            }],
            top: vec![summary(account, true), summary("bob@example.com", false)],
            policies: vec![PolicySummary {
                name: "default".to_owned(),
                accounts: 2,
                restricted_accounts: 1,
                limits: LimitSet { recipient_limit_external_per_hour: 2, ..LimitSet::default() },
                peaks: LimitSet { recipient_limit_external_per_hour: 5, ..LimitSet::default() },
                suggested: Some(LimitSet { recipient_limit_external_per_hour: 10, ..LimitSet::default() }),
                peak_distribution: vec![
                    PeakBucket { up_to: 1, accounts: 0 },
                    PeakBucket { up_to: 2, accounts: 0 },
                    PeakBucket { up_to: 5, accounts: 2 },
                ],
            }],
        }
    }

    /// The `<svg>…</svg>` elements of the page.
    fn svgs(page: &str) -> Vec<&str> {
        page.split("<svg").skip(1).map(|s| &s[..s.find("</svg>").expect("closed svg")]).collect()
    }

    #[test]
    fn user_text_is_escaped_in_the_tables_and_in_the_charts() {
        let page = render(&report(HOSTILE));
        assert!(!page.contains("<script"), "no script element from a name");
        assert!(!page.contains("<b>"), "no markup from a reason");
        assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39;o@example.com"));
        assert!(page.contains("mail&lt;1&gt;.log"));
        let charts = svgs(&page);
        let titled: Vec<_> = charts.iter().filter(|s| s.contains("alert(")).collect();
        assert_eq!(titled.len(), 2, "the restricted and the top chart carry the name");
        for svg in titled {
            assert!(svg.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&apos;o@example.com"), "{svg}");
        }
    }

    #[test]
    fn one_chart_per_restricted_and_top_account_and_per_policy() {
        let r = report("alice@example.com");
        let page = render(&r);
        assert_eq!(svgs(&page).len(), r.restricted.len() + r.top.len() + r.policies.len());
        assert_eq!(page.matches("<figure class=\"plot\" data-account=\"alice@example.com\">").count(), 2);
        assert!(page.contains("data-account=\"bob@example.com\""));
        for id in ["summary", "restricted", "alerts", "top", "policies"] {
            assert!(page.contains(&format!("<table id=\"{id}\">")), "{id}");
        }
    }

    #[test]
    fn charts_show_the_limit_and_the_restriction() {
        let page = render(&report("alice@example.com"));
        let charts = svgs(&page);
        let restricted = charts[0];
        assert!(restricted.contains("limit 2 external/h"), "{restricted}");
        assert!(restricted.contains(">\nrestricted\n<") || restricted.contains(">restricted<"), "{restricted}");
        assert!(restricted.contains("refused"), "the refused part is drawn");
        let top_unrestricted = charts[2];
        assert!(top_unrestricted.contains("limit 2 external/h"));
        assert!(!top_unrestricted.contains("restricted\n"), "no marker without a restriction");
        let policy = charts[3];
        assert!(policy.contains("limit 2") && policy.contains("suggested 10"), "{policy}");
    }

    #[test]
    fn the_page_loads_nothing_from_outside() {
        let page = render(&report("alice@example.com"));
        for needle in ["<script", "<link", "src=", "href=", "url(", "@import", "@font-face"] {
            assert!(!page.contains(needle), "{needle}");
        }
        assert!(page.contains("default-src 'none'"));
    }

    #[test]
    fn an_empty_report_says_so() {
        let mut r = report("a@example.com");
        r.restricted.clear();
        r.alerts.clear();
        r.top.clear();
        r.policies.clear();
        let page = render(&r);
        assert!(page.contains("No account would have been restricted."));
        assert!(svgs(&page).is_empty());
    }
}
