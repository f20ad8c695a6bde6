//! The semantic cache's Lua scripts. Each runs atomically in Redis; all keys
//! are under one tenant's prefix `P` (passed as ARGV: the scripts build the
//! keys they touch). On a Redis Cluster the prefix carries the tenant's hash
//! tag, so all those keys are in one slot, and each script is sent with one
//! key of that slot ([`routing_key`], KEYS[1], not otherwise used) so it
//! runs on the node that serves it.
//!
//! Key layout (`S` = scope id, `id` = entry id):
//!
//! | key | type | what |
//! |---|---|---|
//! | `P sc:e:S:id` | hash, TTL | `v` = f32 LE vector bytes, `val` = cached value |
//! | `P sc:b:S:{table}:{code}` | set, TTL | entry ids in one LSH bucket |
//! | `P sc:i:S` | set, TTL | entry ids of the scope (to clear a namespace) |
//! | `P sc:k:S` | set, TTL | bucket names of the scope (to clear a namespace) |
//! | `P sc:mem` | sorted set | `S:id` by expiry time (ms) — the eviction order |
//! | `P sc:sz` | hash | `S:id` → bytes counted for the entry |
//! | `P sc:bytes` | string | bytes counted for the tenant |

/// Frees one `S:id` member: its entry, its accounting, its scope membership.
const FREE: &str = r#"
local function free(P, m)
  local mem, sizes, bytes = P .. 'sc:mem', P .. 'sc:sz', P .. 'sc:bytes'
  local sz = tonumber(redis.call('HGET', sizes, m) or 0) or 0
  redis.call('HDEL', sizes, m)
  redis.call('ZREM', mem, m)
  if sz > 0 then redis.call('DECRBY', bytes, sz) end
  local sep = string.find(m, ':', 1, true)
  if sep then
    local s, i = string.sub(m, 1, sep - 1), string.sub(m, sep + 1)
    redis.call('DEL', P .. 'sc:e:' .. s .. ':' .. i)
    redis.call('SREM', P .. 'sc:i:' .. s, i)
  end
end
"#;

/// ARGV: P, S, id, vector bytes, value, ttl ms, tenant cap bytes, bucket names…
/// Returns how many entries were evicted for the cap.
const INSERT: &str = r#"
local P, S, id = ARGV[1], ARGV[2], ARGV[3]
local ttl = tonumber(ARGV[6])
local cap = tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function touch(k)
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
local ekey = P .. 'sc:e:' .. S .. ':' .. id
redis.call('HSET', ekey, 'v', ARGV[4], 'val', ARGV[5])
redis.call('PEXPIRE', ekey, ttl)
local size = #ARGV[4] + #ARGV[5] + 48 * (#ARGV - 7) + 160
local kset = P .. 'sc:k:' .. S
for i = 8, #ARGV do
  local bk = P .. 'sc:b:' .. S .. ':' .. ARGV[i]
  redis.call('SADD', bk, id)
  touch(bk)
  redis.call('SADD', kset, ARGV[i])
end
touch(kset)
redis.call('SADD', P .. 'sc:i:' .. S, id)
touch(P .. 'sc:i:' .. S)
local m = S .. ':' .. id
redis.call('ZADD', P .. 'sc:mem', now + ttl, m)
redis.call('HSET', P .. 'sc:sz', m, size)
redis.call('INCRBY', P .. 'sc:bytes', size)
local expired = redis.call('ZRANGEBYSCORE', P .. 'sc:mem', '-inf', now, 'LIMIT', 0, 64)
for _, e in ipairs(expired) do free(P, e) end
local evicted = 0
while evicted < 1000 and (tonumber(redis.call('GET', P .. 'sc:bytes') or 0) or 0) > cap do
  local first = redis.call('ZRANGE', P .. 'sc:mem', 0, 0)
  if #first == 0 then break end
  free(P, first[1])
  evicted = evicted + 1
end
return evicted
"#;

/// ARGV: P, S, max candidates, bucket names… Returns `[id, vector bytes, …]`
/// for live entries in the union of the buckets; drops ids of entries that
/// are gone from the buckets it read.
pub const LOOKUP: &str = r#"
local P, S = ARGV[1], ARGV[2]
local max = tonumber(ARGV[3])
local keys = {}
for i = 4, #ARGV do keys[#keys + 1] = P .. 'sc:b:' .. S .. ':' .. ARGV[i] end
local ids = redis.call('SUNION', unpack(keys))
local out = {}
local n = 0
for _, id in ipairs(ids) do
  if n >= max then break end
  local v = redis.call('HGET', P .. 'sc:e:' .. S .. ':' .. id, 'v')
  if v then
    out[#out + 1] = id
    out[#out + 1] = v
    n = n + 1
  else
    for _, k in ipairs(keys) do redis.call('SREM', k, id) end
  end
end
return out
"#;

/// ARGV: P, S. Removes every entry and bucket of the scope; returns how many
/// entry ids it held.
const CLEAR: &str = r#"
local P, S = ARGV[1], ARGV[2]
local ids = redis.call('SMEMBERS', P .. 'sc:i:' .. S)
for _, i in ipairs(ids) do free(P, S .. ':' .. i) end
local bks = redis.call('SMEMBERS', P .. 'sc:k:' .. S)
for _, b in ipairs(bks) do redis.call('DEL', P .. 'sc:b:' .. S .. ':' .. b) end
redis.call('DEL', P .. 'sc:i:' .. S, P .. 'sc:k:' .. S)
return #ids
"#;

/// The key a script is sent with (routes it to the tenant's slot).
pub fn routing_key(prefix: &str) -> String {
    format!("{prefix}sc:bytes")
}

pub fn insert() -> redis::Script {
    redis::Script::new(&format!("{FREE}{INSERT}"))
}

pub fn lookup() -> redis::Script {
    redis::Script::new(LOOKUP)
}

pub fn clear() -> redis::Script {
    redis::Script::new(&format!("{FREE}{CLEAR}"))
}
