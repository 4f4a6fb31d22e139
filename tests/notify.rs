//! Administrator notifications end to end, in-process: events go into the notifier, a
//! loopback SMTP relay and HTTP endpoint receive what it sends, and the tests parse it
//! (mail-parser) — every language, crafted account names, a relay that is down across a
//! restart, the webhook with a failing first answer.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::notify_peers::{Received, SmtpEvent, TestHttp, TestSmtp};
use mail_parser::{MessageParser, MimeHeaders};
use outbound_guard::config::Config;
use outbound_guard::notify::{self, NotifierHandle, Tuning};
use outbound_guard::policy::events::{Event, EventKind};
use outbound_guard::policy::limits::LimitKind;
use outbound_guard::policy::restriction::Counters;
use time::macros::datetime;
use tokio::sync::{mpsc, watch};

/// Generous bound for anything to arrive; tests finish long before it on success.
const WAIT: Duration = Duration::from_secs(20);

fn tuning() -> Tuning {
    Tuning {
        retry_first: Duration::from_millis(50),
        retry_cap: Duration::from_millis(200),
        smtp_timeout: Duration::from_secs(5),
        webhook_timeout: Duration::from_secs(5),
        flush_timeout: Duration::from_secs(2),
        ..Tuning::default()
    }
}

fn config(dir: &Path, notify: &str, tail: &str) -> Arc<Config> {
    let text = format!(
        "[state]\ndir = \"state\"\n\
         [notify]\nnode_name = \"mx1\"\nfrom = \"guard@example.com\"\n\
         recipients = [\"postmaster@example.com\", \"ops@example.com\"]\n{notify}\n\
         [admin]\nlisten = \"127.0.0.1:7358\"\n{tail}"
    );
    Arc::new(Config::parse(&dir.join("plugin.toml"), &text).expect("valid test configuration"))
}

fn restricted(account: &str) -> Event {
    Event {
        id: String::new(),
        kind: EventKind::SenderRestricted,
        account: account.to_owned(),
        reason: "reached the limit of 500 external recipients per hour (500 counted in the last hour)".into(),
        policy: "default".into(),
        limit: Some(LimitKind::ExternalPerHour),
        counters: Counters {
            external_last_hour: 500,
            external_limit_per_hour: 500,
            internal_last_hour: 7,
            internal_limit_per_hour: 1000,
            last_day: 507,
            limit_per_day: 1000,
            spam_messages: 0,
            messages: 31,
        },
        since: datetime!(2026-11-22 10:15:00 UTC),
        until: Some(datetime!(2026-11-23 00:00:00 UTC)),
        node: "mx1".into(),
        by: None,
        cause: "recipient_limit_external_per_hour".into(),
        escalated: false,
    }
}

/// A notifier on `config` with its own event channel and shutdown signal.
struct Running {
    handle: NotifierHandle,
    events: mpsc::Sender<Event>,
    _shutdown: watch::Sender<bool>,
}

/// `base` as another kind of event (a release names who released).
fn as_kind(base: &Event, kind: EventKind) -> Event {
    let mut event = base.clone();
    event.kind = kind;
    event.by = (kind == EventKind::SenderReleased).then(|| "admin@example.com".to_owned());
    event
}

/// Hands `event` to the notifier and waits for the relay to receive a well-formed message.
async fn deliver(n: &Running, relay: &mut TestSmtp, event: Event) -> Received {
    n.events.send(event).await.unwrap();
    let m = relay.message(WAIT).await;
    assert_well_formed(&m.data);
    m
}

fn start(config: &Arc<Config>) -> Running {
    let (events, rx) = mpsc::channel(16);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let handle = notify::spawn_with(config.clone(), rx, Vec::new(), shutdown_rx, tuning()).expect("notifier starts");
    Running { handle, events, _shutdown: shutdown }
}

/// A relay that takes every message, and a notifier on the test configuration sending to it
/// (keep the directory: the spool is in it).
async fn notifier_with_relay() -> (TestSmtp, tempfile::TempDir, Running) {
    let relay = TestSmtp::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let n = start(&config(dir.path(), &format!("smtp = \"{}\"", relay.url()), ""));
    (relay, dir, n)
}

/// The header block of a raw message.
fn header_block(data: &[u8]) -> &[u8] {
    let end = data.windows(4).position(|w| w == b"\r\n\r\n").expect("a header/body separator");
    &data[..end + 2]
}

/// Header names in order, as they appear on the wire.
fn header_names(data: &[u8]) -> Vec<String> {
    String::from_utf8(header_block(data).to_vec())
        .expect("headers are ASCII")
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t']))
        .map(|l| l.split(':').next().unwrap().to_ascii_lowercase())
        .collect()
}

fn addresses(a: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    a.map(|a| a.iter().filter_map(|x| x.address().map(str::to_owned)).collect()).unwrap_or_default()
}

/// Checks what makes a message valid and ours, whatever the account.
fn assert_well_formed(data: &[u8]) {
    let head = header_block(data);
    assert!(head.is_ascii(), "header block must be 7-bit:\n{}", String::from_utf8_lossy(head));
    for line in head.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r"), "bare LF in the header block");
        assert!(!line[..line.len() - 1].contains(&b'\r'), "bare CR in the header block");
        assert!(line.len() <= 998, "header line over 998 octets");
    }
    let names = header_names(data);
    for required in ["from", "to", "subject", "date", "message-id", "mime-version", "content-type", "auto-submitted"] {
        assert_eq!(names.iter().filter(|n| *n == required).count(), 1, "{required} exactly once in {names:?}");
    }
    let msg = MessageParser::default().parse(data).expect("parsable message");
    assert_eq!(msg.header_raw("Auto-Submitted").map(str::trim), Some("auto-generated"));
    assert!(msg.date().is_some(), "Date parses");
    let ct = msg.content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("text", Some("plain")));
    assert_eq!(ct.attribute("charset").map(str::to_ascii_lowercase).as_deref(), Some("utf-8"));
}

#[tokio::test]
async fn restriction_mail_in_every_language() {
    let subjects = [
        ("en", "Outbound spam notification - jörg@exämple.se blocked from sending outbound mail"),
        ("sv", "Avisering om utgående skräppost - jörg@exämple.se har spärrats från att skicka utgående e-post"),
        ("nl", "Melding uitgaande spam - jörg@exämple.se mag geen uitgaande e-mail meer versturen"),
        ("da", "Meddelelse om udgående spam - jörg@exämple.se er spærret for at sende udgående mail"),
    ];
    let mut relay = TestSmtp::start(true).await;
    for (lang, subject) in subjects {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), &format!("smtp = \"{}\"\nlanguage = \"{lang}\"", relay.url()), "");
        let n = start(&config);
        let event = restricted("jörg@exämple.se");
        n.events.send(event.clone()).await.unwrap();
        let m = relay.message(WAIT).await;
        assert_eq!(m.mail_from, "guard@example.com");
        assert_eq!(m.rcpts, ["postmaster@example.com", "ops@example.com"]);
        assert_well_formed(&m.data);
        let msg = MessageParser::default().parse(&m.data[..]).unwrap();
        assert_eq!(msg.subject(), Some(subject), "{lang}");
        assert_eq!(addresses(msg.from()), ["guard@example.com"]);
        assert_eq!(addresses(msg.to()), ["postmaster@example.com", "ops@example.com"]);
        assert!(
            msg.message_id()
                .is_some_and(|id| id.starts_with("sender_restricted-email-") && id.ends_with("@example.com")),
            "{:?}",
            msg.message_id()
        );
        let body = msg.body_text(0).expect("a text body").into_owned();
        let config_file = dir.path().join("plugin.toml");
        for fact in [
            "jörg@exämple.se".to_owned(),
            "(500 ".to_owned(),
            "2026-11-22T10:15:00Z".to_owned(),
            "2026-11-23T00:00:00Z".to_owned(),
            format!("outbound-guard --config {} restricted release 'jörg@exämple.se'", config_file.display()),
            "http://127.0.0.1:7358/#account=j%C3%B6rg@ex%C3%A4mple.se".to_owned(),
            "postsuper -d -".to_owned(),
            "postqueue -j".to_owned(),
        ] {
            assert!(body.contains(&fact), "{lang}: {fact:?} missing from\n{body}");
        }
        n.handle.join().await;
        let spool = dir.path().join("state/spool");
        assert!(std::fs::read_dir(&spool).unwrap().flatten().all(|e| e.path().is_dir()), "nothing left pending");
        assert_eq!(std::fs::read_dir(spool.join("done")).unwrap().count(), 1);
    }
    assert!(relay.drain().is_empty(), "one message per language, no more");
}

#[tokio::test]
async fn crafted_accounts_cannot_inject_headers() {
    let (mut relay, _dir, n) = notifier_with_relay().await;
    let accounts = [
        "evil\r\nBcc: victim@example.net\r\nX-Injected: yes",
        "evil\nX-Injected: yes\n\nbody takeover",
        "\"quoted\" <x@example.net>, other@example.net",
        "ünïcødé\u{202e}@exämple.se",
        &format!("long-{}@example.com", "x".repeat(1200)),
    ];
    for account in accounts {
        n.events.send(restricted(account)).await.unwrap();
        let m = relay.message(WAIT).await;
        assert_eq!(m.rcpts, ["postmaster@example.com", "ops@example.com"], "{account:?}");
        assert_well_formed(&m.data);
        let names = header_names(&m.data);
        assert!(!names.iter().any(|n| n == "x-injected" || n == "bcc" || n == "cc"), "{account:?}: {names:?}");
        let msg = MessageParser::default().parse(&m.data[..]).unwrap();
        assert_eq!(addresses(msg.to()), ["postmaster@example.com", "ops@example.com"]);
        let shown: String =
            account
                .chars()
                .flat_map(|c| {
                    if c.is_control() || c == '\u{202e}' { c.escape_debug().collect::<Vec<_>>() } else { vec![c] }
                })
                .collect();
        let subject = msg.subject().unwrap();
        assert!(
            subject.contains(&shown) || (shown.len() > 300 && subject.ends_with('…')),
            "{account:?}: subject {subject:?}"
        );
        let body = msg.body_text(0).unwrap();
        assert!(body.contains(&shown), "{account:?}");
        assert!(!body.contains('\u{202e}') && !body.contains("\r\nX-Injected"));
    }
    n.handle.join().await;
}

#[tokio::test]
async fn relay_down_then_restart_then_delivered_exactly_once() {
    let mut relay = TestSmtp::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &format!("smtp = \"{}\"", relay.url()), "");
    let spool = dir.path().join("state/spool");

    // First run: the relay turns every connection away.
    let n = start(&config);
    let event = restricted("alice@example.com");
    n.events.send(event.clone()).await.unwrap();
    // Two refusals: the second is a retry, so the first failure was handled (and saved).
    for _ in 0..2 {
        assert!(matches!(relay.next(WAIT).await, Some(SmtpEvent::Refused)));
    }
    let stats = n.handle.stats();
    assert!(stats.email.failed_attempts >= 1, "{stats:?}");
    assert_eq!((stats.email.delivered, stats.email.pending), (0, 1));
    n.handle.join().await;
    let pending: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(pending.len(), 1, "spooled across the stop");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(pending[0].path()).unwrap()).unwrap();
    assert!(saved["attempts"].as_u64().unwrap() >= 1, "{saved}");
    assert!(saved["last_error"].as_str().unwrap().contains("421"), "{saved}");
    relay.drain();

    // Second run, relay back: the spooled notice goes out at start, without a new event.
    relay.set_up(true);
    let n = start(&config);
    assert_eq!(n.handle.stats().email.pending, 1, "pending counted at start");
    let m = relay.message(WAIT).await;
    let msg = MessageParser::default().parse(&m.data[..]).unwrap();
    assert_eq!(
        msg.subject(),
        Some("Outbound spam notification - alice@example.com blocked from sending outbound mail")
    );
    n.handle.join().await;

    // Third run: nothing pending; the delivered notice is not sent again.
    let n = start(&config);
    assert_eq!(n.handle.stats().email.pending, 0);
    n.handle.join().await;
    let rest = relay.drain();
    assert!(rest.is_empty(), "delivered exactly once, got also {rest:?}");
}

/// Restricted, released, restricted and released again within one second: the events are
/// alike in kind, account and `since` (whole seconds), and still four notices go out.
#[tokio::test]
async fn the_same_account_restricted_and_released_twice_in_a_second_gives_four_notices() {
    let (mut relay, _dir, n) = notifier_with_relay().await;
    let restricted = restricted("alice@example.com");
    let released = as_kind(&restricted, EventKind::SenderReleased);
    let mut subjects = Vec::new();
    for event in [&restricted, &released, &restricted, &released] {
        let m = deliver(&n, &mut relay, event.clone()).await;
        let msg = MessageParser::default().parse(&m.data[..]).unwrap();
        subjects.push(msg.subject().unwrap_or_default().to_owned());
    }
    assert_eq!(subjects[0], subjects[2]);
    assert_eq!(subjects[1], subjects[3]);
    assert_ne!(subjects[0], subjects[1]);
    let stats = n.handle.join().await;
    assert_eq!(stats.email.delivered, 4, "{stats:?}");
}

#[tokio::test]
async fn webhook_posts_the_facts_and_retries() {
    let mut relay = TestSmtp::start(true).await;
    let mut hook = TestHttp::start(&[500]).await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        config(dir.path(), &format!("smtp = \"{}\"\nwebhook = \"{}\"", relay.url(), hook.url("/hooks/s3cret")), "");
    let n = start(&config);
    n.events.send(restricted("alice@example.com")).await.unwrap();
    let first = hook.next(WAIT).await.expect("first post");
    assert_eq!(first.status, 500);
    let second = hook.next(WAIT).await.expect("retried post");
    assert_eq!(second.status, 200);
    assert_eq!(first.body, second.body, "a retry sends the same facts");
    assert_eq!((second.method.as_str(), second.path.as_str()), ("POST", "/hooks/s3cret"));
    assert!(second.header("content-type").unwrap().starts_with("application/json"));
    let json: serde_json::Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(second.header("idempotency-key"), json["id"].as_str());
    assert!(json["id"].as_str().unwrap().starts_with("sender_restricted-webhook-"));
    assert_eq!(json["event"], "sender_restricted");
    assert_eq!(json["severity"], "high");
    assert_eq!(json["account"], "alice@example.com");
    assert_eq!(json["policy"], "default");
    assert_eq!(json["limit"], "recipient_limit_external_per_hour");
    assert_eq!(json["cause"], "recipient_limit_external_per_hour");
    assert_eq!(json["counters"]["external_last_hour"], 500);
    assert_eq!(json["counters"]["external_limit_per_hour"], 500);
    assert_eq!(json["since"], "2026-11-22T10:15:00Z");
    assert_eq!(json["until"], "2026-11-23T00:00:00Z");
    assert_eq!(json["node"], "mx1");
    assert_eq!(json["text"], "Outbound spam notification - alice@example.com blocked from sending outbound mail");
    assert!(json["release_command"].as_str().unwrap().ends_with("restricted release alice@example.com"));
    assert_eq!(json["admin_url"], "http://127.0.0.1:7358/#account=alice@example.com");
    // The email went out independently of the webhook's trouble.
    relay.message(WAIT).await;
    let stats = n.handle.join().await;
    assert_eq!((stats.webhook.delivered, stats.webhook.failed_attempts, stats.webhook.pending), (1, 1, 0));
    assert_eq!((stats.email.delivered, stats.email.failed_attempts, stats.email.pending), (1, 0, 0));
    assert!(hook.drain().is_empty(), "no third post");
}

#[tokio::test]
async fn stats_count_per_channel() {
    let mut relay = TestSmtp::start(true).await;
    let mut hook = TestHttp::start(&[503, 503]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &format!("smtp = \"{}\"\nwebhook = \"{}\"", relay.url(), hook.url("/")), "");
    let n = start(&config);
    n.events.send(restricted("alice@example.com")).await.unwrap();
    relay.message(WAIT).await;
    for status in [503, 503, 200] {
        assert_eq!(hook.next(WAIT).await.unwrap().status, status);
    }
    // The third attempt was only launched after the second failure was counted.
    assert_eq!(n.handle.stats().webhook.failed_attempts, 2);
    // The 200 was sent before the notifier saw it; join waits for the bookkeeping.
    let stats = n.handle.join().await;
    assert_eq!((stats.webhook.delivered, stats.webhook.failed_attempts, stats.webhook.pending), (1, 2, 0));
    assert_eq!((stats.email.delivered, stats.email.pending), (1, 0));
    let n = start(&config);
    assert_eq!(n.handle.stats(), notify::NotifyStats::default(), "nothing left for the next start");
    n.handle.join().await;
}

#[tokio::test]
async fn policy_recipients_and_other_events() {
    let mut relay = TestSmtp::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &format!("smtp = \"{}\"", relay.url()),
        "[[policy.rule]]\nname = \"newsletter\"\npriority = 0\nfrom = [\"news@example.com\"]\n\
         notify_recipients = [\"marketing-lead@example.com\", \"OPS@example.com\"]\n",
    );
    let n = start(&config);
    let mut e = restricted("news@example.com");
    e.policy = "newsletter".into();
    n.events.send(e.clone()).await.unwrap();
    let m = relay.message(WAIT).await;
    assert_eq!(
        m.rcpts,
        ["postmaster@example.com", "ops@example.com", "marketing-lead@example.com"],
        "policy recipients added, duplicates folded"
    );
    for (kind, subject) in [
        (
            EventKind::SendingLimitExceeded,
            "Outbound mail alert - news@example.com went over a sending limit (mail still delivered)",
        ),
        (EventKind::ApproachingLimit, "Outbound mail warning - news@example.com is close to a sending limit"),
        (EventKind::SenderReleased, "Outbound mail - news@example.com may send outbound mail again"),
    ] {
        let m = deliver(&n, &mut relay, as_kind(&e, kind)).await;
        let msg = MessageParser::default().parse(&m.data[..]).unwrap();
        assert_eq!(msg.subject(), Some(subject));
        assert_eq!(
            msg.header_raw("X-Outbound-Guard-Event").map(str::trim),
            Some(match kind {
                EventKind::SendingLimitExceeded => "sending_limit_exceeded",
                EventKind::ApproachingLimit => "approaching_limit",
                _ => "sender_released",
            })
        );
    }
    n.handle.join().await;
}

#[tokio::test]
async fn broken_override_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("templates/sender_restricted.body.txt"), "{% if %}").unwrap();
    let config = config(dir.path(), "templates_dir = \"templates\"", "");
    let (_tx, rx) = mpsc::channel(1);
    let (_s, srx) = watch::channel(false);
    let err = notify::spawn(config, rx, Vec::new(), srx).err().expect("refused").to_string();
    assert!(err.contains("sender_restricted.body.txt"), "{err}");
}

#[tokio::test]
async fn reload_changes_language_and_recipients_for_the_next_notice() {
    let mut relay = TestSmtp::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let smtp = format!("smtp = \"{}\"", relay.url());
    let n = start(&config(dir.path(), &smtp, ""));
    n.events.send(restricted("a@example.com")).await.unwrap();
    let m = relay.message(WAIT).await;
    assert_eq!(m.rcpts, ["postmaster@example.com", "ops@example.com"]);

    let text = format!(
        "[state]\ndir = \"state\"\n[notify]\n{smtp}\nlanguage = \"nl\"\n\
         from = \"guard@example.com\"\nrecipients = [\"beheer@example.com\"]\n"
    );
    let reloaded = Arc::new(Config::parse(&dir.path().join("plugin.toml"), &text).unwrap());
    n.handle.reload(reloaded).expect("templates and relay accepted");
    n.events.send(restricted("b@example.com")).await.unwrap();
    let m = relay.message(WAIT).await;
    assert_eq!(m.rcpts, ["beheer@example.com"]);
    let msg = MessageParser::default().parse(&m.data[..]).unwrap();
    assert!(msg.subject().unwrap().starts_with("Melding uitgaande spam - b@example.com"));
    n.handle.join().await;
}

#[tokio::test]
async fn other_events_in_every_language() {
    let account = "jörg@exämple.se";
    let subjects = [
        (
            "sv",
            [
                "Larm om utgående e-post - jörg@exämple.se har passerat en sändningsgräns (e-posten levereras fortfarande)",
                "Varning om utgående e-post - jörg@exämple.se närmar sig en sändningsgräns",
                "Utgående e-post - jörg@exämple.se får skicka utgående e-post igen",
            ],
        ),
        (
            "nl",
            [
                "Alarm uitgaande e-mail - jörg@exämple.se is over een verzendlimiet gegaan (e-mail wordt nog bezorgd)",
                "Waarschuwing uitgaande e-mail - jörg@exämple.se nadert een verzendlimiet",
                "Uitgaande e-mail - jörg@exämple.se mag weer uitgaande e-mail versturen",
            ],
        ),
        (
            "da",
            [
                "Alarm om udgående mail - jörg@exämple.se har overskredet en afsendelsesgrænse (mailen leveres stadig)",
                "Advarsel om udgående mail - jörg@exämple.se nærmer sig en afsendelsesgrænse",
                "Udgående mail - jörg@exämple.se må sende udgående mail igen",
            ],
        ),
    ];
    let mut relay = TestSmtp::start(true).await;
    for (lang, expected) in subjects {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), &format!("smtp = \"{}\"\nlanguage = \"{lang}\"", relay.url()), "");
        let n = start(&config);
        let kinds = [EventKind::SendingLimitExceeded, EventKind::ApproachingLimit, EventKind::SenderReleased];
        for (kind, subject) in kinds.into_iter().zip(expected) {
            let m = deliver(&n, &mut relay, as_kind(&restricted(account), kind)).await;
            let msg = MessageParser::default().parse(&m.data[..]).unwrap();
            assert_eq!(msg.subject(), Some(subject), "{lang} {kind:?}");
            let body = msg.body_text(0).expect("a text body").into_owned();
            assert!(body.contains(account), "{lang} {kind:?}: account missing from\n{body}");
            assert!(!body.contains("{{") && !body.contains("}}"), "{lang} {kind:?}: unrendered template\n{body}");
        }
        n.handle.join().await;
    }
    assert!(relay.drain().is_empty(), "three messages per language, no more");
}

/// The account's own notice (`notify_sender`) goes through the spool like the
/// administrators': with the relay down it is kept across a stop under its own id, and at
/// the next start it reaches the account, once.
#[tokio::test]
async fn the_accounts_own_notice_is_spooled_and_delivered_after_a_restart() {
    let mut relay = TestSmtp::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = "[policy.default]\nnotify_sender = true\n";
    let config = config(dir.path(), &format!("smtp = \"{}\"", relay.url()), policy);
    let spool = dir.path().join("state/spool");

    let n = start(&config);
    let mut event = restricted("alice@example.com");
    event.id = "00c0ffee00000001".into();
    n.events.send(event).await.unwrap();
    // Both notices failed at least once: every first attempt was made.
    for _ in 0..2 {
        assert!(matches!(relay.next(WAIT).await, Some(SmtpEvent::Refused)));
    }
    n.handle.join().await;
    let mut pending: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    pending.sort();
    assert_eq!(
        pending,
        ["sender_restricted-email-00c0ffee00000001.json", "sender_restricted-sender-00c0ffee00000001.json"]
    );
    relay.drain();

    relay.set_up(true);
    let n = start(&config);
    let mut to = Vec::new();
    for _ in 0..2 {
        let m = relay.message(WAIT).await;
        assert_well_formed(&m.data);
        to.push(m.rcpts.join(","));
    }
    to.sort();
    assert_eq!(to, ["alice@example.com", "postmaster@example.com,ops@example.com"]);
    n.handle.join().await;
    let n = start(&config);
    assert_eq!(n.handle.stats().email.pending, 0);
    n.handle.join().await;
    assert!(relay.drain().is_empty(), "delivered exactly once");
}

/// A login without `@`, or a domain restricted as a unit, has no address: only the
/// administrators are told.
#[tokio::test]
async fn an_account_without_an_address_gets_no_notice_of_its_own() {
    let mut relay = TestSmtp::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let n =
        start(&config(dir.path(), &format!("smtp = \"{}\"", relay.url()), "[policy.default]\nnotify_sender = true\n"));
    for account in ["bob", "@customer.example"] {
        let m = deliver(&n, &mut relay, restricted(account)).await;
        assert_eq!(m.rcpts, ["postmaster@example.com", "ops@example.com"], "{account}");
    }
    // The one with an address gets its own beside the administrators'.
    n.events.send(restricted("alice@example.com")).await.unwrap();
    let mut to = vec![relay.message(WAIT).await.rcpts.join(","), relay.message(WAIT).await.rcpts.join(",")];
    to.sort();
    assert_eq!(to, ["alice@example.com", "postmaster@example.com,ops@example.com"]);
    let stats = n.handle.join().await;
    assert_eq!(stats.email.delivered, 4);
    assert!(relay.drain().is_empty());
}

/// A burst: many accounts restricted at once (a compromised domain) while a relay takes
/// everything. Every notice arrives, each exactly once, and the notifier keeps up: it writes
/// the burst to the spool and marks deliveries done in groups, one directory sync per group
/// rather than per notice. Prints the rate (`--nocapture`).
#[tokio::test]
async fn a_burst_of_restrictions_is_delivered_whole_and_once() {
    const BURST: usize = 300;
    let (mut relay, _dir, n) = notifier_with_relay().await;
    let start = std::time::Instant::now();
    let sender = n.events.clone();
    let feed = tokio::spawn(async move {
        for i in 0..BURST {
            sender.send(restricted(&format!("user{i}@example.com"))).await.unwrap();
        }
    });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..BURST {
        let m = relay.message(WAIT).await;
        let msg = MessageParser::default().parse(&m.data[..]).unwrap();
        let subject = msg.subject().unwrap_or_default().to_owned();
        assert!(seen.insert(subject.clone()), "sent twice: {subject}");
    }
    feed.await.unwrap();
    let elapsed = start.elapsed();
    println!("{BURST} notices in {elapsed:?}: {:.0} a second", BURST as f64 / elapsed.as_secs_f64());
    let stats = n.handle.join().await;
    assert_eq!((stats.email.delivered, stats.email.pending), (BURST as u64, 0), "{stats:?}");
    assert!(relay.drain().is_empty(), "nothing more arrives");
}
