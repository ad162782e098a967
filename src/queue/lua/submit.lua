-- ARGV[4] job count n, then n pairs of id, payload. Returns how many ids were new.
local now = now_ms()
local added = 0
for i = 0, tonumber(ARGV[4]) - 1 do
  local id = ARGV[5 + 2 * i]
  local k = jkey(id)
  -- HSETNX: a known id (queued, running or finished) keeps its state, so resubmitting is a no-op.
  if redis.call('HSETNX', k, 'payload', ARGV[6 + 2 * i]) == 1 then
    redis.call('HSET', k, 'state', 'queued', 'token', 0, 'attempts', 0, 'submitted', int(now))
    -- An id forgotten after retention may still sit in a finished set until the next reap.
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
    redis.call('LPUSH', KEYS[1], id)
    event('submit', id)
    added = added + 1
  end
end
return added
