-- ARGV[4..] ids. Returns how many were dead and are queued again.
local n = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local k = jkey(id)
  if redis.call('HGET', k, 'state') == 'dead' then
    redis.call('PERSIST', k)
    redis.call('ZREM', KEYS[5], id)
    redis.call('HSET', k, 'state', 'queued', 'attempts', 0)
    redis.call('HDEL', k, 'owner', 'finished')
    redis.call('LPUSH', KEYS[1], id)
    event('requeue', id)
    n = n + 1
  end
end
return n
