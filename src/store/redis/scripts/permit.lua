--[[ permit.lua: is this permit live? Read-only.

ARGV[1] permit id
Returns {'gone'} or {'live', id, count, fence, acquired_ms, expires_ms, holder}.

Read-only so it never needs a write; an expired permit that no write has
swept yet is reported gone all the same.
]]
read_only = true
local record = redis.call('HGET', permits_key, ARGV[1])
if not record then
  return { 'gone' }
end
-- From the record when the expiry entry was lost (see prelude's repair()).
local expires = lease_end(ARGV[1], decode(record))
if not expires or expires <= now_ms then
  return { 'gone' }
end
return permit_reply('live', ARGV[1], record, expires)
