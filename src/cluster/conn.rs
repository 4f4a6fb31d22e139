//! The connection to Redis, one server or a Redis Cluster, and the batches sent over it.
//!
//! A Redis Cluster refuses a pipeline whose keys are in more than one slot, so what the link
//! sends for many accounts at once is a [`Batch`] of groups, each group the commands of one
//! slot (one account's hash-tagged keys, or one global key). Over one server the batch is one
//! pipeline, as before; over a cluster each group is its own pipeline, all sent at once (the
//! cluster client routes each to its slot's master, following MOVED and ASK).

use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::scripts;

/// A connection of either kind; an enum rather than a boxed trait object, so a single
/// server's requests cost what they cost before clusters were supported.
#[derive(Clone)]
pub(super) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Loads every script. On a cluster `SCRIPT LOAD` goes to every node (replicas too, so a
    /// promoted replica has them).
    pub(super) async fn load_scripts(&mut self) -> RedisResult<()> {
        for script in scripts::all() {
            script.load_async(self).await?;
        }
        Ok(())
    }

    /// Loads every script on the master of `key`'s slot only: after a failover or a reshard
    /// that node may lack them, while another node may be unreachable.
    async fn load_scripts_for(&mut self, key: &str) -> RedisResult<()> {
        let Conn::Cluster(c) = self else { return self.load_scripts().await };
        let route =
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master)));
        for source in scripts::SOURCES {
            c.route_command(redis::cmd("SCRIPT").arg("LOAD").arg(source).clone(), route.clone()).await?;
        }
        Ok(())
    }
}

/// Commands in groups of one slot each; the reply is the kept commands' replies in order.
#[derive(Default)]
pub(super) struct Batch {
    cmds: Vec<(Cmd, bool)>,
    /// (first command, a key of the group's slot) per group.
    groups: Vec<(usize, String)>,
}

impl Batch {
    /// Starts a group: the commands added next touch `key`'s slot only.
    pub(super) fn group(&mut self, key: impl Into<String>) -> &mut Self {
        self.groups.push((self.cmds.len(), key.into()));
        self
    }

    /// Adds a command whose reply is part of the batch's reply.
    pub(super) fn keep(&mut self, cmd: Cmd) -> &mut Self {
        debug_assert!(!self.groups.is_empty(), "a command outside any group");
        self.cmds.push((cmd, true));
        self
    }

    /// Adds a command whose reply is dropped.
    pub(super) fn ignore(&mut self, cmd: Cmd) -> &mut Self {
        debug_assert!(!self.groups.is_empty(), "a command outside any group");
        self.cmds.push((cmd, false));
        self
    }

    /// Sends the batch. When Redis lost the scripts (restarted, flushed, a replica promoted),
    /// they are loaded and what failed is sent once more — over a cluster only the groups that
    /// failed, so that no other group's script runs twice.
    pub(super) async fn query<T: FromRedisValue>(self, conn: &mut Conn) -> RedisResult<T> {
        match conn {
            Conn::Single(_) => {
                let pipe = pipeline(self.cmds);
                match pipe.query_async(conn).await {
                    Err(e) if no_script(&e) => {
                        conn.load_scripts().await?;
                        pipe.query_async(conn).await
                    }
                    other => other,
                }
            }
            Conn::Cluster(_) => {
                let ends: Vec<usize> =
                    self.groups.iter().skip(1).map(|(start, _)| *start).chain([self.cmds.len()]).collect();
                let mut cmds = self.cmds.into_iter();
                let sent = self.groups.into_iter().zip(ends).map(|((start, key), end)| {
                    let pipe = pipeline(cmds.by_ref().take(end - start));
                    let mut conn = conn.clone();
                    async move {
                        match pipe.query_async::<Vec<Value>>(&mut conn).await {
                            Err(e) if no_script(&e) => {
                                conn.load_scripts_for(&key).await?;
                                pipe.query_async::<Vec<Value>>(&mut conn).await
                            }
                            other => other,
                        }
                    }
                });
                let replies: Vec<Value> = try_join_all(sent).await?.into_iter().flatten().collect();
                T::from_redis_value(Value::Array(replies)).map_err(RedisError::from)
            }
        }
    }
}

/// Commands as one pipeline.
fn pipeline(cmds: impl IntoIterator<Item = (Cmd, bool)>) -> Pipeline {
    let mut pipe = redis::pipe();
    for (cmd, keep) in cmds {
        pipe.add_command(cmd);
        if !keep {
            pipe.ignore();
        }
    }
    pipe
}

fn no_script(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}
