--[[ status.lua: limit, held and live holders. Read-only.

ARGV[1] the most holders to list
Returns {'not_found'} or
  {'found', limit, held, waiting, n,
   (count, fence, acquired_ms, expires_ms, holder) x n}
with holders soonest expiry first. Permit ids are never returned.

Expired permits that no write has swept yet are left out of both `held` and
the holders, so status agrees with what the next acquire will see.
]]
local limit = redis.call('HGET', meta_key, 'limit')
if not limit then
  return { 'not_found' }
end
local held = tonumber(redis.call('HGET', meta_key, 'held'))
local ended = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', now_ms)
for i = 1, #ended do
  local record = redis.call('HGET', permits_key, ended[i])
  if record then
    held = held - decode(record).count
  end
end
local live = redis.call('ZRANGEBYSCORE', expiry_key, '(' .. int(now_ms), '+inf',
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
-- Waiters whose lease ran out are as good as gone.
local waiting = redis.call('ZCOUNT', wleases_key, '(' .. int(now_ms), '+inf')
local reply = { 'found', tonumber(limit), held, waiting, #live / 2 }
for i = 1, #live, 2 do
  local p = decode(redis.call('HGET', permits_key, live[i]))
  reply[#reply + 1] = p.count
  reply[#reply + 1] = p.fence
  reply[#reply + 1] = p.acquired
  reply[#reply + 1] = tonumber(live[i + 1])
  reply[#reply + 1] = p.holder
end
return reply
