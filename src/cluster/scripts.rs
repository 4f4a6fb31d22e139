//! The server-side scripts: each runs atomically in Redis and touches the keys of one account.
//! Lua numbers are doubles, so times are microseconds (exact up to 2^53 µs, year 2255).

use std::sync::LazyLock;

use redis::Script;

/// Adds a message's recipients: for each (field, n, interval) in ARGV after `now`,
/// `tat = max(tat, now) + n·interval`; the hash expires when every limit is replenished.
const COMMIT_LUA: &str = r"
local now = tonumber(ARGV[1])
local fields = {'e', 'i', 'd'}
local tats = redis.call('HMGET', KEYS[1], 'e', 'i', 'd')
local set = {}
for i = 2, #ARGV, 3 do
  for k = 1, 3 do
    if fields[k] == ARGV[i] then
      local cur = tonumber(tats[k] or '0')
      if cur < now then cur = now end
      tats[k] = cur + tonumber(ARGV[i + 1]) * tonumber(ARGV[i + 2])
      set[#set + 1] = ARGV[i]
      set[#set + 1] = string.format('%.0f', tats[k])
    end
  end
end
if #set > 0 then redis.call('HSET', KEYS[1], unpack(set)) end
local horizon = now
for k = 1, 3 do
  local t = tonumber(tats[k] or '0')
  if t > horizon then horizon = t end
end
redis.call('PEXPIRE', KEYS[1], math.floor((horizon - now) / 1000) + 1000)
return 1
";

pub static COMMIT: LazyLock<Script> = LazyLock::new(|| Script::new(COMMIT_LUA));

/// Raises TATs to at least the given values (field, tat pairs after `now`): what a node pushes
/// after being apart.
const RAISE_LUA: &str = r"
local now = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local new = tonumber(ARGV[i + 1])
  if new > cur then redis.call('HSET', KEYS[1], ARGV[i], string.format('%.0f', new)) end
end
local horizon = now
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local t = tonumber(v)
  if t > horizon then horizon = t end
end
redis.call('PEXPIRE', KEYS[1], math.floor((horizon - now) / 1000) + 1000)
return 1
";

pub static RAISE: LazyLock<Script> = LazyLock::new(|| Script::new(RAISE_LUA));

/// Stores an event if it is newer than the one stored (later `at`, or equal `at` and greater
/// node), then publishes it. The same event (equal stamp) is published again: a node pushes
/// an event Redis already has only when reconciliation did not find it, i.e. when the index
/// entry was lost (on a cluster the index and the event are on different shards, and a
/// failover may lose one write and not the other), and other nodes may not have it either.
/// `PUBLISH` from a script is allowed on a cluster (a channel is no key) and reaches every node.
/// ARGV: at, node, data, channel, ttl in ms (0 = keep). Returns 1 when stored (or published
/// again), 0 when a newer event was there.
const PUBLISH_LUA: &str = r"
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or '-1')
local node = redis.call('HGET', KEYS[1], 'node') or ''
local new_at = tonumber(ARGV[1])
if new_at > at or (new_at == at and ARGV[2] >= node) then
  redis.call('HSET', KEYS[1], 'at', ARGV[1], 'node', ARGV[2], 'data', ARGV[3])
  if tonumber(ARGV[5]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) else redis.call('PERSIST', KEYS[1]) end
  redis.call('PUBLISH', ARGV[4], ARGV[3])
  return 1
end
return 0
";

pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_LUA));

/// Every script's source, to load on one node of a cluster (`SCRIPT LOAD`).
pub const SOURCES: [&str; 3] = [COMMIT_LUA, RAISE_LUA, PUBLISH_LUA];

/// Every script, to load after connecting.
pub fn all() -> [&'static Script; 3] {
    [&COMMIT, &RAISE, &PUBLISH]
}
