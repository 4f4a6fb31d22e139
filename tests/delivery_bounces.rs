//! The bounce signal in process: messages the engine accepts, their outcomes written to a
//! Postfix log the delivery follower reads (rotated in the middle), and the restriction that
//! follows — its cause, reason, event and metric. Polls are called directly: no sleeps.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use outbound_guard::config::Config;
use outbound_guard::delivery::Delivery;
use outbound_guard::metrics::Metrics;
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::engine::{Engine, Transaction};
use outbound_guard::policy::events::{EventKind, EventSink};
use outbound_guard::policy::{Decision, MailFacts, MessageFacts, Policy, RcptFacts};
use outbound_guard::state::memory::MemoryRestrictions;

const CONFIG: &str = "[organization]\nlocal_domains = [\"example.com\"]\n\
    [policy.default]\nbounce_percent = 50\nbounce_min_recipients = 3\nbounce_window = \"1h\"\n\
    [[policy.rule]]\nname = \"alerting\"\npriority = 1\nfrom = [\"bob@example.com\"]\nbounce_action = \"alert\"\n";

fn engine() -> (Arc<Engine>, tokio::sync::mpsc::Receiver<outbound_guard::policy::events::Event>) {
    let config = Arc::new(Config::parse(Path::new("bounces.toml"), CONFIG).unwrap());
    let (sink, events) = EventSink::channel(16);
    let clock = EngineClock::manual(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_300_000));
    let engine = Engine::new(config, Arc::new(MemoryRestrictions::default()), sink, clock, Arc::new(Metrics::new()));
    (Arc::new(engine), events)
}

/// One message of `account` to `recipients`, accepted under `queue_id`.
fn send(engine: &Engine, account: &str, queue_id: &str, recipients: &[&str]) {
    let mut tx = Transaction::default();
    let facts = MailFacts {
        sender: account.as_bytes(),
        auth_login: Some(account.as_bytes()),
        client_addr: None,
        queue_id: None,
        local_submission: false,
    };
    assert_eq!(engine.mail_from(&mut tx, &facts), Decision::Continue);
    for to in recipients {
        assert_eq!(engine.rcpt_to(&mut tx, &RcptFacts { recipient: to.as_bytes() }), Decision::Continue);
    }
    let facts = MessageFacts { queue_id: Some(queue_id.as_bytes()), headers: &[], scanned: &[] };
    assert_eq!(engine.end_of_message(&mut tx, &facts).decision, Decision::Continue);
    engine.end_transaction(&mut tx);
}

fn status(queue_id: &str, to: &str, dsn: &str, status: &str) -> String {
    format!(
        "Dec  7 16:07:48 mta postfix/smtp[4901]: {queue_id}: to=<{to}>, relay=mx.remote.example[192.0.2.7]:25, \
         delay=0.2, delays=0.1/0/0.05/0.05, dsn={dsn}, status={status} (remote said something)\n"
    )
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
}

#[test]
fn bounced_recipients_past_the_thresholds_restrict_the_account_across_a_rotation() {
    let (engine, mut events) = engine();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    append(&log, &status("0AAAAA0001", "old@remote.example", "5.1.1", "bounced"));
    let mut delivery = Delivery::new(engine.clone(), &log).expect("the first follower");
    assert!(Delivery::new(engine.clone(), &log).is_none(), "one follower per engine");
    delivery.poll();

    send(&engine, "alice@example.com", "4A4419D402D", &["x@remote.example", "y@remote.example", "z@remote.example"]);
    send(&engine, "alice@example.com", "5B5529E513E", &["w@remote.example", "v@remote.example"]);
    append(&log, &status("4A4419D402D", "x@remote.example", "2.0.0", "sent"));
    append(&log, &status("4A4419D402D", "y@remote.example", "5.1.1", "bounced"));
    // Deferred first, then bounced: the last status line decides.
    append(&log, &status("4A4419D402D", "z@remote.example", "4.2.0", "deferred"));
    delivery.poll();
    assert_eq!(delivery.followed(), 2);
    assert!(!engine.restrictions().is_restricted("alice@example.com", engine.clock().now().secs()));

    // logrotate: rename, and Postfix writes on to the old file for a moment, then the new one.
    std::fs::rename(&log, dir.path().join("mail.log.1")).unwrap();
    append(&dir.path().join("mail.log.1"), &status("4A4419D402D", "z@remote.example", "5.4.1", "bounced"));
    append(&log, &status("5B5529E513E", "w@remote.example", "5.7.1", "bounced"));
    append(&log, "Dec  7 16:07:49 mta postfix/qmgr[4899]: 4A4419D402D: removed\n");
    delivery.poll();

    let now = engine.clock().now().secs();
    let r = engine.restrictions().get("alice@example.com", now).expect("restricted for its bounces");
    assert_eq!(r.cause(), "bounces");
    assert!(r.reason.starts_with("3 of its 4 recipients with a final outcome in the last 1h bounced"), "{}", r.reason);
    assert!(r.reason.contains("w@remote.example: 5.7.1"), "{}", r.reason);
    assert!(r.until.is_none(), "bounce_action defaults to block");
    let event = events.try_recv().expect("an event");
    assert_eq!((event.kind, event.cause.as_str()), (EventKind::SenderRestricted, "bounces"));
    let metrics = engine.metrics().render();
    assert!(metrics.contains("outbound_guard_restrictions_total{reason=\"bounces\"} 1"), "{metrics}");
    // Only the followed messages' recipients: the line from before the start is nobody's.
    for (outcome, n) in [("delivered", 1), ("bounced", 3), ("deferred", 1)] {
        let sample = format!("outbound_guard_delivery_outcomes_total{{outcome=\"{outcome}\"}} {n}\n");
        assert!(metrics.contains(&sample), "{sample} in {metrics}");
    }
    assert_eq!(delivery.followed(), 1, "the removed message is forgotten");
}

#[test]
fn under_alert_the_account_keeps_sending_and_one_alert_goes_out_an_hour() {
    let (engine, mut events) = engine();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    // Missing at start: created later and read from its start.
    let mut delivery = Delivery::new(engine.clone(), &log).unwrap();
    delivery.poll();
    send(&engine, "bob@example.com", "6C6639F624F", &["a@remote.example", "b@remote.example", "c@remote.example"]);
    send(&engine, "bob@example.com", "7D7749A735A", &["d@remote.example"]);
    for to in ["a", "b", "c"] {
        append(&log, &status("6C6639F624F", &format!("{to}@remote.example"), "5.1.1", "bounced"));
    }
    delivery.poll();
    append(&log, &status("7D7749A735A", "d@remote.example", "5.1.1", "bounced"));
    delivery.poll();
    assert!(!engine.restrictions().is_restricted("bob@example.com", engine.clock().now().secs()));
    let alert = events.try_recv().expect("an alert");
    assert_eq!((alert.kind, alert.cause.as_str()), (EventKind::SendingLimitExceeded, "bounces"));
    assert!(alert.reason.starts_with("3 of its 3 recipients"), "{}", alert.reason);
    assert!(events.try_recv().is_err(), "at most one alert an hour");
}

#[test]
fn lines_of_messages_the_filter_did_not_accept_count_nothing() {
    let (engine, _events) = engine();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    append(&log, "");
    let mut delivery = Delivery::new(engine.clone(), &log).unwrap();
    delivery.poll();
    for i in 0..5 {
        append(&log, &status("0BBBBB0001", &format!("r{i}@remote.example"), "5.1.1", "bounced"));
    }
    delivery.poll();
    assert!(engine.restrictions().list(engine.clock().now().secs()).is_empty());
}

#[test]
fn the_keys_are_validated_and_the_log_path_is_relative_to_the_file() {
    let parse = |text: &str| Config::parse(Path::new("/etc/outbound-guard/plugin.toml"), text);
    let c = parse("[delivery]\npostfix_log = \"log/mail.log\"\n").unwrap();
    assert_eq!(c.delivery.postfix_log.as_deref(), Some(Path::new("/etc/outbound-guard/log/mail.log")));
    let d = &c.policies.default;
    assert_eq!((d.bounce_percent, d.bounce_min_recipients), (0, 20), "off by default");
    assert_eq!(d.bounce_window, std::time::Duration::from_secs(3600));
    assert!(parse("").unwrap().delivery.postfix_log.is_none());
    for (text, key) in [
        ("[delivery]\npostfix_log = \"\"\n", "delivery.postfix_log"),
        ("[delivery]\nfollow = true\n", "follow"),
        ("[policy.default]\nbounce_percent = 101\n", "policy.default.bounce_percent"),
        ("[policy.default]\nbounce_min_recipients = 0\n", "policy.default.bounce_min_recipients"),
        ("[policy.default]\nbounce_window = \"0s\"\n", "policy.default.bounce_window"),
        ("[policy.default]\nbounce_action = \"shout\"\n", "policy.default.bounce_action"),
    ] {
        let e = parse(text).expect_err(text).to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}

/// The task `run` starts: it polls on its own with paused time (no waiting in real time),
/// and stops at shutdown.
#[tokio::test(start_paused = true)]
async fn the_follower_task_polls_by_itself_and_stops_at_shutdown() {
    let (engine, _events) = engine();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("mail.log");
    append(&log, "");
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = outbound_guard::delivery::spawn(engine.clone(), log.clone(), shutdown).expect("a follower");
    // Its first poll opens the log at its end.
    tokio::time::sleep(outbound_guard::delivery::POLL_EVERY * 2).await;
    send(&engine, "alice@example.com", "8E8859B846B", &["a@remote.example", "b@remote.example", "c@remote.example"]);
    for to in ["a", "b", "c"] {
        append(&log, &status("8E8859B846B", &format!("{to}@remote.example"), "5.1.1", "bounced"));
    }
    let restricted = || engine.restrictions().is_restricted("alice@example.com", engine.clock().now().secs());
    for _ in 0..20 {
        if restricted() {
            break;
        }
        tokio::time::sleep(outbound_guard::delivery::POLL_EVERY).await;
    }
    assert!(restricted());
    stop.send(true).unwrap();
    task.await.expect("the task ends at shutdown");
}
