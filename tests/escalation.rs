//! Repeat offenders (`escalate_after`, `escalate_window`) in process: the engine on the durable
//! store with a clock the test moves. A limit restricts `block_until_tomorrow`; the second
//! policy restriction within the window is made until released, says so, is recorded as
//! `escalated`, counted and announced — and stays restricted when the store is opened again.
//! Manual restrictions neither count nor escalate; a rule may change both keys. And the real
//! binary: the spam share restricts, an administrator releases, the spam share restricts
//! again — until released, `escalated` in the API's history — and a `kill -9` keeps it so.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::binary::GuardProcess;
use common::mta::runtime;
use outbound_guard::config::Config;
use outbound_guard::metrics::Metrics;
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
use outbound_guard::milter::command::Command as Milter;
use outbound_guard::policy::clock::EngineClock;
use outbound_guard::policy::engine::bounces::{BounceAction, BounceEvidence};
use outbound_guard::policy::engine::{Engine, Transaction};
use outbound_guard::policy::events::{Event, EventKind, EventSink};
use outbound_guard::policy::restriction::AuditAction;
use outbound_guard::policy::{Decision, MailFacts, Policy, RcptFacts, Refusal};
use outbound_guard::state::durable::DurableRestrictions;

const DAY: Duration = Duration::from_secs(86_400);
/// 22:26:40 UTC: "tomorrow" is an hour and a half away.
const START: u64 = 1_795_300_000;

const CONFIG: &str = "[organization]\nlocal_domains = [\"example.com\"]\n\
    [notify]\nwarn_at_percent = 0\n\
    [policy.default]\nrecipient_limit_external_per_hour = 2\naction_when_threshold_reached = \"block_until_tomorrow\"\n\
    escalate_after = 2\n\
    [[policy.rule]]\nname = \"short-memory\"\npriority = 1\nfrom = [\"bob@example.com\"]\nescalate_window = \"1h\"\n\
    [[policy.rule]]\nname = \"never\"\npriority = 2\nfrom = [\"carol@example.com\"]\nescalate_after = 0\n\
    [[policy.rule]]\nname = \"first-time\"\npriority = 3\nfrom = [\"erin@example.com\"]\nescalate_after = 1\n\
    [[policy.rule]]\nname = \"bounce-alert\"\npriority = 4\nfrom = [\"gina@example.com\"]\nescalate_after = 1\n\
    bounce_action = \"alert\"\n";

struct Setup {
    engine: Engine,
    events: tokio::sync::mpsc::Receiver<Event>,
    store: Arc<DurableRestrictions>,
}

fn engine_on(dir: &Path, at: u64) -> Setup {
    let config = Arc::new(Config::parse(Path::new("escalation.toml"), CONFIG).unwrap());
    let (sink, events) = EventSink::channel(64);
    let clock = EngineClock::manual(std::time::UNIX_EPOCH + Duration::from_secs(at));
    let store = Arc::new(DurableRestrictions::open(dir, at as i64).unwrap());
    let engine = Engine::new(config, store.clone(), sink, clock, Arc::new(Metrics::new()));
    Setup { engine, events, store }
}

/// One message of `account` with external recipients until one is refused; returns the
/// refusal of the recipient that reached the limit.
fn send_until_refused(engine: &Engine, account: &str) -> Decision {
    let mut tx = Transaction::default();
    let facts = MailFacts {
        sender: account.as_bytes(),
        auth_login: Some(account.as_bytes()),
        client_addr: None,
        queue_id: None,
        local_submission: false,
    };
    assert_eq!(engine.mail_from(&mut tx, &facts), Decision::Continue, "{account} may send");
    let mut decision = Decision::Continue;
    for i in 0..3 {
        let to = format!("r{i}@remote.example");
        decision = engine.rcpt_to(&mut tx, &RcptFacts { recipient: to.as_bytes() });
        if decision != Decision::Continue {
            break;
        }
    }
    engine.end_transaction(&mut tx);
    decision
}

fn restricted_event(events: &mut tokio::sync::mpsc::Receiver<Event>) -> Event {
    loop {
        let e = events.try_recv().expect("a sender_restricted event");
        if e.kind == EventKind::SenderRestricted {
            return e;
        }
    }
}

fn actions(engine: &Engine, account: &str) -> Vec<AuditAction> {
    engine.history(account).into_iter().map(|e| e.action).collect()
}

#[test]
fn the_second_limit_restriction_within_the_window_is_until_released_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Setup { engine, mut events, store } = engine_on(dir.path(), START);
    let account = "alice@example.com";

    // The first: block_until_tomorrow, as the action says.
    assert_eq!(send_until_refused(&engine, account), Decision::Refuse(Refusal::LimitReached));
    let now = engine.clock().now().secs();
    let first = engine.restrictions().get(account, now).expect("restricted");
    assert!(first.until.is_some() && !first.escalated, "{first:?}");
    assert_eq!(restricted_event(&mut events).until, first.until);

    // Expired by itself the next day (no release, so no day of grace); the limit again.
    engine.clock().advance(DAY);
    assert_eq!(send_until_refused(&engine, account), Decision::Refuse(Refusal::LimitReached));
    let now = engine.clock().now().secs();
    let second = engine.restrictions().get(account, now).expect("restricted again");
    assert_eq!(second.until, None, "until released");
    assert!(second.escalated);
    assert!(second.reason.ends_with("(2nd restriction within 7d: until released)"), "{}", second.reason);
    let event = restricted_event(&mut events);
    assert_eq!((event.until, event.reason.as_str(), event.escalated), (None, second.reason.as_str(), true));
    assert_eq!(actions(&engine, account), [AuditAction::Restricted, AuditAction::Escalated]);
    let history = engine.history(account);
    assert_eq!((history[1].until, history[1].by.as_str()), (None, "policy"));
    let metrics = engine.metrics().render();
    assert!(
        metrics.contains("outbound_guard_escalations_total{reason=\"recipient_limit_external_per_hour\"} 1"),
        "{metrics}"
    );

    // Still restricted, and still escalated, a week later and after the store is reopened.
    drop(engine);
    drop(store);
    let later = START + 8 * DAY.as_secs();
    let Setup { engine, .. } = engine_on(dir.path(), later);
    let r = engine.restrictions().get(account, later as i64).expect("restricted after reopening");
    assert_eq!((r.until, r.escalated), (None, true));
    assert_eq!(actions(&engine, account), [AuditAction::Restricted, AuditAction::Escalated]);
    assert!(engine.restrictions().is_restricted(account, later as i64));
}

#[test]
fn outside_the_window_with_the_key_off_or_after_manual_restrictions_nothing_escalates() {
    let dir = tempfile::tempdir().unwrap();
    let Setup { engine, .. } = engine_on(dir.path(), START);
    // dave: only an administrator restricted him before.
    engine.restrict_manually("dave@example.com", "by hand", None, "alice").unwrap();
    engine.release("dave@example.com", "alice", None).unwrap();
    // A day later: past the grace of dave's release.
    engine.clock().advance(DAY);
    // bob: his rule's window is an hour; carol: her rule turns escalation off.
    for account in ["bob@example.com", "carol@example.com", "dave@example.com"] {
        assert_eq!(send_until_refused(&engine, account), Decision::Refuse(Refusal::LimitReached), "{account}");
        let r = engine.restrictions().get(account, engine.clock().now().secs()).unwrap();
        assert!(r.until.is_some() && !r.escalated, "{account}: {r:?}");
    }
    assert_eq!(
        actions(&engine, "dave@example.com"),
        [AuditAction::Restricted, AuditAction::Released, AuditAction::Restricted],
        "the manual restriction does not count"
    );
    engine.clock().advance(DAY);
    for account in ["bob@example.com", "carol@example.com"] {
        assert_eq!(send_until_refused(&engine, account), Decision::Refuse(Refusal::LimitReached), "{account}");
        let r = engine.restrictions().get(account, engine.clock().now().secs()).unwrap();
        assert!(r.until.is_some() && !r.escalated, "{account}: {r:?}");
        assert_eq!(actions(&engine, account), [AuditAction::Restricted, AuditAction::Restricted]);
    }
    assert!(!engine.metrics().render().contains("outbound_guard_escalations_total{"));

    // dave's second by the policy within 7 days escalates.
    assert_eq!(send_until_refused(&engine, "dave@example.com"), Decision::Refuse(Refusal::LimitReached));
    let r = engine.restrictions().get("dave@example.com", engine.clock().now().secs()).unwrap();
    assert!(r.escalated && r.until.is_none(), "{r:?}");
    assert!(r.reason.ends_with("(2nd restriction within 7d: until released)"), "{}", r.reason);
}

#[test]
fn a_manual_restriction_is_never_escalated_and_a_rule_may_escalate_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let Setup { engine, .. } = engine_on(dir.path(), START);
    let until = engine.clock().now().datetime() + time::Duration::hours(1);

    // erin's rule escalates every policy restriction, but never an administrator's.
    let (r, _) = engine.restrict_manually("erin@example.com", "by hand", Some(until), "alice").unwrap();
    assert_eq!((r.until, r.escalated), (Some(until), false));
    engine.release("erin@example.com", "alice", None).unwrap();
    engine.clock().advance(DAY);
    assert_eq!(send_until_refused(&engine, "erin@example.com"), Decision::Refuse(Refusal::LimitReached));
    let r = engine.restrictions().get("erin@example.com", engine.clock().now().secs()).unwrap();
    assert!(r.escalated && r.until.is_none(), "{r:?}");
    assert!(r.reason.ends_with("(1st restriction within 7d: until released)"), "{}", r.reason);
    assert_eq!(
        actions(&engine, "erin@example.com"),
        [AuditAction::Restricted, AuditAction::Released, AuditAction::Escalated]
    );
}

/// Every kind of policy restriction counts towards every other: a limit, then bounces. An
/// `alert` action restricts nothing, so escalates nothing.
#[test]
fn a_bounce_restriction_after_a_limit_one_is_the_second_and_alerts_never_escalate() {
    let dir = tempfile::tempdir().unwrap();
    let Setup { engine, mut events, .. } = engine_on(dir.path(), START);
    let evidence =
        BounceEvidence { bounced: 30, delivered: 1, deferred: 0, samples: vec!["x@remote.example: 5.1.1".into()] };
    assert_eq!(send_until_refused(&engine, "frank@example.com"), Decision::Refuse(Refusal::LimitReached));
    engine.clock().advance(DAY);
    assert_eq!(engine.bounces_reached("frank@example.com", &evidence), BounceAction::Restricted);
    let r = engine.restrictions().get("frank@example.com", engine.clock().now().secs()).unwrap();
    assert_eq!((r.cause(), r.escalated, r.until), ("bounces", true, None));
    assert!(r.reason.ends_with("(2nd restriction within 7d: until released)"), "{}", r.reason);
    let metrics = engine.metrics().render();
    assert!(metrics.contains("outbound_guard_escalations_total{reason=\"bounces\"} 1"), "{metrics}");
    while let Ok(e) = events.try_recv() {
        assert!(e.kind != EventKind::SenderRestricted || e.until.is_some() || e.escalated, "{e:?}");
    }

    assert_eq!(engine.bounces_reached("gina@example.com", &evidence), BounceAction::Alerted);
    assert!(!engine.restrictions().is_restricted("gina@example.com", engine.clock().now().secs()));
    assert!(engine.history("gina@example.com").is_empty());
}

#[test]
fn the_keys_parse_per_policy_and_bad_values_are_refused_naming_the_key() {
    let parse = |text: &str| Config::parse(Path::new("plugin.toml"), text);
    let c = parse("").unwrap();
    let d = &c.policies.default;
    assert_eq!((d.escalate_after, d.escalate_window), (0, 7 * DAY), "off by default, a week");
    let c = parse(CONFIG).unwrap();
    assert_eq!((c.policies.default.escalate_after, c.policies.default.escalate_window), (2, 7 * DAY));
    let rule = |name: &str| &c.policies.rules.iter().find(|r| r.settings.name == name).unwrap().settings;
    assert_eq!(
        (rule("short-memory").escalate_after, rule("short-memory").escalate_window),
        (2, Duration::from_secs(3600))
    );
    assert_eq!((rule("never").escalate_after, rule("never").escalate_window), (0, 7 * DAY));
    for (text, key, value) in [
        ("[policy.default]\nescalate_after = -1\n", "policy.default.escalate_after", "-1"),
        ("[policy.default]\nescalate_after = 51\n", "policy.default.escalate_after", "51"),
        ("[policy.default]\nescalate_after = \"2\"\n", "escalate_after", "2"),
        ("[policy.default]\nescalate_window = \"7x\"\n", "policy.default.escalate_window", "7x"),
        ("[policy.default]\nescalate_window = \"0d\"\n", "policy.default.escalate_window", "0d"),
        (
            "[[policy.rule]]\nname = \"r\"\npriority = 1\nfrom = [\"a@example.com\"]\nescalate_window = \"-7d\"\n",
            "policy.rule[0].escalate_window",
            "-7d",
        ),
    ] {
        let e = parse(text).expect_err(text).to_string();
        assert!(e.contains(key) && e.contains(value), "{text}: {e}");
    }
}

/// One message of `account` to one external recipient with a scanner's spam verdict; the
/// reply letters (MAIL, then the end of message when MAIL FROM was accepted).
async fn send_spam(port: u16, account: &str) -> Vec<u8> {
    let mut c = MtaClient::connect(([127, 0, 0, 1], port).into()).await.unwrap();
    c.negotiate(POSTFIX_OFFER).await.unwrap();
    c.macros(b'M', &[("{auth_authen}", account)]).await.unwrap();
    let mut letters = vec![c.mail_from(&format!("<{account}>"), &[]).await.unwrap().kind().unwrap()];
    if letters[0] == b'c' {
        assert_eq!(c.rcpt_to("<someone@example.net>").await.unwrap().kind(), Some(b'c'));
        let headers = [("Subject", " buy now"), ("X-Spam-Status", " Yes, score=15.3 required=5.0")];
        letters.push(c.message(&headers, b"Hello\r\n").await.unwrap().kind().unwrap());
    }
    c.write(Milter::Quit).await.unwrap();
    letters
}

fn json(g: &GuardProcess, args: &[&str]) -> serde_json::Value {
    let out = g.cli(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_real_binary_escalates_a_repeat_and_keeps_it_across_kill_9() {
    let policy = "[organization]\nlocal_domains = [\"example.com\"]\n\
        [policy.default]\nspam_min_messages = 1\nspam_percent = 1\nspam_action = \"block_until_tomorrow\"\n\
        escalate_after = 2\n";
    let g = GuardProcess::start("", policy);
    let rt = runtime();
    let account = "mallory@example.com";
    assert_eq!(rt.block_on(send_spam(g.milter_port, account)), b"cc", "delivered (tagged), then restricted");
    let first = json(&g, &["senders", "show", account, "--json"]);
    assert!(first["restriction"]["until"].is_string(), "{first}");
    assert_eq!(first["history"][0]["action"], "restricted");

    let release = g.cli(&["restricted", "release", account, "--reason", "cleaned up"]);
    assert!(release.status.success(), "{}", String::from_utf8_lossy(&release.stderr));
    // The grace after a release covers limits, not the spam share: restricted again at once.
    assert_eq!(rt.block_on(send_spam(g.milter_port, account)), b"cc");
    let second = json(&g, &["senders", "show", account, "--json"]);
    let r = &second["restriction"];
    assert!(r["until"].is_null(), "until released: {second}");
    assert!(r["reason"].as_str().unwrap().ends_with("(2nd restriction within 7d: until released)"), "{second}");
    let actions: Vec<&str> =
        second["history"].as_array().unwrap().iter().map(|h| h["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["restricted", "released", "escalated"], "{second}");
    assert!(second["history"][2]["until"].is_null());
    let log = g.log();
    assert!(log.contains("escalated=true"), "the log line says so:\n{log}");

    // kill -9, and the same directory again: still restricted, until released, escalated.
    let g = GuardProcess::restart(g);
    assert_eq!(rt.block_on(send_spam(g.milter_port, account)), b"y", "refused at MAIL FROM");
    let after = json(&g, &["restricted", "show", account, "--json"]);
    assert!(after["until"].is_null(), "{after}");
    assert_eq!(after["source"], "policy");
    let actions: Vec<&str> =
        after["history"].as_array().unwrap().iter().map(|h| h["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["restricted", "released", "escalated"], "{after}");
    let (status, _) = g.terminate();
    assert!(status.success());
}
