//! Notifications delivered to a real Postfix `smtp-sink`: what the notifier sends is
//! accepted by Postfix's SMTP implementation and parses back to the facts, in every
//! language, with an account crafted to inject a header.
#![cfg(feature = "real-peers")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::smtp_sink::SmtpSink;
use mail_parser::MessageParser;
use outbound_guard::config::Config;
use outbound_guard::notify::{self, Tuning};
use outbound_guard::policy::events::{Event, EventKind};
use outbound_guard::policy::restriction::Counters;
use time::macros::datetime;
use tokio::sync::{mpsc, watch};

const ACCOUNT: &str = "\"x\"\r\nBcc: victim@example.net\r\ny@exämple.se";
/// How the account shows in a subject or body: line breaks escaped, the rest as is.
const SHOWN: &str = "\"x\"\\r\\nBcc: victim@example.net\\r\\ny@exämple.se";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_sink_receives_a_restriction_notice_per_language() {
    let sink = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let langs = [
        ("en", "Outbound spam notification - "),
        ("sv", "Avisering om utgående skräppost - "),
        ("nl", "Melding uitgaande spam - "),
        ("da", "Meddelelse om udgående spam - "),
    ];
    for (i, (lang, prefix)) in langs.into_iter().enumerate() {
        let text = format!(
            "[state]\ndir = \"state-{lang}\"\n[notify]\nsmtp = \"smtp://127.0.0.1:{}\"\n\
             language = \"{lang}\"\nfrom = \"guard@example.com\"\n\
             recipients = [\"postmaster@example.com\"]\n",
            sink.port()
        );
        let config = Arc::new(Config::parse(&dir.path().join("plugin.toml"), &text).unwrap());
        let (tx, rx) = mpsc::channel(4);
        let (_stop, stop_rx) = watch::channel(false);
        let tuning = Tuning { retry_first: Duration::from_millis(100), ..Tuning::default() };
        let n = notify::spawn_with(config, rx, Vec::new(), stop_rx, tuning).unwrap();
        tx.send(Event {
            id: String::new(),
            kind: EventKind::SenderRestricted,
            account: ACCOUNT.into(),
            reason: "restricted by an administrator".into(),
            policy: "default".into(),
            limit: None,
            counters: Counters::default(),
            since: datetime!(2026-11-22 10:15:00 UTC),
            until: None,
            node: "mx1".into(),
            by: Some("admin".into()),
            cause: String::new(),
            escalated: false,
        })
        .await
        .unwrap();
        // SmtpSink polls the dump directory with its own bounded wait.
        let messages = tokio::task::block_in_place(|| sink.wait_for_messages(i + 1, Duration::from_secs(20)));
        assert_eq!(messages.len(), i + 1, "{lang}: smtp-sink log:\n{}", sink.log());
        let m = &messages[i];
        assert_eq!(m.mail_from, "guard@example.com");
        assert_eq!(m.rcpts, ["postmaster@example.com"], "no injected recipient");
        let msg = MessageParser::default().parse(&m.data[..]).expect("parsable");
        let subject = msg.subject().unwrap();
        assert!(subject.starts_with(prefix), "{lang}: {subject}");
        assert!(subject.contains(SHOWN), "{lang}: {subject}");
        assert!(msg.header_raw("Bcc").is_none());
        assert_eq!(msg.header_raw("Auto-Submitted").map(str::trim), Some("auto-generated"));
        let body = msg.body_text(0).unwrap();
        assert!(body.contains(SHOWN), "{lang}: {body}");
        assert!(body.contains("(admin)"), "{lang}: {body}");
        assert!(body.contains("2026-11-22T10:15:00Z"), "{lang}");
        n.join().await;
    }
}

/// A `sender_restricted` event as the engine raises it when `account` reaches a limit.
fn restricted_at_limit(id: &str, account: &str) -> Event {
    Event {
        id: id.into(),
        kind: EventKind::SenderRestricted,
        account: account.into(),
        reason: "reached the limit of 2 external recipients per hour (2 counted in the last hour)".into(),
        policy: "default".into(),
        limit: Some(outbound_guard::policy::limits::LimitKind::ExternalPerHour),
        counters: Counters::default(),
        since: datetime!(2026-11-22 10:15:00 UTC),
        until: Some(datetime!(2026-11-23 00:00:00 UTC)),
        node: "mx1".into(),
        by: None,
        cause: String::new(),
        escalated: false,
    }
}

/// `notify_sender = true`: the restricted account gets its own notice at its address, next to
/// the administrators' one. It says whom the account may still write to, and carries neither
/// the release command, the admin URL nor the API token. A crafted account name that is no
/// address gets no notice of its own (and injects no recipient or header into the
/// administrators' one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_sink_receives_the_accounts_own_notice_without_the_administration() {
    const TOKEN: &str = "s3cret-admin-token-4711";
    let sink = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let text = format!(
        "[state]\ndir = \"state\"\n[notify]\nsmtp = \"smtp://127.0.0.1:{}\"\nfrom = \"guard@example.com\"\n\
         recipients = [\"postmaster@example.com\"]\nadmin_url = \"https://guard.example.com/\"\n\
         [admin]\ntoken_file = \"token\"\n\
         [policy.default]\nnotify_sender = true\nalways_allowed_recipients = [\"Helpdesk@Example.com\"]\n",
        sink.port()
    );
    let config = Arc::new(Config::parse(&dir.path().join("plugin.toml"), &text).unwrap());
    let (tx, rx) = mpsc::channel(4);
    let (_stop, stop_rx) = watch::channel(false);
    let tuning = Tuning { retry_first: Duration::from_millis(100), ..Tuning::default() };
    let n = notify::spawn_with(config, rx, Vec::new(), stop_rx, tuning).unwrap();

    tx.send(restricted_at_limit("00000000000000e1", ACCOUNT)).await.unwrap();
    let messages = tokio::task::block_in_place(|| sink.wait_for_messages(1, Duration::from_secs(20)));
    assert_eq!(messages.len(), 1, "smtp-sink log:\n{}", sink.log());
    assert_eq!(messages[0].rcpts, ["postmaster@example.com"], "a crafted account gets no notice of its own");

    tx.send(restricted_at_limit("00000000000000e2", "alice@example.com")).await.unwrap();
    let messages = tokio::task::block_in_place(|| sink.wait_for_messages(3, Duration::from_secs(20)));
    assert_eq!(messages.len(), 3, "smtp-sink log:\n{}", sink.log());
    let own: Vec<_> = messages.iter().filter(|m| m.rcpts == ["alice@example.com"]).collect();
    assert_eq!(own.len(), 1, "{messages:#?}");
    let admin = messages.iter().filter(|m| m.rcpts == ["postmaster@example.com"]).count();
    assert_eq!(admin, 2, "the administrators still get theirs");
    let m = own[0];
    assert_eq!(m.mail_from, "guard@example.com");
    let msg = MessageParser::default().parse(&m.data[..]).expect("parsable");
    assert_eq!(msg.to().and_then(|to| to.first()).and_then(|a| a.address()), Some("alice@example.com"));
    assert!(msg.header_raw("Bcc").is_none() && msg.header_raw("Cc").is_none());
    assert_eq!(msg.header_raw("Auto-Submitted").map(str::trim), Some("auto-generated"));
    let subject = msg.subject().unwrap();
    assert!(subject.contains("alice@example.com"), "{subject}");
    let body = msg.body_text(0).unwrap();
    for needle in ["stopped", "still receive", "helpdesk@example.com", "Change your password", "2026-11-23T00:00:00Z"] {
        assert!(body.contains(needle), "{needle:?} missing from\n{body}");
    }
    let raw = String::from_utf8_lossy(&m.data);
    for secret in [TOKEN, "restricted release", "outbound-guard --config", "guard.example.com/", "#account="] {
        assert!(!raw.contains(secret), "{secret:?} in the account's notice:\n{raw}");
    }
    let stats = n.join().await;
    assert_eq!((stats.email.delivered, stats.email.pending), (3, 0), "nothing else was sent or left");
}
