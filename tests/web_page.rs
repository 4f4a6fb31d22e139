//! The "Restricted accounts" page in a real browser (headless Chromium over WebDriver) against
//! an in-process filter: an account restricted through the milter shows up with its counters,
//! a manual restriction made in the form shows up with its end time, the list refreshes by
//! itself without losing the search text, a release confirmed in the dialog lets the very next
//! MAIL FROM through, and the console stays free of errors.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`scripts/test` installs them).
//! Set `OG_SCREENSHOT=docs/restricted-accounts.png` to refresh the screenshot in the docs.
#![cfg(feature = "real-peers")]

mod common;

use common::daemon::TestDaemon;
use common::webdriver::Browser;
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
use outbound_guard::milter::command::Command;
use serde_json::{Value, json};
use tokio::net::TcpStream;

const POLICY: &str = "[milter]\nlisten = \"inet:127.0.0.1:0\"\n\
    [organization]\nlocal_domains = [\"example.com\"]\n\
    [policy.default]\nrecipient_limit_external_per_hour = 2\nrecipient_limit_internal_per_hour = 0\n\
    recipient_limit_per_day = 200\naction_when_threshold_reached = \"block\"\n";

async fn client(d: &TestDaemon) -> MtaClient<TcpStream> {
    let mut c = MtaClient::connect(d.addr).await.unwrap();
    c.negotiate(POSTFIX_OFFER).await.unwrap();
    c.macros(b'C', &[("{client_addr}", "127.0.0.1")]).await.unwrap();
    c
}

/// MAIL FROM as `account`: the reply letter ('c' continue, 'y' refused).
async fn mail(c: &mut MtaClient<TcpStream>, account: &str) -> u8 {
    c.write(Command::Abort).await.unwrap();
    c.macros(b'M', &[("{auth_authen}", account)]).await.unwrap();
    c.mail_from(&format!("<{account}>"), &[]).await.unwrap().kind().unwrap()
}

/// One transaction of `account` to `recipients`, delivered when a recipient was accepted
/// (only then do they count).
async fn send(d: &TestDaemon, account: &str, recipients: &[&str]) {
    let mut c = client(d).await;
    assert_eq!(mail(&mut c, account).await, b'c', "{account} may send");
    let mut accepted = false;
    for to in recipients {
        accepted |= c.rcpt_to(to).await.unwrap().kind() == Some(b'c');
    }
    if accepted {
        c.message(&[("Subject", "x")], b"x\r\n").await.unwrap();
    } else {
        c.write(Command::Abort).await.unwrap();
    }
}

/// Three external recipients against a limit of two: the filter restricts the account.
async fn restrict_through_the_milter(d: &TestDaemon, account: &str) {
    send(d, account, &["a@example.net", "b@example.net", "c@example.net"]).await;
}

/// JavaScript: the restricted-list row of `account`.
fn row(account: &str) -> String {
    format!("document.querySelector('#restricted-body tr[data-account=\"{account}\"]')")
}

fn severe(entries: &[Value]) -> Vec<&Value> {
    entries.iter().filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_finds_and_releases_a_restricted_account_in_the_browser() {
    let d = TestDaemon::start(POLICY).await;
    restrict_through_the_milter(&d, "alice@example.com").await;
    send(&d, "carol@example.com", &["x@example.net", "team@example.com", "boss@example.com"]).await;
    send(&d, "erin@example.com", &["y@example.net"]).await;

    let browser = Browser::start(1280, 1150).await;
    browser.goto(&format!("{}/", d.admin_url())).await;
    browser.wait_for("the token form", "!document.getElementById('login').hidden").await;

    // A wrong token is refused and asked for again, with the reason.
    browser.type_into("#token", "not-the-token").await;
    browser.click("#login-form button[type=submit]").await;
    browser
        .wait_for(
            "the refusal",
            "document.getElementById('alert').textContent.includes('refused') && \
             !document.getElementById('login').hidden && document.getElementById('main').hidden",
        )
        .await;
    // The only console entry so far is the browser's own note of the 401.
    for entry in severe(&browser.console().await) {
        let text = entry["message"].as_str().unwrap_or_default();
        assert!(text.contains("401"), "unexpected console entry: {entry}");
    }

    browser.type_into("#token", &d.token).await;
    browser.click("#login-form button[type=submit]").await;
    browser.wait_for("alice in the list", &row("alice@example.com")).await;
    let alice = browser
        .execute(
            &format!(
                "const r = {}; return {{ text: r.innerText, bars: r.querySelectorAll('.bar').length, \
                 labels: Array.from(r.querySelectorAll('.bar')).map(b => b.getAttribute('aria-label')) }};",
                row("alice@example.com")
            ),
            json!([]),
        )
        .await;
    let text = alice["text"].as_str().unwrap();
    assert!(text.contains("2 / 2"), "external counter against its limit: {text}");
    assert!(text.contains("2026-11-22 10:00:00 UTC"), "since, in UTC: {text}");
    assert!(text.contains("until released"), "{text}");
    assert!(text.contains("policy"), "source: {text}");
    assert_eq!(alice["bars"], 2, "a bar for each limit, none for the unlimited one: {alice}");
    assert!(alice["labels"][0].as_str().unwrap().contains("2 of 2"), "{alice}");
    let token_kept = browser.execute("return sessionStorage.getItem('outbound-guard.admin-token');", json!([])).await;
    assert_eq!(token_kept, d.token.as_str(), "the token is kept for the tab");

    // The busiest senders, with the same bars.
    browser.wait_for("the senders", "document.querySelectorAll('#senders-body tr').length === 3").await;
    let carol = browser
        .execute(
            "return document.querySelector('#senders-body tr[data-account=\"carol@example.com\"]').innerText;",
            json!([]),
        )
        .await;
    assert!(carol.as_str().unwrap().contains("1 / 2"), "{carol}");
    assert!(carol.as_str().unwrap().contains("(no limit)"), "a limit of 0 shows the count alone: {carol}");

    // A manual restriction with an end time, entered in UTC.
    browser.type_into("#add-account", "bob@example.com").await;
    browser.type_into("#add-reason", "phished password").await;
    browser.execute("document.getElementById('add-until').value = '2026-11-23T08:00';", json!([])).await;
    browser.click("#add-form button[type=submit]").await;
    browser.wait_for("bob in the list", &row("bob@example.com")).await;
    let bob = browser.execute(&format!("return {}.innerText;", row("bob@example.com")), json!([])).await;
    let bob = bob.as_str().unwrap();
    assert!(bob.contains("2026-11-23 08:00:00 UTC") && bob.contains("admin") && bob.contains("phished"), "{bob}");
    browser
        .wait_for("the confirmation", "document.getElementById('status').textContent.includes('Restricted bob')")
        .await;

    // Sorting by a column header.
    browser.click("button.sort[data-sort=account]").await;
    browser
        .wait_for(
            "sorted by account",
            "document.querySelector('#restricted-body tr').dataset.account === 'alice@example.com' && \
             document.querySelector('th[data-sort=account]').getAttribute('aria-sort') === 'ascending'",
        )
        .await;
    browser.click("button.sort[data-sort=account]").await;
    browser
        .wait_for(
            "sorted by account, descending",
            "document.querySelector('#restricted-body tr').dataset.account === 'bob@example.com'",
        )
        .await;
    browser.click("button.sort[data-sort=since]").await;

    // The API's own words when it refuses.
    browser.type_into("#add-account", "frank@example.com").await;
    browser.execute("document.getElementById('add-until').value = '2020-01-01T00:00';", json!([])).await;
    browser.click("#add-form button[type=submit]").await;
    let refusal = browser
        .wait_for(
            "the refusal",
            "document.getElementById('alert').textContent.includes('in the past') && \
             document.getElementById('alert').textContent",
        )
        .await;
    assert!(refusal.as_str().unwrap().contains("frank@example.com") && refusal.as_str().unwrap().contains("HTTP 400"));
    for entry in severe(&browser.console().await) {
        assert!(entry["message"].as_str().unwrap_or_default().contains("400"), "unexpected console entry: {entry}");
    }
    browser.execute("document.getElementById('add-form').reset();", json!([])).await;
    // The next good refresh clears the message.
    browser.wait_for("the message to clear", "document.getElementById('alert').hidden").await;

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("restricted-accounts.png");
    std::fs::write(&shot, &png).unwrap();
    if let Ok(path) = std::env::var("OG_SCREENSHOT") {
        std::fs::write(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path), &png).unwrap();
    }

    // Search filters as you type, and the automatic refresh keeps it.
    browser.type_into("#search", "ALI").await;
    browser.wait_for("the filter", &format!("{} && !{}", row("alice@example.com"), row("bob@example.com"))).await;
    restrict_through_the_milter(&d, "dave@example.com").await;
    browser
        .wait_for("the automatic refresh", "document.getElementById('restricted-count').textContent === '(1 of 3)'")
        .await;
    let search = browser.execute("return document.getElementById('search').value;", json!([])).await;
    assert_eq!(search, "ALI");

    // Release: the dialog asks first; the refresh does not close it.
    let mut mta = client(&d).await;
    assert_eq!(mail(&mut mta, "alice@example.com").await, b'y', "alice is restricted");
    let release_alice = "button[data-action=release][data-account=\"alice@example.com\"]";
    browser.click(release_alice).await;
    browser.wait_for("the dialog", "document.getElementById('release-dialog').open").await;
    // Escape cancels and gives the focus back to the button that opened the dialog.
    browser.type_into("#release-reason", "\u{E00C}").await;
    browser
        .wait_for(
            "the dialog to close on Escape",
            "!document.getElementById('release-dialog').open && \
             document.activeElement.dataset.account === 'alice@example.com'",
        )
        .await;
    browser.click(release_alice).await;
    browser.wait_for("the dialog", "document.getElementById('release-dialog').open").await;
    browser.type_into("#release-reason", "password changed").await;
    let updated = browser.execute("return document.getElementById('updated').textContent;", json!([])).await;
    browser
        .wait_for(
            "a refresh behind the open dialog",
            &format!("document.getElementById('updated').textContent !== {updated}"),
        )
        .await;
    let kept = browser
        .execute(
            "return document.getElementById('release-dialog').open && \
             document.getElementById('release-reason').value;",
            json!([]),
        )
        .await;
    assert_eq!(kept, "password changed", "the refresh keeps the dialog and what was typed");
    browser.click("#release-confirm").await;
    browser
        .wait_for(
            "alice gone",
            &format!("!{} && !document.getElementById('release-dialog').open", row("alice@example.com")),
        )
        .await;
    browser.wait_for("the confirmation", "document.getElementById('status').textContent.includes('Released')").await;
    // The very next MAIL FROM passes, on the same connection.
    assert_eq!(mail(&mut mta, "alice@example.com").await, b'c', "released on the next transaction");
    let history = d.services.admin_state(d.token.clone());
    let log = history.engine.restrictions().history("alice@example.com");
    assert!(
        log.iter().any(|e| e.reason == "password changed"),
        "the reason typed in the dialog reached the audit trail: {log:?}"
    );

    let errors = browser.console().await;
    assert!(severe(&errors).is_empty(), "console errors: {errors:#?}");
    drop(mta);
    drop(browser);
    d.stop().await;
}
