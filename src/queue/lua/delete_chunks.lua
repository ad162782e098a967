-- ARGV[4] id. Deletes every artifact chunk of the job (any token). Returns how many.
local index = prefix .. 'chunks:' .. ARGV[4]
local n = 0
for _, ck in ipairs(redis.call('SMEMBERS', index)) do
  n = n + redis.call('DEL', ck)
end
redis.call('DEL', index)
return n
