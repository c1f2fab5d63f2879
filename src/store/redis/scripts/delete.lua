--[[ delete.lua: remove the semaphore, its permits, queue and records.

No ARGV. Returns 1 if the semaphore existed, 0 if not.

Every waiter is woken so it learns of the deletion on its next attempt
instead of at the end of its wait.
]]
local existed = 0
if meta.limit then
  existed = 1
  local queued = redis.call('ZRANGE', queue_key, 0, -1)
  for i = 1, #queued do
    local _, channel = waiter(queued[i])
    if channel then
      wake(queued[i], channel)
    end
  end
end
-- Also when meta was lost: what is left of the semaphore goes with it.
meta_gone = true
redis.call('DEL', meta_key, expiry_key, permits_key, idem_key, queue_key, waiters_key,
  wleases_key, left_key)
return existed
