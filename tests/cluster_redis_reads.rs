//! Cluster mode skips the Redis read at MAIL FROM where it cannot change a decision
//! (docs/cluster.md, "Reads skipped"): an account this node read less than a second ago, not
//! restricted here and far from its limits goes on from the local view. These tests hold that
//! the skip happens, and that it does not where it would matter: near a limit two nodes still
//! share the quota exactly, and a restriction made on one node is refused on the other within
//! 1 s even though the other had read the account a moment before. (A release holding for the
//! very next transaction, where the account is restricted here and so always read, is
//! `cluster_redis.rs`'s.)
#![cfg(feature = "real-peers")]

mod common;

use std::time::{Duration, Instant};

use common::binary::GuardProcess;
use common::mta::{runtime, send};
use common::redis::{RedisServer, wait_until};

/// A node with `limit` external recipients per hour; `block` keeps a restriction until released.
fn node(name: &str, redis: &RedisServer, limit: usize) -> GuardProcess {
    let config = format!(
        "[organization]\nlocal_domains = [\"example.com\"]\n\
         [state]\nbackend = \"redis\"\nredis_url = \"{}\"\n\
         [notify]\nnode_name = \"{name}\"\n\
         [policy.default]\nrecipient_limit_external_per_hour = {limit}\naction_when_threshold_reached = \"block\"\n",
        redis.url()
    );
    GuardProcess::start("", &config)
}

/// `outbound_guard_redis_mail_reads_total{outcome}`: (read, skipped).
fn mail_reads(g: &GuardProcess) -> (u64, u64) {
    let metrics = g.metrics();
    let value = |outcome: &str| {
        let name = format!("outbound_guard_redis_mail_reads_total{{outcome=\"{outcome}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(name.as_str())).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    (value("read"), value("skipped"))
}

/// The shared "external per hour" TAT of `account` in Redis (0 when none).
fn shared_external_tat(redis: &RedisServer, account: &str) -> u64 {
    let mut conn = redis.connection();
    ::redis::cmd("HGET")
        .arg(format!("og:{{{account}}}:tat"))
        .arg("e")
        .query::<Option<u64>>(&mut conn)
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[test]
fn an_account_far_from_its_limits_is_read_about_once_a_second_not_at_every_message() {
    let redis = RedisServer::start();
    let a = node("node-a", &redis, 1000);
    let rt = runtime();
    let started = Instant::now();
    for _ in 0..30 {
        assert_eq!(rt.block_on(send(a.milter_port, "fay@example.com", 1)), b"cc");
    }
    let elapsed = started.elapsed();
    let (read, skipped) = mail_reads(&a);
    assert_eq!(read + skipped, 30, "every outbound message is counted once");
    // The first message reads (never read here); a read then stands for 0.9 s.
    let most = 1 + elapsed.as_millis() as u64 / 900;
    assert!(read >= 1 && read <= most, "{read} reads in {elapsed:?} (at most {most}), {skipped} skipped");
}

#[test]
fn near_a_limit_two_nodes_share_the_quota_exactly() {
    let redis = RedisServer::start();
    let (a, b) = (node("node-a", &redis, 20), node("node-b", &redis, 20));
    let rt = runtime();
    // 12 of 20 on A: 8 left, within 10 of the limit, so A's next message reads again.
    assert_eq!(rt.block_on(send(a.milter_port, "gus@example.com", 12)), b"c".repeat(13));
    assert!(wait_until(Duration::from_secs(5), || shared_external_tat(&redis, "gus@example.com") > 0));
    let after_a = shared_external_tat(&redis, "gus@example.com");
    // 5 more on B, which reads what A spent.
    assert_eq!(rt.block_on(send(b.milter_port, "gus@example.com", 5)), b"c".repeat(6));
    assert!(
        wait_until(Duration::from_secs(5), || shared_external_tat(&redis, "gus@example.com") > after_a),
        "B's commit did not reach Redis"
    );
    // Back on A, which read the account a moment ago: 3 are left of the 20, not 8.
    assert_eq!(rt.block_on(send(a.milter_port, "gus@example.com", 4)), b"ccccy");
}

#[test]
fn a_restriction_on_one_node_is_refused_on_the_other_within_a_second_though_it_had_just_read_it() {
    let redis = RedisServer::start();
    let (a, b) = (node("node-a", &redis, 1000), node("node-b", &redis, 1000));
    let rt = runtime();
    // B reads hal now, and then may skip reads of it for 0.9 s.
    assert_eq!(rt.block_on(send(b.milter_port, "hal@example.com", 1)), b"cc");
    let restricted = a.cli(&["restricted", "add", "hal@example.com", "--reason", "phished"]);
    assert!(restricted.status.success(), "{}", String::from_utf8_lossy(&restricted.stderr));
    let since = Instant::now();
    assert!(
        wait_until(Duration::from_secs(1), || rt.block_on(send(b.milter_port, "hal@example.com", 1)) == b"y"),
        "hal still sends on B {:?} after the restriction on A",
        since.elapsed()
    );
}
