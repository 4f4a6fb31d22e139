//! The "Restricted accounts" page in a real browser (headless Chromium over WebDriver) against
//! an in-process filter: an account restricted through the milter shows up with its counters,
//! a manual restriction made in the form shows up with its end time, the list refreshes by
//! itself without losing the search text, a release confirmed in the dialog lets the very next
//! MAIL FROM through, and the console stays free of errors. An account opened from either
//! table or from a search hit shows its history, counters and plot, a hostile name as text.
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

/// JavaScript: empties the search field as a user deleting its text would.
const CLEAR_SEARCH: &str =
    "const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input'));";

/// JavaScript: the control that opens `arguments[0]`'s panel inside `scope` (a CSS selector),
/// compared by value so that a hostile name needs no quoting in a selector.
fn open_control(scope: &str) -> String {
    format!(
        "return Array.from(document.querySelectorAll('{scope} button[data-action=open]'))\
         .find(b => b.dataset.account === arguments[0]);"
    )
}

/// JavaScript: the panel shows `account` (`arguments[0]`) with `n` history entries, loaded.
fn panel_of(account: &str, entries: usize) -> String {
    let account = serde_json::to_string(account).unwrap();
    format!(
        "!document.getElementById('account').hidden && !document.getElementById('account-body').hidden && \
         document.getElementById('account-name').textContent === {account} && \
         document.querySelectorAll('#account-history-body tr').length === {entries} && \
         document.querySelector('#account-plot svg') !== null"
    )
}

/// What the open panel shows, for the assertions.
async fn panel(browser: &Browser) -> Value {
    browser
        .execute(
            "const p = document.getElementById('account'); const svg = p.querySelector('#account-plot svg'); \
             return { text: p.innerText, \
               history: Array.from(p.querySelectorAll('#account-history-body tr')).map(r => r.innerText), \
               actions: Array.from(p.querySelectorAll('#account-history-body tr')).map(r => r.dataset.action), \
               counters: document.getElementById('account-counters').innerText, \
               restriction: document.getElementById('account-restriction').innerText, \
               limits: Array.from(svg.querySelectorAll('line[data-limit]')).map(l => l.dataset.limit), \
               bars: Array.from(svg.querySelectorAll('rect[data-series]')).map(r => r.dataset.series), \
               events: Array.from(svg.querySelectorAll('line[data-action]')).map(l => l.dataset.action), \
               label: svg.getAttribute('aria-label'), \
               emptyHistory: !document.getElementById('account-history-empty').hidden };",
            json!([]),
        )
        .await
}

/// The account panel: opened from a row of the restricted list, of the busiest senders and
/// from a search hit (a table's account, and the look-up of one in neither table), it shows
/// the account's history, its counters against its limits and the SVG plot with its hourly
/// limit; a hostile account name stays text everywhere; the console stays clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_opens_an_accounts_history_and_counters() {
    let d = TestDaemon::start(POLICY).await;
    let engine = d.services.admin_state(d.token.clone()).engine;
    restrict_through_the_milter(&d, "alice@example.com").await;
    engine.restrict_manually("alice@example.com", "phished password", None, "carol").unwrap();
    send(&d, "carol@example.com", &["x@example.net", "team@example.com"]).await;
    // Bob's restriction is over: he is in neither table, only in the audit trail.
    engine.restrict_manually("bob@example.com", "bounced mail", None, "admin").unwrap();
    engine.release("bob@example.com", "dave", Some("mailbox fixed")).unwrap();
    // A SASL login that would run script if the page ever parsed names as HTML.
    let raw = "x\"'><img src=x onerror=window.pwned=1><script>window.pwned=2</script>";
    let hostile = engine.canonical_account(raw).unwrap();
    assert!(hostile.contains("<script>") && hostile.contains('"'), "{hostile}");
    let mut c = client(&d).await;
    c.macros(b'M', &[("{auth_authen}", raw)]).await.unwrap();
    assert_eq!(c.mail_from("<h@example.com>", &[]).await.unwrap().kind(), Some(b'c'));
    for to in ["a@example.net", "b@example.net", "c@example.net"] {
        c.rcpt_to(to).await.unwrap();
    }
    c.message(&[("Subject", "x")], b"x\r\n").await.unwrap();
    drop(c);
    assert!(engine.restrictions().is_restricted(&hostile, d.clock.now().secs()), "{hostile} restricted");

    let browser = Browser::start(1280, 1150).await;
    browser.goto(&format!("{}/", d.admin_url())).await;
    browser.wait_for("the token form", "!document.getElementById('login').hidden").await;
    browser.type_into("#token", &d.token).await;
    browser.click("#login-form button[type=submit]").await;
    browser.wait_for("alice in the list", &row("alice@example.com")).await;
    browser.wait_for("the senders", "document.querySelectorAll('#senders-body tr').length === 3").await;

    // From the restricted list: its history says who did what, the counters and the plot
    // stand against the limits (the internal limit is 0, none: no line for it).
    browser.click_found("alice's row", &open_control("#restricted-body"), json!(["alice@example.com"])).await;
    browser.wait_for("alice's panel", &panel_of("alice@example.com", 2)).await;
    let alice = panel(&browser).await;
    assert_eq!(alice["actions"], json!(["restricted", "replaced"]), "{alice}");
    let replaced = alice["history"][1].as_str().unwrap();
    assert!(replaced.contains("phished password") && replaced.contains("carol"), "{alice}");
    assert!(replaced.contains("2026-11-22 10:00:00 UTC") && replaced.contains("until released"), "{alice}");
    assert!(alice["counters"].as_str().unwrap().contains("2 / 2"), "{alice}");
    assert!(alice["restriction"].as_str().unwrap().contains("phished password"), "{alice}");
    assert!(alice["text"].as_str().unwrap().contains("Policy default"), "{alice}");
    assert_eq!(alice["limits"], json!(["external"]), "{alice}");
    assert_eq!(alice["bars"], json!(["external", "internal"]), "{alice}");
    assert!(alice["label"].as_str().unwrap().contains("External 2 of 2"), "{alice}");
    assert!(alice["text"].as_str().unwrap().contains("not recorded"), "the plot says what it does not know");
    // The plot ends at the engine's `as_of` (the test's clock, days before the wall clock
    // that the HTTP Date header tells), so the day's restriction and replacement are on it.
    assert_eq!(alice["events"], json!(["restricted", "replaced"]), "{alice}");

    // From the busiest senders: never restricted, so no history and no restriction.
    browser.click_found("carol's row", &open_control("#senders-body"), json!(["carol@example.com"])).await;
    browser.wait_for("carol's panel", &panel_of("carol@example.com", 0)).await;
    let carol = panel(&browser).await;
    assert!(carol["counters"].as_str().unwrap().contains("1 / 2"), "{carol}");
    assert!(carol["restriction"].as_str().unwrap().contains("not restricted"), "{carol}");
    assert_eq!(carol["emptyHistory"], true, "{carol}");

    // A search hit of the tables, opened with Enter from the search field.
    browser.type_into("#search", "ALI").await;
    browser
        .wait_for(
            "alice as a hit",
            "document.querySelector('#search-hits button[data-action=open]').dataset.account === 'alice@example.com'",
        )
        .await;
    browser.type_into("#search", "\u{E007}").await;
    browser.wait_for("alice's panel again", &panel_of("alice@example.com", 2)).await;

    // A released account is in neither table: the search looks it up.
    browser.execute(CLEAR_SEARCH, json!([])).await;
    browser.type_into("#search", "Bob@Example.com").await;
    browser.wait_for("the look-up", "document.getElementById('search-hits').innerText.includes('Look up')").await;
    browser.click_found("the look-up", &open_control("#search-hits"), json!(["Bob@Example.com"])).await;
    browser.wait_for("bob's panel", &panel_of("bob@example.com", 2)).await;
    let bob = panel(&browser).await;
    assert_eq!(bob["actions"], json!(["restricted", "released"]), "{bob}");
    assert!(bob["history"][1].as_str().unwrap().contains("mailbox fixed"), "{bob}");
    assert!(bob["history"][1].as_str().unwrap().contains("dave"), "{bob}");
    assert!(bob["restriction"].as_str().unwrap().contains("not restricted"), "{bob}");

    // The hostile name, from the busiest senders: text in the tables and the panel, never markup.
    browser.execute(CLEAR_SEARCH, json!([])).await;
    browser.click_found("the hostile row", &open_control("#senders-body"), json!([hostile])).await;
    browser.wait_for("the hostile panel", &panel_of(&hostile, 1)).await;
    let shown = browser
        .execute(
            "const name = arguments[0]; \
             return { title: document.getElementById('account-name').textContent === name, \
               rows: Array.from(document.querySelectorAll('tr[data-account]')).filter(r => r.dataset.account === name) \
                 .map(r => r.querySelector('button[data-action=open]').textContent === name), \
               injected: document.querySelectorAll('main img, main script, #account img, #account script').length, \
               pwned: window.pwned === undefined ? null : window.pwned };",
            json!([hostile]),
        )
        .await;
    assert_eq!(shown, json!({"title": true, "rows": [true, true], "injected": 0, "pwned": null}));
    let h = panel(&browser).await;
    assert_eq!(h["actions"], json!(["restricted"]), "{h}");
    assert!(h["counters"].as_str().unwrap().contains("2 / 2"), "{h}");

    // Escape closes the panel and gives the focus back to the control that opened it.
    browser.type_into("#account-title", "\u{E00C}").await;
    browser
        .wait_for(
            "the panel to close",
            "document.getElementById('account').hidden && document.activeElement.dataset.action === 'open'",
        )
        .await;

    let errors = browser.console().await;
    assert!(severe(&errors).is_empty(), "console errors: {errors:#?}");
    drop(browser);
    d.stop().await;
}

/// The plot draws what the filter recorded: each whole hour the sampler saw from start to end
/// as bars of its highest sample of recipients in use (external, internal), reaching the limit
/// line when the account used its whole limit; the hours before as one "not recorded" block;
/// the current hour as what is in use now. Sampled on the test's clock, a minute at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plot_draws_the_recorded_hours() {
    const HOURLY: &str = "[milter]\nlisten = \"inet:127.0.0.1:0\"\n\
        [organization]\nlocal_domains = [\"example.com\"]\n\
        [policy.default]\nrecipient_limit_external_per_hour = 2\nrecipient_limit_internal_per_hour = 10\n\
        recipient_limit_per_day = 200\n";
    let d = TestDaemon::start(HOURLY).await;
    let engine = d.services.admin_state(d.token.clone()).engine;
    let minutes = |n: u32| {
        for _ in 0..n {
            d.clock.advance(std::time::Duration::from_secs(60));
            engine.sample_hourly();
        }
    };
    minutes(70); // 11:10: two external recipients of two, one internal
    send(&d, "dan@example.com", &["x@example.net", "y@example.net", "team@example.com"]).await;
    minutes(111); // 13:01

    let browser = Browser::start(1280, 1150).await;
    browser.goto(&format!("{}/", d.admin_url())).await;
    browser.wait_for("the token form", "!document.getElementById('login').hidden").await;
    browser.type_into("#token", &d.token).await;
    browser.click("#login-form button[type=submit]").await;
    // Nothing in use by now, so not among the busiest: the search looks it up.
    browser.type_into("#search", "dan@example.com").await;
    browser.wait_for("the look-up", "document.getElementById('search-hits').innerText.includes('Look up')").await;
    browser.click_found("the look-up", &open_control("#search-hits"), json!(["dan@example.com"])).await;
    browser.wait_for("dan's panel", &panel_of("dan@example.com", 0)).await;
    let plot = browser
        .execute(
            "const svg = document.querySelector('#account-plot svg'); \
             const limit = svg.querySelector('line[data-limit=external]'); \
             return { bars: Array.from(svg.querySelectorAll('rect[data-hour]')) \
                 .map(r => [r.dataset.hour, r.dataset.series, r.dataset.value]), \
               top: Array.from(svg.querySelectorAll('rect[data-hour]')) \
                 .filter(r => r.dataset.value === '2').map(r => Number(r.getAttribute('y'))), \
               limitY: Number(limit.getAttribute('y1')), \
               unknown: Array.from(svg.querySelectorAll('rect.plot-unknown')).map(r => r.dataset.unknown), \
               label: svg.getAttribute('aria-label'), text: svg.textContent };",
            json!([]),
        )
        .await;
    assert_eq!(
        plot["bars"],
        json!([
            ["2026-11-22T11:00:00Z", "external", "2"],
            ["2026-11-22T11:00:00Z", "internal", "1"],
            ["2026-11-22T12:00:00Z", "external", "1"],
            ["2026-11-22T12:00:00Z", "internal", "0"],
            ["now", "external", "0"],
            ["now", "internal", "0"]
        ]),
        "{plot}"
    );
    let top = plot["top"].as_array().unwrap();
    assert_eq!(top.len(), 1, "{plot}");
    assert!(
        (top[0].as_f64().unwrap() - plot["limitY"].as_f64().unwrap()).abs() < 0.01,
        "11:00 reaches the limit: {plot}"
    );
    assert_eq!(plot["unknown"], json!(["21"]), "14:00 the day before to 10:59, one block: {plot}");
    assert!(plot["text"].as_str().unwrap().contains("not recorded"), "{plot}");
    assert!(plot["label"].as_str().unwrap().contains("2 recorded"), "{plot}");
    let errors = browser.console().await;
    assert!(severe(&errors).is_empty(), "console errors: {errors:#?}");
    drop(browser);
    d.stop().await;
}
