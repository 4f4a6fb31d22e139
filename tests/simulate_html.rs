//! `simulate --html` in a real browser (headless Chromium over WebDriver): the binary replays a
//! day of a small office's mail log written here — steady senders, one newsletter that bounces,
//! one account whose password leaked and that bursts past its hourly limit — and the page,
//! opened from a file:// URL, renders every chart, names the restricted account, logs nothing
//! to the console and asks the network for nothing.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`scripts/test` installs them).
//! Set `OG_SCREENSHOT=docs/simulate-report.png` to refresh the screenshot in the README.

mod common;

use std::fmt::Write as _;
use std::path::Path;

use common::binary::binary;
use common::webdriver::Browser;
use serde_json::{Value, json};

const CONFIG: &str = "[organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"127.0.0.0/8\"]\n\
    [notify]\nrecipients = [\"postmaster@example.com\"]\nfrom = \"outbound-guard@example.com\"\n\
    [policy.default]\nrecipient_limit_external_per_hour = 60\nrecipient_limit_internal_per_hour = 200\n\
    recipient_limit_per_day = 600\naction_when_threshold_reached = \"block_until_tomorrow\"\n\
    bounce_percent = 30\nbounce_min_recipients = 10\nbounce_window = \"1h\"\nbounce_action = \"alert\"\n";

/// A recipient and whether it bounced.
type Recipient = (String, bool);

/// A small deterministic generator (no dependency, the same log on every run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % u64::from(n.max(1))) as u32
    }
}

/// Writes Postfix's lines for one authenticated message of `account` at `secs` after
/// 2026-11-24 00:00 UTC: `to` with whether each bounced.
struct LogWriter {
    out: String,
    next_id: u32,
    pid: u32,
}

impl LogWriter {
    fn stamp(secs: u32) -> String {
        format!("2026-11-24T{:02}:{:02}:{:02}.000000+00:00 mail", secs / 3600, secs / 60 % 60, secs % 60)
    }

    fn message(&mut self, secs: u32, account: &str, to: &[Recipient]) {
        self.next_id += 1;
        self.pid += 1;
        let id = format!("{:010X}", 0x4A_0000_0000u64 + u64::from(self.next_id) * 7919);
        let (t, pid) = (Self::stamp(secs), self.pid);
        let o = &mut self.out;
        let _ = writeln!(o, "{t} postfix/smtpd[{pid}]: connect from ws{pid}.office.example.com[192.0.2.10]");
        let _ = writeln!(
            o,
            "{t} postfix/smtpd[{pid}]: {id}: client=ws{pid}.office.example.com[192.0.2.10], sasl_method=PLAIN, sasl_username={account}"
        );
        let _ = writeln!(o, "{t} postfix/cleanup[900]: {id}: message-id=<{id}@office.example.com>");
        let _ =
            writeln!(o, "{t} postfix/qmgr[800]: {id}: from=<{account}>, size=4312, nrcpt={} (queue active)", to.len());
        let _ = writeln!(o, "{t} postfix/smtpd[{pid}]: disconnect from ws{pid}.office.example.com[192.0.2.10]");
        let later = Self::stamp(secs + 2);
        for (rcpt, bounced) in to {
            let (agent, relay) = if rcpt.ends_with("@example.com") {
                ("lmtp", "mailstore.example.com[192.0.2.20]:24")
            } else {
                ("smtp", "mx.example.net[198.51.100.7]:25")
            };
            let status = if *bounced {
                "dsn=5.1.1, status=bounced (host said: 550 5.1.1 user unknown)"
            } else {
                "dsn=2.0.0, status=sent (250 2.0.0 Ok)"
            };
            let _ = writeln!(
                o,
                "{later} postfix/{agent}[901]: {id}: to=<{rcpt}>, relay={relay}, delay=1.2, delays=0.1/0/0.5/0.6, {status}"
            );
        }
        let _ = writeln!(o, "{later} postfix/qmgr[800]: {id}: removed");
    }
}

/// A working day (07:00–19:00): four steady senders, a newsletter at 10:00 to an old list
/// (a third bounce), and `mallory@example.com` spamming from 14:10 after a quiet morning; a
/// line from another program and a garbled one.
fn office_day() -> String {
    let mut rng = Lcg(7);
    let mut log = LogWriter { out: String::new(), next_id: 0, pid: 4000 };
    let _ = writeln!(log.out, "2026-11-24T06:59:58.000000+00:00 mail kernel: [12.3] eth0: link up");
    let steady = ["alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"];
    let mut events: Vec<(u32, String, Vec<Recipient>)> = Vec::new();
    for (n, account) in steady.iter().enumerate() {
        for hour in 7..19 {
            for _ in 0..(2 + rng.below(4 + n as u32 * 2)) {
                let secs = hour * 3600 + rng.below(3600);
                let to: Vec<Recipient> = (0..1 + rng.below(4))
                    .map(|k| {
                        if rng.below(3) == 0 {
                            (format!("colleague{k}@example.com"), false)
                        } else {
                            (format!("client{}@customer{}.example.net", rng.below(40), rng.below(9)), false)
                        }
                    })
                    .collect();
                events.push((secs, (*account).to_owned(), to));
            }
        }
    }
    for batch in 0..6 {
        let to =
            (0..8).map(|k| (format!("reader{}@list{}.example.org", batch * 8 + k, k), rng.below(3) == 0)).collect();
        events.push((10 * 3600 + batch * 240, "news@example.com".to_owned(), to));
    }
    for hour in [8, 9, 11] {
        events.push((
            hour * 3600 + 600,
            "mallory@example.com".to_owned(),
            vec![("partner@vendor.example.net".to_owned(), false)],
        ));
    }
    for burst in 0..40 {
        let to = (0..6).map(|k| (format!("target{}@victims{}.example.org", burst * 6 + k, k % 4), false)).collect();
        events.push((14 * 3600 + 600 + burst * 45, "mallory@example.com".to_owned(), to));
    }
    events.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    for (i, (secs, account, to)) in events.iter().enumerate() {
        log.message(*secs, account, to);
        if i == events.len() / 2 {
            let _ = writeln!(log.out, "{} postfix/smtpd[1]: ", LogWriter::stamp(*secs));
        }
    }
    log.out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(feature = "real-peers"), ignore = "needs chromium and chromium-driver (feature real-peers)")]
async fn the_html_report_renders_offline_with_a_chart_per_account_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plugin.toml");
    let log = dir.path().join("mail.log");
    let page = dir.path().join("report.html");
    std::fs::write(&config, CONFIG).unwrap();
    std::fs::write(&log, office_day()).unwrap();
    // Run from the directory so that the page (and the screenshot) names the log as given.
    let out = std::process::Command::new(binary())
        .current_dir(dir.path())
        .args(["--config", "plugin.toml", "--json", "simulate", "--top", "6", "--html", "report.html", "mail.log"])
        .output()
        .expect("run simulate");
    assert!(out.status.success(), "simulate failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("the JSON report");
    let restricted = report["restricted"].as_array().unwrap();
    assert_eq!(restricted.len(), 1, "{report:#}");
    assert_eq!(restricted[0]["account"], "mallory@example.com");
    let charts =
        restricted.len() + report["top"].as_array().unwrap().len() + report["policies"].as_array().unwrap().len();

    let browser = Browser::start(1200, 1600).await;
    browser.goto(&format!("file://{}", page.display())).await;
    browser.wait_for("the page", "document.readyState === 'complete'").await;
    let seen = browser
        .execute(
            "const svgs = Array.from(document.querySelectorAll('figure.plot svg'));\
             return { svgs: document.querySelectorAll('svg').length,\
               drawn: svgs.filter(s => s.getBoundingClientRect().width > 300 && s.querySelectorAll('rect').length > 0).length,\
               scripts: document.querySelectorAll('script').length,\
               resources: performance.getEntriesByType('resource').map(e => e.name),\
               restricted: document.getElementById('restricted').innerText,\
               chartText: svgs[0].textContent };",
            json!([]),
        )
        .await;
    assert_eq!(seen["svgs"], charts, "a chart per restricted account, top account and policy: {seen}");
    assert_eq!(seen["drawn"], charts, "every chart has a size and bars: {seen}");
    assert_eq!(seen["scripts"], 0);
    assert_eq!(seen["resources"], json!([]), "the page fetched nothing");
    let table = seen["restricted"].as_str().unwrap();
    assert!(table.contains("mallory@example.com") && table.contains("recipient_limit_external_per_hour"), "{table}");
    let chart = seen["chartText"].as_str().unwrap();
    assert!(
        chart.contains("mallory@example.com") && chart.contains("limit 60") && chart.contains("restricted"),
        "{chart}"
    );
    let console = browser.console().await;
    let bad: Vec<&Value> = console.iter().filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING").collect();
    assert!(bad.is_empty(), "console: {bad:?}");

    if let Ok(target) = std::env::var("OG_SCREENSHOT") {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join(target);
        std::fs::write(&target, browser.screenshot().await).expect("write the screenshot");
    }
}
