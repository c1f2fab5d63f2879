--[[ delete.lua: remove the semaphore, its permits, queue and records.

No ARGV. Returns 1 if the semaphore existed, 0 if not.

Every waiter is woken so it learns of the deletion on its next attempt
instead of at the end of its wait.
]]
if redis.call('EXISTS', meta_key) == 0 then
  return 0
end
local queued = redis.call('ZRANGE', queue_key, 0, -1)
for i = 1, #queued do
  local _, channel = waiter(queued[i])
  redis.call('PUBLISH', channel, queued[i] .. '\n' .. int(now_us))
end
redis.call('DEL', meta_key, expiry_key, permits_key, idem_key, queue_key, waiters_key,
  wleases_key, left_key)
return 1
