//! `outbound-guard simulate` as an administrator runs it: the real binary on logs written
//! here in Postfix's own line format and on the log a real Postfix wrote in this suite
//! (`fixtures/postfix/maillog.log`); text, `--json`, exit codes, gzip, standard input, several
//! files, New Year, bad lines, and that nothing is written anywhere.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_outbound-guard");

/// A config with `policy` as `[policy.default]`; its state dir must never appear.
fn config(dir: &Path, policy: &str) -> PathBuf {
    let path = dir.join("plugin.toml");
    let text = format!(
        "[organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"127.0.0.0/8\"]\n\
         [state]\ndir = \"never-created\"\n\
         [notify]\nrecipients = [\"postmaster@example.com\"]\nfrom = \"outbound-guard@example.com\"\n\
         [policy.default]\n{policy}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn simulate(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN).arg("--config").arg(config).arg("simulate").args(args).output().expect("run the binary")
}

fn json(config: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = simulate(config, &all);
    assert!(out.status.success(), "simulate failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Postfix log lines for made-up messages, as smtpd, qmgr and smtp write them.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    next_id: u32,
}

impl Log {
    /// `Dec  7 10:00:00`-style time of `second` after midnight of `day` in `month`.
    fn stamp(month: &str, day: u32, second: u32) -> String {
        format!("{month} {day:>2} {:02}:{:02}:{:02}", second / 3600, second / 60 % 60, second % 60)
    }

    /// A message from SASL login `login` at client `client`, to `recipients` with `status`.
    fn sasl(&mut self, at: &str, login: &str, client: &str, recipients: &[String], status: &str) {
        self.next_id += 1;
        let id = format!("{:X}", 0xA0000 + self.next_id);
        let n = recipients.len();
        self.lines.push(format!(
            "{at} mta postfix/submission/smtpd[100]: {id}: client=c[{client}], sasl_method=PLAIN, sasl_username={login}"
        ));
        self.lines.push(format!("{at} mta postfix/cleanup[101]: {id}: message-id=<{id}@example.com>"));
        self.lines
            .push(format!("{at} mta postfix/qmgr[102]: {id}: from=<{login}>, size=900, nrcpt={n} (queue active)"));
        for r in recipients {
            let dsn = if status == "sent" { "2.0.0" } else { "5.1.1" };
            self.lines.push(format!(
                "{at} mta postfix/smtp[103]: {id}: to=<{r}>, relay=mx[192.0.2.9]:25, delay=0.1, delays=0/0/0/0.1, dsn={dsn}, status={status} (done)"
            ));
        }
        self.lines.push(format!("{at} mta postfix/qmgr[102]: {id}: removed"));
    }

    /// An inbound message from the internet to a local user.
    fn inbound(&mut self, at: &str) {
        self.next_id += 1;
        let id = format!("{:X}", 0xB0000 + self.next_id);
        self.lines.push(format!("{at} mta postfix/smtpd[200]: {id}: client=mx.other[198.51.100.7]"));
        self.lines.push(format!(
            "{at} mta postfix/qmgr[102]: {id}: from=<x@other.example>, size=900, nrcpt=1 (queue active)"
        ));
        self.lines.push(format!(
            "{at} mta postfix/local[104]: {id}: to=<u@example.com>, relay=local, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (delivered to mailbox)"
        ));
        self.lines.push(format!("{at} mta postfix/qmgr[102]: {id}: removed"));
    }

    /// The lines in time order, as syslog writes them (the builders above go account by
    /// account).
    fn text(&self) -> String {
        let mut lines = self.lines.clone();
        lines.sort_by(|a, b| a[..15].cmp(&b[..15]));
        lines.join("\n") + "\n"
    }
}

fn external(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@remote.example")).collect()
}

/// One account bursting (12 external recipients in 12 minutes, limit 5), one steady (one an
/// hour for 8 hours), inbound mail between.
fn burst_and_steady() -> Log {
    let mut log = Log::default();
    for i in 0..8u32 {
        log.sasl(
            &Log::stamp("Mar", 3, 8 * 3600 + i * 3600),
            "steady@example.com",
            "203.0.113.5",
            &external("s", 1),
            "sent",
        );
        log.inbound(&Log::stamp("Mar", 3, 8 * 3600 + i * 3600 + 30));
    }
    for i in 0..12u32 {
        let to = external(&format!("b{i}-"), 1);
        log.sasl(&Log::stamp("Mar", 3, 9 * 3600 + i * 60), "burst@example.com", "203.0.113.66", &to, "sent");
    }
    log
}

#[test]
fn a_burst_past_the_limit_is_restricted_and_the_steady_account_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "recipient_limit_external_per_hour = 5\naction_when_threshold_reached = \"block\"");
    let log = dir.path().join("mail.log");
    std::fs::write(&log, burst_and_steady().text()).unwrap();
    let report = json(&config, &["--year", "2026", log.to_str().unwrap()]);

    let restricted = report["restricted"].as_array().unwrap();
    assert_eq!(restricted.len(), 1, "{restricted:#?}");
    let r = &restricted[0];
    assert_eq!(r["account"], "burst@example.com");
    assert_eq!(r["cause"], "recipient_limit_external_per_hour");
    assert_eq!(r["until"], Value::Null, "block: until released");
    // 5 pass, the 6th reaches the limit at 09:05; the 6th to the 12th are refused.
    assert_eq!(r["at"], "2026-03-03T09:05:00Z");
    assert_eq!(r["refused_recipients"], 7);
    assert_eq!(r["refused_messages"], 7);
    assert_eq!(report["messages"]["outbound"], 20);
    assert_eq!(report["messages"]["inbound"], 8);
    assert_eq!(report["messages"]["refused_recipients"], 7);

    let top = report["top"].as_array().unwrap();
    let burst = top.iter().find(|a| a["account"] == "burst@example.com").unwrap();
    assert_eq!(burst["peak_external_per_hour"], 12);
    assert_eq!(burst["restricted"], true);
    let steady = top.iter().find(|a| a["account"] == "steady@example.com").unwrap();
    assert_eq!(steady["peak_external_per_hour"], 1, "one an hour: never two in any 60 minutes");
    assert_eq!(steady["peak_per_day"], 8);
    assert_eq!(steady["restricted"], false);
    assert_eq!(steady["percent_external_per_hour"], 20);
}

#[test]
fn the_suggested_limits_are_above_every_unrestricted_accounts_peak() {
    let dir = tempfile::tempdir().unwrap();
    // A policy that restricts nobody: the suggestion must clear every account's peak.
    let config = config(dir.path(), "recipient_limit_external_per_hour = 1000");
    let log = dir.path().join("mail.log");
    std::fs::write(&log, burst_and_steady().text()).unwrap();
    let report = json(&config, &["--year", "2026", log.to_str().unwrap()]);
    assert!(report["restricted"].as_array().unwrap().is_empty());
    let policy = &report["policies"][0];
    assert_eq!(policy["name"], "default");
    assert_eq!(policy["peaks"]["recipient_limit_external_per_hour"], 12);
    let suggested = policy["suggested"]["recipient_limit_external_per_hour"].as_u64().unwrap();
    for account in report["top"].as_array().unwrap() {
        let peak = account["peak_external_per_hour"].as_u64().unwrap();
        assert!(suggested > peak, "suggested {suggested} not above {}'s peak {peak}", account["account"]);
        let day = account["peak_per_day"].as_u64().unwrap();
        assert!(policy["suggested"]["recipient_limit_per_day"].as_u64().unwrap() > day);
    }
    // And replaying with the suggestion restricts nobody.
    let config = self::config(dir.path(), &format!("recipient_limit_external_per_hour = {suggested}"));
    let again = json(&config, &["--year", "2026", log.to_str().unwrap()]);
    assert!(again["restricted"].as_array().unwrap().is_empty());
}

#[test]
fn garbage_truncated_and_binary_lines_are_counted_and_the_rest_still_reported() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "recipient_limit_external_per_hour = 5");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"this is not a log line\n");
    bytes.extend_from_slice(b"Mar  3 08:00:00 mta kernel: [1.0] usb 1-1: new device\n");
    bytes
        .extend_from_slice(b"Mar  3 08:00:00 mta postfix/qmgr[1]: ABCDE1: from=<a@b>, size=, nrcpt=1 (queue active)\n");
    bytes.extend_from_slice(&[0u8, 0xff, 0xfe, 0x1f, b'\n', 0x80, 0x81, b'\n']);
    bytes.extend_from_slice(burst_and_steady().text().as_bytes());
    // Cut by a full disk: in the header, and in a delivery line's fields.
    bytes.extend_from_slice(b"Mar  3 23:59:59 mta postfix/smtp[103]: A0001: to=<x@remote.example>, relay=\n");
    bytes.extend_from_slice(b"Mar  3 23:59:59 mta post");
    let log = dir.path().join("mail.log");
    std::fs::write(&log, bytes).unwrap();
    let report = json(&config, &["--year", "2026", log.to_str().unwrap()]);
    let unread = &report["input"]["unread"];
    assert_eq!(unread["unreadable"], 4, "garbage, two binary lines and the cut one: {unread}");
    assert_eq!(unread["not_postfix"], 1);
    assert_eq!(unread["malformed"], 2);
    assert_eq!(report["restricted"][0]["account"], "burst@example.com");
    let text = simulate(&config, &["--year", "2026", log.to_str().unwrap()]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("Lines not read: 2 malformed, 1 not_postfix, 4 unreadable"), "{text}");
    assert!(text.contains("burst@example.com"), "{text}");
}

#[test]
fn json_is_stable_run_to_run_and_matches_the_recorded_report() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "recipient_limit_external_per_hour = 2\naction_when_threshold_reached = \"block_until_tomorrow\"",
    );
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/postfix/maillog.log");
    let args = ["--json", "--year", "2026", fixture.to_str().unwrap()];
    let first = simulate(&config, &args);
    let second = simulate(&config, &args);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(first.stdout, second.stdout, "same input, same bytes");
    // The recorded report of the real Postfix log: the JSON shape is a contract for scripts.
    let mut report: Value = serde_json::from_slice(&first.stdout).unwrap();
    report["input"]["files"] = Value::from(vec!["maillog.log"]);
    let recorded = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/simulate/maillog.report.json");
    if std::env::var_os("OUTBOUND_GUARD_RECORD").is_some() {
        std::fs::create_dir_all(recorded.parent().unwrap()).unwrap();
        std::fs::write(&recorded, serde_json::to_string_pretty(&report).unwrap() + "\n").unwrap();
    }
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(&recorded).unwrap()).unwrap();
    assert_eq!(report, expected, "the report on fixtures/postfix/maillog.log changed");
    // What that log holds, as the real Postfix run made it: bob reached the limit of 2.
    assert_eq!(report["restricted"][0]["account"], "bob@example.com");
    assert_eq!(report["messages"]["local_submissions"], 1);
    assert!(!dir.path().join("never-created").exists(), "simulate wrote state");
}

fn gzip(path: &Path, text: &str) {
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap();
}

#[test]
fn gzip_stdin_and_files_across_new_year_are_read_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "recipient_limit_external_per_hour = 3\naction_when_threshold_reached = \"block\"");
    // Two messages of 2 recipients late on 31 December (gzip, the rotated file), two early
    // on 1 January (plain): 4 in the last hour of the year, then more: the limit of 3 is
    // reached in the old year's file, and the new year's messages are refused.
    let mut old = Log::default();
    old.sasl(&Log::stamp("Dec", 31, 23 * 3600 + 50 * 60), "a@example.com", "203.0.113.1", &external("x", 2), "sent");
    old.sasl(&Log::stamp("Dec", 31, 23 * 3600 + 55 * 60), "a@example.com", "203.0.113.1", &external("y", 2), "sent");
    let mut new = Log { next_id: 100, ..Log::default() };
    new.sasl(&Log::stamp("Jan", 1, 5 * 60), "a@example.com", "203.0.113.1", &external("z", 2), "sent");
    let rotated = dir.path().join("mail.log.1.gz");
    gzip(&rotated, &old.text());
    let current = dir.path().join("mail.log");
    std::fs::write(&current, new.text()).unwrap();
    // Named newest first: the order comes from the timestamps.
    let report = json(&config, &["--year", "2025", current.to_str().unwrap(), rotated.to_str().unwrap()]);
    assert_eq!(report["input"]["first"], "2025-12-31T23:50:00Z");
    assert_eq!(report["input"]["last"], "2026-01-01T00:05:00Z");
    assert_eq!(report["restricted"][0]["at"], "2025-12-31T23:55:00Z");
    assert_eq!(report["restricted"][0]["refused_recipients"], 3, "one of y, both of z");

    // The same through standard input, the rotated file first.
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["simulate", "--json", "--year", "2025", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut all = old.text();
    all.push_str(&new.text());
    child.stdin.take().unwrap().write_all(all.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let piped: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(piped["restricted"], report["restricted"]);
}

#[test]
fn the_year_is_inferred_from_the_files_modification_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "recipient_limit_external_per_hour = 3");
    let mut log = Log::default();
    log.sasl(&Log::stamp("Dec", 31, 23 * 3600), "a@example.com", "203.0.113.1", &external("x", 1), "sent");
    log.sasl(&Log::stamp("Jan", 1, 3600), "a@example.com", "203.0.113.1", &external("y", 1), "sent");
    let path = dir.path().join("mail.log");
    std::fs::write(&path, log.text()).unwrap();
    // Last written on 2 January 2024.
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_704_153_600);
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
    let report = json(&config, &[path.to_str().unwrap()]);
    assert_eq!(report["input"]["first"], "2023-12-31T23:00:00Z");
    assert_eq!(report["input"]["last"], "2024-01-01T01:00:00Z");
}

#[test]
fn bounces_past_the_threshold_restrict_as_the_follower_would() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "bounce_percent = 50\nbounce_min_recipients = 5\nbounce_window = \"1h\"\nbounce_action = \"block\"",
    );
    let mut log = Log::default();
    log.sasl(&Log::stamp("Mar", 3, 9 * 3600), "list@example.com", "203.0.113.2", &external("ok", 2), "sent");
    for i in 0..6u32 {
        let to = external(&format!("gone{i}-"), 1);
        log.sasl(&Log::stamp("Mar", 3, 9 * 3600 + 60 + i * 60), "list@example.com", "203.0.113.2", &to, "bounced");
    }
    log.sasl(
        &Log::stamp("Mar", 3, 9 * 3600 + 20 * 60),
        "list@example.com",
        "203.0.113.2",
        &external("late", 1),
        "sent",
    );
    let path = dir.path().join("mail.log");
    std::fs::write(&path, log.text()).unwrap();
    let report = json(&config, &["--year", "2026", path.to_str().unwrap()]);
    let r = &report["restricted"][0];
    assert_eq!(r["account"], "list@example.com");
    assert_eq!(r["cause"], "bounces");
    // The fifth bounce (5 of 7 final outcomes) restricts: the sixth and the late message
    // are refused.
    assert_eq!(r["refused_recipients"], 2);
    let top = &report["top"][0];
    // Outcomes of what the policy let through: the refused messages were never sent.
    assert_eq!((top["bounced"].as_u64(), top["delivered"].as_u64()), (Some(5), Some(2)));
    assert_eq!(top["bounce_percent"], 71.4);
}

#[test]
fn usage_errors_and_unreadable_input_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let missing = simulate(&config, &[dir.path().join("nope.log").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.log"));
    let nothing = dir.path().join("other.log");
    std::fs::write(&nothing, "no postfix here\nMar  3 08:00:00 mta kernel: x\n").unwrap();
    let out = simulate(&config, &[nothing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no Postfix log line"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let no_file = simulate(&config, &[]);
    assert_eq!(no_file.status.code(), Some(2), "LOG is required");
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, "[policy.default]\nrecipient_limit_per_day = \"many\"\n").unwrap();
    let out = simulate(&bad_config, &[nothing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("recipient_limit_per_day"));
}

#[test]
fn a_repeat_offender_is_escalated_as_the_daemon_would() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "recipient_limit_external_per_hour = 3\naction_when_threshold_reached = \"block_until_tomorrow\"\n\
         escalate_after = 2\nescalate_window = \"7d\"",
    );
    // The same burst on two days: restricted until midnight the first time, until released
    // the second.
    let mut log = Log::default();
    for day in [3, 4] {
        for i in 0..5u32 {
            let to = external(&format!("d{day}-{i}-"), 1);
            log.sasl(&Log::stamp("Mar", day, 9 * 3600 + i * 60), "again@example.com", "203.0.113.3", &to, "sent");
        }
    }
    let path = dir.path().join("mail.log");
    std::fs::write(&path, log.text()).unwrap();
    let report = json(&config, &["--year", "2026", path.to_str().unwrap()]);
    let restricted = report["restricted"].as_array().unwrap();
    assert_eq!(restricted.len(), 2, "{restricted:#?}");
    assert_eq!(
        (restricted[0]["escalated"].as_bool(), restricted[0]["until"].as_str()),
        (Some(false), Some("2026-03-04T00:00:00Z"))
    );
    assert_eq!((restricted[1]["escalated"].as_bool(), &restricted[1]["until"]), (Some(true), &Value::Null));
    assert_eq!(restricted[1]["at"], "2026-03-04T09:03:00Z");
}

#[test]
fn a_login_used_from_too_many_networks_and_a_capped_domain_are_replayed_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "max_client_networks_per_hour = 2\nlogin_spread_action = \"block\"");
    let mut log = Log::default();
    // One login from three /24 networks within the hour: the third is refused.
    for (i, client) in ["203.0.113.7", "198.51.100.7", "192.0.2.7"].iter().enumerate() {
        let to = external(&format!("n{i}-"), 1);
        log.sasl(&Log::stamp("Mar", 3, 9 * 3600 + i as u32 * 600), "hijacked@example.com", client, &to, "sent");
    }
    let path = dir.path().join("mail.log");
    std::fs::write(&path, log.text()).unwrap();
    let report = json(&config, &["--year", "2026", path.to_str().unwrap()]);
    let r = &report["restricted"][0];
    assert_eq!((r["account"].as_str(), r["cause"].as_str()), (Some("hijacked@example.com"), Some("login_spread")));
    assert_eq!(r["at"], "2026-03-03T09:20:00Z");
    assert_eq!(r["refused_recipients"], 1);

    // A domain cap: two accounts of one customer, each within its own limit, together over
    // the domain's.
    let path = dir.path().join("plugin.toml");
    let mut text = std::fs::read_to_string(&path).unwrap().replace("max_client_networks_per_hour = 2\n", "");
    text.push_str(
        "[[policy.domain]]\ndomain = \"customer.example\"\nrecipient_limit_external_per_hour = 4\naction = \"block\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let mut log = Log::default();
    for i in 0..3u32 {
        for who in ["a", "b"] {
            let to = external(&format!("{who}{i}-"), 1);
            log.sasl(
                &Log::stamp("Mar", 3, 10 * 3600 + i * 60),
                &format!("{who}@customer.example"),
                "203.0.113.9",
                &to,
                "sent",
            );
        }
    }
    let log_path = dir.path().join("domain.log");
    std::fs::write(&log_path, log.text()).unwrap();
    let report = json(&path, &["--year", "2026", log_path.to_str().unwrap()]);
    let restricted: Vec<&str> =
        report["restricted"].as_array().unwrap().iter().map(|r| r["account"].as_str().unwrap()).collect();
    assert_eq!(restricted, ["@customer.example"], "{report:#}");
    assert_eq!(report["messages"]["refused_recipients"], 2, "the fifth and sixth of the domain");
}
