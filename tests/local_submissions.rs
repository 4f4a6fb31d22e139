//! Local submissions (a program on the MTA host handing mail to the MTA's `sendmail`), through
//! the milter protocol on the local-submission socket against an in-process filter: outbound
//! whatever `internal_networks` says, never a refused recipient, the whole message decided at
//! its end, and every local submission also counted under the aggregate account.

mod common;

use common::daemon::{START, TestDaemon};
use common::mta::code;
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
use outbound_guard::milter::command::Command;
use tokio::net::TcpStream;

type Client = MtaClient<TcpStream>;

fn config(organization: &str, policy: &str) -> String {
    format!(
        "[milter]\nlisten = \"inet:127.0.0.1:0\"\n\
         [organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"10.0.0.0/8\"]\n{organization}\n\
         [notify]\nwarn_at_percent = 0\n\
         [policy.default]\naction_when_threshold_reached = \"block\"\n{policy}"
    )
}

/// A connection as Postfix's cleanup opens one for a `sendmail(1)` submission: the client is
/// the host itself, nobody authenticated.
async fn local_client(d: &TestDaemon) -> Client {
    let mut c = MtaClient::connect(d.local_addr).await.unwrap();
    c.negotiate(POSTFIX_OFFER).await.unwrap();
    c.macros(b'C', &[("{client_addr}", "127.0.0.1")]).await.unwrap();
    c
}

/// A connection on the SMTP socket from 127.0.0.1 (not an internal network here), with the
/// login `login` when given.
async fn smtp_client(d: &TestDaemon, login: Option<&str>) -> Client {
    let mut c = MtaClient::connect(d.addr).await.unwrap();
    c.negotiate(POSTFIX_OFFER).await.unwrap();
    c.macros(b'C', &[("{client_addr}", "127.0.0.1")]).await.unwrap();
    if let Some(login) = login {
        c.macros(b'M', &[("{auth_authen}", login)]).await.unwrap();
    }
    c
}

/// One local message from `sender` to `n` external recipients; the replies to MAIL FROM, each
/// RCPT TO and the end of message (`-` when the message did not get that far).
async fn submit(c: &mut Client, sender: &str, n: usize) -> Vec<String> {
    let mail = code(&c.mail_from(&format!("<{sender}>"), &[]).await.unwrap());
    let mut codes = vec![mail.clone()];
    if mail != "c" {
        return codes;
    }
    for i in 0..n {
        codes.push(code(&c.rcpt_to(&format!("<r{i}@example.net>")).await.unwrap()));
    }
    codes.push(code(&c.message(&[("Subject", "report")], b"x\r\n").await.unwrap()));
    codes
}

/// One local message from `sender` to `recipients`; the replies as for [`submit`].
async fn submit_to(c: &mut Client, sender: &str, recipients: &[&str]) -> Vec<String> {
    let mail = code(&c.mail_from(&format!("<{sender}>"), &[]).await.unwrap());
    let mut codes = vec![mail.clone()];
    if mail != "c" {
        return codes;
    }
    for r in recipients {
        codes.push(code(&c.rcpt_to(&format!("<{r}>")).await.unwrap()));
    }
    codes.push(code(&c.message(&[("Subject", "help")], b"x\r\n").await.unwrap()));
    codes
}

fn external(d: &TestDaemon, account: &str) -> u32 {
    d.services.engine.counters(account).external_last_hour
}

fn restricted(d: &TestDaemon, account: &str) -> bool {
    d.services.engine.restrictions().is_restricted(account, START as i64 + 1)
}

#[tokio::test]
async fn local_mail_is_outbound_whatever_internal_networks_says_and_counted_twice() {
    let d = TestDaemon::start(&config("", "recipient_limit_external_per_hour = 10\n")).await;
    let mut c = local_client(&d).await;
    assert_eq!(submit(&mut c, "www@example.com", 2).await, ["c", "c", "c", "c"]);
    assert_eq!(external(&d, "www@example.com"), 2, "counted under the envelope sender");
    assert_eq!(external(&d, "local-submissions"), 2, "and under the aggregate account");
    // The same client on the SMTP socket is inbound (127.0.0.1 is not an internal network).
    let mut smtp = smtp_client(&d, None).await;
    assert_eq!(code(&smtp.mail_from("<www@example.com>", &[]).await.unwrap()), "a");
    drop((c, smtp));
    d.stop().await;
}

#[tokio::test]
async fn over_the_cap_the_whole_message_is_refused_for_good_and_nothing_counted() {
    let d =
        TestDaemon::start(&config("", "max_recipients_per_message = 2\nrecipient_limit_external_per_hour = 5\n")).await;
    let mut c = local_client(&d).await;
    assert_eq!(submit(&mut c, "cron@example.com", 3).await, ["c", "c", "c", "c", "550 5.5.3"]);
    assert_eq!(external(&d, "cron@example.com"), 0);
    assert!(!restricted(&d, "cron@example.com"), "a mailing over the cap does not block its sender");
    let metrics = d.services.engine.metrics().render();
    assert!(
        metrics.lines().any(|l| l.contains("outcome=\"deferred\"") && l.ends_with(" 0")),
        "a final refusal is not counted as deferred recipients:\n{metrics}"
    );
    // Within the cap: delivered to both, nothing bounced.
    assert_eq!(submit(&mut c, "cron@example.com", 2).await, ["c", "c", "c", "c"]);
    assert_eq!(external(&d, "cron@example.com"), 2);
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn reaching_a_limit_refuses_the_message_at_its_end_and_restricts() {
    let d = TestDaemon::start(&config("", "recipient_limit_external_per_hour = 3\n")).await;
    let mut c = local_client(&d).await;
    assert_eq!(submit(&mut c, "app@example.com", 2).await, ["c", "c", "c", "c"]);
    // Two more would pass the limit of 3: no recipient is refused, the message is.
    assert_eq!(submit(&mut c, "app@example.com", 2).await, ["c", "c", "c", "550 5.2.2"]);
    assert!(restricted(&d, "app@example.com"));
    assert_eq!(external(&d, "app@example.com"), 2, "the refused message counted nothing");
    assert_eq!(submit(&mut c, "app@example.com", 1).await, ["550 5.1.8"]);
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn a_script_changing_its_sender_meets_the_aggregate_limit() {
    let d = TestDaemon::start(&config("", "recipient_limit_external_per_hour = 4\n")).await;
    let mut c = local_client(&d).await;
    for sender in ["a1@example.com", "a2@example.com"] {
        assert_eq!(submit(&mut c, sender, 2).await, ["c", "c", "c", "c"], "{sender}");
    }
    assert_eq!(submit(&mut c, "a3@example.com", 2).await, ["c", "c", "c", "550 5.2.2"]);
    assert!(restricted(&d, "local-submissions"));
    assert!(!restricted(&d, "a3@example.com"), "the sender itself is within its limit");
    assert_eq!(external(&d, "a3@example.com"), 0, "given back with the refused message");
    // Every local submission is refused now; SMTP mail of an account is not.
    assert_eq!(submit(&mut c, "a4@example.com", 1).await, ["550 5.1.8"]);
    let mut smtp = smtp_client(&d, Some("a4@example.com")).await;
    assert_eq!(code(&smtp.mail_from("<a4@example.com>", &[]).await.unwrap()), "c");
    smtp.write(Command::Abort).await.unwrap();
    drop((c, smtp));
    d.stop().await;
}

#[tokio::test]
async fn an_empty_aggregate_account_counts_each_sender_alone() {
    let d =
        TestDaemon::start(&config("local_submission_account = \"\"", "recipient_limit_external_per_hour = 2\n")).await;
    let mut c = local_client(&d).await;
    for sender in ["b1@example.com", "b2@example.com", "b3@example.com"] {
        assert_eq!(submit(&mut c, sender, 2).await, ["c", "c", "c", "c"], "{sender}");
    }
    assert_eq!(external(&d, "local-submissions"), 0);
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn a_rule_gives_the_aggregate_account_its_own_limits() {
    let d = TestDaemon::start(&config(
        "local_submission_account = \"Web-Apps\"",
        "recipient_limit_external_per_hour = 2\n\
         [[policy.rule]]\nname = \"web\"\npriority = 1\nfrom = [\"web-apps\"]\nrecipient_limit_external_per_hour = 100\n",
    ))
    .await;
    let mut c = local_client(&d).await;
    for sender in ["c1@example.com", "c2@example.com", "c3@example.com"] {
        assert_eq!(submit(&mut c, sender, 2).await, ["c", "c", "c", "c"], "{sender}");
    }
    assert_eq!(external(&d, "web-apps"), 6, "folded to its canonical form, limited by its rule");
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn the_null_sender_of_a_local_submission_is_accepted() {
    let d = TestDaemon::start(&config("", "recipient_limit_external_per_hour = 1\n")).await;
    let mut c = local_client(&d).await;
    assert_eq!(code(&c.mail_from("<>", &[]).await.unwrap()), "a");
    drop(c);
    d.stop().await;
}

/// A restricted sender whose policy lists `always_allowed_recipients`: its local message is
/// taken at MAIL FROM, no recipient is refused, and the message is accepted at its end only
/// when every recipient is allowed (then counted under the sender and the aggregate account);
/// one other recipient refuses the whole message with `550 5.1.8`.
#[tokio::test]
async fn a_restricted_sender_may_still_submit_to_its_always_allowed_recipients_only() {
    let d = TestDaemon::start(&config(
        "",
        "recipient_limit_external_per_hour = 2
always_allowed_recipients = [\"helpdesk@example.net\"]\n",
    ))
    .await;
    let mut c = local_client(&d).await;
    assert_eq!(submit(&mut c, "www@example.com", 3).await, ["c", "c", "c", "c", "550 5.2.2"]);
    assert!(restricted(&d, "www@example.com"));
    let day = d.services.engine.counters("www@example.com").last_day;

    assert_eq!(submit_to(&mut c, "www@example.com", &["helpdesk@example.net"]).await, ["c", "c", "c"]);
    assert_eq!(d.services.engine.counters("www@example.com").last_day, day + 1, "counted under the sender");
    assert_eq!(external(&d, "local-submissions"), 1, "and under the aggregate account");

    let mixed = submit_to(&mut c, "www@example.com", &["helpdesk@example.net", "r0@example.net"]).await;
    assert_eq!(mixed, ["c", "c", "c", "550 5.1.8"], "no recipient refused, the message is");
    assert_eq!(d.services.engine.counters("www@example.com").last_day, day + 1, "the refused message counted nothing");
    assert_eq!(external(&d, "local-submissions"), 1);
    drop(c);
    d.stop().await;
}
