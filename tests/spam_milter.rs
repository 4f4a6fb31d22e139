//! The README's "Spam verdicts" section at end of message, through the milter protocol: header
//! verdicts, the per-message actions (accept, tag, quarantine, reject, copies to
//! `bcc_suspicious_to`), the spam share that restricts an account, and verdicts ageing out of the
//! window.

mod common;

use std::time::Duration;

use common::daemon::TestDaemon;
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER, StageResult};
use outbound_guard::milter::reply::Reply;
use outbound_guard::policy::events::EventKind;
use tokio::net::TcpStream;

const SPAM: &[(&str, &str)] = &[
    ("Subject", " buy now"),
    // The client's forged "No" comes first; the scanner's verdict is the last one.
    ("X-Spam-Status", " No, score=0.1 required=5.0"),
    ("X-Spam-Status", " Yes, score=15.3 required=5.0\n\ttests=GTUBE"),
];
const HAM: &[(&str, &str)] = &[("Subject", " minutes"), ("X-Spam-Status", " No, score=0.2 required=5.0")];
const UNSCANNED: &[(&str, &str)] = &[("Subject", " no scanner header")];

fn config(policy: &str) -> String {
    format!(
        "[milter]\nlisten = \"inet:127.0.0.1:0\"\n[organization]\nlocal_domains = [\"example.com\"]\n\
         [notify]\nwarn_at_percent = 0\n[policy.default]\nrecipient_limit_external_per_hour = 0\nrecipient_limit_per_day = 0\n{policy}"
    )
}

async fn client(d: &TestDaemon) -> MtaClient<TcpStream> {
    let mut c = MtaClient::connect(d.addr).await.unwrap();
    c.negotiate(POSTFIX_OFFER).await.unwrap();
    c.macros(b'C', &[("{client_addr}", "127.0.0.1")]).await.unwrap();
    c
}

/// One message from `account`; the end-of-message result (or MAIL FROM's refusal).
async fn send(c: &mut MtaClient<TcpStream>, account: &str, headers: &[(&str, &str)]) -> StageResult {
    c.macros(b'M', &[("{auth_authen}", account)]).await.unwrap();
    let mail = c.mail_from(&format!("<{account}>"), &[]).await.unwrap();
    if mail.kind() != Some(b'c') {
        return mail;
    }
    c.rcpt_to("<someone@example.net>").await.unwrap();
    c.message(headers, b"Hello\r\n").await.unwrap()
}

fn modifications(r: &StageResult) -> Vec<String> {
    r.modifications
        .iter()
        .map(|m| match m.decode().unwrap() {
            // As Postfix writes it: with HDR_LEADSPC negotiated (Postfix offers it, the filter
            // takes it) the MTA puts nothing between the colon and the value.
            Reply::AddHeader { name, value } => {
                format!("header {}:{}", String::from_utf8_lossy(name), String::from_utf8_lossy(value))
            }
            Reply::AddRecipient(r) => format!("rcpt {}", String::from_utf8_lossy(r)),
            Reply::Quarantine(_) => "quarantine".to_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn spam_is_tagged_and_copied_ham_is_left_alone() {
    let d = TestDaemon::start(&config("bcc_suspicious_to = [\"abuse-copy@example.com\"]\n")).await;
    let mut c = client(&d).await;
    let spam = send(&mut c, "alice@example.com", SPAM).await;
    assert_eq!(spam.kind(), Some(b'c'));
    assert_eq!(modifications(&spam), ["header X-Outbound-Guard-Spam: yes", "rcpt <abuse-copy@example.com>"]);
    let ham = send(&mut c, "alice@example.com", HAM).await;
    assert_eq!(ham.kind(), Some(b'c'));
    assert!(ham.modifications.is_empty());
    // A message no scanner marked is one of the account's messages all the same.
    send(&mut c, "alice@example.com", UNSCANNED).await;
    let counters = d.services.engine.counters("alice@example.com");
    assert_eq!((counters.spam_messages, counters.messages), (1, 3));
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn reject_and_quarantine_actions() {
    let d = TestDaemon::start(&config(
        "spam_message_action = \"reject\"\n\
         [[policy.rule]]\nname = \"hold\"\npriority = 0\nfrom = [\"bob@example.com\"]\nspam_message_action = \"quarantine\"\n",
    ))
    .await;
    let mut c = client(&d).await;
    let rejected = send(&mut c, "alice@example.com", SPAM).await;
    assert_eq!(rejected.text().as_deref().map(|t| &t[..9]), Some("550 5.7.1"));
    let held = send(&mut c, "bob@example.com", SPAM).await;
    assert_eq!(held.kind(), Some(b'c'));
    assert_eq!(modifications(&held), ["quarantine"]);
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn the_spam_share_restricts_the_account_and_later_mail_gets_5_1_8() {
    let mut d = TestDaemon::start(&config("spam_min_messages = 3\nspam_percent = 50\nspam_action = \"block\"\n")).await;
    let mut c = client(&d).await;
    // Two spam out of three: under the count threshold.
    send(&mut c, "carol@example.com", SPAM).await;
    send(&mut c, "carol@example.com", HAM).await;
    send(&mut c, "carol@example.com", SPAM).await;
    assert!(!d.services.engine.restrictions().is_restricted("carol@example.com", d.clock.now().secs()));
    // The third spam message: 3 of 4, 75% — restricted.
    send(&mut c, "carol@example.com", SPAM).await;
    let r = d.services.engine.restrictions().get("carol@example.com", d.clock.now().secs()).expect("restricted");
    assert!(r.reason.contains("3 of its 4 messages"), "{}", r.reason);
    assert_eq!(r.until, None);
    assert_eq!((r.counters.spam_messages, r.counters.messages), (3, 4));
    let events = d.drain_events();
    assert!(events.iter().any(|e| e.kind == EventKind::SenderRestricted && e.account == "carol@example.com"));
    let refused = send(&mut c, "carol@example.com", HAM).await;
    assert_eq!(refused.text().as_deref().map(|t| &t[..9]), Some("550 5.1.8"));
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn the_share_is_of_all_the_accounts_messages_also_those_no_scanner_marked() {
    // A scanner that marks only spam (as rspamd's milter does for authenticated senders):
    // the clean messages carry no header and must still count, or every share is 100%.
    let d = TestDaemon::start(&config("spam_min_messages = 2\nspam_percent = 30\nspam_action = \"block\"\n")).await;
    let mut c = client(&d).await;
    for _ in 0..20 {
        send(&mut c, "erin@example.com", UNSCANNED).await;
    }
    send(&mut c, "erin@example.com", SPAM).await;
    send(&mut c, "erin@example.com", SPAM).await;
    let counters = d.services.engine.counters("erin@example.com");
    assert_eq!((counters.spam_messages, counters.messages), (2, 22));
    assert!(!d.services.engine.restrictions().is_restricted("erin@example.com", d.clock.now().secs()), "2 of 22 is 9%");
    // 9 of 29 is 31%: restricted.
    for _ in 0..7 {
        send(&mut c, "erin@example.com", SPAM).await;
    }
    let r =
        d.services.engine.restrictions().get("erin@example.com", d.clock.now().secs()).expect("restricted at 9 of 29");
    assert!(r.reason.contains("9 of its 29 messages"), "{}", r.reason);
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn old_verdicts_age_out_so_history_alone_never_restricts() {
    let d = TestDaemon::start(&config("spam_min_messages = 3\nspam_percent = 50\nspam_window = \"24h\"\n")).await;
    let mut c = client(&d).await;
    send(&mut c, "dan@example.com", SPAM).await;
    send(&mut c, "dan@example.com", SPAM).await;
    d.clock.advance(Duration::from_secs(25 * 3600));
    assert_eq!(d.services.engine.counters("dan@example.com").spam_messages, 0);
    // A single spam message a day later does not add up with the old ones.
    send(&mut c, "dan@example.com", SPAM).await;
    assert!(!d.services.engine.restrictions().is_restricted("dan@example.com", d.clock.now().secs()));
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn header_verdicts_off_means_no_headers_asked_for() {
    let d = TestDaemon::start(&config("").replace("[notify]", "[verdict]\nsources = []\n[notify]")).await;
    let mut c = MtaClient::connect(d.addr).await.unwrap();
    let agreed = c.negotiate(POSTFIX_OFFER).await.unwrap();
    use outbound_guard::milter::negotiate::Steps;
    assert!(agreed.steps.contains(Steps::NO_HEADERS));
    assert!(agreed.steps.contains(Steps::NO_BODY));
    drop(c);
    d.stop().await;
}
