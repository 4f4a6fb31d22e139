//! The README's Sendmail recipe ("Deployment" → "Sendmail"), read from the README itself and
//! given to a real Sendmail 8.17 with only the ports changed: mail by SMTP passes the filter's
//! SMTP socket to the next hop; a sender past its limit gets the filter's `550 5.2.2`, then
//! `550 5.1.8`, with the configured text; mail a local program submits with `sendmail(1)` (the
//! MSP, run as an unprivileged user) reaches the local-submission socket through the `MSA-local`
//! daemon, is counted under its sender and under `local-submissions`, and over
//! `max_recipients_per_message` is refused whole and returned to its sender instead of waiting in
//! a queue; with the filter stopped (`F=T`) SMTP mail is tempfailed and a local submission waits
//! in the MSP's queue.
#![cfg(feature = "real-peers")]

mod common;

use std::time::{Duration, Instant};

use common::binary::GuardProcess;
use common::process::{POLL, free_port};
use common::readme::deployment_block;
use common::sendmail::{Sendmail, SendmailOptions};
use common::smtp_sink::{SinkMessage, SmtpSink};
use common::swaks::{Swaks, SwaksOutput};

const WAIT: Duration = Duration::from_secs(20);
/// What the README's recipe points at; the test substitutes its own ports.
const README_FILTER: &str = "S=inet:7357@127.0.0.1,";
const README_LOCAL_FILTER: &str = "S=inet:7359@127.0.0.1,";
const README_MSA_PORT: &str = "Port=1587,";
const README_MSP_ARGS: &str = "`TCP $h 1587'";
/// The unprivileged user local programs run as.
const LOCAL_USER: &str = "nobody";

/// Replies with a `%`: Sendmail reads a milter's reply text as a format, so the client must see
/// the `%` once, as configured.
const LIMIT_REACHED: (&str, &str) = ("550 5.2.2", "Limit of 3 recipients an hour (100%) reached; ask the postmaster");
const RESTRICTED: (&str, &str) = ("550 5.1.8", "Sending is suspended (100% used); ask the postmaster");

/// The client got the filter's reply `(code, text)`. Sendmail puts the address the command
/// named between the two (`550 5.2.2 <rcpt@example.net>... text`).
fn assert_reply(out: &SwaksOutput, (code, text): (&str, &str)) {
    assert!(
        out.replies().iter().any(|r| r.starts_with(code) && r.ends_with(text)),
        "wanted {code} … {text:?}:\n{}",
        out.transcript
    );
}

/// A filter with small limits, a sink, and Sendmail configured with the README's lines.
struct Setup {
    guard: GuardProcess,
    sink: SmtpSink,
    sendmail: Sendmail,
}

fn start() -> Setup {
    let local_port = free_port();
    let guard = GuardProcess::start(
        &format!("local_listen = \"inet:127.0.0.1:{local_port}\""),
        &format!(
            "[organization]\ninternal_networks = [\"127.0.0.0/8\"]\n\
             [replies]\nlimit_reached = \"{} {}\"\naccount_restricted = \"{} {}\"\n\
             [policy.default]\nrecipient_limit_external_per_hour = 3\nmax_recipients_per_message = 2\n\
             action_when_threshold_reached = \"block\"\n",
            LIMIT_REACHED.0, LIMIT_REACHED.1, RESTRICTED.0, RESTRICTED.1
        ),
    );
    let sink = SmtpSink::start();
    let msa_port = free_port();

    let mc = deployment_block("Sendmail", "dnl /etc/mail/sendmail.mc");
    let submit = deployment_block("Sendmail", "dnl /etc/mail/submit.mc");
    let text = mc.join("\n");
    for wanted in [
        "INPUT_MAIL_FILTER(`outbound-guard', `",
        "MAIL_FILTER(`outbound-guard-local', `",
        README_FILTER,
        README_LOCAL_FILTER,
        "F=T",
        README_MSA_PORT,
        "InputMailFilters=outbound-guard-local')",
    ] {
        assert!(text.contains(wanted), "README's sendmail.mc lacks {wanted:?}:\n{text}");
    }
    let submit_text = submit.join("\n");
    for wanted in [README_MSP_ARGS, "FEATURE(`msp', `[127.0.0.1]')"] {
        assert!(submit_text.contains(wanted), "README's submit.mc lacks {wanted:?}:\n{submit_text}");
    }

    let mut opts = SendmailOptions::new().relay_to(&sink).listens_on(msa_port);
    for line in &mc {
        opts = opts.mc(&line
            .replace(README_FILTER, &format!("S=inet:{}@127.0.0.1,", guard.milter_port))
            .replace(README_LOCAL_FILTER, &format!("S=inet:{local_port}@127.0.0.1,"))
            .replace(README_MSA_PORT, &format!("Port={msa_port},")));
    }
    for line in &submit {
        opts = opts.submit_mc(&line.replace(README_MSP_ARGS, &format!("`TCP $h {msa_port}'")));
    }
    Setup { guard, sink, sendmail: Sendmail::start(opts) }
}

/// `senders top --json`: the account's entry, if it has one.
fn sender(guard: &GuardProcess, account: &str) -> Option<serde_json::Value> {
    let out = guard.cli(&["--json", "senders", "top"]);
    assert!(out.status.success(), "senders top: {}", String::from_utf8_lossy(&out.stderr));
    let top: serde_json::Value = serde_json::from_slice(&out.stdout).expect("senders top prints JSON");
    top["senders"].as_array()?.iter().find(|s| s["account"] == account).cloned()
}

/// External recipients the filter counted for `account` this hour (0 for an account it has not
/// seen).
fn external(guard: &GuardProcess, account: &str) -> u64 {
    sender(guard, account).and_then(|s| s["counters"]["external_last_hour"].as_u64()).unwrap_or(0)
}

/// The first message at the sink with this subject, waiting (bounded) for it.
fn delivered(s: &Setup, subject: &str) -> SinkMessage {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(m) = s.sink.messages().into_iter().find(|m| m.header("Subject").as_deref() == Some(subject)) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{subject:?} did not reach the next hop\n--- Sendmail:\n{}\n--- filter:\n{}",
            s.sendmail.log(),
            s.guard.log()
        );
        std::thread::sleep(POLL);
    }
}

fn message(from: &str, to: &[&str], subject: &str) -> Vec<u8> {
    format!("From: {from}\nTo: {}\nSubject: {subject}\n\nfrom a local program\n", to.join(", ")).into_bytes()
}

#[test]
fn smtp_mail_through_the_readme_recipe_is_filtered_limited_and_tempfailed_without_the_filter() {
    let s = start();

    // (a) Ordinary mail passes the filter's SMTP socket and reaches the next hop.
    let plain = Swaks::new(s.sendmail.smtp_port())
        .from("bob@example.com")
        .to("one@example.net")
        .header("Subject: plain")
        .body("through the filter")
        .run();
    assert!(plain.success(), "{}\n--- Sendmail:\n{}", plain.transcript, s.sendmail.log());
    let m = delivered(&s, "plain");
    assert_eq!((m.mail_from.as_str(), m.rcpts.clone()), ("bob@example.com", vec!["one@example.net".to_string()]));
    assert_eq!(external(&s.guard, "bob@example.com"), 1, "counted by the filter");
    assert_eq!(external(&s.guard, "local-submissions"), 0, "port 25 mail is not a local submission");

    // (b) A sender reaching its limit of 3: the recipient past it gets the filter's reply, with
    // the configured text, through Sendmail; the account is then restricted at MAIL FROM.
    let first = Swaks::new(s.sendmail.smtp_port())
        .from("ann@example.com")
        .tos(&["r1@example.net", "r2@example.net"])
        .header("Subject: first")
        .run();
    assert!(first.success(), "{}", first.transcript);
    let past = Swaks::new(s.sendmail.smtp_port())
        .from("ann@example.com")
        .tos(&["r3@example.net", "r4@example.net"])
        .header("Subject: past the limit")
        .run();
    assert_reply(&past, LIMIT_REACHED);
    let restricted = Swaks::new(s.sendmail.smtp_port()).from("ann@example.com").to("r5@example.net").run();
    assert!(!restricted.success(), "{}", restricted.transcript);
    assert_reply(&restricted, RESTRICTED);
    assert_eq!(
        sender(&s.guard, "ann@example.com").map(|a| a["restricted"].clone()),
        Some(serde_json::Value::Bool(true))
    );

    // (c) F=T: with the filter gone, Sendmail tempfails instead of passing mail unchecked, and a
    // local submission waits in the MSP's queue.
    let Setup { guard, sink: _sink, sendmail } = s;
    let (status, guard_log) = guard.terminate();
    assert!(status.success(), "exit status {status}:\n{guard_log}");
    let deferred = Swaks::new(sendmail.smtp_port()).from("bob@example.com").to("two@example.net").run();
    assert!(!deferred.success(), "mail passed with the filter stopped:\n{}", deferred.transcript);
    assert!(deferred.has_reply("451 4.3.2"), "{}", deferred.transcript);
    let waiting = sendmail.submit(
        LOCAL_USER,
        "cron@example.com",
        &["three@example.net"],
        &message("cron@example.com", &["three@example.net"], "waits"),
    );
    assert!(waiting.status.success(), "MSP: {}", String::from_utf8_lossy(&waiting.stderr));
    assert_eq!(sendmail.client_queued().len(), 1, "the MSP keeps it to retry\n{}", sendmail.log());
    // Its session got the same 451 as the SMTP client's before it.
    assert_eq!(sendmail.log().matches(">>> 451 4.3.2").count(), 2, "{}", sendmail.log());
}

#[test]
fn local_submissions_through_the_readme_msp_reach_the_local_socket_and_over_the_cap_are_returned() {
    let s = start();

    // (d) A program running as an unprivileged user submits with sendmail(1): the MSP hands the
    // message to the MSA-local daemon, whose filter is the local-submission socket.
    let ok = s.sendmail.submit(
        LOCAL_USER,
        "cron@example.com",
        &["one@example.net"],
        &message("cron@example.com", &["one@example.net"], "nightly report"),
    );
    assert!(ok.status.success(), "MSP: {}", String::from_utf8_lossy(&ok.stderr));
    let m = delivered(&s, "nightly report");
    assert_eq!((m.mail_from.as_str(), m.rcpts.clone()), ("cron@example.com", vec!["one@example.net".to_string()]));
    assert_eq!(external(&s.guard, "cron@example.com"), 1, "counted under its envelope sender");
    assert_eq!(external(&s.guard, "local-submissions"), 1, "and under the aggregate account");

    // Over max_recipients_per_message (2): refused whole at its end, nothing counted, and
    // returned to its sender rather than kept in a queue to be retried.
    let rcpts = ["a@example.net", "b@example.net", "c@example.net"];
    let over =
        s.sendmail.submit(LOCAL_USER, "cron@example.com", &rcpts, &message("cron@example.com", &rcpts, "mailing"));
    let stderr = String::from_utf8_lossy(&over.stderr);
    assert!(s.sendmail.wait_log("550 5.5.3", WAIT), "no 550 5.5.3:\n{}\n--- MSP:\n{stderr}", s.sendmail.log());
    let bounce = delivered_to(&s, "cron@example.com");
    assert!(bounce.mail_from.is_empty(), "a returned message has the null sender: {:?}", bounce.mail_from);
    assert!(
        bounce.data_str().contains("Status: 5.5.3"),
        "the returned message names the refusal:\n{}",
        bounce.data_str()
    );
    assert!(
        s.sendmail.wait_queues_empty(WAIT),
        "kept to be retried: MSP's queue {:?}, MTA's queue {:?}\n{}",
        s.sendmail.client_queued(),
        s.sendmail.queued(),
        s.sendmail.log()
    );
    assert!(!s.sink.messages().iter().any(|m| m.header("Subject").as_deref() == Some("mailing")));
    assert_eq!(external(&s.guard, "cron@example.com"), 1, "the refused message counted nothing");
    assert_eq!(external(&s.guard, "local-submissions"), 1);
    // Two MSP runs, two SMTP sessions (the returned message went in the second), one milter
    // connection each: the MSA-local daemon used the local filter only, not the SMTP one too.
    let (status, guard_log) = s.guard.terminate();
    assert!(status.success(), "exit status {status}:\n{guard_log}");
    let connections = guard_log.matches("milter connection opened").count();
    assert_eq!(connections, 2, "{guard_log}\n--- Sendmail:\n{}", s.sendmail.log());
}

/// The first message at the sink for `rcpt` (a returned message), waiting (bounded) for it.
fn delivered_to(s: &Setup, rcpt: &str) -> SinkMessage {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(m) = s.sink.messages().into_iter().find(|m| m.rcpts.iter().any(|r| r == rcpt)) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "nothing reached {rcpt}\n--- Sendmail:\n{}\n--- filter:\n{}",
            s.sendmail.log(),
            s.guard.log()
        );
        std::thread::sleep(POLL);
    }
}
