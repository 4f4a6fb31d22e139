//! The admin HTTP API over a real socket against an in-process filter: authentication, the
//! JSON shapes of the README's "HTTP API and web page" section, restrict/release taking effect
//! on the very next transaction, live counters, reload, metrics, and state that survives a
//! restart.

mod common;

use common::daemon::TestDaemon;
use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
use outbound_guard::milter::command::Command;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;

const POLICY: &str = "[milter]\nlisten = \"inet:127.0.0.1:0\"\n\
    [organization]\nlocal_domains = [\"example.com\"]\n\
    [policy.default]\nrecipient_limit_external_per_hour = 2\naction_when_threshold_reached = \"block\"\n";

async fn call(d: &TestDaemon, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, format!("{}{path}", d.admin_url())).bearer_auth(&d.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("admin API reachable");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

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

async fn restrict_through_the_milter(d: &TestDaemon, account: &str) {
    let mut c = client(d).await;
    assert_eq!(mail(&mut c, account).await, b'c');
    for to in ["a@example.net", "b@example.net", "c@example.net"] {
        c.rcpt_to(to).await.unwrap();
    }
    c.write(Command::Abort).await.unwrap();
}

#[tokio::test]
async fn every_api_route_wants_the_bearer_token() {
    let d = TestDaemon::start(POLICY).await;
    let http = reqwest::Client::new();
    for (method, path) in [
        (Method::GET, "/api/v1/restricted"),
        (Method::GET, "/api/v1/restricted/a@example.com"),
        (Method::POST, "/api/v1/restricted"),
        (Method::DELETE, "/api/v1/restricted/a@example.com"),
        (Method::GET, "/api/v1/senders?top=5"),
        (Method::GET, "/api/v1/senders/a@example.com"),
        (Method::POST, "/api/v1/reload"),
    ] {
        let url = format!("{}{path}", d.admin_url());
        let none = http.request(method.clone(), &url).send().await.unwrap();
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED, "{method} {path} without token");
        let body: Value = none.json().await.unwrap();
        assert!(body["error"].is_string());
        let wrong = http.request(method.clone(), &url).bearer_auth("not-the-token").send().await.unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{method} {path} with a wrong token");
    }
    for open in ["/healthz", "/metrics"] {
        let r = http.get(format!("{}{open}", d.admin_url())).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{open}");
    }
    // The scheme's name is case-insensitive; another scheme is not a bearer token.
    let url = format!("{}/api/v1/restricted", d.admin_url());
    for (value, status) in [
        (format!("bearer {}", d.token), StatusCode::OK),
        (format!("BEARER  {}", d.token), StatusCode::OK),
        (format!("Basic {}", d.token), StatusCode::UNAUTHORIZED),
        (format!("Bearer{}", d.token), StatusCode::UNAUTHORIZED),
    ] {
        let r = http.get(&url).header("Authorization", &value).send().await.unwrap();
        assert_eq!(r.status(), status, "{value}");
    }
    // The token file was created with mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.config.admin.token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    d.stop().await;
}

#[tokio::test]
async fn a_restriction_made_by_policy_is_listed_shown_and_released_for_the_next_transaction() {
    let d = TestDaemon::start(POLICY).await;
    restrict_through_the_milter(&d, "alice@example.com").await;

    let (status, list) = call(&d, Method::GET, "/api/v1/restricted", None).await;
    assert_eq!(status, StatusCode::OK);
    let r = &list["restricted"][0];
    let mut keys: Vec<_> = r.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["account", "counters", "created_at", "policy", "reason", "source", "until"]);
    assert_eq!(r["account"], "alice@example.com");
    assert_eq!(r["source"], "policy");
    assert_eq!(r["policy"], "default");
    assert_eq!(r["until"], Value::Null);
    assert_eq!(r["created_at"], "2026-11-22T10:00:00Z");
    assert_eq!(r["counters"]["external_last_hour"], 2);
    assert_eq!(r["counters"]["external_limit_per_hour"], 2);

    let (status, shown) = call(&d, Method::GET, "/api/v1/restricted/Alice@Example.com", None).await;
    assert_eq!(status, StatusCode::OK, "lookup folds case");
    assert_eq!(shown["history"][0]["action"], "restricted");
    assert_eq!(shown["history"][0]["by"], "policy");

    let mut c = client(&d).await;
    assert_eq!(mail(&mut c, "alice@example.com").await, b'y');
    let (status, released) =
        call(&d, Method::DELETE, "/api/v1/restricted/alice@example.com?reason=password%20changed&by=carol", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut keys: Vec<_> = released.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["account", "counters", "created_at", "policy", "reason", "source", "until"], "a restriction");
    assert_eq!(released["account"], "alice@example.com");
    // The very next transaction passes, on the same connection.
    assert_eq!(mail(&mut c, "alice@example.com").await, b'c');

    let (status, body) = call(&d, Method::GET, "/api/v1/restricted/alice@example.com", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("not restricted"));
    let (status, _) = call(&d, Method::DELETE, "/api/v1/restricted/alice@example.com", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop(c);
    d.stop().await;
}

/// A SASL login with a line break in it is an account like any other: restricted by the
/// policy, it is shown and released by its name, percent-encoded as its notice writes it.
#[tokio::test]
async fn an_account_with_control_characters_can_still_be_released() {
    let d = TestDaemon::start(POLICY).await;
    let login = "evil\r\nBcc: victim@example.net";
    restrict_through_the_milter(&d, login).await;
    let (status, list) = call(&d, Method::GET, "/api/v1/restricted", None).await;
    assert_eq!(status, StatusCode::OK);
    let account = list["restricted"][0]["account"].as_str().unwrap().to_owned();
    assert!(account.contains("\r\n"), "{account:?}");
    let path = format!("/api/v1/restricted/{}", outbound_guard::admin::client::path_segment(&account));
    let (status, shown) = call(&d, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    let (status, released) = call(&d, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{released}");
    let mut c = client(&d).await;
    assert_eq!(mail(&mut c, login).await, b'c', "released");
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn a_manual_restriction_refuses_mail_and_validates_its_input() {
    let d = TestDaemon::start(POLICY).await;
    let (status, r) = call(
        &d,
        Method::POST,
        "/api/v1/restricted",
        Some(json!({"account": "Bob+x@example.com", "reason": "phishing reported", "until": "2026-11-23T08:00:00+01:00"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(r["account"], "bob@example.com");
    assert_eq!(r["source"], "admin");
    assert_eq!(r["until"], "2026-11-23T07:00:00Z", "until is shown in UTC");
    let mut c = client(&d).await;
    assert_eq!(mail(&mut c, "bob@example.com").await, b'y');

    for bad in [
        json!({"account": "c@example.com", "until": "tomorrow"}),
        json!({"account": "c@example.com", "until": "2020-01-01T00:00:00Z"}),
        json!({"reason": "no account"}),
        json!({"account": "c@example.com", "colour": "blue"}),
        // Empty is not "until released" (leave the key out for that): a script's unset
        // variable must not restrict an account for good.
        json!({"account": "c@example.com", "until": ""}),
        json!({"account": "c@example.com", "by": "x\n  2026-11-23T11:00:00Z  released by root"}),
        json!({"account": "@"}),
        json!({"account": "c@"}),
        json!({"account": "@example.com"}),
    ] {
        let (status, body) = call(&d, Method::POST, "/api/v1/restricted", Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body["error"].is_string(), "{bad}");
    }
    let (status, _) = call(&d, Method::GET, "/api/v1/restricted/c@example.com", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was restricted by a refused request");
    for bad in ["?reason=a%0d%0ab", "?by=x%0aroot"] {
        let (status, body) = call(&d, Method::DELETE, &format!("/api/v1/restricted/bob@example.com{bad}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(body["error"].as_str().unwrap().contains("control characters"), "{body}");
    }
    assert_eq!(mail(&mut c, "bob@example.com").await, b'y', "still restricted");
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn senders_show_live_counters() {
    let d = TestDaemon::start(POLICY).await;
    let mut c = client(&d).await;
    assert_eq!(mail(&mut c, "dan@example.com").await, b'c');
    c.rcpt_to("x@example.net").await.unwrap();
    c.rcpt_to("y@example.com").await.unwrap();
    // Counted once delivered (an aborted message's recipients are given back).
    c.message(&[("Subject", "x")], b"x\r\n").await.unwrap();

    let (status, top) = call(&d, Method::GET, "/api/v1/senders?top=10", None).await;
    assert_eq!(status, StatusCode::OK);
    let s = &top["senders"][0];
    assert_eq!(s["account"], "dan@example.com");
    assert_eq!(s["counters"]["external_last_hour"], 1);
    assert_eq!(s["counters"]["internal_last_hour"], 1);
    assert_eq!(s["restricted"], false);
    let (status, one) = call(&d, Method::GET, "/api/v1/senders/dan@example.com", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["counters"]["last_day"], 2);
    assert_eq!(one["restriction"], Value::Null);
    let (status, _) = call(&d, Method::GET, "/api/v1/senders/nobody@example.com", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for bad in ["abc", "-1", "0", ""] {
        let (status, body) = call(&d, Method::GET, &format!("/api/v1/senders?top={bad}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "top={bad}");
        assert!(body["error"].as_str().unwrap().contains("whole number"), "{body}");
    }
    drop(c);
    d.stop().await;
}

#[tokio::test]
async fn reload_applies_a_valid_file_and_refuses_a_broken_one() {
    let d = TestDaemon::start(POLICY).await;
    let path = d.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        original.replace("recipient_limit_external_per_hour = 2", "recipient_limit_external_per_hour = 5"),
    )
    .unwrap();
    let (status, body) = call(&d, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(d.services.engine.config().policies.default.recipient_limit_external_per_hour, 5);

    std::fs::write(
        &path,
        original.replace("recipient_limit_external_per_hour = 2", "recipient_limit_external_per_hour = -1"),
    )
    .unwrap();
    let (status, body) = call(&d, Method::POST, "/api/v1/reload", None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("test.toml:"), "{error}");
    assert!(error.contains("policy.default.recipient_limit_external_per_hour = -1"), "{error}");
    assert_eq!(
        d.services.engine.config().policies.default.recipient_limit_external_per_hour,
        5,
        "the running policy stays"
    );
    d.stop().await;
}

/// A file that start would refuse for its notification settings is refused by reload too, and
/// nothing of it is applied (a new limit in the same file included).
#[tokio::test]
async fn reload_refuses_notification_settings_start_would_refuse() {
    let d = TestDaemon::start(POLICY).await;
    let path = d.config_path();
    let original = std::fs::read_to_string(&path).unwrap();
    let templates = path.parent().unwrap().join("broken-templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(templates.join("sender_restricted.body.txt"), "{% if %}").unwrap();
    let raised = original.replace("recipient_limit_external_per_hour = 2", "recipient_limit_external_per_hour = 7");
    for (notify, expected) in [
        ("smtp = \"smtp://127.0.0.1:9?tls=bogus\"", "notify.smtp = \"smtp://127.0.0.1:9?tls=bogus\""),
        ("templates_dir = \"broken-templates\"", "notify.templates_dir = \"broken-templates\""),
    ] {
        std::fs::write(&path, format!("{raised}\n[notify]\n{notify}\n")).unwrap();
        let (status, body) = call(&d, Method::POST, "/api/v1/reload", None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{notify}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(expected), "{error}");
        assert_eq!(
            d.services.engine.config().policies.default.recipient_limit_external_per_hour,
            2,
            "the running policy stays"
        );
    }
    d.stop().await;
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let d = TestDaemon::start(POLICY).await;
    restrict_through_the_milter(&d, "erin@example.com").await;
    // One message an earlier scanner called spam: a header verdict (the default source).
    let mut c = client(&d).await;
    assert_eq!(mail(&mut c, "ivan@example.com").await, b'c');
    assert_eq!(c.rcpt_to("<x@example.net>").await.unwrap().kind(), Some(b'c'));
    let eom = c.message(&[("Subject", " offer"), ("X-Spam-Flag", " YES")], b"buy\r\n").await.unwrap();
    assert_eq!(eom.kind(), Some(b'c'));
    drop(c);
    let text = reqwest::get(format!("{}/metrics", d.admin_url())).await.unwrap().text().await.unwrap();
    assert!(!text.contains("outbound_guard_releases_total{"), "{text}");
    // A release counts under the cause of the restriction it lifts; a manual one under "manual".
    let (status, _) = call(&d, Method::DELETE, "/api/v1/restricted/erin@example.com", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &d,
        Method::POST,
        "/api/v1/restricted",
        Some(serde_json::json!({"account": "hal@example.com", "reason": "phished"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let text = reqwest::get(format!("{}/metrics", d.admin_url())).await.unwrap().text().await.unwrap();
    for expected in [
        "outbound_guard_restrictions_active 1",
        "outbound_guard_restrictions_total{reason=\"recipient_limit_external_per_hour\"} 1",
        "outbound_guard_restrictions_total{reason=\"manual\"} 1",
        "outbound_guard_releases_total{reason=\"recipient_limit_external_per_hour\"} 1",
        "outbound_guard_verdicts_total{source=\"headers\",result=\"spam\"} 1",
        "outbound_guard_recipients_total{class=\"external\",outcome=\"accepted\"} 3",
        "outbound_guard_recipients_total{class=\"external\",outcome=\"refused\"} 1",
        "outbound_guard_messages_total{direction=\"outbound\",outcome=\"checked\"} 2",
        "outbound_guard_milter_connections_total 2",
        "outbound_guard_decision_seconds_count",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(text.contains("# TYPE outbound_guard_restrictions_total counter"), "{text}");
    assert!(!text.contains("redis_up"), "no Redis metrics on the memory backend");
    let om = reqwest::Client::new()
        .get(format!("{}/metrics", d.admin_url()))
        .header("Accept", "application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
        .send()
        .await
        .unwrap();
    assert!(om.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    assert!(om.text().await.unwrap().ends_with("# EOF\n"));
    d.stop().await;
}

#[tokio::test]
async fn restrictions_and_counters_survive_a_restart() {
    let d = TestDaemon::start(POLICY).await;
    restrict_through_the_milter(&d, "fay@example.com").await;
    let mut c = client(&d).await;
    assert_eq!(mail(&mut c, "gus@example.com").await, b'c');
    c.rcpt_to("x@example.net").await.unwrap();
    c.message(&[("Subject", "x")], b"x\r\n").await.unwrap();
    drop(c);
    let dir = d.stop_keeping_state().await;

    let d = TestDaemon::start_in(dir, POLICY).await;
    let (_, list) = call(&d, Method::GET, "/api/v1/restricted", None).await;
    assert_eq!(list["restricted"][0]["account"], "fay@example.com");
    assert_eq!(d.services.engine.counters("gus@example.com").external_last_hour, 1, "counters restored");
    d.stop().await;
}

#[tokio::test]
async fn the_web_page_and_its_assets_are_served_without_a_token_under_a_strict_policy() {
    let d = TestDaemon::start(POLICY).await;
    let http = reqwest::Client::new();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/page.css", "text/css; charset=utf-8"),
        ("/page.js", "text/javascript; charset=utf-8"),
    ] {
        let r = http.get(format!("{}{path}", d.admin_url())).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["content-type"], content_type, "{path}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
        for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"] {
            assert!(csp.contains(directive), "{path}: {csp:?} lacks {directive:?}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp:?}");
        assert!(!r.text().await.unwrap().is_empty(), "{path}");
    }
    // The page is public, the data is not.
    let api = http.get(format!("{}/api/v1/restricted", d.admin_url())).send().await.unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    // Unknown paths still answer in the API's JSON.
    let missing = http.get(format!("{}/page.jsx", d.admin_url())).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing.json::<Value>().await.unwrap()["error"].is_string());
    d.stop().await;
}

/// `GET /api/v1/senders/{account}` carries the per-hour series: the 23 whole hours before
/// `as_of`, each the highest sample of the recipients in use against each hourly limit, `null`
/// for the hours the sampler did not see whole (here: before the filter started, and the hour
/// it started in). Sampled on the test's clock, a minute at a time, as the daemon would.
#[tokio::test]
async fn senders_show_the_recorded_hours() {
    const HOURLY: &str = "[milter]\nlisten = \"inet:127.0.0.1:0\"\n\
        [organization]\nlocal_domains = [\"example.com\"]\n\
        [policy.default]\nrecipient_limit_external_per_hour = 2\nrecipient_limit_internal_per_hour = 10\n";
    let d = TestDaemon::start(HOURLY).await;
    let engine = d.services.admin_state(d.token.clone()).engine;
    let minutes = |n: u32| {
        for _ in 0..n {
            d.clock.advance(std::time::Duration::from_secs(60));
            engine.sample_hourly();
        }
    };
    minutes(70); // 11:10
    let mut c = client(&d).await;
    assert_eq!(mail(&mut c, "dan@example.com").await, b'c');
    for to in ["x@example.net", "y@example.net", "team@example.com"] {
        c.rcpt_to(to).await.unwrap();
    }
    c.message(&[("Subject", "x")], b"x\r\n").await.unwrap();
    minutes(111); // 13:01
    // Nothing in use any more: the record goes with the idle ones, the series stays and
    // keeps the account known.
    assert!(engine.evict_idle() >= 1);
    assert!(engine.accounts().get("dan@example.com").is_none());
    let (status, one) = call(&d, Method::GET, "/api/v1/senders/dan@example.com", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["as_of"], "2026-11-22T13:01:00Z");
    assert_eq!((&one["hourly"]["measure"], &one["hourly"]["sample_seconds"]), (&json!("peak_in_use"), &json!(60)));
    let hours = one["hourly"]["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 23);
    assert_eq!(hours[0]["start"], "2026-11-21T14:00:00Z");
    assert_eq!(hours[20], json!({"start": "2026-11-22T10:00:00Z", "external": null, "internal": null}), "start hour");
    // 11:10: 2 external of 2 and 1 internal; by 12:00 one external has come back.
    assert_eq!(hours[21], json!({"start": "2026-11-22T11:00:00Z", "external": 2, "internal": 1}));
    assert_eq!(hours[22], json!({"start": "2026-11-22T12:00:00Z", "external": 1, "internal": 0}));
    assert!(hours[..20].iter().all(|h| h["external"].is_null() && h["internal"].is_null()), "{hours:?}");
    // An account the filter counts but never saw in use: 0 where it sampled.
    engine.restrict_manually("erin@example.com", "x", None, "admin").unwrap();
    let (_, erin) = call(&d, Method::GET, "/api/v1/senders/erin@example.com", None).await;
    assert_eq!(erin["hourly"]["hours"][22], json!({"start": "2026-11-22T12:00:00Z", "external": 0, "internal": 0}));
    drop(c);
    d.stop().await;
}

/// `GET /api/v1/senders/{account}` has exactly the documented keys and history entries, for a
/// restricted account and a released one; a second `POST` replaces the reason and `until`
/// (200, `"replaced": true`) and the history records it; 404 only for an unknown account.
#[tokio::test]
async fn an_accounts_history_outlives_its_restriction_and_records_a_replacement() {
    let d = TestDaemon::start(POLICY).await;
    restrict_through_the_milter(&d, "alice@example.com").await;
    let (status, one) = call(&d, Method::GET, "/api/v1/senders/alice@example.com", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut keys: Vec<_> = one.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["account", "as_of", "counters", "history", "hourly", "limits", "policy", "restriction"]);
    // When the counters were read, by the engine's clock (the test's), not the wall clock.
    assert_eq!(one["as_of"], "2026-11-22T10:00:00Z");
    assert_eq!(one["restriction"]["reason"], shown_reason(&d).await);
    assert_eq!(one["limits"]["recipient_limit_external_per_hour"], 2);

    let body =
        json!({"account": "alice@example.com", "reason": "phished", "until": "2026-11-23T10:00:00Z", "by": "carol"});
    let (status, replaced) = call(&d, Method::POST, "/api/v1/restricted", Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((replaced["replaced"].as_bool(), replaced["reason"].as_str()), (Some(true), Some("phished")));
    assert_eq!(replaced["until"], "2026-11-23T10:00:00Z");
    assert_eq!(replaced["created_at"], "2026-11-22T10:00:00Z", "restricted since it began");
    let (_, shown) = call(&d, Method::GET, "/api/v1/restricted/alice@example.com", None).await;
    assert_eq!(shown["reason"], "phished");
    assert_eq!(
        shown["history"][1],
        json!({"at": "2026-11-22T10:00:00Z", "action": "replaced", "reason": "phished", "by": "carol", "until": "2026-11-23T10:00:00Z"})
    );

    let (status, _) = call(&d, Method::DELETE, "/api/v1/restricted/alice@example.com?reason=reset&by=dave", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(call(&d, Method::GET, "/api/v1/restricted/alice@example.com", None).await.0, StatusCode::NOT_FOUND);
    d.clock.advance(std::time::Duration::from_secs(90));
    let (status, one) = call(&d, Method::GET, "/api/v1/senders/alice@example.com", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["as_of"], "2026-11-22T10:01:30Z");
    assert_eq!(one["restriction"], Value::Null);
    let history = one["history"].as_array().unwrap();
    let actions: Vec<_> = history.iter().map(|h| h["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["restricted", "replaced", "released"]);
    assert_eq!(
        history[2],
        json!({"at": "2026-11-22T10:00:00Z", "action": "released", "reason": "reset", "by": "dave", "until": null})
    );

    // A new restriction is 201 with "replaced": false.
    let (status, new) =
        call(&d, Method::POST, "/api/v1/restricted", Some(json!({"account": "eve@example.com", "reason": "x"}))).await;
    assert_eq!((status, new["replaced"].as_bool()), (StatusCode::CREATED, Some(false)));
    assert_eq!(call(&d, Method::GET, "/api/v1/senders/nobody@example.com", None).await.0, StatusCode::NOT_FOUND);
    d.stop().await;
}

async fn shown_reason(d: &TestDaemon) -> Value {
    call(d, Method::GET, "/api/v1/restricted/alice@example.com", None).await.1["reason"].clone()
}
