//! Local submissions through a real Postfix: `sendmail(1)` run as an unprivileged Unix user
//! (`nobody`, as a web application or a cron job runs), Postfix's pickup handing the message to
//! the filter's local-submission socket through `non_smtpd_milters`, the next hop an smtp-sink.
//!
//! Each case is one way local mail went wrong before the filter decided local submissions whole
//! at their end: a per-recipient refusal made Postfix defer the message and submit it again on
//! every queue run (counting it each time), reaching a limit bounced recipients that had been
//! counted, a script changing its envelope sender was never limited, and local mail counted
//! only because 127.0.0.1 happened to be in `internal_networks`. Every case runs with
//! `internal_networks = ["10.0.0.0/8"]`, so local mail is outbound here only because it is a
//! local submission.
#![cfg(feature = "real-peers")]

mod common;

use std::time::Duration;

use common::binary::GuardProcess;
use common::postfix::{Postfix, PostfixOptions};
use common::process::free_port;
use common::smtp_sink::{SinkMessage, SmtpSink};
use common::swaks::Swaks;

const WAIT: Duration = Duration::from_secs(20);
/// The Unix user the submissions run as.
const USER: &str = "nobody";

/// The filter (limits in `policy`), a sink, and a Postfix whose local submissions go to the
/// filter's local socket and whose SMTP clients go to its main socket.
struct Site {
    guard: GuardProcess,
    sink: SmtpSink,
    pf: Postfix,
}

impl Site {
    fn start(policy: &str) -> Site {
        Self::start_with(policy, |opts| opts)
    }

    fn start_with(policy: &str, postfix: impl FnOnce(PostfixOptions) -> PostfixOptions) -> Site {
        let local_port = free_port();
        let guard = GuardProcess::start(
            &format!("local_listen = \"inet:127.0.0.1:{local_port}\""),
            &format!(
                "[organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"10.0.0.0/8\"]\n{policy}"
            ),
        );
        let sink = SmtpSink::start();
        let opts = PostfixOptions::new()
            .relay_to(&sink)
            .smtpd_milters(&guard.milter_address())
            .non_smtpd_milters(&format!("inet:127.0.0.1:{local_port}"))
            .milter_default_action("tempfail")
            .unprivileged_submission();
        let pf = Postfix::start(postfix(opts));
        Site { guard, sink, pf }
    }

    /// `sendmail -f from rcpts…` as [`USER`]; asserts that Postfix took the message.
    fn submit(&self, from: &str, rcpts: &[&str], subject: &str) {
        let body = format!("From: {from}\nTo: {}\nSubject: {subject}\n\nfrom a local program\n", rcpts.join(", "));
        let out = self.pf.sendmail_as(USER, from, rcpts, body.as_bytes());
        assert!(out.status.success(), "sendmail: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Waits until Postfix has processed `n` messages from the maildrop (each one logged by
    /// the cleanup with a milter decision or a message-id) and its queue is empty again: nothing
    /// is left to be deferred and submitted again.
    fn settle(&self, accepted_or_refused: usize) {
        assert!(
            self.pf.wait_log_count("uid=", accepted_or_refused, WAIT),
            "pickup did not take {accepted_or_refused} submissions:\n{}",
            self.pf.log()
        );
        assert!(
            self.pf.wait_queue_empty(WAIT),
            "mail left in the queue:\n{}\n{}",
            self.pf.queue_listing(),
            self.pf.log()
        );
    }

    /// The live counters of `account` (`senders top --json`), if it counted anything.
    fn counters(&self, account: &str) -> Option<serde_json::Value> {
        let out = self.guard.cli(&["--json", "senders", "top", "--limit", "1000"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let top: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        top["senders"].as_array().expect("senders").iter().find(|s| s["account"] == account).cloned()
    }

    fn external_last_hour(&self, account: &str) -> u64 {
        self.counters(account).map_or(0, |c| c["counters"]["external_last_hour"].as_u64().expect("a count"))
    }

    fn restricted(&self, account: &str) -> bool {
        let out = self.guard.cli(&["--json", "restricted", "list"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        list["restricted"].as_array().expect("restricted").iter().any(|r| r["account"] == account)
    }

    /// Messages the sink received for `rcpt`.
    fn delivered_to(&self, rcpt: &str) -> Vec<SinkMessage> {
        self.sink.messages().into_iter().filter(|m| m.rcpts.iter().any(|r| r == rcpt)).collect()
    }

    /// Bounces (null sender) the sink received for `sender`.
    fn bounces_to(&self, sender: &str) -> Vec<SinkMessage> {
        self.delivered_to(sender).into_iter().filter(|m| m.mail_from.is_empty()).collect()
    }

    fn no_recipient_refusals(&self) {
        let log = self.pf.log();
        assert!(!log.contains("can't reject recipient"), "the filter refused a single local recipient:\n{log}");
    }
}

#[test]
fn a_message_over_the_per_message_cap_bounces_once_and_restricts_nobody() {
    let site = Site::start("[policy.default]\nmax_recipients_per_message = 2\nrecipient_limit_external_per_hour = 5\n");
    site.submit("cron@example.com", &["a@example.net", "b@example.net", "c@example.net"], "too many");
    site.settle(1);
    assert!(site.pf.wait_log("5.5.3", WAIT), "{}", site.pf.log());
    site.no_recipient_refusals();
    // One bounce to the sender, nothing to the recipients; nothing counted, nobody restricted.
    assert!(site.sink.wait_for_messages(1, WAIT).len() == 1, "{}", site.pf.log());
    assert_eq!(site.bounces_to("cron@example.com").len(), 1, "{:?}", site.sink.messages());
    assert!(site.delivered_to("a@example.net").is_empty());
    assert_eq!(site.external_last_hour("cron@example.com"), 0);
    assert_eq!(site.external_last_hour("local-submissions"), 0);
    assert!(!site.restricted("cron@example.com"));
    // Submitted once, decided once: the filter saw one local message.
    assert_eq!(site.pf.log().matches("milter-reject: END-OF-MESSAGE").count(), 1, "{}", site.pf.log());
}

#[test]
fn two_recipients_within_the_limit_reach_both_and_count_under_sender_and_aggregate() {
    let site = Site::start("[policy.default]\nmax_recipients_per_message = 2\nrecipient_limit_external_per_hour = 5\n");
    site.submit("cron@example.com", &["a@example.net", "b@example.net"], "fits");
    site.settle(1);
    let delivered = site.sink.wait_for_messages(1, WAIT);
    assert_eq!(delivered.len(), 1, "{}", site.pf.log());
    let mut rcpts = delivered[0].rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["a@example.net", "b@example.net"]);
    assert!(site.bounces_to("cron@example.com").is_empty());
    // Outbound although 127.0.0.1 is not in internal_networks.
    assert_eq!(site.external_last_hour("cron@example.com"), 2);
    assert_eq!(site.external_last_hour("local-submissions"), 2);
}

#[test]
fn reaching_a_limit_refuses_that_message_whole_and_keeps_what_was_delivered() {
    let site = Site::start("[policy.default]\nrecipient_limit_external_per_hour = 5\n");
    site.submit("app@example.com", &["a@example.net", "b@example.net"], "first");
    site.submit("app@example.com", &["c@example.net", "d@example.net"], "second");
    site.settle(2);
    assert_eq!(site.sink.wait_for_messages(2, WAIT).len(), 2, "{}", site.pf.log());
    // The fifth recipient would fit, the sixth would not: the whole message is refused, its
    // sender restricted, and the recipient that would have fitted is not counted either.
    site.submit("app@example.com", &["e@example.net", "f@example.net"], "third");
    site.settle(3);
    assert!(site.pf.wait_log("5.2.2", WAIT), "{}", site.pf.log());
    site.no_recipient_refusals();
    assert!(site.restricted("app@example.com"));
    assert_eq!(site.external_last_hour("app@example.com"), 4);
    assert!(site.delivered_to("e@example.net").is_empty() && site.delivered_to("f@example.net").is_empty());
    assert_eq!(site.delivered_to("a@example.net").len(), 1);
    // A restricted sender's next message is refused at MAIL FROM and bounces once.
    site.submit("app@example.com", &["g@example.net"], "after");
    site.settle(4);
    assert!(site.pf.wait_log("5.1.8", WAIT), "{}", site.pf.log());
    assert_eq!(site.bounces_to("app@example.com").len(), 2, "{:?}", site.sink.messages());
    assert!(site.delivered_to("g@example.net").is_empty());
}

#[test]
fn a_script_that_changes_its_envelope_sender_meets_the_aggregate_limit() {
    let site = Site::start_with(
        "[policy.default]\nrecipient_limit_external_per_hour = 100\n\
         [[policy.rule]]\nname = \"local\"\npriority = 1\nfrom = [\"local-submissions\"]\nrecipient_limit_external_per_hour = 4\n",
        |opts| opts.sasl_user("one@example.com", "s3cret"),
    );
    for (i, sender) in ["one@example.com", "two@example.com", "three@example.com"].iter().enumerate() {
        let rcpts = [format!("x{i}@example.net"), format!("y{i}@example.net")];
        site.submit(sender, &[rcpts[0].as_str(), rcpts[1].as_str()], "rotating");
    }
    site.settle(3);
    assert!(site.pf.wait_log("5.2.2", WAIT), "{}", site.pf.log());
    assert!(site.restricted("local-submissions"));
    assert_eq!(site.external_last_hour("local-submissions"), 4);
    assert_eq!(site.sink.messages().iter().filter(|m| !m.mail_from.is_empty()).count(), 2);
    // Every further local submission, whatever its sender, is refused at MAIL FROM.
    site.submit("four@example.com", &["z@example.net"], "another sender");
    site.settle(4);
    assert!(site.pf.wait_log("5.1.8", WAIT), "{}", site.pf.log());
    assert!(site.delivered_to("z@example.net").is_empty());
    // Outbound SMTP mail is not a local submission: the aggregate's restriction does not touch
    // it, even from one of the senders the script used.
    let smtp = Swaks::new(site.pf.smtp_port())
        .outside()
        .auth_plain("one@example.com", "s3cret")
        .from("one@example.com")
        .to("smtp@example.net")
        .run();
    assert!(smtp.success(), "{}", smtp.transcript);
    assert_eq!(site.external_last_hour("one@example.com"), 3);
}

#[test]
fn a_message_requeued_with_postsuper_is_counted_once() {
    // The next hop is down: the message waits in the deferred queue.
    let dead = free_port();
    let site =
        Site::start_with("[policy.default]\nrecipient_limit_external_per_hour = 5\n", |opts| opts.relay_port(dead));
    site.submit("cron@example.com", &["a@example.net", "b@example.net"], "requeued");
    assert!(site.pf.wait_log("status=deferred", WAIT), "{}", site.pf.log());
    assert_eq!(site.external_last_hour("cron@example.com"), 2);
    // The administrator requeues it (after fixing a transport, say): Postfix's cleanup
    // processes it again.
    let out = site.pf.run_tool("postsuper", &["-r", "ALL"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // pickup finds the message in the maildrop at its next wakeup; wake it now.
    let out = site.pf.run_tool("postkick", &["public", "pickup", "W"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(site.pf.wait_log_count("status=deferred", 4, WAIT), "{}", site.pf.log());
    assert!(site.pf.log().contains("orig_id="), "not requeued:\n{}", site.pf.log());
    // Postfix does not hand its own re-queued mail to non_smtpd_milters again: the filter saw
    // one submission, and counts it once.
    let seen = site.guard.log().matches("milter connection opened").count();
    assert_eq!(seen, 1, "{}", site.guard.log());
    assert_eq!(site.external_last_hour("cron@example.com"), 2);
    assert_eq!(site.external_last_hour("local-submissions"), 2);
}
