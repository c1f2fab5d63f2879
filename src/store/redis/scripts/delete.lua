--[[ delete.lua: remove the semaphore, its permits, queue and records.

No ARGV. Returns 1 if the semaphore existed, 0 if not.

The first WAKE_CAP waiters are woken so they learn of the deletion on their
next attempt instead of at the end of their wait; the rest learn at their
next re-check (a script waking 10,000 would stall Redis for tens of ms).
]]
local existed = 0
if meta.limit then
  existed = 1
  local queued = redis.call('ZRANGE', queue_key, 0, WAKE_CAP - 1)
  for i = 1, #queued do
    local _, channel = waiter(queued[i])
    if channel then
      wake(queued[i], channel)
    end
  end
end
-- Also when meta was lost: what is left of the semaphore goes with it.
meta_gone = true
-- UNLINK: a semaphore with a long queue is freed in the background, not
-- while Redis serves nothing else.
-- `left` stays, with its own expiry: an attempt of a withdrawn ticket still
-- on its way must not create the semaphore again and grant it.
redis.call('UNLINK', meta_key, expiry_key, permits_key, idem_key, queue_key, waiters_key,
  wleases_key, ended_key)
return existed
