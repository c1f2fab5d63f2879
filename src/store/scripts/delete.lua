--[[ delete.lua: remove the semaphore, its permits and idempotency records.

No ARGV. Returns 1 if the semaphore existed, 0 if not.
]]
if redis.call('EXISTS', meta_key) == 0 then
  return 0
end
redis.call('DEL', meta_key, expiry_key, permits_key, idem_key)
return 1
