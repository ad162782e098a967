-- ARGV[4] id, 5 token, 6 result JSON, 7 retention (s). Returns 'committed', 'duplicate' or 'rejected'.
local id = ARGV[4]
local k = jkey(id)
local st = redis.call('HMGET', k, 'state', 'token')
if st[1] == 'done' and st[2] == ARGV[5] then
  return 'duplicate'
end
if st[1] ~= 'running' or st[2] ~= ARGV[5] then
  return 'rejected'
end
redis.call('HSET', k, 'result', ARGV[6])
finish(id, 'done', now_ms(), ARGV[7])
event('done', id, ARGV[5])
return 'committed'
