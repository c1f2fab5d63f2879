--[[ release.lua: give a live permit's units back, and wake who fits now.

ARGV[1] permit id
Returns 1 if the permit was live, 0 if unknown or already expired, -1 if
the semaphore does not exist (so the caller can say which, in one call).

Atomic so the held count and the permit record can never disagree, and the
next waiter is woken in the same step that frees its units.
]]
if not meta.limit then
  -- The semaphore's meta was lost (eviction) while this permit lived on:
  -- drop the record so its units do not come back with a re-created one.
  if redis.call('HDEL', permits_key, ARGV[1]) == 1 then
    redis.call('ZREM', expiry_key, ARGV[1])
    return 1
  end
  return -1
end
local swept = expire() + drop_dead_waiters() > 0
local released = remove_permit(ARGV[1])
-- Nothing changed, nothing to wake: the heads were woken when it did.
if released or swept then
  wake_heads()
end
if released then
  return 1
end
return 0
