-- ARGV[4] '*' for every job, else ARGV[4..] are ids. Returns {now, {row, …}} with
-- row = {id, state, owner, token, attempts, progress, last_error, signal, exit_code, heartbeat}.
local now = now_ms()
local ids = {}
if ARGV[4] == '*' then
  for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do table.insert(ids, id) end
  for i = 2, 5 do
    for _, id in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do table.insert(ids, id) end
  end
else
  for i = 4, #ARGV do table.insert(ids, ARGV[i]) end
end
local rows = {}
local seen = {}
for _, id in ipairs(ids) do
  if not seen[id] then
    seen[id] = true
    local f = redis.call('HMGET', jkey(id), 'state', 'owner', 'token', 'attempts', 'progress', 'last_error',
      'signal', 'exit_code', 'heartbeat')
    -- A job whose hash expired after retention no longer exists.
    if f[1] then
      table.insert(rows, {id, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]})
    end
  end
end
return {now, rows}
