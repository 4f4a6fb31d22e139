//! The spamd and rspamd clients against the real scanners (Debian's `spamd` and `rspamd`,
//! started by `common::scanners` on free loopback ports with private configuration): GTUBE is
//! spam, an ordinary message is ham, a 2 MiB message reaches the scanner cut at the cap (the
//! scanner's own log says how many bytes it got), and a stopped scanner is a `ScanError` at
//! once. One server per test, all scenarios in it: starting rspamd is the slow part.
#![cfg(feature = "real-peers")]

mod common;

use std::time::{Duration, Instant};

use common::messages::{fixture, large_message};
use common::scanners::{Rspamd, Spamd};
use outbound_guard::config::RspamdUrl;
use outbound_guard::verdict::{RspamdClient, ScanError, ScanRequest, Source, SpamdClient};

/// The first scan after a start may wait for rules to load, and spamd takes about 10 s for
/// 512 KiB of text on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Smaller than the default 512 KiB so the test scans fast; the cap works the same.
const CAP: usize = 128 * 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// An authenticated outbound submission, as the milter would describe it.
fn outbound<'a>(message: &'a [u8], rcpt: &'a [&'a str], queue_id: &'a str) -> ScanRequest<'a> {
    ScanRequest {
        message,
        user: Some("alice@example.com"),
        // A documentation address: only a value in a header, nothing connects to it.
        ip: Some("192.0.2.10".parse().unwrap()),
        helo: Some("client.example.com"),
        from: Some("alice@example.com"),
        rcpt,
        queue_id: Some(queue_id),
    }
}

#[test]
fn real_spamd_gtube_is_spam_ham_is_ham_and_the_cap_holds() {
    let spamd = Spamd::start().expect("spamd starts");
    let client = SpamdClient::new(spamd.addr.to_string(), TIMEOUT, CAP);
    let rt = runtime();
    let rcpt = ["bob@example.org"];

    let gtube = fixture("gtube.eml");
    let v =
        rt.block_on(client.check(&outbound(&gtube, &rcpt, "Q1"))).unwrap_or_else(|e| panic!("{e}\n{}", spamd.log()));
    assert_eq!(v.source, Source::Spamd);
    assert!(v.spam, "{v:?}");
    assert!(v.score.unwrap() >= 1000.0, "GTUBE scores 1000: {v:?}");
    assert_eq!(v.required, Some(5.0));

    let ham = fixture("ham.eml");
    let v = rt.block_on(client.check(&outbound(&ham, &rcpt, "Q2"))).unwrap();
    assert!(!v.spam, "{v:?}\n{}", spamd.log());
    assert!(v.score.unwrap() < 5.0);
    // The account reached spamd as the user.
    assert!(spamd.wait_for_log("user=alice@example.com").is_ok(), "{}", spamd.log());

    let large = large_message(2 * 1024 * 1024);
    let v = rt.block_on(client.check(&outbound(&large, &rcpt, "Q3"))).unwrap();
    assert!(!v.spam, "{v:?}");
    spamd
        .wait_for_log(&format!("size={CAP},"))
        .unwrap_or_else(|e| panic!("spamd did not get exactly {CAP} bytes: {e}"));
    assert!(!spamd.log().contains(&format!("size={},", large.len())));

    // Stopped: refused at once, well within the timeout.
    let addr = spamd.addr;
    drop(spamd);
    let started = Instant::now();
    let err = rt.block_on(client.check(&outbound(&ham, &rcpt, "Q4"))).unwrap_err();
    assert!(matches!(err, ScanError::Connect { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn real_rspamd_gtube_is_spam_ham_is_ham_and_the_cap_holds() {
    let rspamd = Rspamd::start().expect("rspamd starts");
    let client = RspamdClient::new(&RspamdUrl::parse(&rspamd.url()).unwrap(), TIMEOUT, CAP).unwrap();
    let rt = runtime();
    let rcpt = ["bob@example.org", "carol@example.net"];

    let gtube = fixture("gtube.eml");
    let v =
        rt.block_on(client.check(&outbound(&gtube, &rcpt, "Q1"))).unwrap_or_else(|e| panic!("{e}\n{}", rspamd.log()));
    assert_eq!(v.source, Source::Rspamd);
    assert!(v.spam, "{v:?}");
    assert!(v.detail.starts_with("action: reject"), "{v:?}");

    let ham = fixture("ham.eml");
    let v = rt.block_on(client.check(&outbound(&ham, &rcpt, "Q2"))).unwrap();
    assert!(!v.spam, "{v:?}\n{}", rspamd.log());
    assert!(v.score.unwrap() < v.required.unwrap());
    // The envelope reached rspamd: it logs the queue id and the user.
    let log = rspamd.wait_for_log("qid: <Q2>").unwrap();
    assert!(log.contains("user: alice@example.com"), "{log}");

    let large = large_message(2 * 1024 * 1024);
    let v = rt.block_on(client.check(&outbound(&large, &rcpt, "Q3"))).unwrap();
    assert!(!v.spam, "{v:?}");
    let log = rspamd.wait_for_log("qid: <Q3>").unwrap();
    let line = log.lines().find(|l| l.contains("qid: <Q3>")).unwrap();
    assert!(line.contains(&format!("len: {CAP},")), "{line}");

    let url = rspamd.url();
    drop(rspamd);
    let started = Instant::now();
    let err = rt.block_on(client.check(&outbound(&ham, &rcpt, "Q4"))).unwrap_err();
    assert!(matches!(err, ScanError::Connect { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(err.to_string().contains(&url), "{err}");
}
