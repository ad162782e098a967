-- ARGV[4] id, 5 token, 6 'deterministic' or 'retryable', 7 message, 8 signal or '', 9 exit code or '',
-- 10 max attempts, 11 retention (s), 12.. retry delays (ms) after attempt 1, 2, …
-- Returns {'dead', 0}, {'retry', delay_ms} or {'rejected', 0}.
local id = ARGV[4]
local k = jkey(id)
local st = redis.call('HMGET', k, 'state', 'token', 'attempts')
if st[1] ~= 'running' or st[2] ~= ARGV[5] then
  return {'rejected', 0}
end
local now = now_ms()
redis.call('HSET', k, 'last_error', ARGV[7])
redis.call('HDEL', k, 'signal', 'exit_code')
if ARGV[8] ~= '' then
  redis.call('HSET', k, 'signal', ARGV[8])
end
if ARGV[9] ~= '' then
  redis.call('HSET', k, 'exit_code', ARGV[9])
end
local attempts = tonumber(st[3])
if ARGV[6] == 'deterministic' or attempts >= tonumber(ARGV[10]) then
  finish(id, 'dead', now, ARGV[11])
  event('dead', id, ARGV[5])
  return {'dead', 0}
end
local delay = tonumber(ARGV[11 + math.min(attempts, #ARGV - 11)])
redis.call('ZREM', KEYS[3], id)
redis.call('HSET', k, 'state', 'delayed')
redis.call('HDEL', k, 'owner')
redis.call('ZADD', KEYS[2], now + delay, id)
event('retry', id, ARGV[5])
return {'retry', delay}
