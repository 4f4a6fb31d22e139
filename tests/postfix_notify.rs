//! The whole loop through a real Postfix: an account reaches its limit through Postfix, the
//! filter restricts it, and the administrators' notification is relayed by the very Postfix
//! that loads the filter — without being counted or restricted itself — and counted in the
//! metrics as delivered.
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

    // The delivery shows in the metrics an administrator scrapes (copied from the notifier at
    // each scrape; polled, bounded, because the relay's reply and the sink's copy race).
    let expected = "outbound_guard_notifications_total{channel=\"email\",outcome=\"delivered\"} 1";
    let deadline = std::time::Instant::now() + WAIT;
    let metrics = loop {
        let text = scrape_metrics(&guard);
        if text.contains(expected) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(common::postfix::POLL);
    };
    assert!(metrics.contains(expected), "missing {expected:?} in\n{metrics}");
    assert!(metrics.contains("outbound_guard_notifications_pending{channel=\"email\"} 0"), "{metrics}");
    assert!(
        !metrics.contains("outbound_guard_notifications_total{channel=\"email\",outcome=\"failed\"} 1"),
        "{metrics}"
    );
    let (status, log) = guard.terminate();
    assert!(status.success(), "{log}");
}

/// `GET /metrics` from the filter's admin listener (open without a token), over plain HTTP/1.0.
fn scrape_metrics(guard: &GuardProcess) -> String {
    use std::io::{Read, Write};
    let config = std::fs::read_to_string(guard.config_path()).unwrap();
    let admin = config
        .split("[admin]")
        .nth(1)
        .and_then(|section| section.lines().find_map(|l| l.trim().strip_prefix("listen = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("the admin listener in the test configuration");
    let mut stream = std::net::TcpStream::connect(&admin).expect("connect to the admin API");
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");
    response
}
