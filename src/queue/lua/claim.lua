-- ARGV[4] worker, ARGV[5] lease (ms). Returns {id, token, attempt, payload} or nil.
local now = now_ms()
promote(now)
while true do
  local id = redis.call('RPOP', KEYS[1])
  if not id then
    return false
  end
  local k = jkey(id)
  -- Skip anything not queued (defensive: a list entry whose job moved on or expired).
  if redis.call('HGET', k, 'state') == 'queued' then
    -- The claim counter is the fencing token: every later claim of this job gets a larger one.
    local token = redis.call('HINCRBY', k, 'token', 1)
    local attempt = redis.call('HINCRBY', k, 'attempts', 1)
    redis.call('HSET', k, 'state', 'running', 'owner', ARGV[4], 'heartbeat', int(now))
    redis.call('HDEL', k, 'progress')
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), id)
    event('claim', id, token)
    return {id, token, attempt, redis.call('HGET', k, 'payload')}
  end
end
