--[[ acquire.lua: take `count` units, all or nothing, in one atomic step.

ARGV[1] limit to create the semaphore with, or '' (then unknown is not_found)
ARGV[2] count
ARGV[3] ttl_ms
ARGV[4] holder label, or ''
ARGV[5] Idempotency-Key, or ''
ARGV[6] request fingerprint (a retry must repeat it exactly)
ARGV[7] id for the new permit (random, made by the caller)

Returns one of:
  {'not_found'}
  {'conflict', current_limit}
  {'mismatch'}                       key names a permit made by another body
  {'too_large', limit}               count > limit: could never succeed
  {'unavailable', limit, held, ms_until_soonest_expiry or -1}
  {'granted'|'replayed', id, count, fence, acquired_ms, expires_ms, holder}

Atomic because the capacity check, the fencing counter and the write of the
permit must see one state: two instances racing for the last unit must not
both win.
]]
local limit = redis.call('HGET', meta_key, 'limit')
if not limit then
  if ARGV[1] == '' then
    return { 'not_found' }
  end
  redis.call('HSET', meta_key, 'limit', ARGV[1], 'held', 0, 'fence', int(now_us))
  limit = ARGV[1]
elseif ARGV[1] ~= '' and ARGV[1] ~= limit then
  return { 'conflict', tonumber(limit) }
end
limit = tonumber(limit)
expire()

if ARGV[5] ~= '' then
  local existing = redis.call('HGET', idem_key, ARGV[5])
  if existing then
    local record = redis.call('HGET', permits_key, existing)
    if decode(record).fingerprint ~= ARGV[6] then
      return { 'mismatch' }
    end
    return permit_reply('replayed', existing, record,
      tonumber(redis.call('ZSCORE', expiry_key, existing)))
  end
end

local count = tonumber(ARGV[2])
if count > limit then
  return { 'too_large', limit }
end
local held = tonumber(redis.call('HGET', meta_key, 'held'))
if held + count > limit then
  local soonest = redis.call('ZRANGE', expiry_key, 0, 0, 'WITHSCORES')
  local wait = -1
  if soonest[2] then
    wait = tonumber(soonest[2]) - now_ms
  end
  return { 'unavailable', limit, held, wait }
end

local fence = redis.call('HINCRBY', meta_key, 'fence', 1)
local expires = now_ms + tonumber(ARGV[3])
local record = encode(ARGV[2], int(fence), int(now_ms), ARGV[5], ARGV[6], ARGV[4])
redis.call('HSET', permits_key, ARGV[7], record)
redis.call('ZADD', expiry_key, expires, ARGV[7])
redis.call('HINCRBY', meta_key, 'held', count)
if ARGV[5] ~= '' then
  redis.call('HSET', idem_key, ARGV[5], ARGV[7])
end
return permit_reply('granted', ARGV[7], record, expires)
