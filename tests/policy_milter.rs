//! The policy of the README ("What it is", "Policy choices where the specification is silent")
//! case by case, through the milter protocol against an in-process filter whose clock the
//! test moves: inbound mail, restricted accounts, recipient limits and their actions, the
//! per-message cap, grace after a release, alerts and warnings, rules and reload.

mod common;

use std::time::Duration;

use common::daemon::{START, TestDaemon};
use common::mta::code;
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER, StageResult};
use outbound_guard::milter::command::Command;
use outbound_guard::policy::engine::ManualRestriction;
use outbound_guard::policy::events::EventKind;
use outbound_guard::policy::limits::LimitKind;
use outbound_guard::policy::restriction::Source;
use tokio::net::TcpStream;

type Client = MtaClient<TcpStream>;

fn config(policy: &str) -> String {
    format!(
        "[milter]\nlisten = \"inet:127.0.0.1:0\"\n\
         [organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n\
         [notify]\nwarn_at_percent = 0\n{policy}"
    )
}

async fn start(policy: &str) -> TestDaemon {
    TestDaemon::start(&config(policy)).await
}

/// A client at `client_addr`, authenticated as `login` when given.
async fn client(d: &TestDaemon, client_addr: &str) -> Client {
    let mut c = MtaClient::connect(d.addr).await.unwrap();
    c.negotiate(POSTFIX_OFFER).await.unwrap();
    c.macros(b'C', &[("{client_addr}", client_addr)]).await.unwrap();
    c
}

async fn mail(c: &mut Client, login: Option<&str>, sender: &str) -> StageResult {
    let mut macros = vec![("i", "QID")];
    if let Some(l) = login {
        macros.push(("{auth_authen}", l));
    }
    c.macros(b'M', &macros).await.unwrap();
    c.mail_from(&format!("<{sender}>"), &[]).await.unwrap()
}

async fn rcpt(c: &mut Client, to: &str) -> StageResult {
    c.rcpt_to(&format!("<{to}>")).await.unwrap()
}

/// Sends one message with `n` external recipients; returns the reply codes of the recipients.
async fn send_external(c: &mut Client, login: Option<&str>, sender: &str, n: usize) -> Vec<String> {
    let m = mail(c, login, sender).await;
    if m.kind() != Some(b'c') {
        return vec![format!("MAIL {}", code(&m))];
    }
    let mut codes = Vec::new();
    for i in 0..n {
        codes.push(code(&rcpt(c, &format!("r{i}@example.net")).await));
    }
    if codes.iter().any(|c| c == "c") {
        c.message(&[("Subject", "x")], b"x\r\n").await.unwrap();
    } else {
        c.write(Command::Abort).await.unwrap();
    }
    codes
}

/// The notifier's own mail is never counted: by its sender without SMTP AUTH, and by the login
/// `notify.smtp` names when it authenticates. Another login that writes the notifier's address
/// as its sender is counted as itself.
#[tokio::test]
async fn the_notifiers_own_mail_is_never_counted_and_cannot_be_forged() {
    let d = start(
        "from = \"og@example.com\"\nsmtp = \"smtp://notifier:pw@127.0.0.1:25\"\n\
         [policy.default]\nrecipient_limit_external_per_hour = 1\naction_when_threshold_reached = \"block\"\n",
    )
    .await;
    let mut c = client(&d, "127.0.0.1").await;
    for login in [None, Some("notifier"), Some("Notifier")] {
        for _ in 0..2 {
            assert_eq!(mail(&mut c, login, "og@example.com").await.kind(), Some(b'a'), "{login:?}");
        }
    }
    let codes = send_external(&mut c, Some("mallory"), "og@example.com", 2).await;
    assert_eq!(codes[0], "c");
    assert_ne!(codes[1], "c", "a forged notifier sender is counted against its login");
    assert!(d.services.engine.restrictions().is_restricted("mallory", START as i64 + 1));
    d.stop().await;
}

#[tokio::test]
async fn inbound_mail_is_accepted_at_mail_from_and_never_counted() {
    let d = start("[policy.default]\nrecipient_limit_external_per_hour = 1\n").await;
    let mut outside = client(&d, "192.0.2.10").await;
    // A spoofed local sender from outside: accepted, no further events, nobody's quota spent.
    for _ in 0..3 {
        assert_eq!(mail(&mut outside, None, "alice@example.com").await.kind(), Some(b'a'));
    }
    assert_eq!(d.services.engine.counters("alice@example.com").external_last_hour, 0);
    // Alice is then restricted; mail *to* her from outside still flows.
    let mut inside = client(&d, "127.0.0.1").await;
    assert_eq!(send_external(&mut inside, Some("alice@example.com"), "alice@example.com", 2).await, ["c", "550 5.2.2"]);
    assert_eq!(mail(&mut outside, None, "stranger@example.org").await.kind(), Some(b'a'));
    drop((outside, inside));
    d.stop().await;
}

#[tokio::test]
async fn block_until_tomorrow_refuses_the_limit_recipient_and_later_mail_until_midnight() {
    let mut d = start("[policy.default]\nrecipient_limit_external_per_hour = 3\n").await;
    let mut c = client(&d, "127.0.0.1").await;
    // With a limit of 3, three recipients pass; the fourth reaches the limit and later
    // recipients of the same message are refused as restricted.
    let codes = send_external(&mut c, Some("alice@example.com"), "alice@example.com", 5).await;
    assert_eq!(codes, ["c", "c", "c", "550 5.2.2", "550 5.1.8"]);
    assert_eq!(
        mail(&mut c, Some("alice@example.com"), "alice@example.com").await.text().unwrap().get(..9),
        Some("550 5.1.8")
    );

    let r = d.services.engine.restrictions().get("alice@example.com", d.clock.now().secs()).expect("restricted");
    assert_eq!(r.source, Source::Policy);
    assert_eq!(r.policy, "default");
    assert_eq!(r.counters.external_last_hour, 3);
    assert_eq!(r.counters.external_limit_per_hour, 3);
    // Next 00:00 UTC after 2026-11-22T10:00Z.
    assert_eq!(r.until.map(|u| u.unix_timestamp()), Some(1_795_392_000));
    let e = d.next_event().await.expect("event");
    assert_eq!(e.kind, EventKind::SenderRestricted);
    assert_eq!(e.limit, Some(LimitKind::ExternalPerHour));
    assert_eq!(e.account, "alice@example.com");

    // Still refused just before midnight, free just after.
    d.clock.advance(Duration::from_secs(1_795_392_000 - START - 1));
    assert_eq!(code(&mail(&mut c, Some("alice@example.com"), "alice@example.com").await), "550 5.1.8");
    d.clock.advance(Duration::from_secs(1));
    assert_eq!(send_external(&mut c, Some("alice@example.com"), "alice@example.com", 1).await, ["c"]);
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn block_holds_until_released_and_the_day_of_release_is_a_grace_day() {
    let mut d =
        start("[policy.default]\nrecipient_limit_external_per_hour = 2\naction_when_threshold_reached = \"block\"\n")
            .await;
    let mut c = client(&d, "127.0.0.1").await;
    assert_eq!(send_external(&mut c, Some("bob@example.com"), "bob@example.com", 3).await, ["c", "c", "550 5.2.2"]);
    let r = d.services.engine.restrictions().get("bob@example.com", d.clock.now().secs()).unwrap();
    assert_eq!(r.until, None, "block means until released");
    d.clock.advance(Duration::from_secs(3 * 86_400));
    assert_eq!(code(&mail(&mut c, Some("bob@example.com"), "bob@example.com").await), "550 5.1.8");
    d.drain_events();

    let released = d.services.engine.release("bob@example.com", "admin", Some("password changed")).unwrap();
    assert!(released.is_some());
    assert_eq!(d.next_event().await.unwrap().kind, EventKind::SenderReleased);
    // The very next transaction passes; reaching the limit again the same UTC day only alerts.
    assert_eq!(send_external(&mut c, Some("bob@example.com"), "bob@example.com", 4).await, ["c", "c", "c", "c"]);
    assert!(!d.services.engine.restrictions().is_restricted("bob@example.com", d.clock.now().secs()));
    let alert = d.next_event().await.unwrap();
    assert_eq!(alert.kind, EventKind::SendingLimitExceeded);
    // The next day the limit restricts again.
    d.clock.advance(Duration::from_secs(86_400));
    assert_eq!(send_external(&mut c, Some("bob@example.com"), "bob@example.com", 3).await, ["c", "c", "550 5.2.2"]);
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn a_restriction_raises_one_sender_restricted_whether_by_policy_or_by_hand() {
    let mut d =
        start("[policy.default]\nrecipient_limit_external_per_hour = 1\naction_when_threshold_reached = \"block\"\n")
            .await;
    let mut c = client(&d, "127.0.0.1").await;
    // By policy: the refused recipient restricts; the refused MAIL FROM after it raises nothing.
    assert_eq!(send_external(&mut c, Some("ivy@example.com"), "ivy@example.com", 2).await, ["c", "550 5.2.2"]);
    assert_eq!(code(&mail(&mut c, Some("ivy@example.com"), "ivy@example.com").await), "550 5.1.8");
    let kinds: Vec<EventKind> = d.drain_events().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::SenderRestricted).count(), 1, "{kinds:?}");

    // By hand: one event naming who did it; restricting again replaces the reason and raises nothing.
    let (r, outcome) = d.services.engine.restrict_manually("jay@example.com", "phished", None, "root").unwrap();
    assert_eq!(outcome, ManualRestriction::Created);
    assert_eq!(r.until, None);
    let event = d.next_event().await.unwrap();
    assert_eq!(
        (event.kind, event.account.as_str(), event.by.as_deref()),
        (EventKind::SenderRestricted, "jay@example.com", Some("root"))
    );
    assert_eq!(event.reason, "phished");
    let (r, outcome) = d.services.engine.restrict_manually("jay@example.com", "again", None, "root").unwrap();
    assert_eq!(outcome, ManualRestriction::Replaced);
    assert_eq!(r.reason, "again");
    assert!(d.drain_events().is_empty());
    // It holds from the very next MAIL FROM.
    assert_eq!(code(&mail(&mut c, Some("jay@example.com"), "jay@example.com").await), "550 5.1.8");
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn alert_delivers_and_notifies_once_per_hour_per_limit() {
    let mut d =
        start("[policy.default]\nrecipient_limit_external_per_hour = 2\naction_when_threshold_reached = \"alert\"\n")
            .await;
    let mut c = client(&d, "127.0.0.1").await;
    assert_eq!(send_external(&mut c, Some("carol@example.com"), "carol@example.com", 5).await, ["c"; 5]);
    assert_eq!(send_external(&mut c, Some("carol@example.com"), "carol@example.com", 2).await, ["c"; 2]);
    let events = d.drain_events();
    let alerts: Vec<_> = events.iter().filter(|e| e.kind == EventKind::SendingLimitExceeded).collect();
    assert_eq!(alerts.len(), 1, "{events:?}");
    assert!(!d.services.engine.restrictions().is_restricted("carol@example.com", d.clock.now().secs()));
    d.clock.advance(Duration::from_secs(3600));
    assert_eq!(send_external(&mut c, Some("carol@example.com"), "carol@example.com", 3).await, ["c"; 3]);
    assert_eq!(d.next_event().await.unwrap().kind, EventKind::SendingLimitExceeded);
    drop(c);
    d.stop().await;
}

/// Recipients delivered past the hourly limit under `alert` are still counted where there is
/// room: the daily limit fills up and alerts in its turn. The grace day after a release works
/// the same way, and its alert says why the mail is delivered.
#[tokio::test]
async fn recipients_delivered_past_a_limit_still_count_in_the_day_and_alert_it() {
    let mut d = start(
        "[policy.default]\nrecipient_limit_external_per_hour = 2\nrecipient_limit_per_day = 5\n\
         action_when_threshold_reached = \"alert\"\n\
         [[policy.rule]]\nname = \"strict\"\npriority = 0\nfrom = [\"gil@example.com\"]\n\
         recipient_limit_external_per_hour = 2\nrecipient_limit_per_day = 5\naction_when_threshold_reached = \"block\"\n",
    )
    .await;
    let mut c = client(&d, "127.0.0.1").await;
    assert_eq!(send_external(&mut c, Some("fay@example.com"), "fay@example.com", 10).await, ["c"; 10]);
    let counters = d.services.engine.counters("fay@example.com");
    assert_eq!((counters.external_last_hour, counters.last_day), (2, 5));
    let alerts: Vec<_> = d.drain_events().into_iter().filter(|e| e.kind == EventKind::SendingLimitExceeded).collect();
    let limits: Vec<_> = alerts.iter().map(|e| e.limit).collect();
    assert_eq!(limits, [Some(LimitKind::ExternalPerHour), Some(LimitKind::PerDay)], "{alerts:?}");
    assert_eq!(alerts[1].counters.last_day, 5);

    // Grace: released today, so the limits only alert, and the alert says so.
    assert_eq!(send_external(&mut c, Some("gil@example.com"), "gil@example.com", 3).await, ["c", "c", "550 5.2.2"]);
    d.services.engine.release("gil@example.com", "admin", None).unwrap();
    d.drain_events();
    assert_eq!(send_external(&mut c, Some("gil@example.com"), "gil@example.com", 6).await, ["c"; 6]);
    assert_eq!(d.services.engine.counters("gil@example.com").last_day, 5);
    let alerts: Vec<_> = d.drain_events().into_iter().filter(|e| e.kind == EventKind::SendingLimitExceeded).collect();
    assert_eq!(alerts.len(), 2, "hourly and daily: {alerts:?}");
    assert!(alerts[0].reason.contains("released the account today"), "{}", alerts[0].reason);
    drop(c);
    d.stop().await;
}

/// Two sessions of one account at once: the one whose recipient reaches the limit gets the
/// 5.2.2; the other, already restricted by then, gets 5.1.8 for its next recipient.
#[tokio::test]
async fn the_limit_reply_is_given_once_when_two_sessions_overlap() {
    let d =
        start("[policy.default]\nrecipient_limit_external_per_hour = 3\naction_when_threshold_reached = \"block\"\n")
            .await;
    let mut first = client(&d, "127.0.0.1").await;
    let mut second = client(&d, "127.0.0.1").await;
    assert_eq!(code(&mail(&mut first, Some("kim@example.com"), "kim@example.com").await), "c");
    assert_eq!(code(&rcpt(&mut first, "a@example.net").await), "c");
    assert_eq!(
        send_external(&mut second, Some("kim@example.com"), "kim@example.com", 3).await,
        ["c", "c", "550 5.2.2"]
    );
    assert_eq!(code(&rcpt(&mut first, "b@example.net").await), "550 5.1.8");
    drop((first, second));
    d.stop().await;
}

#[tokio::test]
async fn recipients_over_the_message_cap_are_deferred_and_not_counted() {
    let d = start("[policy.default]\nmax_recipients_per_message = 2\nrecipient_limit_external_per_hour = 10\n").await;
    let mut c = client(&d, "127.0.0.1").await;
    let codes = send_external(&mut c, Some("dan@example.com"), "dan@example.com", 4).await;
    assert_eq!(codes, ["c", "c", "452 4.5.3", "452 4.5.3"]);
    assert_eq!(d.services.engine.counters("dan@example.com").external_last_hour, 2);
    // The cap is per message: the next message starts afresh.
    assert_eq!(send_external(&mut c, Some("dan@example.com"), "dan@example.com", 2).await, ["c", "c"]);
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn internal_and_external_hours_are_separate_and_the_day_counts_both() {
    let d = start(
        "[policy.default]\nrecipient_limit_external_per_hour = 2\nrecipient_limit_internal_per_hour = 2\nrecipient_limit_per_day = 3\n",
    )
    .await;
    let mut c = client(&d, "127.0.0.1").await;
    assert_eq!(code(&mail(&mut c, Some("erin@example.com"), "erin@example.com").await), "c");
    assert_eq!(code(&rcpt(&mut c, "a@example.net").await), "c");
    assert_eq!(code(&rcpt(&mut c, "b@sales.example.com").await), "c");
    assert_eq!(code(&rcpt(&mut c, "c@example.com").await), "c");
    assert_eq!(code(&rcpt(&mut c, "d@example.com").await), "550 5.2.2", "fourth recipient of the day");
    let counters = d.services.engine.counters("erin@example.com");
    assert_eq!((counters.external_last_hour, counters.internal_last_hour, counters.last_day), (1, 2, 3));
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn the_null_sender_is_never_restricted() {
    let d =
        start("[policy.default]\nrecipient_limit_external_per_hour = 1\naction_when_threshold_reached = \"block\"\n")
            .await;
    let mut c = client(&d, "127.0.0.1").await;
    for _ in 0..3 {
        c.macros(b'M', &[("{auth_authen}", "frank@example.com")]).await.unwrap();
        assert_eq!(c.mail_from("<>", &[]).await.unwrap().kind(), Some(b'a'));
    }
    assert!(!d.services.engine.restrictions().is_restricted("frank@example.com", d.clock.now().secs()));
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn the_login_pays_not_the_mail_from_and_case_and_tags_fold() {
    let d = start(
        "[policy.default]\nrecipient_limit_external_per_hour = 2\n\
         [[policy.rule]]\nname = \"newsletter\"\npriority = 0\nfrom = [\"news@example.com\"]\nrecipient_limit_external_per_hour = 100\n",
    )
    .await;
    let mut c = client(&d, "192.0.2.50").await;
    // Authenticated as gina, claiming the newsletter's address: gina's policy applies.
    assert_eq!(send_external(&mut c, Some("Gina@Example.com"), "news@example.com", 3).await, ["c", "c", "550 5.2.2"]);
    assert!(d.services.engine.restrictions().is_restricted("gina@example.com", d.clock.now().secs()));
    assert!(!d.services.engine.restrictions().is_restricted("news@example.com", d.clock.now().secs()));
    // The newsletter itself, from an internal client without AUTH: its own generous quota,
    // with +tags folded into it.
    let mut inside = client(&d, "10.1.2.3").await;
    assert_eq!(send_external(&mut inside, None, "News+weekly@example.com", 10).await, ["c"; 10]);
    assert_eq!(d.services.engine.counters("news@example.com").external_last_hour, 10);
    assert_eq!(d.services.engine.counters("news@example.com").external_limit_per_hour, 100);
    drop((c, inside));
    d.stop().await;
}

#[tokio::test]
async fn approaching_the_limit_warns_once() {
    let mut d = TestDaemon::start(
        "[milter]\nlisten = \"inet:127.0.0.1:0\"\n[notify]\nwarn_at_percent = 50\n\
         [policy.default]\nrecipient_limit_external_per_hour = 4\nrecipient_limit_per_day = 0\n",
    )
    .await;
    let mut c = client(&d, "127.0.0.1").await;
    assert_eq!(send_external(&mut c, Some("hal@example.com"), "hal@example.com", 1).await, ["c"]);
    assert!(d.drain_events().is_empty(), "25% is below the warning level");
    assert_eq!(send_external(&mut c, Some("hal@example.com"), "hal@example.com", 2).await, ["c", "c"]);
    let events = d.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::ApproachingLimit);
    assert_eq!(events[0].counters.external_last_hour, 2);
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn reload_mid_window_keeps_what_was_sent_against_the_new_limit() {
    let d = start("[policy.default]\nrecipient_limit_external_per_hour = 4\n").await;
    let mut c = client(&d, "127.0.0.1").await;
    assert_eq!(send_external(&mut c, Some("ivy@example.com"), "ivy@example.com", 3).await, ["c"; 3]);
    // Raised to 6: three more pass, not six.
    let raised = outbound_guard::config::Config::parse(
        std::path::Path::new("t.toml"),
        &config("[policy.default]\nrecipient_limit_external_per_hour = 6\n"),
    )
    .unwrap();
    d.services.reload(std::sync::Arc::new(raised));
    assert_eq!(
        send_external(&mut c, Some("ivy@example.com"), "ivy@example.com", 4).await,
        ["c", "c", "c", "550 5.2.2"]
    );
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn reply_texts_are_configurable() {
    let d = start(
        "[replies]\nlimit_reached = \"550 5.2.2 Slow down, friend\"\naccount_restricted = \"550 5.1.8 100% used; ask IT\"\n\
         [policy.default]\nrecipient_limit_external_per_hour = 1\n",
    )
    .await;
    let mut c = client(&d, "127.0.0.1").await;
    mail(&mut c, Some("jo@example.com"), "jo@example.com").await;
    rcpt(&mut c, "a@example.net").await;
    assert_eq!(rcpt(&mut c, "b@example.net").await.text().as_deref(), Some("550 5.2.2 Slow down, friend"));
    c.write(Command::Abort).await.unwrap();
    assert_eq!(
        mail(&mut c, Some("jo@example.com"), "jo@example.com").await.text().as_deref(),
        Some("550 5.1.8 100%% used; ask IT"),
        "a % doubled, as the MTA reads the text as a format"
    );
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn a_limit_of_zero_means_no_limit() {
    let d = start("[policy.default]\nrecipient_limit_external_per_hour = 0\nrecipient_limit_per_day = 0\nmax_recipients_per_message = 0\n").await;
    let mut c = client(&d, "127.0.0.1").await;
    let codes = send_external(&mut c, Some("kim@example.com"), "kim@example.com", 600).await;
    assert!(codes.iter().all(|c| c == "c"), "{codes:?}");
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn reload_lowering_a_limit_below_what_is_in_use_restricts_at_the_next_recipient() {
    let d = start("[policy.default]\nrecipient_limit_external_per_hour = 6\n").await;
    let mut c = client(&d, "127.0.0.1").await;
    assert_eq!(send_external(&mut c, Some("lee@example.com"), "lee@example.com", 4).await, ["c"; 4]);
    let lowered = outbound_guard::config::Config::parse(
        std::path::Path::new("t.toml"),
        &config("[policy.default]\nrecipient_limit_external_per_hour = 3\n"),
    )
    .unwrap();
    d.services.reload(std::sync::Arc::new(lowered));
    // Four in use against a new limit of three: the very next recipient reaches it.
    assert_eq!(send_external(&mut c, Some("lee@example.com"), "lee@example.com", 1).await, ["550 5.2.2"]);
    drop(c);
    d.stop().await;
}

/// Counters of `account` once the filter has handled what the test sent: bounded wait, for
/// the server's side of a closed connection.
async fn external_last_hour_becomes(d: &TestDaemon, account: &str, expected: u32) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = d.services.engine.counters(account).external_last_hour;
        if now == expected || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reserved at RCPT TO, counted when the end of message delivers: an aborted message's
/// recipients are given back, so the client that sends it again is not charged twice, while
/// a limit still cannot be overshot by messages in flight together.
#[tokio::test]
async fn recipients_of_an_aborted_message_are_given_back() {
    let d =
        start("[policy.default]\nrecipient_limit_external_per_hour = 3\naction_when_threshold_reached = \"block\"\n")
            .await;
    let mut c = client(&d, "127.0.0.1").await;
    let login = Some("erin@example.com");
    assert_eq!(code(&mail(&mut c, login, "erin@example.com").await), "c");
    for i in 0..3 {
        assert_eq!(code(&rcpt(&mut c, &format!("r{i}@example.net")).await), "c");
    }
    // While the first message is in flight its recipients are reserved: a second session of
    // the account cannot pass the limit meanwhile.
    let mut other = client(&d, "127.0.0.1").await;
    assert_eq!(code(&mail(&mut other, login, "erin@example.com").await), "c");
    assert_eq!(code(&rcpt(&mut other, "x@example.net").await), "550 5.2.2");
    other.write(Command::Abort).await.unwrap();
    assert!(d.services.engine.restrictions().is_restricted("erin@example.com", START as i64 + 1));
    d.services.engine.release("erin@example.com", "test", None).unwrap();

    c.write(Command::Abort).await.unwrap();
    assert_eq!(external_last_hour_becomes(&d, "erin@example.com", 0).await, 0);
    // Sent again (released today: limits only alert, but the count is what matters here).
    assert_eq!(send_external(&mut c, login, "erin@example.com", 3).await, ["c", "c", "c"]);
    assert_eq!(d.services.engine.counters("erin@example.com").external_last_hour, 3);
    drop((c, other));
    d.stop().await;
}

/// A connection lost in the middle of a message (the MTA died, a timeout cut it) gives back
/// what the message reserved; a delivered message keeps its count.
#[tokio::test]
async fn a_connection_lost_mid_message_gives_back_its_recipients() {
    let d = start("[policy.default]\nrecipient_limit_external_per_hour = 3\n").await;
    let mut kept = client(&d, "127.0.0.1").await;
    assert_eq!(send_external(&mut kept, Some("finn@example.com"), "finn@example.com", 1).await, ["c"]);
    let mut lost = client(&d, "127.0.0.1").await;
    assert_eq!(code(&mail(&mut lost, Some("finn@example.com"), "finn@example.com").await), "c");
    for i in 0..2 {
        assert_eq!(code(&rcpt(&mut lost, &format!("r{i}@example.net")).await), "c");
    }
    assert_eq!(d.services.engine.counters("finn@example.com").external_last_hour, 3);
    drop(lost);
    assert_eq!(external_last_hour_becomes(&d, "finn@example.com", 1).await, 1);
    assert_eq!(send_external(&mut kept, Some("finn@example.com"), "finn@example.com", 2).await, ["c", "c"]);
    assert!(!d.services.engine.restrictions().is_restricted("finn@example.com", START as i64 + 1));
    drop(kept);
    d.stop().await;
}

/// A message the filter itself refuses at its end (judged spam under `reject`) is not
/// delivered, so its recipients are not counted either; the spam verdict still is.
#[tokio::test]
async fn a_message_refused_at_its_end_counts_no_recipient() {
    let d = start("[policy.default]\nrecipient_limit_external_per_hour = 3\nspam_message_action = \"reject\"\n").await;
    let mut c = client(&d, "127.0.0.1").await;
    let login = Some("gus@example.com");
    assert_eq!(code(&mail(&mut c, login, "gus@example.com").await), "c");
    for i in 0..2 {
        assert_eq!(code(&rcpt(&mut c, &format!("r{i}@example.net")).await), "c");
    }
    let end = c.message(&[("X-Spam-Flag", "YES")], b"x\r\n").await.unwrap();
    assert_eq!(code(&end).get(..9), Some("550 5.7.1"));
    assert_eq!(d.services.engine.counters("gus@example.com").external_last_hour, 0);
    assert_eq!(send_external(&mut c, login, "gus@example.com", 3).await, ["c", "c", "c"]);
    assert_eq!(d.services.engine.counters("gus@example.com").external_last_hour, 3);
    drop(c);
    d.stop().await;
}

/// The spam share is of the messages an account sent: a message aborted before its end (and
/// typically sent again) is not a message of the share, so it cannot dilute it.
#[tokio::test]
async fn aborted_messages_do_not_dilute_the_spam_share() {
    let d = start(
        "[policy.default]\nspam_min_messages = 2\nspam_percent = 60\nspam_action = \"block\"\n\
         spam_message_action = \"accept\"\n",
    )
    .await;
    let mut c = client(&d, "127.0.0.1").await;
    let login = Some("hal@example.com");
    for _ in 0..2 {
        assert_eq!(code(&mail(&mut c, login, "hal@example.com").await), "c");
        assert_eq!(code(&rcpt(&mut c, "r@example.net").await), "c");
        c.write(Command::Abort).await.unwrap();
    }
    for _ in 0..2 {
        assert_eq!(code(&mail(&mut c, login, "hal@example.com").await), "c");
        assert_eq!(code(&rcpt(&mut c, "r@example.net").await), "c");
        assert_eq!(code(&c.message(&[("X-Spam-Flag", "YES")], b"x\r\n").await.unwrap()), "c");
    }
    // Two of two messages were spam (100% ≥ 60%), not two of four (50%).
    assert!(d.services.engine.restrictions().is_restricted("hal@example.com", START as i64 + 1));
    drop(c);
    d.stop().await;
}

/// A restricted account whose policy lists `always_allowed_recipients` gets `continue` at
/// MAIL FROM and may still write to those recipients (compared in canonical form); every other
/// recipient gets `550 5.1.8`. The allowed mail is counted, and a full limit does not refuse
/// it. A policy without the list refuses the restricted account at MAIL FROM as before.
#[tokio::test]
async fn a_restricted_account_may_still_write_to_its_always_allowed_recipients() {
    let d = start(
        "[policy.default]\nrecipient_limit_external_per_hour = 2\naction_when_threshold_reached = \"block\"\n\
         always_allowed_recipients = [\"Helpdesk@Example.NET\"]\n\
         [[policy.rule]]\nname = \"strict\"\npriority = 1\nfrom = [\"bob@example.com\"]\nalways_allowed_recipients = []\n",
    )
    .await;
    let mut c = client(&d, "127.0.0.1").await;
    let alice = Some("alice@example.com");
    assert_eq!(send_external(&mut c, alice, "alice@example.com", 3).await, ["c", "c", "550 5.2.2"]);
    assert!(d.services.engine.restrictions().is_restricted("alice@example.com", START as i64 + 1));
    let before = d.services.engine.counters("alice@example.com");

    assert_eq!(mail(&mut c, alice, "alice@example.com").await.kind(), Some(b'c'));
    assert_eq!(code(&rcpt(&mut c, "r0@example.net").await), "550 5.1.8");
    assert_eq!(code(&rcpt(&mut c, "helpdesk@example.net").await), "c");
    assert_eq!(code(&rcpt(&mut c, "helpdesk@EXAMPLE.net").await), "c", "compared in canonical form");
    assert_eq!(code(&rcpt(&mut c, "someone@example.com").await), "550 5.1.8", "internal is not allowed either");
    let end = c.message(&[("Subject", "please help")], b"x\r\n").await.unwrap();
    assert_eq!(code(&end), "c");
    let after = d.services.engine.counters("alice@example.com");
    assert_eq!(after.last_day, before.last_day + 2, "allowed recipients are counted as usual");
    assert_eq!(after.external_last_hour, before.external_last_hour, "the full hourly limit is not passed");
    assert!(d.services.engine.restrictions().is_restricted("alice@example.com", START as i64 + 1));

    // A policy without the list: the restricted account is refused at MAIL FROM.
    let bob = Some("bob@example.com");
    assert_eq!(send_external(&mut c, bob, "bob@example.com", 3).await, ["c", "c", "550 5.2.2"]);
    assert_eq!(code(&mail(&mut c, bob, "bob@example.com").await), "550 5.1.8");
    drop(c);
    d.stop().await;
}

/// `always_allowed_recipients` is checked when the file is read: a value that is no address
/// is refused with the file, line, key and value.
#[test]
fn an_always_allowed_recipient_that_is_no_address_is_refused_at_load() {
    let text = config("[policy.default]\nalways_allowed_recipients = [\"helpdesk@example.net\", \"helpdesk\"]\n");
    let e = outbound_guard::config::Config::parse(std::path::Path::new("plugin.toml"), &text).unwrap_err().to_string();
    let line = text.lines().position(|l| l.starts_with("always_allowed")).unwrap() + 1;
    for part in [&format!("plugin.toml:{line}"), "always_allowed_recipients", "\"helpdesk\"", "not an email address"] {
        assert!(e.contains(part), "{part:?} missing from: {e}");
    }
}

/// Login spread: one SASL login sending from a third /24 within the hour passes a limit of
/// two networks; that MAIL FROM is refused as a restricted account's, and the restriction
/// names its cause, in the store, the API and the metrics.
#[tokio::test]
async fn a_login_used_from_too_many_networks_is_restricted_at_mail_from() {
    let d = start("[policy.default]\nmax_client_networks_per_hour = 2\n").await;
    let login = Some("alice@example.com");
    for (i, addr) in ["192.0.2.10", "198.51.100.10", "192.0.2.77"].into_iter().enumerate() {
        let mut c = client(&d, addr).await;
        assert_eq!(send_external(&mut c, login, "alice@example.com", 1).await, ["c"], "message {i} from {addr}");
    }
    let mut third = client(&d, "203.0.113.10").await;
    assert_eq!(code(&mail(&mut third, login, "alice@example.com").await), "550 5.1.8");
    // Mail from a client without the login is not counted against it.
    let mut other = client(&d, "10.9.9.9").await;
    assert_eq!(send_external(&mut other, None, "carol@example.com", 1).await, ["c"]);

    let now = START as i64 + 1;
    let listed = d.services.engine.restrictions().list(now);
    assert_eq!(listed.len(), 1);
    let r = &listed[0];
    assert_eq!((r.account.as_str(), r.cause()), ("alice@example.com", "login_spread"));
    assert!(r.reason.contains("192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24"), "{}", r.reason);
    let api: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/restricted", d.admin_url()))
        .bearer_auth(&d.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["restricted"][0]["account"], "alice@example.com");
    assert!(api["restricted"][0]["reason"].as_str().unwrap().contains("3 client networks within an hour"));
    let metrics = d.services.engine.metrics().render();
    assert!(metrics.contains("outbound_guard_restrictions_total{reason=\"login_spread\"} 1"), "{metrics}");
    drop((third, other));
    d.stop().await;
}

/// Countries come from the `[geoip] database` (a MaxMind DB file the test writes), and a
/// reload reads the file anew.
#[tokio::test]
async fn countries_come_from_the_geoip_database_and_a_reload_reads_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("countries.mmdb");
    common::mmdb::documentation_countries().write(&db);
    let text = config("[geoip]\ndatabase = \"countries.mmdb\"\n[policy.default]\nmax_client_countries_per_day = 1\n");
    let d = TestDaemon::start_in(dir, &text).await;
    let login = Some("alice@example.com");
    let mut c = client(&d, "192.0.2.10").await;
    assert_eq!(send_external(&mut c, login, "alice@example.com", 1).await, ["c"], "SE");

    // The file changes: 198.51.100.0/24 is now in Sweden too; the running filter does not
    // know until it reloads.
    let mut moved = common::mmdb::CountryDb::new();
    moved.insert("192.0.2.0/24", "SE").insert("198.51.100.0/24", "SE").insert("203.0.113.0/24", "US");
    moved.write(&d.config_path().with_file_name("countries.mmdb"));
    d.services.reload(std::sync::Arc::new(outbound_guard::config::Config::load(&d.config_path()).unwrap()));
    let mut c = client(&d, "198.51.100.10").await;
    assert_eq!(send_external(&mut c, login, "alice@example.com", 1).await, ["c"], "SE again");
    let mut c = client(&d, "2001:db8:1::10").await;
    assert_eq!(send_external(&mut c, login, "alice@example.com", 1).await, ["c"], "unknown now: no country");

    // A database that is gone is refused at reload, naming the key; the running one stays.
    std::fs::remove_file(d.config_path().with_file_name("countries.mmdb")).unwrap();
    let e = outbound_guard::config::Config::load(&d.config_path()).unwrap_err().to_string();
    assert!(e.contains("geoip.database"), "{e}");
    let mut c = client(&d, "2001:db8:2::1").await;
    assert_eq!(send_external(&mut c, login, "alice@example.com", 1).await, ["c"], "unknown to the new file");
    let mut c = client(&d, "203.0.113.10").await;
    assert_eq!(code(&mail(&mut c, login, "alice@example.com").await), "550 5.1.8", "US: a second country");
    drop(c);
    d.stop().await;
}
