//! Codec benches: a whole Postfix transaction (captured from Postfix 3.7) cut into frames and
//! decoded; the same commands encoded; and the session answering them.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use outbound_guard::config::ReplyTexts;
use outbound_guard::milter::command::Command;
use outbound_guard::milter::frame;
use outbound_guard::milter::session::Session;
use outbound_guard::policy::PassThrough;

fn capture() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/postfix/postfix-plain.mta.bin");
    std::fs::read(path).expect("fixture")
}

fn decode_all(bytes: &[u8]) -> usize {
    let mut rest = bytes;
    let mut n = 0;
    while let Ok(Some((f, used))) = frame::decode(rest) {
        black_box(Command::decode(f).expect("valid"));
        rest = &rest[used..];
        n += 1;
    }
    n
}

fn codec(c: &mut Criterion) {
    let bytes = capture();
    let packets = decode_all(&bytes) as u64;
    let mut group = c.benchmark_group("codec");
    group.throughput(criterion::Throughput::Elements(packets));
    group.bench_function("decode_postfix_transaction", |b| b.iter(|| decode_all(black_box(&bytes))));

    let mut rest = bytes.as_slice();
    let mut commands = Vec::new();
    while let Ok(Some((f, used))) = frame::decode(rest) {
        commands.push(Command::decode(f).unwrap());
        rest = &rest[used..];
    }
    let mut out = Vec::with_capacity(bytes.len());
    group.bench_function("encode_postfix_transaction", |b| {
        b.iter(|| {
            out.clear();
            for cmd in &commands {
                cmd.encode(&mut out);
            }
            black_box(out.len())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("session");
    group.throughput(Throughput::Elements(1));
    let policy = Arc::new(PassThrough);
    let replies = Arc::new(arc_swap::ArcSwap::from_pointee(ReplyTexts::default()));
    let mut replies_out = Vec::with_capacity(1024);
    group.bench_function("postfix_transaction_through_session", |b| {
        b.iter(|| {
            let mut session = Session::new(policy.clone(), replies.clone());
            replies_out.clear();
            for cmd in &commands {
                let _ = session.handle(*cmd, &mut replies_out);
            }
            black_box(replies_out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
