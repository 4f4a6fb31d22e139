//! Domain caps (README, "Domain caps") through the milter protocol against an in-process
//! filter whose clock the test moves: accounts of one domain counted together, the domain
//! restricted as a unit and released, alert mode, subdomains, and recipients given back.

mod common;

use std::time::Duration;

use common::daemon::{START, TestDaemon};
use common::mta::code;
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER, StageResult};
use outbound_guard::milter::command::Command;
use outbound_guard::policy::events::EventKind;
use tokio::net::TcpStream;

type Client = MtaClient<TcpStream>;

fn config(caps: &str) -> String {
    format!(
        "[milter]\nlisten = \"inet:127.0.0.1:0\"\n\
         [organization]\nlocal_domains = [\"example.com\"]\ninternal_networks = [\"127.0.0.0/8\"]\n\
         [notify]\nwarn_at_percent = 0\n\
         [policy.default]\nrecipient_limit_external_per_hour = 100\naction_when_threshold_reached = \"block\"\n{caps}"
    )
}

async fn client(d: &TestDaemon) -> Client {
    let mut c = MtaClient::connect(d.addr).await.unwrap();
    c.negotiate(POSTFIX_OFFER).await.unwrap();
    c.macros(b'C', &[("{client_addr}", "127.0.0.1")]).await.unwrap();
    c
}

async fn mail(c: &mut Client, login: &str) -> StageResult {
    c.macros(b'M', &[("i", "QID"), ("{auth_authen}", login)]).await.unwrap();
    c.mail_from(&format!("<{login}>"), &[]).await.unwrap()
}

/// Sends one message of `n` external recipients as `login`; the reply codes of its
/// recipients (or of its MAIL FROM when that is refused).
async fn send(c: &mut Client, login: &str, n: usize) -> Vec<String> {
    let m = mail(c, login).await;
    if m.kind() != Some(b'c') {
        return vec![format!("MAIL {}", code(&m))];
    }
    let mut codes = Vec::new();
    for i in 0..n {
        codes.push(code(&c.rcpt_to(&format!("<r{i}@example.net>")).await.unwrap()));
    }
    if codes.iter().any(|c| c == "c") {
        c.message(&[("Subject", "x")], b"x\r\n").await.unwrap();
    } else {
        c.write(Command::Abort).await.unwrap();
    }
    codes
}

const BLOCK: &str =
    "[[policy.domain]]\ndomain = \"customer.example\"\nrecipient_limit_external_per_hour = 5\naction = \"block\"\n";

#[tokio::test]
async fn two_accounts_of_one_domain_together_reach_its_cap_and_the_domain_is_restricted() {
    let mut d = TestDaemon::start(&config(BLOCK)).await;
    let mut c = client(&d).await;
    // Each account is far under its own limit of 100; together they pass the domain's 5.
    assert_eq!(send(&mut c, "alice@customer.example", 3).await, ["c"; 3]);
    assert_eq!(send(&mut c, "bob@customer.example", 4).await, ["c", "c", "550 5.2.2", "550 5.1.8"]);
    let now = d.clock.now().secs();
    let store = d.services.engine.restrictions();
    let r = store.get("@customer.example", now).expect("the domain is restricted");
    assert_eq!(r.until, None);
    assert_eq!(r.counters.external_last_hour, 5);
    assert!(!store.is_restricted("bob@customer.example", now), "the domain, not the account");
    assert_eq!(store.list(now).iter().map(|r| r.account.as_str()).collect::<Vec<_>>(), ["@customer.example"]);
    let e = d.next_event().await.unwrap();
    assert_eq!((e.kind, e.account.as_str()), (EventKind::SenderRestricted, "@customer.example"));
    // The refused recipient is counted nowhere.
    assert_eq!(d.services.engine.counters("bob@customer.example").external_last_hour, 2);

    // Every account of the domain is refused at MAIL FROM, another domain's is not.
    for login in ["alice@customer.example", "bob@customer.example", "carol@customer.example"] {
        assert_eq!(send(&mut c, login, 1).await, ["MAIL 550 5.1.8"], "{login}");
    }
    assert_eq!(send(&mut c, "dave@other.example", 1).await, ["c"]);

    // Released by its `@domain` name: the very next transaction passes, and the rest of
    // the UTC day the cap only alerts.
    d.drain_events();
    let account = d.services.engine.canonical_account("@Customer.Example").unwrap();
    assert!(d.services.engine.release(&account, "admin", Some("passwords reset")).unwrap().is_some());
    assert_eq!(d.next_event().await.unwrap().kind, EventKind::SenderReleased);
    assert_eq!(send(&mut c, "alice@customer.example", 2).await, ["c"; 2]);
    assert!(!d.services.engine.restrictions().is_restricted("@customer.example", d.clock.now().secs()));
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn a_subdomain_counts_under_its_parents_cap_and_block_until_tomorrow_expires() {
    let caps = "[[policy.domain]]\ndomain = \"customer.example\"\nrecipient_limit_per_day = 3\n\
                action = \"block_until_tomorrow\"\n";
    let d = TestDaemon::start(&config(caps)).await;
    let mut c = client(&d).await;
    assert_eq!(send(&mut c, "a@eu.customer.example", 2).await, ["c"; 2]);
    assert_eq!(send(&mut c, "b@customer.example", 2).await, ["c", "550 5.2.2"]);
    assert_eq!(send(&mut c, "c@us.customer.example", 1).await, ["MAIL 550 5.1.8"]);
    // Not a subdomain: a name that merely ends the same way.
    assert_eq!(send(&mut c, "d@notcustomer.example", 1).await, ["c"]);
    let r = d.services.engine.restrictions().get("@customer.example", d.clock.now().secs()).unwrap();
    // Next 00:00 UTC after 2026-11-22T10:00Z.
    assert_eq!(r.until.map(|u| u.unix_timestamp()), Some(1_795_392_000));
    d.clock.advance(Duration::from_secs(1_795_392_000 - START + 1));
    assert_eq!(send(&mut c, "c@us.customer.example", 1).await, ["c"]);
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn alert_mode_delivers_and_notifies_once_per_hour_per_limit() {
    let caps = "[[policy.domain]]\ndomain = \"customer.example\"\nrecipient_limit_external_per_hour = 2\n";
    let mut d = TestDaemon::start(&config(caps)).await;
    let mut c = client(&d).await;
    assert_eq!(send(&mut c, "alice@customer.example", 3).await, ["c"; 3]);
    assert_eq!(send(&mut c, "bob@customer.example", 3).await, ["c"; 3]);
    let alerts: Vec<_> = d.drain_events().into_iter().filter(|e| e.kind == EventKind::SendingLimitExceeded).collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].account, "@customer.example");
    assert!(d.services.engine.restrictions().list(d.clock.now().secs()).is_empty());
    d.clock.advance(Duration::from_secs(3600));
    assert_eq!(send(&mut c, "bob@customer.example", 3).await, ["c"; 3]);
    assert_eq!(d.next_event().await.unwrap().kind, EventKind::SendingLimitExceeded);
    drop(c);
    d.stop().await;
}

async fn domain_last_hour_becomes(d: &TestDaemon, expected: u32) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = d.services.engine.counters("@customer.example").external_last_hour;
        if now == expected || tokio::time::Instant::now() >= deadline {
            return now;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn an_aborted_message_gives_back_what_it_reserved_under_the_domain() {
    let mut d = TestDaemon::start(&config(BLOCK)).await;
    let mut c = client(&d).await;
    assert_eq!(code(&mail(&mut c, "alice@customer.example").await), "c");
    for i in 0..4 {
        assert_eq!(code(&c.rcpt_to(&format!("<r{i}@example.net>")).await.unwrap()), "c");
    }
    // Reserved while in flight: another account of the domain has one left.
    let mut other = client(&d).await;
    assert_eq!(send(&mut other, "bob@customer.example", 1).await, ["c"]);
    c.write(Command::Abort).await.unwrap();
    assert_eq!(domain_last_hour_becomes(&d, 1).await, 1);
    assert_eq!(d.services.engine.counters("alice@customer.example").external_last_hour, 0);
    assert_eq!(send(&mut c, "alice@customer.example", 4).await, ["c"; 4]);
    assert!(d.drain_events().iter().all(|e| e.kind != EventKind::SenderRestricted));
    drop((c, other));
    d.stop().await;
}

#[test]
fn a_domain_cap_is_validated_with_file_line_key_and_value() {
    let path = std::path::Path::new("plugin.toml");
    let bad_action =
        "[[policy.domain]]\ndomain = \"customer.example\"\nrecipient_limit_per_day = 5\naction = \"bounce\"\n";
    let e = outbound_guard::config::Config::parse(path, bad_action).unwrap_err().to_string();
    assert!(e.starts_with("plugin.toml:4:") && e.contains("policy.domain[0].action"), "{e}");
    assert!(e.contains("\"bounce\""), "{e}");
    let no_limit = "[[policy.domain]]\ndomain = \"customer.example\"\n";
    let e = outbound_guard::config::Config::parse(path, no_limit).unwrap_err().to_string();
    assert!(e.contains("sets no limit"), "{e}");
    let twice = format!("{BLOCK}{BLOCK}");
    let e = outbound_guard::config::Config::parse(path, &twice).unwrap_err().to_string();
    assert!(e.contains("policy.domain[1].domain") && e.contains("one per domain"), "{e}");
    let unknown = "[[policy.domain]]\ndomain = \"customer.example\"\nrecipient_limit_per_week = 5\n";
    assert!(outbound_guard::config::Config::parse(path, unknown).is_err());
}

const HELPDESK: &str = "[policy.default]\nalways_allowed_recipients = [\"helpdesk@example.com\"]\n";

/// Sends one message as `login` to `recipients`; the reply codes as [`send`] gives them.
async fn send_to(c: &mut Client, login: &str, recipients: &[&str]) -> Vec<String> {
    let m = mail(c, login).await;
    if m.kind() != Some(b'c') {
        return vec![format!("MAIL {}", code(&m))];
    }
    let mut codes = Vec::new();
    for r in recipients {
        codes.push(code(&c.rcpt_to(&format!("<{r}>")).await.unwrap()));
    }
    if codes.iter().any(|c| c == "c") {
        c.message(&[("Subject", "x")], b"x\r\n").await.unwrap();
    } else {
        c.write(Command::Abort).await.unwrap();
    }
    codes
}

fn domain_day(d: &TestDaemon) -> u32 {
    d.services.engine.counters("@customer.example").last_day
}

/// The reading of README "Domain caps": an always-allowed recipient always passes — a domain
/// cap neither refuses it nor is reached by it — and is counted under the caps like any
/// delivered recipient, where they have room; a restricted domain leaves its accounts their
/// always-allowed recipients, as a restricted account has them.
#[tokio::test]
async fn always_allowed_recipients_are_counted_under_domain_caps_and_never_refused_by_them() {
    let caps = "[[policy.domain]]\ndomain = \"customer.example\"\nrecipient_limit_per_day = 3\naction = \"block\"\n";
    let text = config(caps).replace("[policy.default]\n", HELPDESK);
    let mut d = TestDaemon::start(&text).await;
    let mut c = client(&d).await;

    // An account restricted on its own: its helpdesk message counts under the domain.
    let carol = d.services.engine.canonical_account("carol@customer.example").unwrap();
    d.services.engine.restrict_manually(&carol, "test", None, "admin").unwrap();
    assert_eq!(
        send_to(&mut c, "carol@customer.example", &["helpdesk@example.com", "r@example.net"]).await,
        ["c", "550 5.1.8"]
    );
    assert_eq!(domain_day(&d), 1, "the helpdesk recipient is counted under the domain");

    // Filling the cap, then the helpdesk: delivered, and the domain is not restricted by it.
    assert_eq!(send(&mut c, "alice@customer.example", 2).await, ["c"; 2]);
    assert_eq!(domain_day(&d), 3);
    assert_eq!(send_to(&mut c, "alice@customer.example", &["helpdesk@example.com"]).await, ["c"]);
    assert!(!d.services.engine.restrictions().is_restricted("@customer.example", d.clock.now().secs()));
    assert_eq!(send(&mut c, "alice@customer.example", 1).await, ["550 5.2.2"]);
    assert!(d.services.engine.restrictions().is_restricted("@customer.example", d.clock.now().secs()));

    // The domain restricted: its accounts reach the helpdesk and nothing else.
    let to_both = ["helpdesk@example.com", "r@example.net"];
    assert_eq!(send_to(&mut c, "bob@customer.example", &to_both).await, ["c", "550 5.1.8"]);
    assert_eq!(send(&mut c, "bob@customer.example", 1).await, ["550 5.1.8"]);
    assert_eq!(d.services.engine.counters("bob@customer.example").last_day, 1);
    d.drain_events();
    drop(c);
    d.stop().await;
}

/// The same for local submissions: the caps count the always-allowed recipients where they
/// have room and never refuse a message for them; a restricted domain takes a local message
/// to the helpdesk only.
#[tokio::test]
async fn local_submissions_to_always_allowed_recipients_pass_domain_caps() {
    let caps = "[[policy.domain]]\ndomain = \"customer.example\"\nrecipient_limit_per_day = 2\naction = \"block\"\n";
    let text = config(caps).replace("[policy.default]\n", HELPDESK);
    let d = TestDaemon::start(&text).await;
    let mut c = MtaClient::connect(d.local_addr).await.unwrap();
    c.negotiate(POSTFIX_OFFER).await.unwrap();
    c.macros(b'C', &[("{client_addr}", "127.0.0.1")]).await.unwrap();
    async fn submit(c: &mut Client, sender: &str, recipients: &[&str]) -> Vec<String> {
        let mut codes = vec![code(&c.mail_from(&format!("<{sender}>"), &[]).await.unwrap())];
        if codes[0] != "c" {
            return codes;
        }
        for r in recipients {
            codes.push(code(&c.rcpt_to(&format!("<{r}>")).await.unwrap()));
        }
        codes.push(code(&c.message(&[("Subject", "x")], b"x\r\n").await.unwrap()));
        codes
    }
    let www = "www@customer.example";
    assert_eq!(submit(&mut c, www, &["r0@example.net", "helpdesk@example.com"]).await, ["c"; 4]);
    assert_eq!(domain_day(&d), 2, "both counted under the domain");
    // The cap is full: the helpdesk still passes and restricts nothing.
    assert_eq!(submit(&mut c, www, &["helpdesk@example.com"]).await, ["c"; 3]);
    assert!(!d.services.engine.restrictions().is_restricted("@customer.example", d.clock.now().secs()));
    assert_eq!(submit(&mut c, www, &["r1@example.net"]).await, ["c", "c", "550 5.2.2"]);
    assert!(d.services.engine.restrictions().is_restricted("@customer.example", d.clock.now().secs()));
    // Restricted domain: a message to the helpdesk only is accepted, a mixed one refused.
    assert_eq!(submit(&mut c, www, &["helpdesk@example.com"]).await, ["c"; 3]);
    assert_eq!(submit(&mut c, www, &["helpdesk@example.com", "r2@example.net"]).await, ["c", "c", "c", "550 5.1.8"]);
    drop(c);
    d.stop().await;
}

/// `/metrics` shows each configured cap by its domain: the restrictions of the domain as a
/// unit and its recipients in use. Only configured domains get a label.
#[tokio::test]
async fn metrics_show_each_capped_domain_by_name() {
    let caps = format!("{BLOCK}[[policy.domain]]\ndomain = \"quiet.example\"\nrecipient_limit_per_day = 50\n");
    let mut d = TestDaemon::start(&config(&caps)).await;
    let mut c = client(&d).await;
    assert_eq!(send(&mut c, "alice@customer.example", 6).await, ["c", "c", "c", "c", "c", "550 5.2.2"]);
    assert_eq!(send(&mut c, "dave@other.example", 1).await, ["c"]);
    let text = reqwest::get(format!("{}/metrics", d.admin_url())).await.unwrap().text().await.unwrap();
    for expected in [
        "outbound_guard_domain_restrictions_total{domain=\"customer.example\"} 1",
        "outbound_guard_domain_restrictions_total{domain=\"quiet.example\"} 0",
        "outbound_guard_domain_recipients_last_hour{domain=\"customer.example\"} 5",
        "outbound_guard_domain_recipients_last_day{domain=\"quiet.example\"} 0",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    // A limit the cap does not set is not counted, so it shows no gauge.
    for absent in ["last_day{domain=\"customer.example\"}", "last_hour{domain=\"quiet.example\"}"] {
        assert!(!text.contains(absent), "{absent}:\n{text}");
    }
    assert!(!text.contains("other.example"), "an uncapped domain gets no label:\n{text}");
    d.drain_events();
    drop(c);
    d.stop().await;
}
