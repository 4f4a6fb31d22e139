//! The whole loop through a real Postfix: an account reaches its limit through Postfix, the
//! filter restricts it, and the administrators' notification is relayed by the very Postfix
//! that loads the filter — without being counted or restricted itself — and counted in the
//! metrics as delivered.
#![cfg(feature = "real-peers")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::binary::{GuardProcess, binary};
use common::postfix::{Postfix, PostfixOptions};
use common::process::free_port;
use common::smtp_sink::SmtpSink;
use common::swaks::Swaks;

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
        let text = guard.metrics();
        if text.contains(expected) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(common::process::POLL);
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

/// The relay an administrator points `notify.smtp` at is often a submission service: TLS
/// required, login required, a certificate from the company's own CA. Here Postfix refuses
/// MAIL before STARTTLS (`smtpd_tls_security_level = encrypt`) and relays for nobody without
/// AUTH (127.0.0.1 is outside `mynetworks`, no relay domains), and its certificate is signed by
/// a private CA the filter trusts through `SSL_CERT_FILE` only.
#[test]
fn notifications_go_through_starttls_and_auth_trusting_the_system_roots() {
    let certs = tempfile::tempdir().unwrap();
    common::tls::test_ca_and_server(certs.path());
    let file = |name: &str| certs.path().join(name).to_str().unwrap().to_owned();
    let sink = SmtpSink::start();
    let pf = Postfix::start(
        PostfixOptions::new()
            .relay_to(&sink)
            .mynetworks("127.0.0.2/32")
            .relay_domains(&[])
            .sasl_user("notifier@example.com", "s3cret pass")
            .main_cf(&format!("smtpd_tls_cert_file = {}", file("server.pem")))
            .main_cf(&format!("smtpd_tls_key_file = {}", file("server.key")))
            .main_cf("smtpd_tls_security_level = encrypt")
            .main_cf("smtpd_tls_auth_only = yes")
            .main_cf("smtpd_tls_loglevel = 1")
            // smtpd's TLS needs the TLS manager (entropy, session cache).
            .master_cf("tlsmgr unix - - n 1000? 1 tlsmgr"),
    );
    let policy = |user: &str| {
        format!(
            "[notify]\nrecipients = [\"postmaster@example.com\"]\nfrom = \"outbound-guard@example.com\"\n\
             smtp = \"smtp://{user}:s3cret%20pass@127.0.0.1:{}?tls=starttls\"\nlanguage = \"en\"\n\
",
            pf.smtp_port()
        )
    };
    let ca = file("ca.pem");
    let guard =
        GuardProcess::start_with_env(free_port(), "", &policy("notifier%40example.com"), &[("SSL_CERT_FILE", &ca)]);
    let out = guard.cli(&["restricted", "add", "mallory@example.com", "--reason", "phished"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let messages = sink.wait_for_messages(1, WAIT);
    let notification = messages
        .iter()
        .find(|m| m.rcpts == ["postmaster@example.com"])
        .unwrap_or_else(|| panic!("no notification among {messages:?}\nmaillog:\n{}\n{}", pf.log(), guard.log()));
    assert!(notification.header("Subject").is_some_and(|s| s.contains("mallory@example.com")), "{notification:?}");
    let maillog = pf.log();
    assert!(maillog.contains("TLS connection established from"), "{maillog}");
    assert!(maillog.contains("sasl_username=notifier@example.com"), "{maillog}");
    let (status, log) = guard.terminate();
    assert!(status.success(), "{log}");
}
