--[[ status.lua: limit, held and live holders. Read-only.

ARGV[1] the most holders to list
Returns {'not_found'}, {'sweeping'} (more leases ended than one call
subtracts: sweep, then ask again) or
  {'found', limit, held, waiting, idle_ttl_ms or '' (the default), n,
   (id, count, fence, acquired_ms, expires_ms, holder) x n}
with holders soonest expiry first. The ids are for the HTTP layer to show
to admins only.

Expired permits that no write has swept yet are left out of both `held` and
the holders, so status agrees with what the next acquire will see.
]]
read_only = true
if not meta.limit then
  return { 'not_found' }
end
-- Read-only: ended leases are subtracted, not removed. A record lost to
-- eviction is skipped (the next write recounts).
local held = num('held')
local ended = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', now_ms, 'LIMIT', 0, SWEEP_CAP + 1)
if #ended > SWEEP_CAP then
  -- Too many to subtract in one call: the caller sweeps (sweep.lua) and
  -- asks again.
  return { 'sweeping' }
end
for i = 1, #ended do
  local record = redis.call('HGET', permits_key, ended[i])
  if record then
    held = held - decode(record).count
  end
end
if held < 0 then
  held = 0
end
local live = redis.call('ZRANGEBYSCORE', expiry_key, '(' .. int(now_ms), '+inf',
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local waiting = redis.call('ZCOUNT', wleases_key, '(' .. int(now_ms), '+inf')
local reply = { 'found', tonumber(meta.limit), held, waiting, meta.idle or '', 0 }
local listed = 0
for i = 1, #live, 2 do
  local record = redis.call('HGET', permits_key, live[i])
  if record then
    local p = decode(record)
    reply[#reply + 1] = live[i]
    reply[#reply + 1] = p.count
    reply[#reply + 1] = p.fence
    reply[#reply + 1] = p.acquired
    reply[#reply + 1] = tonumber(live[i + 1])
    reply[#reply + 1] = p.holder
    listed = listed + 1
  end
end
reply[6] = listed
return reply
