//! Recipient limits enforced through a real Postfix: an internal client's sender and an
//! authenticated submission reach the external limit and the SMTP client sees the 5xx replies,
//! while mail from an outside client to the restricted account still reaches the sink.
#![cfg(feature = "real-peers")]

mod common;

use std::time::Duration;

use common::binary::GuardProcess;
use common::postfix::{Postfix, PostfixOptions};
use common::smtp_sink::SmtpSink;
use common::swaks::Swaks;

const WAIT: Duration = Duration::from_secs(20);

const POLICY: &str = "[organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"127.0.0.1/32\"]\n\
     [policy.default]\nrecipient_limit_external_per_hour = 2\n\
     [replies]\naccount_restricted = \"550 5.1.8 Outbound mail stopped at 100% of the quota; ask IT\"\n";

fn setup(guard: &GuardProcess, sink: &SmtpSink) -> Postfix {
    Postfix::start(
        PostfixOptions::new()
            .relay_to(sink)
            .smtpd_milters(&guard.milter_address())
            .milter_default_action("tempfail")
            .sasl_user("alice@example.com", "s3cret"),
    )
}

#[test]
fn an_internal_sender_reaches_the_limit_and_inbound_mail_to_it_still_flows() {
    let guard = GuardProcess::start("", POLICY);
    let sink = SmtpSink::start();
    let pf = setup(&guard, &sink);

    let first = Swaks::new(pf.smtp_port()).from("bob@example.com").tos(&["a@example.net", "b@example.net"]).run();
    assert!(first.success(), "{}", first.transcript);
    // The third external recipient reaches the limit: Postfix relays our 550 5.2.2.
    let second = Swaks::new(pf.smtp_port()).from("bob@example.com").to("c@example.net").run();
    assert!(!second.success());
    assert!(second.has_reply("550 5.2.2"), "{}", second.transcript);
    // Later mail from the account is refused at MAIL FROM.
    let third = Swaks::new(pf.smtp_port()).from("bob@example.com").to("d@example.net").run();
    assert!(third.has_reply("550 5.1.8"), "{}", third.transcript);
    assert!(third.transcript.contains("stopped at 100% of the quota"), "the % as written: {}", third.transcript);

    // An outside client (127.0.0.2) writes to the restricted account: delivered.
    let inbound = Swaks::new(pf.smtp_port()).outside().from("friend@example.org").to("bob@example.com").run();
    assert!(inbound.success(), "{}", inbound.transcript);
    let delivered = sink.wait_for_messages(2, WAIT);
    assert!(delivered.iter().any(|m| m.rcpts == ["bob@example.com"]), "{delivered:?}");
    assert!(!delivered.iter().any(|m| { m.rcpts.iter().any(|r| r == "c@example.net" || r == "d@example.net") }));
    let (status, log) = guard.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("account restricted"), "{log}");
}

#[test]
fn an_authenticated_submission_reaches_the_limit() {
    let guard = GuardProcess::start("", POLICY);
    let sink = SmtpSink::start();
    let pf = setup(&guard, &sink);
    let send = |to: &[&str]| {
        Swaks::new(pf.smtp_port())
            .outside()
            .auth_plain("alice@example.com", "s3cret")
            .from("alice@example.com")
            .tos(to)
            .run()
    };
    let ok = send(&["x@example.net", "y@example.net"]);
    assert!(ok.success(), "{}", ok.transcript);
    let over = send(&["z@example.net"]);
    assert!(over.has_reply("550 5.2.2"), "{}", over.transcript);
    let after = send(&["w@example.net"]);
    assert!(after.has_reply("550 5.1.8"), "{}", after.transcript);
    // The spoofed sender trick does not help: another MAIL FROM, same login, same refusal.
    let spoof = Swaks::new(pf.smtp_port())
        .outside()
        .auth_plain("alice@example.com", "s3cret")
        .from("someone-else@example.com")
        .to("v@example.net")
        .run();
    assert!(spoof.has_reply("550 5.1.8"), "{}", spoof.transcript);
    assert_eq!(sink.wait_for_messages(1, WAIT).len(), 1);
}

/// Recipients are counted when the message is accepted, not at RCPT TO: a message that Postfix
/// defers after its recipients (here at DATA) and the client sends again is counted once.
#[test]
fn a_message_deferred_after_its_recipients_and_sent_again_counts_once() {
    let guard = GuardProcess::start("", POLICY);
    let sink = SmtpSink::start();
    let pf = Postfix::start(
        PostfixOptions::new()
            .relay_to(&sink)
            .smtpd_milters(&guard.milter_address())
            .milter_default_action("tempfail")
            .main_cf(
                "smtpd_data_restrictions = check_sender_access inline:{ { bob@example.com = 450 4.3.0 try again } }",
            ),
    );
    let send = || Swaks::new(pf.smtp_port()).from("bob@example.com").tos(&["a@example.net", "b@example.net"]).run();
    // Two tries deferred at DATA: with recipients counted at RCPT TO, the second one would
    // already have passed the limit of 2.
    for _ in 0..2 {
        let deferred = send();
        assert!(deferred.has_reply("450 4.3.0"), "{}", deferred.transcript);
    }
    pf.reconfigure(&["smtpd_data_restrictions="]).expect("lift the DATA restriction");
    let accepted = send();
    assert!(accepted.success(), "{}", accepted.transcript);
    assert_eq!(sink.wait_for_messages(1, WAIT).len(), 1);
    // The limit is reached by the next recipient, not before.
    let over = Swaks::new(pf.smtp_port()).from("bob@example.com").to("c@example.net").run();
    assert!(over.has_reply("550 5.2.2"), "{}", over.transcript);
}

/// A restricted account whose policy lists `always_allowed_recipients` still reaches the
/// helpdesk through Postfix: MAIL FROM passes, the helpdesk recipient is accepted and
/// delivered, any other recipient gets `550 5.1.8` at RCPT TO and never reaches the sink.
#[test]
fn a_restricted_account_still_reaches_the_helpdesk_and_nobody_else() {
    let policy = POLICY
        .replace("[policy.default]\n", "[policy.default]\nalways_allowed_recipients = [\"helpdesk@example.net\"]\n");
    let guard = GuardProcess::start("", &policy);
    let sink = SmtpSink::start();
    let pf = setup(&guard, &sink);
    let send = |to: &[&str]| Swaks::new(pf.smtp_port()).from("bob@example.com").tos(to).run();

    let first = send(&["a@example.net", "b@example.net"]);
    assert!(first.success(), "{}", first.transcript);
    let over = send(&["c@example.net"]);
    assert!(over.has_reply("550 5.2.2"), "{}", over.transcript);

    let other = send(&["d@example.net"]);
    assert!(!other.success());
    assert!(other.has_reply("550 5.1.8"), "refused at RCPT TO: {}", other.transcript);
    let helpdesk = send(&["helpdesk@example.net"]);
    assert!(helpdesk.success(), "{}", helpdesk.transcript);

    let delivered = sink.wait_for_messages(2, WAIT);
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert!(delivered.iter().any(|m| m.rcpts == ["helpdesk@example.net"]), "{delivered:?}");
    assert!(!delivered.iter().any(|m| m.rcpts.iter().any(|r| r == "c@example.net" || r == "d@example.net")));
    let (status, log) = guard.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("only its always-allowed recipients pass"), "{log}");
}

/// A domain cap through a real Postfix: two authenticated accounts of one customer domain each
/// stay under their own limit, together they reach the domain's; the domain is restricted as a
/// unit, so both accounts are refused at MAIL FROM, and the CLI releases it by `@domain`.
#[test]
fn two_accounts_of_one_domain_reach_its_cap_together() {
    let guard = GuardProcess::start(
        "",
        "[organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"127.0.0.1/32\"]\n\
         [policy.default]\nrecipient_limit_external_per_hour = 10\n\
         [[policy.domain]]\ndomain = \"customer.example\"\nrecipient_limit_external_per_hour = 3\naction = \"block\"\n",
    );
    let sink = SmtpSink::start();
    let pf = Postfix::start(
        PostfixOptions::new()
            .relay_to(&sink)
            .smtpd_milters(&guard.milter_address())
            .milter_default_action("tempfail")
            .sasl_user("ann@customer.example", "pw-ann")
            .sasl_user("ben@shop.customer.example", "pw-ben"),
    );
    let send = |login: &str, password: &str, to: &[&str]| {
        Swaks::new(pf.smtp_port()).outside().auth_plain(login, password).from(login).tos(to).run()
    };
    let ann = send("ann@customer.example", "pw-ann", &["a@example.net", "b@example.net"]);
    assert!(ann.success(), "{}", ann.transcript);
    // Ben is in a subdomain: his recipients count under the same cap; the second one is over it.
    let ben = send("ben@shop.customer.example", "pw-ben", &["c@example.net", "d@example.net"]);
    assert!(ben.has_reply("550 5.2.2"), "{}", ben.transcript);
    for (login, password) in [("ann@customer.example", "pw-ann"), ("ben@shop.customer.example", "pw-ben")] {
        let refused = send(login, password, &["e@example.net"]);
        assert!(refused.has_reply("550 5.1.8"), "{login}: {}", refused.transcript);
    }
    let list = guard.cli(&["--json", "restricted", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("JSON");
    let accounts: Vec<&str> =
        list["restricted"].as_array().expect("list").iter().filter_map(|r| r["account"].as_str()).collect();
    assert_eq!(accounts, ["@customer.example"]);
    let release = guard.cli(&["restricted", "release", "@customer.example"]);
    assert!(release.status.success(), "{}", String::from_utf8_lossy(&release.stderr));
    let after = send("ann@customer.example", "pw-ann", &["f@example.net"]);
    assert!(after.success(), "{}", after.transcript);
    let delivered: Vec<String> = sink.wait_for_messages(3, WAIT).iter().flat_map(|m| m.rcpts.clone()).collect();
    assert!(delivered.contains(&"c@example.net".to_string()) && !delivered.contains(&"d@example.net".to_string()));
}
