-- ARGV[4] id, 5 token, 6 artifact, 7 chunk index, 8 bytes, 9 retention (s), 10 lease (ms).
-- Returns 'stored' or 'rejected'. Fenced like a heartbeat (and extends the lease like one): a
-- stale token stores nothing. Chunk keys carry the token, so the chunks of one claim can never
-- be overwritten by another; `<prefix>chunks:<id>` indexes them for delete_chunks.lua.
local id, token = ARGV[4], ARGV[5]
local k = jkey(id)
local st = redis.call('HMGET', k, 'state', 'token')
if st[1] ~= 'running' or st[2] ~= token then
  return 'rejected'
end
local ck = prefix .. 'chunk:' .. id .. ':' .. token .. ':' .. ARGV[7] .. ':' .. ARGV[6]
redis.call('SET', ck, ARGV[8], 'EX', ARGV[9])
local index = prefix .. 'chunks:' .. id
redis.call('SADD', index, ck)
redis.call('EXPIRE', index, ARGV[9])
local now = now_ms()
redis.call('HSET', k, 'heartbeat', int(now))
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[10]), id)
return 'stored'
