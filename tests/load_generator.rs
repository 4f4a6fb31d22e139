//! The load generator tested against the filter: `milter-load` run as a program against the
//! real binary, and `load::run` in process with pre-warm, reused connections and per-packet
//! writes. Each run is a few hundred messages, and the counts per reply must add up and agree
//! with the configured limit.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::binary::GuardProcess;
use common::daemon::TestDaemon;
use outbound_guard::config::ListenAddr;
use outbound_guard::load::{self, Options, Report, Workload, Writes};

/// One account may reach 100 external recipients per hour; then it is restricted.
const LIMITED: &str = "[organization]\nlocal_domains = [\"example.com\"]\n\
    [notify]\nsmtp = \"smtp://127.0.0.1:9\"\nwarn_at_percent = 0\n\
    [policy.default]\nrecipient_limit_external_per_hour = 100\n\
    action_when_threshold_reached = \"block_until_tomorrow\"\n";

fn count(r: &Report, key: &str) -> u64 {
    r.replies.get(key).copied().unwrap_or(0)
}

fn outcome(r: &Report, key: &str) -> u64 {
    r.outcomes.get(key).copied().unwrap_or(0)
}

#[test]
fn milter_load_against_the_binary_counts_every_reply_and_meets_the_limit() {
    let g = GuardProcess::start("", LIMITED);
    let out = Command::new(env!("CARGO_BIN_EXE_milter-load"))
        .args(["--milter", &g.milter_address(), "-c", "4", "-n", "300", "--accounts", "1"])
        .args(["--recipients", "1", "--internal", "0", "--body-size", "512", "--json", "--max-time", "60"])
        .args(["--pid", &g.child.id().to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run milter-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "milter-load failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    let r: Report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    assert_eq!(r.messages, 300, "{r:?}");
    assert_eq!(r.connections, 300, "one milter connection per message: {r:?}");
    assert_eq!(r.first_error, None);
    // Exactly the limit passes; the recipient that reaches it is refused with 5.2.2, and the
    // account is restricted from then on. A message of another connection that passed MAIL
    // just before may meet the limit at its RCPT too: at most one per other connection.
    assert_eq!(r.recipients_accepted, 100, "{r:?}");
    assert_eq!(count(&r, "rcpt continue"), 100, "{r:?}");
    assert!((1..=4).contains(&count(&r, "rcpt 550 5.2.2")), "{r:?}");
    assert_eq!(outcome(&r, "delivered"), 100, "{r:?}");
    assert_eq!(count(&r, "eom continue"), 100, "{r:?}");
    // Every message is accounted for once: refused at MAIL, or with no recipient left.
    assert_eq!(outcome(&r, "delivered") + outcome(&r, "no_recipient") + outcome(&r, "refused_at_mail"), 300);
    assert_eq!(count(&r, "mail continue") + count(&r, "mail 550 5.1.8"), 300, "{r:?}");
    assert_eq!(outcome(&r, "refused_at_mail"), count(&r, "mail 550 5.1.8"));
    let rcpt_replies: u64 = r.replies.iter().filter(|(k, _)| k.starts_with("rcpt ")).map(|(_, v)| v).sum();
    assert_eq!(rcpt_replies, count(&r, "mail continue"), "one RCPT per message that passed MAIL: {r:?}");
    assert_eq!(r.recipients_accepted + r.recipients_refused, rcpt_replies);
    assert!(r.latency.p50_us > 0 && r.latency.p50_us <= r.latency.p99_us && r.latency.p99_us <= r.latency.max_us);
    let server = r.server.expect("server cost with --pid");
    assert!(server.peak_rss_kib > 0 && server.processes >= 1, "{server:?}");
    let (status, _) = g.terminate();
    assert!(status.success());
}

#[tokio::test]
async fn prewarmed_accounts_reused_connections_and_per_packet_writes() {
    let d = TestDaemon::start(LIMITED).await;
    let opts = Options {
        target: ListenAddr::Inet(d.addr),
        concurrency: 3,
        messages: 200,
        workload: Workload { accounts: 4, recipients: 3, internal: 1, body_size: 100, ..Workload::default() },
        writes: Writes::PerPacket,
        reuse: true,
        prewarm: 1000,
        max_time: Duration::from_secs(30),
        ..Options::default()
    };
    let r = load::run(opts).await.expect("run");
    let p = r.prewarm.clone().expect("pre-warm ran");
    assert_eq!((p.accounts, p.errors), (1000, 0), "{p:?}");
    assert_eq!(r.messages, 200);
    assert_eq!(r.connections, 3, "reused: {r:?}");
    assert_eq!(r.first_error, None);
    // 4 accounts × 50 messages × 2 external recipients each = 100 external per account: all
    // within the limit of 100. Internal recipients are not limited by it.
    assert_eq!(r.recipients_accepted, 600, "{r:?}");
    assert_eq!(outcome(&r, "delivered"), 200);
    assert_eq!(count(&r, "mail continue"), 200);
    assert_eq!(count(&r, "eom continue"), 200);
    d.stop().await;
}

/// Postfix sends the DATA macros alone (smtpd hands the connection to the cleanup server
/// there) and the filter does not answer them; Nagle on Postfix's side then holds the next
/// write until that packet is acknowledged. A filter that leaves it to the delayed ACK costs
/// every message 40 ms or more.
#[tokio::test]
async fn postfix_writes_over_tcp_never_wait_for_a_delayed_ack() {
    let d = TestDaemon::start("[organization]\nlocal_domains = [\"example.com\"]\n").await;
    let opts = Options {
        target: ListenAddr::Inet(d.addr),
        concurrency: 1,
        messages: 30,
        workload: Workload { accounts: 30, recipients: 1, internal: 0, body_size: 100, ..Workload::default() },
        writes: Writes::Postfix,
        nodelay: false,
        max_time: Duration::from_secs(30),
        ..Options::default()
    };
    let r = load::run(opts).await.expect("run");
    assert_eq!(outcome(&r, "delivered"), 30, "{r:?}");
    assert!(r.latency.p50_us < 30_000, "messages wait for a delayed ACK: {:?}", r.latency);
    d.stop().await;
}
