//! The whole loop through a real Postfix: an account reaches its limit through Postfix, the
//! filter restricts it, and the administrators' notification is relayed by the very Postfix
//! that loads the filter — without being counted or restricted itself.
#![cfg(feature = "real-peers")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::binary::{GuardProcess, binary};
use common::postfix::{Postfix, PostfixOptions, SmtpSink, Swaks, free_port};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_restriction_notifies_the_administrators_through_the_same_postfix() {
    let sink = SmtpSink::start();
    // Postfix first (the notifier needs its port), pointed at the milter port the filter will use.
    let milter_port = free_port();
    let pf = Postfix::start(
        PostfixOptions::new()
            .relay_to(&sink)
            .smtpd_milters(&format!("inet:127.0.0.1:{milter_port}"))
            .milter_default_action("tempfail"),
    );
    let policy = format!(
        "[organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"127.0.0.1/32\"]\n\
         [notify]\nrecipients = [\"postmaster@example.com\"]\nfrom = \"outbound-guard@example.com\"\n\
         smtp = \"smtp://127.0.0.1:{}\"\nlanguage = \"en\"\nwarn_at_percent = 0\n\
         [policy.default]\nrecipient_limit_external_per_hour = 1\n",
        pf.smtp_port()
    );
    let guard = GuardProcess::start_on(milter_port, "", &policy);

    let r = Swaks::new(pf.smtp_port()).from("bob@example.com").tos(&["a@example.net", "b@example.net"]).run();
    assert!(r.has_reply("550 5.2.2"), "{}", r.transcript);
    let messages = sink.wait_for_messages(2, WAIT);
    let notification = messages
        .iter()
        .find(|m| m.rcpts == ["postmaster@example.com"])
        .unwrap_or_else(|| panic!("no notification among {messages:?}\nmaillog:\n{}", pf.log()));
    assert_eq!(
        notification.header("Subject").as_deref(),
        Some("Outbound spam notification - bob@example.com blocked from sending outbound mail")
    );
    assert_eq!(notification.mail_from, "outbound-guard@example.com");
    let parsed = mail_parser::MessageParser::default().parse(&notification.data).expect("a parsable message");
    let body = parsed.body_text(0).expect("a text body");
    assert!(body.contains("restricted release bob@example.com"), "{body}");

    // The notifier's own mail passed the filter without being counted.
    let top = Command::new(binary())
        .arg("--config")
        .arg(guard.config_path())
        .args(["senders", "top", "--json"])
        .output()
        .unwrap();
    let top: serde_json::Value = serde_json::from_slice(&top.stdout).unwrap();
    let accounts: Vec<&str> =
        top["senders"].as_array().unwrap().iter().map(|s| s["account"].as_str().unwrap()).collect();
    assert!(!accounts.contains(&"outbound-guard@example.com"), "{accounts:?}");
    let (status, log) = guard.terminate();
    assert!(status.success(), "{log}");
}
