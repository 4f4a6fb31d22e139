//! The link to Redis: connect (asking the sentinels first, if any), subscribe, reconcile, then
//! apply broadcast events and watch the connection's health until it fails; reconnect with
//! backoff. Also the two background writers: restriction events and counter commits.
//!
//! On a Redis Cluster the subscription is made on one node (a `PUBLISH` reaches every node of
//! a cluster): the first seed of the URL that answers. When that node fails the subscription
//! ends, which is a lost link like any other: reconnect (to another seed), subscribe, reconcile.
//! The health check's `PING` goes to every master, so a master that fails takes the link down
//! too, and the reconciliation after its failover pushes what was decided meanwhile.
//!
//! Transitions (reachable / unreachable) are logged once each, not per message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::cluster::ClusterClientBuilder;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, RedisError};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::conn::{Batch, Conn};
use super::events::{self, Change, ClusterEvent};
use super::{Cluster, ClusterError, Commit, keys, scripts};
use crate::config::RedisTarget;

/// First wait after a failed connection; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a connected link checks that Redis still answers.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// Commits sent in one pipeline at most.
const COMMIT_BATCH: usize = 512;
/// Keys read or written in one pipeline during reconciliation.
const RECONCILE_BATCH: usize = 256;
/// A reconciliation in place (while connected) takes at most this long, or the link is
/// taken down and reconnects.
const RECONCILE_LIMIT: Duration = Duration::from_secs(30);
/// A release is kept in Redis this long (a node apart for longer restarts from its own journal).
const RELEASE_TTL_MS: i64 = 30 * 86_400_000;
/// A restriction with an end is kept a day past it.
const RESTRICT_GRACE_MS: i64 = 86_400_000;

/// Runs the link until `shutdown`.
pub(super) async fn supervise(cluster: Arc<Cluster>, target: RedisTarget, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = BACKOFF_MIN;
    // Whether "unreachable" was already said since the link was last up.
    let mut said_down = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let attempt = connect(&cluster, &target).await;
        if attempt.is_err() {
            cluster.attempted.send_replace(true);
        }
        match attempt {
            Ok((conn, pubsub)) => {
                cluster.conn.store(Some(Arc::new(conn.clone())));
                // This reconciliation pushes what failed writes carried until now.
                cluster.unsent.store(false, std::sync::atomic::Ordering::Release);
                match reconcile(&cluster, conn.clone()).await {
                    Ok(r) => {
                        backoff = BACKOFF_MIN;
                        cluster.set_up(true);
                        cluster.attempted.send_replace(true);
                        info!(
                            redis = ?target,
                            node = %cluster.node,
                            applied = r.applied,
                            pushed = r.pushed,
                            counters = r.counters,
                            "redis reachable: shared counters and restrictions in use"
                        );
                        let why = serve(&cluster, conn, pubsub, &mut shutdown).await;
                        cluster.set_up(false);
                        if *shutdown.borrow() {
                            return;
                        }
                        warn!(redis = ?target, "redis unreachable ({why}): deciding on this node's local view until it is back");
                        said_down = true;
                    }
                    Err(e) => {
                        cluster.set_up(false);
                        cluster.attempted.send_replace(true);
                        cluster.metrics.redis_error("reconcile");
                        warn!(redis = ?target, "redis reconciliation failed: {e}; retrying");
                    }
                }
            }
            Err(e) => {
                cluster.set_up(false);
                if !said_down {
                    warn!(redis = ?target, "redis unreachable ({e}): deciding on this node's local view until it is back");
                    said_down = true;
                } else {
                    debug!("redis still unreachable: {e}");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// `f`, given at most `limit`.
async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(limit, f).await.map_err(|_| ClusterError::Timeout(limit))?
}

/// A client of the server to use now: the configured one, or for Sentinel the current master,
/// asked of the sentinels at every (re)connection so that a failover is one reconnection.
/// (Not called for a cluster.)
async fn client_of(target: &RedisTarget) -> redis::RedisResult<redis::Client> {
    match target {
        RedisTarget::Direct(c) => Ok(c.clone()),
        RedisTarget::Cluster { nodes, .. } => redis::Client::open(nodes[0].as_str()),
        RedisTarget::Sentinel { sentinels, service, node } => {
            let mut sentinel = SentinelClient::build(
                sentinels.clone(),
                service.clone(),
                Some(node.clone()),
                SentinelServerType::Master,
            )?;
            sentinel.async_get_client().await
        }
    }
}

async fn connect(cluster: &Cluster, target: &RedisTarget) -> Result<(Conn, redis::aio::PubSub), ClusterError> {
    if let RedisTarget::Cluster { nodes, .. } = target {
        return connect_cluster(cluster, nodes).await;
    }
    let limit = cluster.request_timeout;
    let client = within(limit, async { Ok(client_of(target).await?) }).await?;
    let config = AsyncConnectionConfig::new().set_connection_timeout(Some(limit)).set_response_timeout(Some(limit));
    let mut conn = Conn::Single(
        within(limit, async { Ok(client.get_multiplexed_async_connection_with_config(&config).await?) }).await?,
    );
    let pubsub = subscribe(&client, limit).await?;
    within(limit, async { Ok(conn.load_scripts().await?) }).await?;
    Ok((conn, pubsub))
}

/// A pub/sub connection subscribed to the events. Subscribed before the pull of
/// reconciliation, so no event falls between the two.
async fn subscribe(client: &redis::Client, limit: Duration) -> Result<redis::aio::PubSub, ClusterError> {
    let mut pubsub = within(limit, async { Ok(client.get_async_pubsub().await?) }).await?;
    within(limit, async { Ok(pubsub.subscribe(keys::CHANNEL).await?) }).await?;
    Ok(pubsub)
}

/// A cluster connection (the client follows MOVED, ASK and the new map after a failover) and
/// the subscription on the first seed that takes it.
async fn connect_cluster(cluster: &Cluster, nodes: &[String]) -> Result<(Conn, redis::aio::PubSub), ClusterError> {
    let limit = cluster.request_timeout;
    let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(limit)
        .response_timeout(limit)
        .build()?;
    let mut conn = Conn::Cluster(within(limit, async { Ok(client.get_async_connection().await?) }).await?);
    let mut pubsub = Err(ClusterError::Down);
    for node in nodes {
        pubsub = subscribe(&redis::Client::open(node.as_str())?, limit).await;
        if pubsub.is_ok() {
            break;
        }
    }
    let pubsub = pubsub?;
    // Best effort: `SCRIPT LOAD` goes to every node, and a replica that is down must not keep
    // the link down; a master without the scripts is given them at its first NOSCRIPT.
    if let Err(e) = within(limit, async { Ok(conn.load_scripts().await?) }).await {
        debug!("scripts not loaded on every cluster node: {e}");
    }
    Ok((conn, pubsub))
}

/// Applies broadcast events until the subscription ends, a health check fails or shutdown.
async fn serve(
    cluster: &Cluster,
    mut conn: Conn,
    pubsub: redis::aio::PubSub,
    shutdown: &mut watch::Receiver<bool>,
) -> String {
    let mut messages = pubsub.into_on_message();
    let mut health = tokio::time::interval(HEALTH_EVERY);
    health.tick().await;
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(m) => match m.get_payload::<String>() {
                    Ok(text) => {
                        if let Some(event) = events::decode(&text) {
                            cluster.apply_remote(event);
                        }
                    }
                    Err(e) => debug!("unreadable broadcast: {e}"),
                },
                None => return "the subscription connection closed".into(),
            },
            _ = health.tick() => {
                cluster.prune_reads();
                if let Err(e) = check(cluster, &mut conn).await {
                    return e;
                }
            }
            _ = cluster.trouble.notified() => {
                if let Err(e) = check(cluster, &mut conn).await {
                    return e;
                }
            }
            _ = shutdown.changed() => return "shutdown".into(),
        }
    }
}

/// Whether the link still works: a `PING`, then, if a write failed meanwhile while the
/// connection stayed (a cluster's shard failed over between two checks, say), a reconciliation
/// in place, which pushes what the failed writes carried.
async fn check(cluster: &Cluster, conn: &mut Conn) -> Result<(), String> {
    ping(cluster, conn).await.map_err(|e| e.to_string())?;
    if cluster.unsent.swap(false, std::sync::atomic::Ordering::AcqRel) {
        match within(RECONCILE_LIMIT, async { Ok(reconcile(cluster, conn.clone()).await?) }).await {
            Ok(r) => {
                info!(pushed = r.pushed, counters = r.counters, "redis writes had failed: reconciled");
            }
            Err(e) => {
                cluster.unsent.store(true, std::sync::atomic::Ordering::Release);
                cluster.metrics.redis_error("reconcile");
                return Err(format!("reconciliation after failed writes: {e}"));
            }
        }
    }
    Ok(())
}

/// `PING`; on a cluster the client sends it to every master and wants every answer.
async fn ping(cluster: &Cluster, conn: &mut Conn) -> Result<(), ClusterError> {
    let limit = cluster.request_timeout;
    let pong: redis::RedisResult<String> = tokio::time::timeout(limit, redis::cmd("PING").query_async(conn))
        .await
        .map_err(|_| ClusterError::Timeout(limit))?;
    pong.map(drop).map_err(|e| {
        cluster.metrics.redis_error("ping");
        ClusterError::from(e)
    })
}

/// What a reconciliation did.
struct Reconciled {
    applied: usize,
    pushed: usize,
    counters: usize,
}

/// Both ways, newest event wins; then the shared TATs are raised to the local ones.
async fn reconcile(cluster: &Cluster, mut conn: Conn) -> Result<Reconciled, RedisError> {
    let accounts: Vec<String> = redis::cmd("SMEMBERS").arg(keys::ACCOUNTS).query_async(&mut conn).await?;
    let mut remote: HashMap<String, (i64, String)> = HashMap::with_capacity(accounts.len());
    let mut applied = 0;
    for chunk in accounts.chunks(RECONCILE_BATCH) {
        let mut batch = Batch::default();
        for account in chunk {
            let key = keys::event(account);
            batch.group(key.clone()).keep(redis::cmd("HGET").arg(key).arg("data").clone());
        }
        let found: Vec<Option<String>> = batch.query(&mut conn).await?;
        for event in found.into_iter().flatten().filter_map(|d| events::decode(&d)) {
            remote.insert(event.account.clone(), (event.at_ms, event.node.clone()));
            if cluster.apply_remote(event) {
                applied += 1;
            }
        }
    }
    let newer: Vec<ClusterEvent> = cluster
        .known
        .iter()
        .filter(|e| e.at_ms > i64::MIN)
        .filter(|e| remote.get(&e.account).is_none_or(|(at, node)| e.stamp() > (*at, node.as_str())))
        .map(|e| e.value().clone())
        .collect();
    let mut pushed = 0;
    for chunk in newer.chunks(RECONCILE_BATCH) {
        let mut batch = Batch::default();
        for event in chunk {
            add_publish(&mut batch, event, cluster.clock.now().nanos());
        }
        add_index(&mut batch, chunk.iter().map(|e| e.account.as_str()));
        let stored: Vec<i64> = batch.query(&mut conn).await?;
        pushed += stored.iter().filter(|&&s| s == 1).count();
    }
    let mut counters = 0;
    if let Some(engine) = cluster.engine() {
        let now_us = cluster.clock.now().nanos() / 1000;
        for chunk in engine.tats_in_use().chunks(RECONCILE_BATCH) {
            let mut batch = Batch::default();
            for (account, tats) in chunk {
                let key = keys::tats(account);
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(scripts::RAISE.get_hash()).arg(1).arg(&key).arg(now_us);
                for (field, tat) in keys::TAT_FIELDS.iter().zip(tats) {
                    cmd.arg(*field).arg(tat / 1000);
                }
                batch.group(key).ignore(cmd);
            }
            let () = batch.query(&mut conn).await?;
            counters += chunk.len();
        }
    }
    Ok(Reconciled { applied, pushed, counters })
}

/// Adds the "store if newer, then publish" of `event` to a batch, as a group of the account's
/// slot that further commands of the account may join; the batch's reply has one value for it
/// (1 stored, 0 not newer). The index entry is [`add_index`]'s, in a group of its own.
fn add_publish(batch: &mut Batch, event: &ClusterEvent, now_nanos: u64) {
    let now_ms = (now_nanos / 1_000_000) as i64;
    let ttl_ms = match &event.change {
        Change::Release { .. } => RELEASE_TTL_MS,
        Change::Restrict { restriction } => match restriction.until {
            Some(until) => ((until.unix_timestamp() * 1000) - now_ms).max(1) + RESTRICT_GRACE_MS,
            None => 0,
        },
    };
    let key = keys::event(&event.account);
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(scripts::PUBLISH.get_hash())
        .arg(1)
        .arg(&key)
        .arg(event.at_ms)
        .arg(&event.node)
        .arg(event.encode())
        .arg(keys::CHANNEL)
        .arg(ttl_ms);
    batch.group(key).keep(cmd);
}

/// Adds accounts to the index of accounts with an event (one key, so one slot of its own).
fn add_index<'a>(batch: &mut Batch, accounts: impl Iterator<Item = &'a str>) {
    let mut cmd = redis::cmd("SADD");
    cmd.arg(keys::ACCOUNTS);
    for account in accounts {
        cmd.arg(account);
    }
    batch.group(keys::ACCOUNTS).ignore(cmd);
}

/// Sends this node's restriction events in order; an event that lost against a newer one in
/// Redis is followed by applying that newer one.
pub(super) async fn push_events(cluster: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<(u64, ClusterEvent)>) {
    while let Some((seq, event)) = rx.recv().await {
        if let Some(conn) = cluster.conn.load_full() {
            let mut conn = (*conn).clone();
            let mut batch = Batch::default();
            add_publish(&mut batch, &event, cluster.clock.now().nanos());
            batch.keep(redis::cmd("HGET").arg(keys::event(&event.account)).arg("data").clone());
            add_index(&mut batch, [event.account.as_str()].into_iter());
            let sent: Result<Result<(i64, Option<String>), _>, _> =
                tokio::time::timeout(cluster.request_timeout, batch.query(&mut conn)).await;
            match sent {
                Ok(Ok((1, _))) => {}
                Ok(Ok((_, current))) => {
                    if let Some(newer) = current.and_then(|d| events::decode(&d)) {
                        cluster.apply_remote(newer);
                    }
                }
                Ok(Err(e)) => {
                    warn!(account = %event.account, "cannot share a restriction event now (it is pushed when redis is back): {e}");
                    cluster.metrics.redis_error("publish");
                    cluster.write_failed();
                }
                Err(_) => {
                    warn!(account = %event.account, "redis did not take a restriction event in time (it is pushed when redis is back)");
                    cluster.metrics.redis_error("publish");
                    cluster.write_failed();
                }
            }
        }
        // Unsent events stay in `known`: the next reconciliation pushes them.
        cluster.pushed.send_replace(seq);
    }
}

/// Sends counter commits, many messages per pipeline, never holding up the milter.
pub(super) async fn commit_counters(cluster: Arc<Cluster>, mut rx: mpsc::Receiver<Commit>) {
    let mut batch: Vec<Commit> = Vec::with_capacity(COMMIT_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < COMMIT_BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        // Without a link the local records keep these recipients; reconciliation pushes them.
        if let Some(conn) = cluster.conn.load_full() {
            let mut conn = (*conn).clone();
            let mut scripted = Batch::default();
            for c in &batch {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(scripts::COMMIT.get_hash()).arg(1).arg(&c.key).arg(c.now_us);
                for (field, n, interval) in &c.spent {
                    cmd.arg(*field).arg(*n).arg(*interval);
                }
                scripted.group(c.key.as_str()).ignore(cmd);
            }
            let sent: Result<Result<(), _>, _> =
                tokio::time::timeout(cluster.request_timeout, scripted.query(&mut conn)).await;
            if !matches!(sent, Ok(Ok(()))) {
                debug!(messages = batch.len(), "counter commits not sent; pushed at the next reconciliation");
                cluster.metrics.redis_error("commit");
                cluster.write_failed();
            }
        }
        batch.clear();
    }
}
