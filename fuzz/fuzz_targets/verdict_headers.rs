//! The header judge: arbitrary header sections, as an MTA would hand them over one by one.
//!
//! The input is split into headers the way a message's header section is (a line starting
//! with a space or tab continues the previous header; `Name: value` otherwise) and judged with
//! the built-in rules plus one pattern rule and one `min_score` rule. A verdict must carry a
//! finite score, a bounded detail and no line break in it (it goes into logs and notices).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use outbound_guard::config::{HeaderPattern, HeaderRule, HeaderTest, VerdictConfig};
use outbound_guard::verdict::{DETAIL_MAX, HeaderJudge};

fn judge() -> &'static HeaderJudge {
    static JUDGE: OnceLock<HeaderJudge> = OnceLock::new();
    JUDGE.get_or_init(|| {
        let rule = |header: &str, pattern: Option<&str>, min_score: Option<f64>| HeaderRule {
            header: header.into(),
            test: match (pattern, min_score) {
                (Some(p), _) => HeaderTest::Pattern(HeaderPattern::new(p).expect("the pattern compiles")),
                (None, min) => HeaderTest::MinScore(min.unwrap_or_default()),
            },
        };
        HeaderJudge::new(&VerdictConfig {
            headers: true,
            spamd: None,
            rspamd: None,
            timeout: Duration::from_secs(10),
            max_scan_bytes: 512 * 1024,
            rules: vec![rule("X-Scanner-Verdict", Some("(?i)verdict=spam"), None), rule("X-Score", None, Some(7.5))],
        })
    })
}

/// Splits a header section into (name, value) pairs, value as the milter gets it (folds kept).
fn headers(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out: Vec<(&[u8], (usize, usize))> = Vec::new();
    let mut at = 0;
    for line in data.split_inclusive(|&b| b == b'\n') {
        let start = at;
        at += line.len();
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some((_, (_, end))) = out.last_mut() {
                *end = at;
            }
            continue;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            out.push((&line[..colon], (start + colon + 1, at)));
        }
    }
    out.into_iter().map(|(name, (from, to))| (name, &data[from..to])).collect()
}

fuzz_target!(|data: &[u8]| {
    let headers = headers(data);
    if let Some(v) = judge().judge(headers.iter().copied()) {
        assert!(v.score.is_none_or(f64::is_finite), "{v:?}");
        assert!(v.required.is_none_or(f64::is_finite), "{v:?}");
        assert!(v.detail.chars().count() <= DETAIL_MAX + 64, "{v:?}");
        assert!(!v.detail.contains(['\r', '\n']), "{v:?}");
    }
});
