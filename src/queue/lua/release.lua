-- ARGV[4] id, 5 token. Returns 'released' or 'rejected'.
local id = ARGV[4]
local k = jkey(id)
local st = redis.call('HMGET', k, 'state', 'token')
if st[1] ~= 'running' or st[2] ~= ARGV[5] then
  return 'rejected'
end
-- Graceful shutdown is not the job's fault: this execution is not counted.
redis.call('HINCRBY', k, 'attempts', -1)
redis.call('HSET', k, 'state', 'queued')
redis.call('HDEL', k, 'owner')
redis.call('ZREM', KEYS[3], id)
redis.call('RPUSH', KEYS[1], id)
event('release', id, ARGV[5])
return 'released'
