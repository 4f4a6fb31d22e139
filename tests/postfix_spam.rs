//! The spam share restricts an account through a real Postfix with a real spamd as the verdict
//! source: an authenticated account sends GTUBE until `spam_min_messages` spam verdicts are in
//! its window, is restricted by the message that reaches the threshold, and its next
//! transaction gets `550 5.1.8` at MAIL FROM — while another account sending ordinary mail
//! through the same Postfix and scanner is untouched.
#![cfg(feature = "real-peers")]

mod common;

use std::time::Duration;

use common::binary::GuardProcess;
use common::postfix::{Postfix, PostfixOptions};
use common::scanners::Spamd;
use common::smtp_sink::SmtpSink;
use common::swaks::Swaks;

const WAIT: Duration = Duration::from_secs(30);

/// SpamAssassin's test string: any spamd scores it 1000.
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

#[test]
fn an_account_sending_gtube_is_restricted_after_spam_min_messages() {
    let spamd = Spamd::start().expect("spamd starts");
    let config = format!(
        "[organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"127.0.0.1/32\"]\n\
         [verdict]\nsources = [\"spamd\"]\nspamd = \"{}\"\n\
         [policy.default]\nspam_min_messages = 2\nspam_percent = 50\nspam_action = \"block\"\n\
         spam_message_action = \"accept\"\n",
        spamd.addr
    );
    let guard = GuardProcess::start("", &config);
    let sink = SmtpSink::start();
    let pf = Postfix::start(
        PostfixOptions::new()
            .relay_to(&sink)
            .smtpd_milters(&guard.milter_address())
            .milter_default_action("tempfail")
            .sasl_user("mallory@example.com", "s3cret")
            .sasl_user("alice@example.com", "wonder"),
    );
    let send = |user: &str, password: &str, subject: &str, body: &str| {
        Swaks::new(pf.smtp_port())
            .outside()
            .auth_plain(user, password)
            .from(user)
            .to("victim@example.net")
            .header(&format!("Subject: {subject}"))
            .body(body)
            .run()
    };

    // One spam verdict: below spam_min_messages, the message is delivered (action "accept").
    let first = send("mallory@example.com", "s3cret", "spam 1", GTUBE);
    assert!(first.success(), "{}", first.transcript);
    // Ham from another account through the same scanner counts for that account only.
    let ham = send("alice@example.com", "wonder", "minutes", "The minutes of Thursday's meeting are attached.");
    assert!(ham.success(), "{}", ham.transcript);
    // The second spam verdict reaches the threshold (2 of 2 messages): the account is
    // restricted; this message itself was already accepted for delivery.
    let second = send("mallory@example.com", "s3cret", "spam 2", GTUBE);
    assert!(second.success(), "{}", second.transcript);

    // From now on the account's mail is refused at MAIL FROM, with the restricted reply.
    let third = send("mallory@example.com", "s3cret", "spam 3", "even an innocent message");
    assert!(!third.success(), "{}", third.transcript);
    assert!(third.has_reply("550 5.1.8"), "{}", third.transcript);
    // The other account still sends.
    let again = send("alice@example.com", "wonder", "follow-up", "One more thing about Thursday.");
    assert!(again.success(), "{}", again.transcript);

    let delivered = sink.wait_for_messages(4, WAIT);
    let subjects: Vec<String> = delivered.iter().filter_map(|m| m.header("Subject")).collect();
    for expected in ["spam 1", "minutes", "spam 2", "follow-up"] {
        assert!(subjects.iter().any(|s| s == expected), "{expected:?} not delivered: {subjects:?}");
    }
    assert!(!subjects.iter().any(|s| s == "spam 3"), "{subjects:?}");

    let (status, log) = guard.terminate();
    assert!(status.success(), "{log}");
    // "account restricted: <reason>" is the restriction; "MAIL FROM refused: account
    // restricted" lines are its enforcement.
    let restricted: Vec<&str> = log.lines().filter(|l| l.contains("account restricted: ")).collect();
    assert_eq!(restricted.len(), 1, "exactly one restriction:\n{log}");
    assert!(restricted[0].contains("mallory@example.com"), "{}", restricted[0]);
    assert!(restricted[0].contains("2 of its 2 messages"), "the reason carries the counts: {}", restricted[0]);
}
