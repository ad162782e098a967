-- ARGV[4] lease (ms), 5 max attempts, 6 retention (s). Returns {outage gap ms, {requeued}, {dead}}.
local now = now_ms()
local lease = tonumber(ARGV[4])
local gap = 0
-- The outage gate: if no reaper ran for longer than a lease (Redis or the reaper was down), the
-- workers may not have been able to heartbeat either, so every lease looks expired. Extend them
-- all by the gap first, but to no later than one lease from now: that is time enough for a live
-- worker to heartbeat again, and a worker that died meanwhile still loses its job within a lease
-- (not after an outage's worth of hours).
local seen = tonumber(redis.call('HGET', KEYS[7], 'reaper_seen') or '0')
if seen > 0 and now - seen > lease then
  gap = now - seen
  local all = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    local expiry = tonumber(all[i + 1])
    local extended = math.max(expiry, math.min(expiry + gap, now + lease))
    if extended ~= expiry then
      redis.call('ZADD', KEYS[3], extended, all[i])
    end
  end
end
redis.call('HSET', KEYS[7], 'reaper_seen', int(now))

local requeued, dead = {}, {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  local k = jkey(id)
  local st = redis.call('HMGET', k, 'state', 'token', 'attempts', 'owner', 'heartbeat')
  redis.call('ZREM', KEYS[3], id)
  if st[1] == 'running' then
    local silent = now - tonumber(st[5] or now)
    redis.call('HSET', k, 'last_error',
      'lease expired: worker ' .. (st[4] or '?') .. ' sent no heartbeat for ' .. string.format('%d', silent) .. ' ms')
    redis.call('HDEL', k, 'signal', 'exit_code')
    if tonumber(st[3]) >= tonumber(ARGV[5]) then
      finish(id, 'dead', now, ARGV[6])
      event('dead', id, st[2])
      table.insert(dead, id)
    else
      redis.call('HSET', k, 'state', 'queued')
      redis.call('HDEL', k, 'owner')
      redis.call('RPUSH', KEYS[1], id)
      event('expired', id, st[2])
      table.insert(requeued, id)
    end
  end
end
promote(now)
-- Finished jobs past retention: their hashes have expired, so drop them from the sets too.
local horizon = now - tonumber(ARGV[6]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', horizon)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', horizon)
return {gap, requeued, dead}
