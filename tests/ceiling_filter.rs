//! The ceiling filter of `scripts/bench-peers` (`examples/ceiling_milter.rs`) is a fair
//! ceiling only while it is a working filter that never stalls: every stage the MTA waits on
//! answered, and no message held by the 40 ms delayed-ACK trap (which would make any filter
//! look better than it). Its connection loop is run here in process, fed by the load
//! generator writing as Postfix does, over TCP with Nagle left on.

#[path = "../examples/ceiling_milter.rs"]
mod ceiling;

use std::time::Duration;

use outbound_guard::config::ListenAddr;
use outbound_guard::load::{self, Options, Workload, Writes};

#[tokio::test]
async fn the_ceiling_answers_every_stage_and_never_waits_for_a_delayed_ack() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            tokio::spawn(ceiling::serve(stream));
        }
    });
    let opts = Options {
        target: ListenAddr::Inet(addr),
        concurrency: 1,
        messages: 40,
        workload: Workload { accounts: 10, recipients: 3, internal: 1, body_size: 2048, ..Workload::default() },
        writes: Writes::Postfix,
        nodelay: false,
        max_time: Duration::from_secs(30),
        ..Options::default()
    };
    let r = load::run(opts).await.expect("run");
    server.abort();

    assert_eq!(r.first_error, None, "{r:?}");
    assert_eq!(r.connections, 40, "one milter connection per message: {r:?}");
    assert_eq!(r.outcomes.get("delivered").copied(), Some(40), "{r:?}");
    for (reply, n) in [("mail continue", 40), ("rcpt continue", 120), ("eom continue", 40)] {
        assert_eq!(r.replies.get(reply).copied(), Some(n), "{reply}: {r:?}");
    }
    assert_eq!(r.replies.len(), 3, "nothing but continue: {r:?}");
    assert!(r.latency.p50_us < 30_000, "messages wait for a delayed ACK: {:?}", r.latency);
}
