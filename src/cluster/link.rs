//! The link to Redis: connect (asking the sentinels first, if any), subscribe, reconcile, then
//! apply broadcast events and watch the connection's health until it fails; reconnect with
//! backoff. Also the two background writers: restriction events and counter commits.
//!
//! Transitions (reachable / unreachable) are logged once each, not per message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, RedisError};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

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
async fn client_of(target: &RedisTarget) -> redis::RedisResult<redis::Client> {
    match target {
        RedisTarget::Direct(c) => Ok(c.clone()),
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

async fn connect(
    cluster: &Cluster,
    target: &RedisTarget,
) -> Result<(MultiplexedConnection, redis::aio::PubSub), ClusterError> {
    let limit = cluster.request_timeout;
    let client = within(limit, async { Ok(client_of(target).await?) }).await?;
    let config = AsyncConnectionConfig::new().set_connection_timeout(Some(limit)).set_response_timeout(Some(limit));
    let mut conn =
        within(limit, async { Ok(client.get_multiplexed_async_connection_with_config(&config).await?) }).await?;
    let mut pubsub = within(limit, async { Ok(client.get_async_pubsub().await?) }).await?;
    // Subscribed before the pull of reconciliation, so no event falls between the two.
    within(limit, async { Ok(pubsub.subscribe(keys::CHANNEL).await?) }).await?;
    for script in scripts::all() {
        within(limit, async { Ok(script.load_async(&mut conn).await.map(drop)?) }).await?;
    }
    Ok((conn, pubsub))
}

/// Applies broadcast events until the subscription ends, a health check fails or shutdown.
async fn serve(
    cluster: &Cluster,
    mut conn: MultiplexedConnection,
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
                if let Err(e) = ping(cluster, &mut conn).await {
                    return e.to_string();
                }
            }
            _ = cluster.trouble.notified() => {
                if let Err(e) = ping(cluster, &mut conn).await {
                    return e.to_string();
                }
            }
            _ = shutdown.changed() => return "shutdown".into(),
        }
    }
}

async fn ping(cluster: &Cluster, conn: &mut MultiplexedConnection) -> Result<(), ClusterError> {
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
async fn reconcile(cluster: &Cluster, mut conn: MultiplexedConnection) -> Result<Reconciled, RedisError> {
    let accounts: Vec<String> = redis::cmd("SMEMBERS").arg(keys::ACCOUNTS).query_async(&mut conn).await?;
    let mut remote: HashMap<String, (i64, String)> = HashMap::with_capacity(accounts.len());
    let mut applied = 0;
    for chunk in accounts.chunks(RECONCILE_BATCH) {
        let mut pipe = redis::pipe();
        for account in chunk {
            pipe.cmd("HGET").arg(keys::event(account)).arg("data");
        }
        let found: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
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
        let mut pipe = redis::pipe();
        for event in chunk {
            add_publish(&mut pipe, event, cluster.clock.now().nanos());
        }
        let stored: Vec<i64> = query_scripted(&mut pipe, &mut conn).await?;
        pushed += stored.iter().filter(|&&s| s == 1).count();
    }
    let mut counters = 0;
    if let Some(engine) = cluster.engine() {
        let now_us = cluster.clock.now().nanos() / 1000;
        for chunk in engine.tats_in_use().chunks(RECONCILE_BATCH) {
            let mut pipe = redis::pipe();
            for (account, tats) in chunk {
                let cmd =
                    pipe.cmd("EVALSHA").arg(scripts::RAISE.get_hash()).arg(1).arg(keys::tats(account)).arg(now_us);
                for (field, tat) in keys::TAT_FIELDS.iter().zip(tats) {
                    cmd.arg(*field).arg(tat / 1000);
                }
                pipe.ignore();
            }
            let () = query_scripted(&mut pipe, &mut conn).await?;
            counters += chunk.len();
        }
    }
    Ok(Reconciled { applied, pushed, counters })
}

/// Adds the "store if newer, then publish" of `event` (and its index entry) to a pipeline;
/// the pipeline's reply has one value for it (1 stored, 0 not newer).
fn add_publish(pipe: &mut redis::Pipeline, event: &ClusterEvent, now_nanos: u64) {
    let now_ms = (now_nanos / 1_000_000) as i64;
    let ttl_ms = match &event.change {
        Change::Release { .. } => RELEASE_TTL_MS,
        Change::Restrict { restriction } => match restriction.until {
            Some(until) => ((until.unix_timestamp() * 1000) - now_ms).max(1) + RESTRICT_GRACE_MS,
            None => 0,
        },
    };
    pipe.cmd("EVALSHA")
        .arg(scripts::PUBLISH.get_hash())
        .arg(1)
        .arg(keys::event(&event.account))
        .arg(event.at_ms)
        .arg(&event.node)
        .arg(event.encode())
        .arg(keys::CHANNEL)
        .arg(ttl_ms);
    pipe.cmd("SADD").arg(keys::ACCOUNTS).arg(&event.account).ignore();
}

/// Runs a pipeline of script calls; when Redis lost the scripts (restarted, flushed), loads
/// them and runs it once more.
async fn query_scripted<T: redis::FromRedisValue>(
    pipe: &mut redis::Pipeline,
    conn: &mut MultiplexedConnection,
) -> Result<T, RedisError> {
    match pipe.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            for script in scripts::all() {
                script.load_async(conn).await?;
            }
            pipe.query_async(conn).await
        }
        other => other,
    }
}

/// Sends this node's restriction events in order; an event that lost against a newer one in
/// Redis is followed by applying that newer one.
pub(super) async fn push_events(cluster: Arc<Cluster>, mut rx: mpsc::UnboundedReceiver<(u64, ClusterEvent)>) {
    while let Some((seq, event)) = rx.recv().await {
        if let Some(conn) = cluster.conn.load_full() {
            let mut conn = (*conn).clone();
            let mut pipe = redis::pipe();
            add_publish(&mut pipe, &event, cluster.clock.now().nanos());
            pipe.cmd("HGET").arg(keys::event(&event.account)).arg("data");
            let sent: Result<Result<(i64, Option<String>), _>, _> =
                tokio::time::timeout(cluster.request_timeout, query_scripted(&mut pipe, &mut conn)).await;
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
                    cluster.trouble.notify_one();
                }
                Err(_) => {
                    warn!(account = %event.account, "redis did not take a restriction event in time (it is pushed when redis is back)");
                    cluster.metrics.redis_error("publish");
                    cluster.trouble.notify_one();
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
            let mut pipe = redis::pipe();
            for c in &batch {
                let cmd = pipe.cmd("EVALSHA").arg(scripts::COMMIT.get_hash()).arg(1).arg(&c.key).arg(c.now_us);
                for (field, n, interval) in &c.spent {
                    cmd.arg(*field).arg(*n).arg(*interval);
                }
                pipe.ignore();
            }
            let sent: Result<Result<(), _>, _> =
                tokio::time::timeout(cluster.request_timeout, query_scripted(&mut pipe, &mut conn)).await;
            if !matches!(sent, Ok(Ok(()))) {
                debug!(messages = batch.len(), "counter commits not sent; pushed at the next reconciliation");
                cluster.metrics.redis_error("commit");
                cluster.trouble.notify_one();
            }
        }
        batch.clear();
    }
}
