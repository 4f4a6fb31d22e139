//! Header verdicts on the fixture messages (`fixtures/messages`), with header values as a
//! milter receives them — CRLF-folded as on the wire and LF-folded as Postfix passes them —
//! and the capped message a scanner would get.

mod common;

use std::time::Duration;

use common::messages::{fixture, headers, large_message, split};
use outbound_guard::config::{HeaderPattern, HeaderRule, HeaderTest, VerdictConfig};
use outbound_guard::verdict::{HeaderJudge, ScanMessage, Source};

fn config() -> VerdictConfig {
    VerdictConfig {
        headers: true,
        spamd: None,
        rspamd: None,
        timeout: Duration::from_secs(10),
        max_scan_bytes: 512 * 1024,
        rules: vec![HeaderRule {
            header: "X-Scanner-Verdict".into(),
            test: HeaderTest::Pattern(HeaderPattern::new("verdict=spam").unwrap()),
        }],
    }
}

/// (spam, score, required).
type Outcome = (bool, Option<f64>, Option<f64>);

/// The outcome per fixture; `None`: no scanner header.
const EXPECTED: [(&str, Option<Outcome>); 7] = [
    ("ham.eml", None),
    ("gtube.eml", None),
    ("spamassassin-tagged.eml", Some((true, Some(12.3), Some(5.0)))),
    ("rspamd-tagged.eml", Some((true, Some(16.2), Some(15.0)))),
    ("forged-then-real.eml", Some((true, Some(9.1), Some(5.0)))),
    ("eop-tagged.eml", Some((true, Some(6.0), Some(5.0)))),
    ("non-utf8-folded.eml", Some((true, Some(7.5), Some(5.0)))),
];

#[test]
fn fixtures_give_the_documented_verdicts() {
    let judge = HeaderJudge::new(&config());
    for lf_only in [false, true] {
        for (name, expected) in EXPECTED {
            let hs = headers(&fixture(name), lf_only);
            let got = judge.judge(hs.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
            let got_triple = got.as_ref().map(|v| (v.spam, v.score, v.required));
            assert_eq!(got_triple, expected, "{name} (LF only: {lf_only}): {got:?}");
            if let Some(v) = got {
                assert_eq!(v.source, Source::Headers);
                assert!(!v.detail.contains('\n') && !v.detail.contains('\r'), "{name}: {:?}", v.detail);
            }
        }
    }
}

#[test]
fn forged_clean_headers_before_the_scanner_do_not_count() {
    let judge = HeaderJudge::new(&config());
    let hs = headers(&fixture("forged-then-real.eml"), true);
    // The forged ones are really there, first.
    assert_eq!(hs[0], (b"X-Spam-Flag".to_vec(), b" NO".to_vec()));
    let v = judge.judge(hs.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))).unwrap();
    assert!(v.detail.starts_with("X-Spam-Status: Yes, score=9.1"), "{}", v.detail);
}

#[test]
fn administrator_rule_reads_a_folded_latin1_header() {
    let judge = HeaderJudge::new(&config());
    let hs = headers(&fixture("non-utf8-folded.eml"), true);
    // Only the rule's header: the pattern matches across the fold.
    let rule_only = hs.iter().filter(|(n, _)| n == b"X-Scanner-Verdict");
    let v = judge.judge(rule_only.map(|(n, v)| (n.as_slice(), v.as_slice()))).unwrap();
    assert!(v.spam);
    assert_eq!(v.detail, "X-Scanner-Verdict: caf\u{fffd} verdict=spam");
}

#[test]
fn scan_message_rebuilds_each_fixture_byte_for_byte() {
    for (name, _) in EXPECTED {
        let original = fixture(name);
        let (_, body) = split(&original);
        let mut m = ScanMessage::new(512 * 1024);
        for (n, v) in headers(&original, true) {
            m.push_header(&n, &v);
        }
        m.end_headers();
        m.push_body(body);
        assert_eq!(m.as_bytes(), &original[..], "{name}");
        assert!(!m.is_truncated());
    }
}

#[test]
fn scan_message_keeps_only_the_cap_of_a_large_message() {
    let large = large_message(2 * 1024 * 1024);
    let (_, body) = split(&large);
    let cap = 512 * 1024;
    let mut m = ScanMessage::new(cap);
    for (n, v) in headers(&large, true) {
        m.push_header(&n, &v);
    }
    m.end_headers();
    for chunk in body.chunks(65535) {
        m.push_body(chunk);
    }
    assert_eq!(m.as_bytes(), &large[..cap]);
    assert_eq!(m.total_len(), large.len());
    assert!(m.is_truncated());
}
