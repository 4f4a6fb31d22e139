//! The bounce signal through a real Postfix: the filter follows Postfix's own log while
//! Postfix relays an account's mail to a sink that takes it, one that refuses every recipient
//! with 5xx and one that answers 4xx; `postfix logrotate` rotates the log in the middle. The
//! account is restricted for its bounces, the deferred recipient counts for neither side,
//! and the next MAIL FROM of the account gets 550 5.1.8.
#![cfg(feature = "real-peers")]

mod common;

use std::time::Duration;

use common::binary::GuardProcess;
use common::postfix::{Postfix, PostfixOptions};
use common::redis::wait_until;
use common::smtp_sink::SmtpSink;
use common::swaks::Swaks;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn bounces_seen_in_the_postfix_log_restrict_the_account_across_a_logrotate() {
    // The filter is told a path that does not exist yet: Postfix's log is linked there once
    // Postfix runs (the filter must be listening first), so the follower also starts on a
    // missing file.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    let guard = GuardProcess::start(
        "",
        &format!(
            "[organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"127.0.0.1/32\"]\n\
             [delivery]\npostfix_log = \"{}\"\n\
             [policy.default]\nbounce_percent = 50\nbounce_min_recipients = 2\nbounce_window = \"1h\"\n",
            log.display()
        ),
    );
    let sink = SmtpSink::start();
    let refusing = SmtpSink::start_with_args(&["-f", "RCPT"]);
    let deferring = SmtpSink::start_with_args(&["-r", "RCPT"]);
    let pf = Postfix::start(
        PostfixOptions::new()
            .relay_to(&sink)
            .smtpd_milters(&guard.milter_address())
            .milter_default_action("tempfail")
            .main_cf(&format!(
                "transport_maps = inline:{{ {{ refuse.example = smtp:[127.0.0.1]:{} }}, \
                 {{ later.example = smtp:[127.0.0.1]:{} }} }}",
                refusing.port(),
                deferring.port()
            )),
    );
    std::os::unix::fs::symlink(pf.root_dir().join("maillog"), &log).unwrap();
    assert!(wait_until(WAIT, || guard.log().contains("Postfix log opened")), "{}", guard.log());

    let send = |to: &[&str]| Swaks::new(pf.smtp_port()).from("bob@example.com").tos(to).run();
    let first = send(&["one@example.net", "x@refuse.example"]);
    assert!(first.success(), "{}", first.transcript);
    assert!(pf.wait_log("status=bounced", WAIT) && pf.wait_log("status=sent", WAIT), "{}", pf.log());
    assert!(!guard.log().contains("account restricted"), "one bounce is under bounce_min_recipients");

    let rotated = pf.run_tool("postfix", &["logrotate"]);
    assert!(rotated.status.success(), "{}", common::process::output_text(&rotated));

    let second = send(&["y@refuse.example", "z@later.example"]);
    assert!(second.success(), "{}", second.transcript);
    assert!(pf.wait_log("status=bounced", WAIT) && pf.wait_log("status=deferred", WAIT), "{}", pf.log());
    assert!(wait_until(WAIT, || guard.log().contains("account restricted")), "{}\n{}", guard.log(), pf.log());
    let text = guard.log();
    // Either the new file was there at the next poll, or not yet (Postfix creates it with its
    // next line): both are followed on.
    assert!(text.contains("log file rotated") || text.contains("log file moved away"), "{text}");
    assert!(
        text.contains("2 of its 3 recipients with a final outcome in the last 1h bounced"),
        "the deferred recipient counts for neither side: {text}"
    );
    assert!(text.contains("y@refuse.example: 5."), "a bounce named in the reason: {text}");

    let after = send(&["two@example.net"]);
    assert!(after.has_reply("550 5.1.8"), "{}", after.transcript);
    let (status, log) = guard.terminate();
    assert!(status.success(), "{log}");
}
