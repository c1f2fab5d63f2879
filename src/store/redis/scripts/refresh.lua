--[[ refresh.lua: set a live permit's lease to end ttl_ms from now.

ARGV[1] permit id
ARGV[2] ttl_ms
Returns {'gone'} or {'live', id, count, fence, acquired_ms, expires_ms, holder}.

Atomic so an expired permit is swept before the refresh looks for it: a
lease that ran out is never brought back, even by a refresh that arrives a
millisecond late. When the refresh moves the soonest expiry earlier, the head
waiter is woken to re-aim its expiry timer.
]]
if not meta.limit then
  return { 'gone' }
end
if expire() + drop_dead_waiters() > 0 then
  wake_heads()
end
local record = redis.call('HGET', permits_key, ARGV[1])
if not record then
  return { 'gone' }
end
-- A lease that ended is never brought back, also when only its record knew
-- when it ends (the expiry entry was lost).
local p = decode(record)
local ends = lease_end(ARGV[1], p)
if not ends or ends <= now_ms then
  remove_permit(ARGV[1])
  wake_heads()
  return { 'gone' }
end
local soonest_before = soonest_expiry_in_ms()
local expires = now_ms + tonumber(ARGV[2])
p.expires = expires
record = encode(p)
redis.call('HSET', permits_key, ARGV[1], record)
redis.call('ZADD', expiry_key, expires, ARGV[1])
lower_hint('soon', expires)
touched(expires)
if tonumber(ARGV[2]) < soonest_before then
  wake_first()
end
return permit_reply('live', ARGV[1], record, expires)
