//! The README's Postfix recipe ("Deployment" → "Postfix"), read from the README itself and
//! given to a real Postfix with only the filter's port and the table's path changed: the
//! per-milter `{ … }` settings and timeouts parse, mail submitted by SMTP and by `sendmail(1)`
//! passes through the filter to the next hop, a message the filter judges spam and tags
//! `X-Outbound-Guard-Spam: yes` is held through `milter_header_checks`, one that arrives already
//! tagged is held through `header_checks`, and with the filter stopped Postfix defers mail.
#![cfg(feature = "real-peers")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::{GuardProcess, binary};
use common::postfix::{Postfix, PostfixOptions};
use common::process::{POLL, free_port};
use common::readme::deployment_block;
use common::smtp_sink::SmtpSink;
use common::swaks::{Swaks, SwaksOutput};

const WAIT: Duration = Duration::from_secs(20);
/// What the README's recipe points at; the test substitutes its own.
const README_MILTER: &str = "inet:127.0.0.1:7357";
const README_LOCAL_MILTER: &str = "inet:127.0.0.1:7359";
const README_TABLE: &str = "/etc/postfix/outbound-guard_header_checks";

fn readme_block(first_line: &str) -> Vec<String> {
    deployment_block("Postfix", first_line)
}

/// `key = value` settings of a main.cf text (continuation lines start with white space).
fn main_cf_settings(lines: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let (_, value) = out.last_mut().expect("continuation line after a setting");
            value.push(' ');
            value.push_str(line.trim());
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not a main.cf setting: {line:?}"));
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// The message `sent` (subject `subject`) was accepted, is on hold in the queue by the
/// `X-Outbound-Guard-Spam: yes` line of the table (`action` as the maillog names it: `hold`
/// from header_checks, `milter-header-hold` from milter_header_checks) and was not delivered.
fn assert_held(pf: &Postfix, sink: &SmtpSink, guard: &GuardProcess, sent: &SwaksOutput, subject: &str, action: &str) {
    assert!(sent.success(), "{}", sent.transcript);
    let id = sent.queue_id().expect("queue id");
    let deadline = Instant::now() + WAIT;
    // `postqueue -p` marks a held message with `!` after its queue ID.
    while !pf.queue_listing().contains(&format!("{id}!")) {
        assert!(
            Instant::now() < deadline,
            "{id} not on hold:\n{}\nmaillog:\n{}\nfilter:\n{}",
            pf.queue_listing(),
            pf.log(),
            guard.log()
        );
        std::thread::sleep(POLL);
    }
    assert!(pf.wait_log(&format!("{id}: {action}: header X-Outbound-Guard-Spam: yes"), WAIT), "{}", pf.log());
    let subjects: Vec<String> = sink.messages().iter().filter_map(|m| m.header("Subject")).collect();
    assert!(!subjects.contains(&subject.to_string()), "the held message was delivered: {subjects:?}");
}

#[test]
fn the_readme_postfix_recipe_filters_delivers_and_holds_tagged_spam() {
    // Header verdicts on, spam tagged: the shipped configuration's choices, spelled out.
    let local_port = free_port();
    let guard = GuardProcess::start(
        &format!("local_listen = \"inet:127.0.0.1:{local_port}\""),
        "[verdict]\nsources = [\"headers\"]\n[policy.default]\nspam_message_action = \"tag\"\n",
    );

    // The README's header_checks table, in a file Postfix's daemons can read.
    let table_dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(table_dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let table = table_dir.path().join("outbound-guard_header_checks");
    let rules: Vec<String> = readme_block(&format!("# {README_TABLE}"))
        .into_iter()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert!(rules.iter().any(|r| r.starts_with("/^X-Outbound-Guard-Spam: yes/ HOLD")), "{rules:?}");
    std::fs::write(&table, rules.join("\n") + "\n").expect("write table");
    std::fs::set_permissions(&table, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    // main.cf exactly as in the README, except the filter's address and the table's path.
    let sink = SmtpSink::start();
    let mut opts = PostfixOptions::new().relay_to(&sink);
    let settings = main_cf_settings(&readme_block("# /etc/postfix/main.cf"));
    let keys: Vec<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
    for wanted in [
        "smtpd_milters",
        "non_smtpd_milters",
        "milter_protocol",
        "milter_default_action",
        "milter_connect_timeout",
        "milter_command_timeout",
        "milter_content_timeout",
        "header_checks",
        "milter_header_checks",
    ] {
        assert!(keys.contains(&wanted), "README's main.cf lacks {wanted}: {keys:?}");
    }
    for (key, value) in &settings {
        let value = value
            .replace(README_MILTER, &guard.milter_address())
            .replace(README_LOCAL_MILTER, &format!("inet:127.0.0.1:{local_port}"))
            .replace(README_TABLE, &table.display().to_string());
        // The harness writes these four itself; the rest are appended as written.
        opts = match key.as_str() {
            "smtpd_milters" => opts.smtpd_milters(&value),
            "non_smtpd_milters" => opts.non_smtpd_milters(&value),
            "milter_default_action" => opts.milter_default_action(&value),
            "milter_protocol" => opts.milter_protocol(value.parse().expect("milter_protocol")),
            _ => opts.main_cf(&format!("{key} = {value}")),
        };
    }
    let smtpd_milters = &settings.iter().find(|(k, _)| k == "smtpd_milters").expect("smtpd_milters").1;
    assert!(smtpd_milters.starts_with("{ ") && smtpd_milters.contains("default_action=tempfail"), "{smtpd_milters}");
    let pf = Postfix::start(opts);

    // Ordinary mail, by SMTP and by sendmail(1), reaches the next hop.
    let plain = Swaks::new(pf.smtp_port())
        .from("bob@example.com")
        .to("one@example.net")
        .header("Subject: plain")
        .body("through the filter")
        .run();
    assert!(plain.success(), "{}", plain.transcript);
    let local = pf.sendmail(
        "cron@example.com",
        &["two@example.net"],
        b"From: cron@example.com\nTo: two@example.net\nSubject: local\n\nfrom a local program\n",
    );
    assert!(local.status.success(), "sendmail: {}", String::from_utf8_lossy(&local.stderr));
    let delivered = sink.wait_for_messages(2, WAIT);
    let subjects: Vec<String> = delivered.iter().filter_map(|m| m.header("Subject")).collect();
    assert!(
        subjects.contains(&"plain".to_string()) && subjects.contains(&"local".to_string()),
        "{subjects:?}\n{}",
        pf.log()
    );

    // A message tagged as spam is accepted, then held: on hold in the queue, not delivered.
    let tagged = Swaks::new(pf.smtp_port())
        .from("bob@example.com")
        .to("three@example.net")
        .header("Subject: tagged")
        .header("X-Outbound-Guard-Spam: yes")
        .body("looks like spam")
        .run();
    assert_held(&pf, &sink, &guard, &tagged, "tagged", "hold");

    // A message the filter judges spam (an earlier scanner's verdict in its headers) gets the
    // filter's tag, and the README's milter_header_checks holds it: Postfix names the table that
    // acted, milter_header_checks, on the header the filter added.
    let judged = Swaks::new(pf.smtp_port())
        .from("bob@example.com")
        .to("five@example.net")
        .header("Subject: judged")
        .header("X-Spam-Flag: YES")
        .body("an earlier scanner called this spam")
        .run();
    assert_held(&pf, &sink, &guard, &judged, "judged", "milter-header-hold");

    let log = pf.log();
    let trouble: Vec<&str> =
        log.lines().filter(|l| l.contains("warning") || l.contains("error") || l.contains("fatal")).collect();
    assert!(trouble.is_empty(), "Postfix complained about the recipe:\n{}", trouble.join("\n"));

    // The filter counted both senders, the sendmail(1) one under its envelope sender.
    let top = Command::new(binary())
        .arg("--config")
        .arg(guard.config_path())
        .args(["--json", "senders", "top"])
        .stdin(Stdio::null())
        .output()
        .expect("outbound-guard senders top");
    assert!(top.status.success(), "{}", String::from_utf8_lossy(&top.stderr));
    let top: serde_json::Value = serde_json::from_slice(&top.stdout).expect("JSON");
    let accounts: Vec<&str> =
        top["senders"].as_array().expect("senders").iter().filter_map(|s| s["account"].as_str()).collect();
    assert!(accounts.contains(&"bob@example.com") && accounts.contains(&"cron@example.com"), "{top}");
    // The sendmail(1) message came in on the local-submission socket: also counted under the
    // aggregate account.
    assert!(accounts.contains(&"local-submissions"), "{top}");

    // Every message went through the filter: one milter connection per SMTP session and one for
    // the sendmail(1) submission.
    let (status, guard_log) = guard.terminate();
    assert!(status.success(), "exit status {status}:\n{guard_log}");
    let connections = guard_log.matches("milter connection opened").count();
    assert!(connections >= 3, "the filter saw {connections} milter connections:\n{guard_log}");

    // default_action=tempfail: with the filter gone, Postfix defers instead of passing mail.
    let deferred = Swaks::new(pf.smtp_port()).from("bob@example.com").to("four@example.net").run();
    assert!(!deferred.success(), "mail passed with the filter stopped:\n{}", deferred.transcript);
    assert!(deferred.codes().iter().any(|c| (400..500).contains(c)), "{}", deferred.transcript);
}

/// The README's `local_login_sender_maps` lines (Postfix ≥ 3.6) with `sendmail(1)` run as
/// unprivileged users: a user submits as the addresses its line lists (and the null sender),
/// is refused any other by Postfix before the filter sees it, a user with no line may not
/// submit at all, and root may use any sender.
#[test]
fn the_readme_local_login_sender_maps_ties_senders_to_unix_users() {
    const TABLE: &str = "/etc/postfix/login_senders";
    const README_USER: &str = "www-data";
    /// The unprivileged user the test submits as, in the README's place of `www-data`.
    const USER: &str = "nobody";
    let local_port = free_port();
    let guard = GuardProcess::start(&format!("local_listen = \"inet:127.0.0.1:{local_port}\""), "");

    let table_dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(table_dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let table = table_dir.path().join("login_senders");
    let lines = readme_block(&format!("# {TABLE}"));
    assert!(lines.iter().any(|l| l.starts_with(README_USER)), "{lines:?}");
    let text: Vec<String> = lines.iter().map(|l| l.replacen(README_USER, USER, 1)).collect();
    std::fs::write(&table, text.join("\n") + "\n").expect("write table");
    std::fs::set_permissions(&table, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let sink = SmtpSink::start();
    let mut opts = PostfixOptions::new()
        .relay_to(&sink)
        .non_smtpd_milters(&format!("inet:127.0.0.1:{local_port}"))
        .milter_default_action("tempfail")
        .unprivileged_submission();
    let settings = main_cf_settings(&readme_block(
        "# /etc/postfix/main.cf (Postfix ≥ 3.6): each Unix user sends as its own addresses only",
    ));
    assert_eq!(settings.len(), 1, "{settings:?}");
    for (key, value) in &settings {
        assert_eq!(key, "local_login_sender_maps");
        opts = opts.main_cf(&format!("{key} = {}", value.replace(TABLE, &table.display().to_string())));
    }
    let pf = Postfix::start(opts);
    let message = |from: &str, subject: &str| format!("From: {from}\nSubject: {subject}\n\nfrom a local program\n");

    let own =
        pf.sendmail_as(USER, "shop@example.com", &["one@example.net"], message("shop@example.com", "own").as_bytes());
    assert!(own.status.success(), "{}", String::from_utf8_lossy(&own.stderr));
    let null = pf.sendmail_as(USER, "<>", &["two@example.net"], message("shop@example.com", "null").as_bytes());
    assert!(null.status.success(), "{}", String::from_utf8_lossy(&null.stderr));
    let other = pf.sendmail_as(
        USER,
        "ceo@example.com",
        &["three@example.net"],
        message("ceo@example.com", "forged").as_bytes(),
    );
    assert!(!other.status.success(), "a forged sender was accepted");
    let refusal = String::from_utf8_lossy(&other.stderr);
    assert!(refusal.contains("not authorized to use sender"), "{refusal}");
    let unlisted = pf.sendmail_as(
        "daemon",
        "daemon@example.com",
        &["four@example.net"],
        message("daemon@example.com", "unlisted").as_bytes(),
    );
    assert!(!unlisted.status.success(), "a user with no line submitted mail");
    assert!(String::from_utf8_lossy(&unlisted.stderr).contains("not authorized to use sender"), "{unlisted:?}");
    let root =
        pf.sendmail("anyone@example.com", &["five@example.net"], message("anyone@example.com", "root").as_bytes());
    assert!(root.status.success(), "{}", String::from_utf8_lossy(&root.stderr));

    let delivered = sink.wait_for_messages(3, WAIT);
    let mut subjects: Vec<String> = delivered.iter().filter_map(|m| m.header("Subject")).collect();
    subjects.sort();
    assert_eq!(subjects, ["null", "own", "root"], "{}", pf.log());
    // The filter counted the submission under the address Postfix vouched for.
    let top = guard.cli(&["--json", "senders", "top"]);
    let top: serde_json::Value = serde_json::from_slice(&top.stdout).expect("JSON");
    let accounts: Vec<&str> =
        top["senders"].as_array().expect("senders").iter().filter_map(|s| s["account"].as_str()).collect();
    assert!(accounts.contains(&"shop@example.com"), "{top}");
    assert!(!accounts.contains(&"ceo@example.com"), "{top}");
}
