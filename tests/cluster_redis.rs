//! Cluster mode against real `redis-server` processes: two `outbound-guard` processes share one
//! Redis. Quota spent on one node counts on the other; a restriction on one refuses on the
//! other within 1 s; a release on one holds on the other for the very next transaction; Redis
//! killed in the middle of load and started again empty — both nodes keep serving, reconcile,
//! and no acknowledged restriction or release is lost.
#![cfg(feature = "real-peers")]

mod common;

use std::time::Duration;

use common::binary::GuardProcess;
use common::mta::{runtime, send, send_local};
use common::nodes::{node_config, refuses_within_a_second, restricted_on, two_nodes};
use common::process::free_port;
use common::redis::{RedisServer, wait_until};

/// External recipients per hour; `block` keeps a restriction until it is released.
const LIMIT: usize = 4;

fn shared_tat_exists(redis: &RedisServer, account: &str) -> bool {
    let mut conn = redis.connection();
    ::redis::cmd("EXISTS").arg(format!("og:{{{account}}}:tat")).query::<i64>(&mut conn).unwrap_or(0) == 1
}

#[test]
fn quota_spent_on_one_node_counts_on_the_other() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis.url(), LIMIT);
    let rt = runtime();
    assert_eq!(rt.block_on(send(a.milter_port, "alice@example.com", 3)), b"cccc");
    // A's commit is sent in the background once its transaction ended.
    assert!(wait_until(Duration::from_secs(5), || shared_tat_exists(&redis, "alice@example.com")));
    // One recipient is left of the 4 on B, then the limit is reached.
    assert_eq!(rt.block_on(send(b.milter_port, "alice@example.com", 2)), b"ccy");
    // And back: B's restriction holds on A.
    refuses_within_a_second(&a, "alice@example.com");
    // A node without Redis alone would have allowed 4 more: the memory view is per node.
    let (status, log) = a.terminate();
    assert!(status.success());
    assert!(log.contains("redis reachable"), "{log}");
}

/// Recipients of a message that was not delivered are never shared: only a delivered
/// message's recipients are committed to Redis.
#[test]
fn an_aborted_message_spends_nothing_on_the_other_node() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis.url(), LIMIT);
    let rt = runtime();
    rt.block_on(async {
        use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
        let mut c = MtaClient::connect(([127, 0, 0, 1], a.milter_port).into()).await.unwrap();
        c.negotiate(POSTFIX_OFFER).await.unwrap();
        c.macros(b'M', &[("{auth_authen}", "ivy@example.com")]).await.unwrap();
        assert_eq!(c.mail_from("<ivy@example.com>", &[]).await.unwrap().kind(), Some(b'c'));
        for i in 0..3 {
            assert_eq!(c.rcpt_to(&format!("<r{i}@example.net>")).await.unwrap().kind(), Some(b'c'));
        }
        c.write(outbound_guard::milter::command::Command::Abort).await.unwrap();
        c.write(outbound_guard::milter::command::Command::Quit).await.unwrap();
    });
    // A delivered message of one recipient afterwards; once its commit is in Redis, B sees
    // exactly that one recipient spent (the aborted three would have been committed first).
    assert_eq!(rt.block_on(send(a.milter_port, "ivy@example.com", 1)), b"cc");
    assert!(wait_until(Duration::from_secs(5), || shared_tat_exists(&redis, "ivy@example.com")));
    // MAIL, then three of the four recipients left; the fourth reaches the limit.
    assert_eq!(rt.block_on(send(b.milter_port, "ivy@example.com", LIMIT)), b"ccccy");
}

/// The aggregate account of local submissions is one account across the cluster: a script on
/// each MTA host that changes its envelope sender for every message meets one shared limit.
#[test]
fn local_submissions_on_two_nodes_share_the_aggregate_limit() {
    let redis = RedisServer::start();
    let node = |name: &str| {
        let local_port = free_port();
        let g = GuardProcess::start(
            &format!("local_listen = \"inet:127.0.0.1:{local_port}\""),
            &node_config(name, &redis.url(), LIMIT),
        );
        (g, local_port)
    };
    let ((a, a_local), (b, b_local)) = (node("node-a"), node("node-b"));
    let rt = runtime();
    // Three of the four recipients on A, each sender new.
    assert_eq!(rt.block_on(send_local(a_local, "one@example.com", 3)), b"ccccc");
    assert!(wait_until(Duration::from_secs(5), || shared_tat_exists(&redis, "local-submissions")));
    // On B, another new sender: the fourth fits, the fifth reaches the shared limit, and the
    // message is refused whole at its end.
    assert_eq!(rt.block_on(send_local(b_local, "two@example.com", 2)), b"cccy");
    assert!(restricted_on(&b).contains(&"local-submissions".to_owned()), "{:?}", restricted_on(&b));
    // Whatever sender comes next, on either node, local submissions are refused at MAIL FROM.
    assert!(wait_until(Duration::from_secs(1), || restricted_on(&a).contains(&"local-submissions".to_owned())));
    assert_eq!(rt.block_on(send_local(a_local, "three@example.com", 1)), b"y");
}

/// A domain cap (README, "Domain caps") is one counter across the cluster, and the domain
/// restricted on one node is refused at MAIL FROM on the other.
#[test]
fn a_domain_cap_is_shared_by_two_nodes() {
    let redis = RedisServer::start();
    let cap = "[[policy.domain]]\ndomain = \"customer.example\"\nrecipient_limit_external_per_hour = 3\n\
               action = \"block\"\n";
    let a = GuardProcess::start("", &format!("{}{cap}", node_config("node-a", &redis.url(), LIMIT)));
    let b = GuardProcess::start("", &format!("{}{cap}", node_config("node-b", &redis.url(), LIMIT)));
    let rt = runtime();
    assert_eq!(rt.block_on(send(a.milter_port, "alice@customer.example", 2)), b"ccc");
    assert!(wait_until(Duration::from_secs(5), || shared_tat_exists(&redis, "@customer.example")));
    // Another account of the domain on B: one recipient left of the domain's 3.
    assert_eq!(rt.block_on(send(b.milter_port, "bob@customer.example", 2)), b"ccy");
    assert!(restricted_on(&b).contains(&"@customer.example".to_owned()), "{:?}", restricted_on(&b));
    assert!(wait_until(Duration::from_secs(1), || restricted_on(&a).contains(&"@customer.example".to_owned())));
    assert_eq!(rt.block_on(send(a.milter_port, "carol@eu.customer.example", 1)), b"y");
    // Released on A: B lets the domain's accounts send again at once.
    assert!(a.cli(&["restricted", "release", "@customer.example"]).status.success());
    assert_eq!(rt.block_on(send(b.milter_port, "carol@customer.example", 1)), b"cc");
}

#[test]
fn a_restriction_on_one_node_refuses_on_the_other_within_a_second() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis.url(), LIMIT);
    let rt = runtime();
    assert_eq!(rt.block_on(send(a.milter_port, "bob@example.com", LIMIT + 1)), b"cccccy");
    // The broadcast reaches B's local copy (what MAIL FROM reads) within 1 s.
    refuses_within_a_second(&b, "bob@example.com");

    // A manual restriction on B holds on A for the next transaction: the API answers once
    // the restriction is in Redis, where A's MAIL FROM reads it.
    assert!(b.cli(&["restricted", "add", "dora@example.com", "--reason", "phished"]).status.success());
    assert_eq!(rt.block_on(send(a.milter_port, "dora@example.com", 1)), b"y");
    // The audit trail on A says where it came from.
    let show: serde_json::Value =
        serde_json::from_slice(&a.cli(&["restricted", "show", "dora@example.com", "--json"]).stdout).unwrap();
    assert!(show["history"][0]["by"].as_str().unwrap().contains("node-b"), "{show}");
}

#[test]
fn a_release_on_one_node_holds_on_the_other_for_the_very_next_transaction() {
    let redis = RedisServer::start();
    let (a, b) = two_nodes(&redis.url(), LIMIT);
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

#[test]
fn redis_killed_mid_load_and_restarted_empty_loses_nothing_acknowledged() {
    let mut redis = RedisServer::start();
    let (a, b) = two_nodes(&redis.url(), LIMIT);
    let rt = runtime();
    // Before: one restriction made on A, known to both.
    assert_eq!(rt.block_on(send(a.milter_port, "erin@example.com", LIMIT + 1)), b"cccccy");
    refuses_within_a_second(&b, "erin@example.com");
    assert_eq!(rt.block_on(send(a.milter_port, "frank@example.com", LIMIT + 1)), b"cccccy");

    // Load on both nodes while Redis is killed: every account is restricted by its 5th recipient.
    let (pa, pb) = (a.milter_port, b.milter_port);
    let load = std::thread::spawn(move || {
        let rt = runtime();
        let mut acknowledged = Vec::new();
        for i in 0..40 {
            let account = format!("load{i}@example.com");
            let port = if i % 2 == 0 { pa } else { pb };
            let codes = rt.block_on(send(port, &account, LIMIT + 1));
            assert!(codes.iter().all(|c| b"cy".contains(c)), "{account}: {codes:?}");
            if codes.last() == Some(&b'y') {
                acknowledged.push(account);
            }
        }
        acknowledged
    });
    redis.kill();
    let acknowledged = load.join().expect("load thread");
    assert_eq!(acknowledged.len(), 40, "every node kept deciding without Redis");

    // Apart: both serve on their local view; a restriction on A, a release on B.
    assert_eq!(rt.block_on(send(a.milter_port, "gina@example.com", LIMIT + 1)), b"cccccy");
    let release = b.cli(&["restricted", "release", "erin@example.com"]);
    assert!(release.status.success(), "{}", String::from_utf8_lossy(&release.stderr));
    assert_eq!(rt.block_on(send(b.milter_port, "erin@example.com", 1)), b"cc");

    // Redis back, empty: the nodes reconnect (backoff at most 5 s) and reconcile.
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let on_b = restricted_on(&b);
            on_b.contains(&"gina@example.com".to_owned()) && !restricted_on(&a).contains(&"erin@example.com".to_owned())
        }),
        "A's restriction and B's release made while apart were not reconciled"
    );
    assert_eq!(rt.block_on(send(b.milter_port, "gina@example.com", 1)), b"y");
    assert_eq!(rt.block_on(send(a.milter_port, "erin@example.com", 1)), b"cc");
    for g in [&a, &b] {
        let list = restricted_on(g);
        for account in acknowledged.iter().chain([&"frank@example.com".to_owned()]) {
            assert!(list.contains(account), "{account} lost on a node: {list:?}");
        }
    }
    // Redis holds them all again, for a node that starts next.
    let mut conn = redis.connection();
    let members: Vec<String> = ::redis::cmd("SMEMBERS").arg("og:accounts").query(&mut conn).unwrap();
    for account in acknowledged
        .iter()
        .chain(["gina@example.com", "erin@example.com", "frank@example.com"].map(str::to_owned).iter())
    {
        assert!(members.contains(account), "{account} not in Redis after reconciliation");
    }
    let (status, log) = a.terminate();
    assert!(status.success());
    assert!(log.contains("redis unreachable"), "{log}");
    assert_eq!(log.matches("redis unreachable").count(), 1, "the transition is logged once:\n{log}");
}

/// Two nodes on `url` share a restriction (made on A, refused on B at once).
fn nodes_share_a_restriction(a: &GuardProcess, b: &GuardProcess, account: &str) {
    assert_eq!(runtime().block_on(send(a.milter_port, account, LIMIT + 1)), b"cccccy");
    refuses_within_a_second(b, account);
}

#[test]
fn a_password_in_the_url_is_used_and_a_wrong_one_leaves_the_node_deciding_alone() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", redis.port);
    let a = GuardProcess::start("", &node_config("node-a", &url, LIMIT));
    let b = GuardProcess::start("", &node_config("node-b", &url, LIMIT));
    nodes_share_a_restriction(&a, &b, "hugo@example.com");

    let wrong =
        GuardProcess::start("", &node_config("node-c", &format!("redis://:nope@127.0.0.1:{}/0", redis.port), LIMIT));
    let rt = runtime();
    // Not restricted in its own view, so it accepts: the documented leniency while apart.
    assert_eq!(rt.block_on(send(wrong.milter_port, "hugo@example.com", 1)), b"cc");
    let (status, log) = wrong.terminate();
    assert!(status.success());
    assert!(log.contains("redis unreachable"), "{log}");
    assert!(!log.contains("nope"), "the password must not be logged:\n{log}");
}

#[test]
fn rediss_urls_speak_tls_verified_against_the_system_roots() {
    let certs = tempfile::tempdir().unwrap();
    common::tls::test_ca_and_server(certs.path());
    let file = |name: &str| certs.path().join(name).to_str().unwrap().to_owned();
    let redis = RedisServer::start_with(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &file("server.pem"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("ca.pem"),
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    // rustls reads the roots from SSL_CERT_FILE when it is set: here, only the test CA.
    let ca = file("ca.pem");
    let env = [("SSL_CERT_FILE", ca.as_str())];
    let a = GuardProcess::start_with_env(common::process::free_port(), "", &node_config("node-a", &url, LIMIT), &env);
    let b = GuardProcess::start_with_env(common::process::free_port(), "", &node_config("node-b", &url, LIMIT), &env);
    nodes_share_a_restriction(&a, &b, "ines@example.com");

    // Without the CA among its roots, a node refuses the server's certificate.
    let untrusting = GuardProcess::start("", &node_config("node-c", &url, LIMIT));
    let (status, log) = untrusting.terminate();
    assert!(status.success());
    assert!(log.contains("redis unreachable"), "{log}");
    let (_, log) = a.terminate();
    assert!(log.contains("redis reachable"), "{log}");
}

#[test]
fn sentinel_urls_find_the_master() {
    let redis = RedisServer::start();
    let sentinel = RedisServer::sentinel(&redis, "outbound");
    let url = format!("redis+sentinel://127.0.0.1:{}/outbound/0", sentinel.port);
    let a = GuardProcess::start("", &node_config("node-a", &url, LIMIT));
    let b = GuardProcess::start("", &node_config("node-b", &url, LIMIT));
    nodes_share_a_restriction(&a, &b, "jon@example.com");
    // The events are in the master the sentinel names.
    let mut conn = redis.connection();
    let members: Vec<String> = ::redis::cmd("SMEMBERS").arg("og:accounts").query(&mut conn).unwrap();
    assert_eq!(members, ["jon@example.com"]);
}

#[test]
fn a_sentinel_failover_is_one_reconnection() {
    let mut master = RedisServer::start();
    let master_port = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port]);
    let replica_port = replica.port.to_string();
    let info = |server: &RedisServer| -> String {
        ::redis::cmd("INFO").arg("replication").query(&mut server.connection()).unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(10), || info(&replica).contains("master_link_status:up")),
        "replica not in sync"
    );
    let sentinel = RedisServer::sentinel(&master, "outbound");
    let sentinel_query = |args: &[&str]| -> Vec<String> {
        let mut c = sentinel.connection();
        let mut cmd = ::redis::cmd("SENTINEL");
        for a in args {
            cmd.arg(*a);
        }
        match cmd.query::<::redis::Value>(&mut c) {
            Ok(v) => flatten(v),
            Err(_) => Vec::new(),
        }
    };
    // The sentinel learns the replica from the master; only then can it fail over to it.
    assert!(
        wait_until(Duration::from_secs(15), || sentinel_query(&["REPLICAS", "outbound"]).contains(&replica_port)),
        "the sentinel did not find the replica"
    );

    let url = format!("redis+sentinel://127.0.0.1:{}/outbound/0", sentinel.port);
    let a = GuardProcess::start("", &node_config("node-a", &url, LIMIT));
    let b = GuardProcess::start("", &node_config("node-b", &url, LIMIT));
    nodes_share_a_restriction(&a, &b, "kim@example.com");

    master.kill();
    assert!(
        wait_until(Duration::from_secs(30), || {
            sentinel_query(&["GET-MASTER-ADDR-BY-NAME", "outbound"]).get(1) == Some(&replica_port)
        }),
        "the sentinel did not promote the replica"
    );
    // Each node notices the loss and reconnects to the master the sentinel now names.
    let reconnected = |g: &GuardProcess| g.log().matches("redis reachable").count() >= 2;
    assert!(
        wait_until(Duration::from_secs(30), || reconnected(&a) && reconnected(&b)),
        "the nodes did not reconnect after the failover:\n{}\n{}",
        a.log(),
        b.log()
    );
    nodes_share_a_restriction(&a, &b, "lea@example.com");
    // The restriction made before the failover was replicated and is still shared; the new
    // one is in the promoted master.
    refuses_within_a_second(&b, "kim@example.com");
    let members: Vec<String> = ::redis::cmd("SMEMBERS").arg("og:accounts").query(&mut replica.connection()).unwrap();
    assert!(members.contains(&"lea@example.com".to_owned()), "{members:?}");
}

/// The bulk strings of a (nested) reply, in order.
fn flatten(v: ::redis::Value) -> Vec<String> {
    match v {
        ::redis::Value::Array(items) => items.into_iter().flat_map(flatten).collect(),
        ::redis::Value::Map(pairs) => {
            pairs.into_iter().flat_map(|(k, v)| flatten(k).into_iter().chain(flatten(v))).collect()
        }
        ::redis::Value::BulkString(b) => vec![String::from_utf8_lossy(&b).into_owned()],
        ::redis::Value::SimpleString(s) => vec![s],
        ::redis::Value::Int(i) => vec![i.to_string()],
        _ => Vec::new(),
    }
}

/// An account restricted on one node may still write to its policy's
/// `always_allowed_recipients` through the other: MAIL FROM passes there (also once the
/// node has checked the shared state), the helpdesk is accepted, anyone else gets 5xx.
#[test]
fn a_restriction_from_another_node_still_lets_the_account_reach_the_helpdesk() {
    use outbound_guard::milter::client::{MtaClient, POSTFIX_OFFER};
    let redis = RedisServer::start();
    let config = |name: &str| {
        node_config(name, &redis.url(), LIMIT) + "always_allowed_recipients = [\"helpdesk@example.net\"]\n"
    };
    let a = GuardProcess::start("", &config("node-a"));
    let b = GuardProcess::start("", &config("node-b"));
    let rt = runtime();
    assert_eq!(rt.block_on(send(a.milter_port, "erin@example.com", LIMIT + 1)), b"cccccy");
    assert!(
        wait_until(Duration::from_secs(1), || restricted_on(&b).contains(&"erin@example.com".to_owned())),
        "the restriction did not reach node B within 1 s"
    );
    let codes = rt.block_on(async {
        let mut c = MtaClient::connect(([127, 0, 0, 1], b.milter_port).into()).await.unwrap();
        c.negotiate(POSTFIX_OFFER).await.unwrap();
        c.macros(b'M', &[("{auth_authen}", "erin@example.com")]).await.unwrap();
        let mut codes = vec![c.mail_from("<erin@example.com>", &[]).await.unwrap().kind().unwrap()];
        for to in ["<r0@example.net>", "<helpdesk@example.net>"] {
            codes.push(c.rcpt_to(to).await.unwrap().kind().unwrap());
        }
        codes.push(c.message(&[("Subject", "help")], b"x\r\n").await.unwrap().kind().unwrap());
        codes
    });
    assert_eq!(codes, b"cycc", "MAIL, another recipient, the helpdesk, end of message");
}
