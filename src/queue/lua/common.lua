-- Shared by every script (prepended in Rust).
-- KEYS: 1 ready LIST, 2 delayed ZSET, 3 leases ZSET, 4 done ZSET, 5 dead ZSET, 6 events STREAM, 7 meta HASH.
-- ARGV: 1 key prefix `sera:{ns}:`, 2 clock offset (ms, tests only), 3 events MAXLEN; then the script's own.
-- Job hashes are `<prefix>job:<id>`: they share the hash tag of KEYS, so a cluster routes them together.
local prefix = ARGV[1]

local function now_ms()
  -- Redis TIME, so that every client agrees on lease expiry whatever their clocks say.
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
end

-- Integers as plain digits: a Lua number may otherwise reach Redis in exponent notation.
local function int(x)
  return string.format('%d', x)
end

local function jkey(id)
  return prefix .. 'job:' .. id
end

local function event(kind, id, token)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[3], '*', 'event', kind, 'id', id, 'token', token or 0)
end

-- Retries whose backoff is over go to the claiming end of `ready`.
local function promote(now)
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    redis.call('ZREM', KEYS[2], id)
    redis.call('HSET', jkey(id), 'state', 'queued')
    redis.call('RPUSH', KEYS[1], id)
  end
end

-- Done/dead keep their hash for `retention_s`, then Redis forgets them.
local function finish(id, state, now, retention_s)
  local k = jkey(id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HSET', k, 'state', state, 'finished', int(now))
  redis.call('ZADD', state == 'done' and KEYS[4] or KEYS[5], now, id)
  redis.call('EXPIRE', k, retention_s)
end
