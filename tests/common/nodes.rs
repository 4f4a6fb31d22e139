//! Filter nodes sharing state through Redis, as the cluster tests start and question them: the
//! configuration of a node, the accounts it holds restricted, and the check that a restriction
//! made elsewhere reached it.

use std::time::Duration;

use super::binary::GuardProcess;
use super::mta::{runtime, send};
use super::redis::wait_until;

/// A node named `name` on `redis_url` with a limit of `limit` external recipients per hour;
/// `block` keeps a restriction until it is released.
pub fn node_config(name: &str, redis_url: &str, limit: usize) -> String {
    format!(
        "[organization]\nlocal_domains = [\"example.com\"]\n\
         [state]\nbackend = \"redis\"\nredis_url = \"{redis_url}\"\n\
         [notify]\nnode_name = \"{name}\"\n\
         [policy.default]\nrecipient_limit_external_per_hour = {limit}\naction_when_threshold_reached = \"block\"\n"
    )
}

/// Two nodes, `node-a` and `node-b`, on the Redis at `redis_url`, each limited to `limit`.
pub fn two_nodes(redis_url: &str, limit: usize) -> (GuardProcess, GuardProcess) {
    let a = GuardProcess::start("", &node_config("node-a", redis_url, limit));
    let b = GuardProcess::start("", &node_config("node-b", redis_url, limit));
    (a, b)
}

/// Accounts `g` holds restricted now.
pub fn restricted_on(g: &GuardProcess) -> Vec<String> {
    let out = g.cli(&["restricted", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list["restricted"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["account"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// A restriction made elsewhere reaches `g` within 1 s (docs/cluster.md, "What each node does"),
/// and `g` then refuses the account at MAIL FROM.
pub fn refuses_within_a_second(g: &GuardProcess, account: &str) {
    assert!(
        wait_until(Duration::from_secs(1), || restricted_on(g).contains(&account.to_owned())),
        "{account}: the restriction did not reach the node within 1 s"
    );
    assert_eq!(runtime().block_on(send(g.milter_port, account, 1)), b"y", "{account} not refused");
}
