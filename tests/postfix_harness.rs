//! Checks of the real-Postfix harness itself (`tests/common/postfix.rs`, `smtp_sink.rs` and
//! `swaks.rs`): needs root, Postfix, smtp-sink, swaks and the Cyrus SASL tools.
#![cfg(feature = "real-peers")]

mod common;

use std::time::Duration;

use common::postfix::{Postfix, PostfixOptions};
use common::process::free_port;
use common::smtp_sink::SmtpSink;
use common::swaks::Swaks;

const WAIT: Duration = Duration::from_secs(20);

/// A mynetworks client's message is relayed to the sink with its envelope.
#[test]
fn relays_mynetworks_client_to_sink() {
    let sink = SmtpSink::start();
    let pf = Postfix::start(PostfixOptions::new().relay_to(&sink));
    let r = Swaks::new(pf.smtp_port())
        .from("alice@example.com")
        .tos(&["bob@example.net", "carol@example.org", "dave@example.com"])
        .header("Subject: harness check")
        .body("hello from the harness")
        .run();
    assert!(r.success(), "swaks failed:\n{}", r.transcript);
    assert!(r.has_reply("250 2.0.0 Ok: queued as"), "{}", r.transcript);

    let msgs = sink.wait_for_messages(1, WAIT);
    assert_eq!(msgs.len(), 1, "sink got {msgs:?}\nmaillog:\n{}", pf.log());
    let m = &msgs[0];
    assert_eq!(m.mail_from, "alice@example.com");
    // qmgr does not keep the RCPT order.
    let mut rcpts = m.rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["bob@example.net", "carol@example.org", "dave@example.com"]);
    assert_eq!(m.header("Subject").as_deref(), Some("harness check"));
    assert!(m.body().contains("hello from the harness"), "{}", m.data_str());
    let qid = r.queue_id().expect("queue id");
    assert!(pf.wait_log(&format!("{qid}: removed"), WAIT), "{}", pf.log());
    assert!(pf.wait_queue_empty(WAIT));
}

/// AUTH PLAIN with a good password relays; a bad one gets 535.
#[test]
fn sasl_auth_good_and_bad_password() {
    let sink = SmtpSink::start();
    let pf = Postfix::start(
        PostfixOptions::new().relay_to(&sink).sasl_user("alice@example.com", "s3cret").sasl_user("bob", "hunter2"),
    );
    // From outside mynetworks, so only the AUTH allows relaying.
    let good = Swaks::new(pf.smtp_port())
        .outside()
        .auth_plain("alice@example.com", "s3cret")
        .from("alice@example.com")
        .to("someone@example.net")
        .run();
    assert!(good.success(), "{}", good.transcript);
    assert!(good.has_reply("235"), "{}", good.transcript);
    let good2 = Swaks::new(pf.smtp_port())
        .outside()
        .auth_plain("bob", "hunter2")
        .from("bob@example.com")
        .to("other@example.net")
        .run();
    assert!(good2.success(), "{}", good2.transcript);

    let bad = Swaks::new(pf.smtp_port())
        .outside()
        .auth_plain("alice@example.com", "wrong")
        .from("alice@example.com")
        .to("someone@example.net")
        .run();
    assert!(!bad.success());
    assert!(bad.has_reply("535"), "{}", bad.transcript);

    let msgs = sink.wait_for_messages(2, WAIT);
    assert_eq!(msgs.len(), 2, "maillog:\n{}", pf.log());
    let mut rcpts: Vec<String> = msgs.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["other@example.net", "someone@example.net"]);
    assert!(pf.wait_log("sasl_username=alice@example.com", WAIT), "{}", pf.log());
    assert!(pf.wait_log("sasl_username=bob@outbound-guard.test", WAIT), "{}", pf.log());
}

/// An outside client may send to our domain but may not relay elsewhere.
#[test]
fn outside_client_only_to_our_domain() {
    let sink = SmtpSink::start();
    let pf = Postfix::start(PostfixOptions::new().relay_to(&sink).relay_domains(&["example.com"]));
    let ours = Swaks::new(pf.smtp_port()).outside().from("stranger@example.net").to("postmaster@example.com").run();
    assert!(ours.success(), "{}", ours.transcript);

    let relay = Swaks::new(pf.smtp_port()).outside().from("stranger@example.net").to("victim@example.org").run();
    assert!(!relay.success());
    assert!(relay.has_reply("554 5.7.1"), "{}", relay.transcript);
    // Postfix writes its log through postlogd, after the reply: wait for the line.
    assert!(pf.wait_log("Relay access denied", WAIT), "{}", pf.log());

    let msgs = sink.wait_for_messages(1, WAIT);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, ["postmaster@example.com"]);
    assert_eq!(msgs[0].mail_from, "stranger@example.net");
}

/// Milter settings are applied: an unreachable milter + tempfail gives 4xx.
#[test]
fn unreachable_milter_tempfails() {
    let sink = SmtpSink::start();
    let nobody_listens = free_port();
    let pf = Postfix::start(
        PostfixOptions::new().relay_to(&sink).milter_port(nobody_listens).milter_default_action("tempfail"),
    );
    let r = Swaks::new(pf.smtp_port()).from("alice@example.com").to("bob@example.net").run();
    assert!(!r.success());
    assert!(r.codes().iter().any(|c| (400..500).contains(c)), "{}", r.transcript);
    assert!(r.has_reply("451 4.7.1"), "{}", r.transcript);
    assert!(pf.wait_log(&format!("connect to Milter service inet:127.0.0.1:{nobody_listens}"), WAIT));
    assert!(sink.messages().is_empty());
}
