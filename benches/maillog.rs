//! The Postfix log parser's speed: lines per second over the log this repository's real
//! Postfix wrote (`fixtures/postfix/maillog.log`), replicated to 100,000 lines so the run
//! measures parsing, not the cache behaviour of a 70-line file. Criterion reports lines/s
//! (elements); the simulator and the delivery follower need at least 1M lines/s on one core.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outbound_guard::maillog;

const LINES: usize = 100_000;

fn log() -> Vec<u8> {
    let one = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/postfix/maillog.log")).expect("fixture");
    let per = one.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    one.repeat(LINES.div_ceil(per))
}

fn parse_all(log: &[u8]) -> usize {
    let mut read = 0;
    for line in log.split(|&b| b == b'\n') {
        if let Ok(parsed) = maillog::parse(line) {
            black_box(&parsed);
            read += 1;
        }
    }
    read
}

fn maillog(c: &mut Criterion) {
    let log = log();
    let lines = log.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
    assert_eq!(parse_all(&log), lines, "every line of the fixture parses");
    let mut group = c.benchmark_group("maillog");
    group.throughput(Throughput::Elements(lines as u64));
    group.bench_function("parse_postfix_log", |b| b.iter(|| parse_all(black_box(&log))));
    group.finish();
}

criterion_group!(benches, maillog);
criterion_main!(benches);
