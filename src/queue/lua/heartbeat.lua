-- ARGV[4] id, 5 token, 6 lease (ms), 7 '1' if 8 is progress JSON. Returns 'alive' or 'lost'.
local k = jkey(ARGV[4])
local st = redis.call('HMGET', k, 'state', 'token')
if st[1] ~= 'running' or st[2] ~= ARGV[5] then
  return 'lost'
end
local now = now_ms()
redis.call('HSET', k, 'heartbeat', int(now))
if ARGV[7] == '1' then
  redis.call('HSET', k, 'progress', ARGV[8])
end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[4])
return 'alive'
