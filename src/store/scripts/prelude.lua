--[[ prelude.lua: shared by every permitd script; RedisStore prepends it to
each script body before loading, so each script stays one atomic EVALSHA.

KEYS (the same four for every script, all under the semaphore's hash tag
`{name}` so every script runs on Redis Cluster):
  KEYS[1] meta     hash: limit, held (sum of live counts), fence (last token)
  KEYS[2] expiry   zset: permit id -> lease end, ms on the Redis clock
  KEYS[3] permits  hash: permit id -> record (see encode below)
  KEYS[4] idem     hash: Idempotency-Key -> permit id, only for live permits

Time is Redis `TIME`, read once per script, so every instance of permitd and
every client share one clock. A permit is live while now_ms < its lease end.
]]
local meta_key, expiry_key, permits_key, idem_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- Numbers are doubles in Lua 5.1 and `..`/tostring print them with 14
-- significant digits, which would round fencing tokens: format integers by hand.
local function int(n)
  return string.format('%d', n)
end

local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

-- A permit record: count, fence, acquired_at, idempotency key, request
-- fingerprint, holder, joined by newlines. Holder is last and validated to
-- hold no control characters, so splitting is unambiguous.
local function encode(count, fence, acquired, idem, fingerprint, holder)
  return table.concat({ count, fence, acquired, idem, fingerprint, holder }, '\n')
end

local function decode(record)
  local f = {}
  for field in string.gmatch(record .. '\n', '([^\n]*)\n') do
    f[#f + 1] = field
  end
  return { count = tonumber(f[1]), fence = f[2], acquired = tonumber(f[3]),
           idem = f[4], fingerprint = f[5], holder = f[6] }
end

-- Removes one permit and gives its units back. Returns false if unknown.
local function remove_permit(id)
  local record = redis.call('HGET', permits_key, id)
  if not record then
    return false
  end
  local p = decode(record)
  redis.call('HDEL', permits_key, id)
  redis.call('ZREM', expiry_key, id)
  redis.call('HINCRBY', meta_key, 'held', -p.count)
  if p.idem ~= '' then
    redis.call('HDEL', idem_key, p.idem)
  end
  return true
end

-- Drops every permit whose lease has ended. Only call it when meta exists:
-- HINCRBY on a missing meta would create a semaphore without a limit.
local function expire()
  local ended = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', now_ms)
  for i = 1, #ended do
    remove_permit(ended[i])
  end
  return #ended
end

-- The reply shape every permit-returning script shares.
local function permit_reply(tag, id, record, expires)
  local p = decode(record)
  return { tag, id, p.count, p.fence, p.acquired, expires, p.holder }
end
