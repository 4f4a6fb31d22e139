//! A real Postfix loads the real `outbound-guard` binary as its milter: mail from an internal
//! client and from an authenticated one passes through the filter to the sink, Postfix logs no
//! milter trouble, and SIGTERM stops the filter with exit status 0.
#![cfg(feature = "real-peers")]

mod common;

use std::time::Duration;

use common::binary::GuardProcess;
use common::postfix::{Postfix, PostfixOptions};
use common::smtp_sink::SmtpSink;
use common::swaks::Swaks;

const WAIT: Duration = Duration::from_secs(20);

/// Postfix log lines that mean the milter conversation went wrong.
fn milter_trouble(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("milter") && (l.contains("warning") || l.contains("error"))).collect()
}

#[test]
fn postfix_delivers_through_the_milter() {
    let guard = GuardProcess::start("", "");
    let sink = SmtpSink::start();
    let pf = Postfix::start(
        PostfixOptions::new()
            .relay_to(&sink)
            .smtpd_milters(&guard.milter_address())
            // A filter that fails must show: without it Postfix would quietly skip it.
            .milter_default_action("tempfail")
            .sasl_user("alice@example.com", "s3cret"),
    );

    let internal = Swaks::new(pf.smtp_port())
        .from("bob@example.com")
        .tos(&["one@example.net", "two@example.com", "three@example.org"])
        .header("Subject: through the milter")
        .body("first message")
        .run();
    assert!(internal.success(), "{}", internal.transcript);

    let authenticated = Swaks::new(pf.smtp_port())
        .outside()
        .auth_plain("alice@example.com", "s3cret")
        .from("alice@example.com")
        .to("someone@example.net")
        .header("Subject: authenticated")
        .body("second message")
        .run();
    assert!(authenticated.success(), "{}", authenticated.transcript);

    let delivered = sink.wait_for_messages(2, WAIT);
    assert_eq!(delivered.len(), 2, "sink got {delivered:?}\nmaillog:\n{}", pf.log());
    let subjects: Vec<_> = delivered.iter().filter_map(|m| m.header("Subject")).collect();
    assert!(subjects.iter().any(|s| s == "through the milter"), "{subjects:?}");
    assert!(subjects.iter().any(|s| s == "authenticated"), "{subjects:?}");

    let log = pf.log();
    assert!(milter_trouble(&log).is_empty(), "Postfix logged milter trouble:\n{log}");

    let (status, guard_log) = guard.terminate();
    assert!(status.success(), "exit status {status} after SIGTERM; log:\n{guard_log}");
    assert!(guard_log.contains("SIGTERM received"), "{guard_log}");
    // The filter really was in the path: it logged the MTA's connections.
    assert!(guard_log.contains("milter connection opened"), "{guard_log}");
    // Logging to a file or journald, not a terminal: plain text, no colour codes.
    assert!(!guard_log.contains('\u{1b}'), "ANSI escapes in a log that is not a terminal:\n{guard_log}");
}

#[test]
fn a_filter_that_is_down_makes_postfix_tempfail_so_the_test_above_is_meaningful() {
    let guard = GuardProcess::start("", "");
    let address = guard.milter_address();
    let (status, _) = guard.terminate();
    assert!(status.success());
    let sink = SmtpSink::start();
    let pf =
        Postfix::start(PostfixOptions::new().relay_to(&sink).smtpd_milters(&address).milter_default_action("tempfail"));
    let r = Swaks::new(pf.smtp_port()).from("bob@example.com").to("one@example.net").run();
    assert!(!r.success(), "delivery succeeded without the milter:\n{}", r.transcript);
    assert!(r.codes().iter().any(|c| (400..500).contains(c)), "{}", r.transcript);
}
