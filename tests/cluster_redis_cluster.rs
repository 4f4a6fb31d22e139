//! Cluster mode on a real Redis Cluster (3 masters, 3 replicas, all `redis-server` processes
//! on 127.0.0.1 started by the test): two `outbound-guard` processes with
//! `redis_url = "redis+cluster://…"`. Quota spent on one node counts on the other; a
//! restriction on one refuses on the other within 1 s; a release on one holds on the other for
//! the very next transaction; a master killed during load — both nodes keep deciding, and once
//! its replica took over they reconcile: no acknowledged restriction is lost.
#![cfg(feature = "real-peers")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::binary::GuardProcess;
use common::mta::{runtime, send};
use common::nodes::{node_config, refuses_within_a_second, restricted_on, two_nodes};
use common::redis::{RedisCluster, wait_until};

/// External recipients per hour; `block` keeps a restriction until it is released.
const LIMIT: usize = 4;

fn exists(cluster: &RedisCluster, key: &str) -> bool {
    ::redis::cmd("EXISTS").arg(key).query::<i64>(&mut cluster.connection()).unwrap_or(0) == 1
}

/// Sends messages of `LIMIT + 1` recipients, a new account each (`{prefix}{i}@example.com`),
/// alternately to the two nodes, until `stop` (and at least `at_least`); every message must be
/// decided (each account restricted by its last recipient). Returns the accounts.
fn load(ports: (u16, u16), prefix: &'static str, at_least: usize, stop: Arc<AtomicBool>) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let rt = runtime();
        let mut accounts = Vec::new();
        for i in 0.. {
            if i >= at_least && stop.load(Ordering::Acquire) {
                break;
            }
            let account = format!("{prefix}{i}@example.com");
            let port = if i % 2 == 0 { ports.0 } else { ports.1 };
            assert_eq!(rt.block_on(send(port, &account, LIMIT + 1)), b"cccccy", "{account}");
            accounts.push(account);
        }
        accounts
    })
}

fn members_of_the_index(cluster: &RedisCluster) -> Vec<String> {
    ::redis::cmd("SMEMBERS").arg("og:accounts").query(&mut cluster.connection()).unwrap_or_default()
}

#[test]
fn quota_spent_on_one_node_counts_on_the_other_over_a_cluster() {
    let cluster = RedisCluster::start();
    let (a, b) = two_nodes(&cluster.url(), LIMIT);
    let rt = runtime();
    // Accounts whose keys fall on different masters: every commit pipeline is split by slot.
    for i in 0..6 {
        let account = format!("alice{i}@example.com");
        assert_eq!(rt.block_on(send(a.milter_port, &account, 3)), b"cccc");
        assert!(wait_until(Duration::from_secs(5), || exists(&cluster, &format!("og:{{{account}}}:tat"))));
        assert_eq!(rt.block_on(send(b.milter_port, &account, 2)), b"ccy", "{account}");
        refuses_within_a_second(&a, &account);
    }
    let (status, log) = a.terminate();
    assert!(status.success());
    assert!(log.contains("redis reachable"), "{log}");
}

#[test]
fn a_restriction_on_one_node_refuses_on_the_other_within_a_second_over_a_cluster() {
    let cluster = RedisCluster::start();
    let (a, b) = two_nodes(&cluster.url(), LIMIT);
    let rt = runtime();
    assert_eq!(rt.block_on(send(a.milter_port, "bob@example.com", LIMIT + 1)), b"cccccy");
    refuses_within_a_second(&b, "bob@example.com");
    // A manual restriction on B holds on A for the next transaction.
    assert!(b.cli(&["restricted", "add", "dora@example.com", "--reason", "phished"]).status.success());
    assert_eq!(rt.block_on(send(a.milter_port, "dora@example.com", 1)), b"y");
    // The events and the index of accounts are in the cluster.
    assert!(exists(&cluster, "og:{dora@example.com}:ev"));
    let index = members_of_the_index(&cluster);
    assert!(index.contains(&"bob@example.com".to_owned()) && index.contains(&"dora@example.com".to_owned()));
}

#[test]
fn a_release_on_one_node_holds_on_the_other_for_the_very_next_transaction_over_a_cluster() {
    let cluster = RedisCluster::start();
    let (a, b) = two_nodes(&cluster.url(), LIMIT);
    let rt = runtime();
    for round in 0..3 {
        let account = format!("carol{round}@example.com");
        assert_eq!(rt.block_on(send(a.milter_port, &account, LIMIT + 1)), b"cccccy");
        refuses_within_a_second(&b, &account);
        let release = b.cli(&["restricted", "release", &account, "--reason", "password changed"]);
        assert!(release.status.success(), "{}", String::from_utf8_lossy(&release.stderr));
        // No wait: the very next transaction on A.
        assert_eq!(rt.block_on(send(a.milter_port, &account, 1)), b"cc", "release of {account} not in force on A");
    }
    assert!(restricted_on(&a).is_empty());
}

/// Subscribers of the events channel on one cluster node.
fn subscribers(node: &common::redis::RedisServer) -> i64 {
    let reply: Vec<::redis::Value> =
        ::redis::cmd("PUBSUB").arg("NUMSUB").arg("og:events").query(&mut node.connection()).unwrap_or_default();
    match reply.get(1) {
        Some(::redis::Value::Int(n)) => *n,
        _ => 0,
    }
}

/// Load on both nodes, one master killed — the one both filter nodes subscribed on: both keep
/// deciding (every account restricted by its 5th recipient), and after the failover every
/// restriction is on both nodes and in Redis, and the broadcast works again (subscribed anew on
/// another node).
#[test]
fn a_master_killed_mid_load_fails_over_and_the_nodes_reconcile() {
    let mut cluster = RedisCluster::start();
    let master = cluster.a_master();
    let a = GuardProcess::start("", &node_config("node-a", &cluster.url_first(master), LIMIT));
    let b = GuardProcess::start("", &node_config("node-b", &cluster.url_first(master), LIMIT));
    assert!(
        wait_until(Duration::from_secs(5), || subscribers(&cluster.nodes[master]) == 2),
        "the filter nodes are not subscribed on the first seed"
    );
    let rt = runtime();
    assert_eq!(rt.block_on(send(a.milter_port, "erin@example.com", LIMIT + 1)), b"cccccy");
    refuses_within_a_second(&b, "erin@example.com");

    // Load from before the kill until the replica took over: every message is decided.
    let stop = Arc::new(AtomicBool::new(false));
    let load = load((a.milter_port, b.milter_port), "load", 10, stop.clone());
    assert!(wait_until(Duration::from_secs(10), || exists(&cluster, "og:{load3@example.com}:ev")), "load under way");
    cluster.nodes[master].kill();
    assert!(cluster.wait_ok(Duration::from_secs(30)), "no failover");
    stop.store(true, Ordering::Release);
    let acknowledged = load.join().expect("load thread: a message was not decided while a master was down");

    // The nodes noticed and reconcile what was decided meanwhile.
    let noticed =
        |g: &GuardProcess| g.log().contains("redis unreachable") || g.log().contains("redis writes had failed");
    assert!(noticed(&a) && noticed(&b), "the loss of a master went unnoticed:\n{}\n{}", a.log(), b.log());
    let all: Vec<String> = acknowledged.iter().cloned().chain(["erin@example.com".to_owned()]).collect();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (on_a, on_b) = (restricted_on(&a), restricted_on(&b));
            let index = members_of_the_index(&cluster);
            all.iter().all(|x| on_a.contains(x) && on_b.contains(x) && index.contains(x))
        }),
        "restrictions made while a master was down were not reconciled:\nA {:?}\nB {:?}\nredis {:?}",
        restricted_on(&a),
        restricted_on(&b),
        members_of_the_index(&cluster)
    );
    // Both subscribed anew, on another node.
    let others = |i: &usize| *i != master;
    assert!(
        wait_until(Duration::from_secs(5), || {
            (0..cluster.nodes.len()).filter(others).map(|i| subscribers(&cluster.nodes[i])).sum::<i64>() == 2
        }),
        "the filter nodes did not subscribe again"
    );
    // And the link serves as before: a new restriction is shared within 1 s.
    assert_eq!(rt.block_on(send(b.milter_port, "gina@example.com", LIMIT + 1)), b"cccccy");
    refuses_within_a_second(&a, "gina@example.com");
    // The killed node comes back as a replica; the cluster stays whole.
    cluster.nodes[master].restart();
    assert!(cluster.wait_ok(Duration::from_secs(30)), "the old master did not rejoin");
}

/// Slots move from one master to another while both nodes send: every message is decided, and
/// the shared counters and restrictions keep working after the move (the client follows MOVED
/// and ASK).
#[test]
fn a_reshard_during_load_keeps_the_counters_shared() {
    let cluster = RedisCluster::start();
    let (a, b) = two_nodes(&cluster.url(), LIMIT);
    let stop = Arc::new(AtomicBool::new(false));
    let load = load((a.milter_port, b.milter_port), "move", 10, stop.clone());
    let from = cluster.a_master();
    let to = (0..cluster.nodes.len())
        .find(|&i| {
            i != from && common::redis::query_text(&cluster.nodes[i], &["INFO", "replication"]).contains("role:master")
        })
        .expect("a second master");
    let out = cluster.reshard(from, to, 1000);
    assert!(out.status.success(), "reshard: {}", String::from_utf8_lossy(&out.stdout));
    stop.store(true, Ordering::Release);
    let moved = load.join().expect("load thread: a message was not decided during the reshard");
    assert!(cluster.wait_ok(Duration::from_secs(30)));
    // After the move: quota spent on A counts on B for accounts all over the slots.
    let rt = runtime();
    for i in 0..6 {
        let account = format!("after{i}@example.com");
        assert_eq!(rt.block_on(send(a.milter_port, &account, 3)), b"cccc");
        assert!(wait_until(Duration::from_secs(5), || exists(&cluster, &format!("og:{{{account}}}:tat"))));
        assert_eq!(rt.block_on(send(b.milter_port, &account, 2)), b"ccy", "{account}");
    }
    // Restrictions made during the move are on both nodes.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let (on_a, on_b) = (restricted_on(&a), restricted_on(&b));
            moved.iter().all(|x| on_a.contains(x) && on_b.contains(x))
        }),
        "restrictions made during the reshard are missing on a node"
    );
}
