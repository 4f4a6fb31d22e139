//! Verdict benches: the header judge over a typical 20-header outbound message — without any
//! scanner header (the common case for authenticated submissions, which must not allocate), and
//! with SpamAssassin's and rspamd's headers folded as they write them. Target: ≤ 2 µs each.

use std::hint::black_box;
use std::time::Duration;

mod common;

use common::thread_cpu_time;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outbound_guard::config::{HeaderPattern, HeaderRule, HeaderTest, VerdictConfig};
use outbound_guard::verdict::HeaderJudge;

/// The headers of an ordinary message as Postfix hands them to a milter (leading space kept,
/// LF folding).
const PLAIN: [(&str, &str); 18] = [
    (
        "Received",
        " from client.example.com (client.example.com [192.0.2.10])\n\tby mx.example.com (Postfix) with ESMTPSA id 4Xk2b31Zz9z1x\n\tfor <bob@example.org>; Sun, 22 Nov 2026 10:00:00 +0000 (UTC)",
    ),
    (
        "DKIM-Signature",
        " v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=2026;\n\tt=1795341600; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\n\th=From:To:Subject:Date; b=dGVzdA==",
    ),
    ("From", " Alice Example <alice@example.com>"),
    ("To", " Bob Example <bob@example.org>"),
    ("Cc", " Carol <carol@example.org>, Dave <dave@example.net>"),
    ("Subject", " Project meeting on Thursday"),
    ("Date", " Sun, 22 Nov 2026 10:00:00 +0000"),
    ("Message-ID", " <20261122100000.abc123@example.com>"),
    ("In-Reply-To", " <20261121090000.xyz@example.org>"),
    ("References", " <20261121090000.xyz@example.org>"),
    ("MIME-Version", " 1.0"),
    ("Content-Type", " multipart/alternative; boundary=\"000000000000b1c2d3\""),
    ("User-Agent", " Mozilla Thunderbird"),
    ("Content-Language", " en-GB"),
    ("X-Mailer", " Thunderbird 128.4"),
    ("Return-Path", " <alice@example.com>"),
    ("Authentication-Results", " mx.example.com; auth=pass smtp.auth=alice@example.com"),
    ("List-Unsubscribe", " <mailto:unsubscribe@example.com>"),
];

const SPAMASSASSIN: [(&str, &str); 2] = [
    ("X-Spam-Flag", " YES"),
    (
        "X-Spam-Status",
        " Yes, score=12.3 required=5.0 tests=BAYES_99,BAYES_999,\n\tHTML_MESSAGE,MIME_HTML_ONLY,RCVD_IN_MSPIKE_BL,URIBL_ABUSE_SURBL\n\tautolearn=no autolearn_force=no version=4.0.1",
    ),
];

const RSPAMD: [(&str, &str); 2] = [
    (
        "X-Spamd-Result",
        " default: True [16.20 / 15.00];\n\tBAYES_SPAM(5.10)[99.99%];\n\tFUZZY_DENIED(4.00)[1:a1b2c3d4e5:1.00:txt];\n\tMIME_GOOD(-0.10)[text/plain]",
    ),
    ("X-Rspamd-Action", " reject"),
];

fn message(extra: &[(&'static str, &'static str)]) -> Vec<(&'static [u8], &'static [u8])> {
    PLAIN.iter().chain(extra).map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect()
}

fn verdict(c: &mut Criterion) {
    let config = VerdictConfig {
        headers: true,
        spamd: None,
        rspamd: None,
        timeout: Duration::from_secs(10),
        max_scan_bytes: 512 * 1024,
        rules: vec![HeaderRule {
            header: "X-Scanner-Verdict".into(),
            test: HeaderTest::Pattern(HeaderPattern::new("(?i)verdict=spam").expect("valid pattern")),
        }],
    };
    let judge = HeaderJudge::new(&config);
    let cases = [
        ("headers_20_none", message(&[("X-Originating-IP", " [192.0.2.10]"), ("Thread-Topic", " meeting")])),
        ("headers_20_spamassassin", message(&SPAMASSASSIN)),
        ("headers_20_rspamd", message(&RSPAMD)),
    ];
    let mut group = c.benchmark_group("verdict");
    for (name, headers) in &cases {
        group.throughput(Throughput::Elements(headers.len() as u64));
        // Thread CPU time, not wall time: on a shared machine the wall clock also counts the
        // time other processes held the core.
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let started = thread_cpu_time();
                for _ in 0..iters {
                    black_box(judge.judge(black_box(headers).iter().copied()));
                }
                thread_cpu_time() - started
            })
        });
    }
    group.finish();
}

criterion_group!(benches, verdict);
criterion_main!(benches);
