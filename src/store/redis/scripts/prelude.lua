--[[ prelude.lua: shared by every permitd script; RedisStore prepends it to
each script body before loading, so each script stays one atomic EVALSHA.

KEYS (the same eight for every script, all under the semaphore's hash tag
`{name}` so every script runs on Redis Cluster):
  KEYS[1] meta     hash: limit, held (sum of live counts), fence (last token),
                   qseq (last queue ticket number)
  KEYS[2] expiry   zset: permit id -> lease end, ms on the Redis clock
  KEYS[3] permits  hash: permit id -> record (see encode below)
  KEYS[4] idem     hash: Idempotency-Key -> permit id, only for live permits
  KEYS[5] queue    zset: waiting ticket -> arrival number (FIFO order)
  KEYS[6] waiters  hash: waiting ticket -> count "\n" wake channel
  KEYS[7] wleases  zset: waiting ticket -> waiter lease end (ms); a waiter
                   whose instance stopped renewing it is dropped from the queue
  KEYS[8] left     zset: withdrawn ticket -> when to forget it (ms); an attempt
                   of a ticket found here does nothing (see leave.lua)

Time is Redis `TIME`, read once per script, so every instance of permitd and
every client share one clock. A permit is live while now_ms < its lease end.

Reply envelope: RedisStore wraps each script body in a function and replies
{swept, <the body's reply>}, where `swept` is how many expired permits
`expire()` removed during this call. Each body's header describes only its own
reply; the Rust side unwraps the envelope and counts `swept` as lease expiries
(the sign that a holder crashed or forgot to release). Read-only scripts never
sweep, so their `swept` is 0.

Waking: when a change may let waiters proceed, the script PUBLISHes
"ticket \n now_us" on the channel of the permitd instance where that ticket
waits; that instance then runs acquire for it again. Only waiters that fit are
woken, in queue order, so a release wakes one waiter, not all of them.
]]
local meta_key, expiry_key, permits_key, idem_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queue_key, waiters_key, wleases_key, left_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]

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

-- Expired permits removed during this call: the first element of the reply
-- envelope (see the header).
local swept = 0

-- Drops every permit whose lease has ended. Only call it when meta exists:
-- HINCRBY on a missing meta would create a semaphore without a limit.
local function expire()
  local ended = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', now_ms)
  for i = 1, #ended do
    remove_permit(ended[i])
  end
  swept = swept + #ended
  return #ended
end

-- Takes a ticket out of the queue. Returns whether it was there.
local function dequeue(ticket)
  if redis.call('ZREM', queue_key, ticket) == 0 then
    return false
  end
  redis.call('HDEL', waiters_key, ticket)
  redis.call('ZREM', wleases_key, ticket)
  return true
end

-- Drops waiters whose lease ran out: their permitd instance stopped renewing
-- them (it died, or lost Redis). Returns how many.
local function drop_dead_waiters()
  local dead = redis.call('ZRANGEBYSCORE', wleases_key, '-inf', now_ms)
  for i = 1, #dead do
    dequeue(dead[i])
  end
  return #dead
end

local function waiter(ticket)
  local record = redis.call('HGET', waiters_key, ticket)
  local newline = string.find(record, '\n', 1, true)
  return tonumber(string.sub(record, 1, newline - 1)), string.sub(record, newline + 1)
end

local function free_units()
  local meta = redis.call('HMGET', meta_key, 'limit', 'held')
  local free = tonumber(meta[1]) - tonumber(meta[2])
  if free < 0 then
    return 0
  end
  return free
end

-- Whether `count` units for `ticket` fit after every waiter ahead of it (the
-- whole queue when the ticket is not in it). The walk stops as soon as the
-- units ahead exceed what is free, so it is short whatever the queue length.
local function fits(ticket, count)
  local free = free_units()
  local needed = count
  local at = 0
  while needed <= free do
    local batch = redis.call('ZRANGE', queue_key, at, at + 15)
    if #batch == 0 then
      break
    end
    for i = 1, #batch do
      if batch[i] == ticket or needed > free then
        return needed <= free
      end
      needed = needed + waiter(batch[i])
    end
    at = at + 16
  end
  return needed <= free
end

-- Wakes the waiters at the head of the queue whose counts fit now, in order;
-- the first that does not fit blocks the rest (strict FIFO).
local function wake_heads()
  local free = free_units()
  local at = 0
  while free > 0 do
    local batch = redis.call('ZRANGE', queue_key, at, at + 15)
    if #batch == 0 then
      return
    end
    for i = 1, #batch do
      local count, channel = waiter(batch[i])
      if count > free then
        return
      end
      free = free - count
      redis.call('PUBLISH', channel, batch[i] .. '\n' .. int(now_us))
    end
    at = at + 16
  end
end

-- Wakes the head waiter whatever it needs (it re-aims its expiry timer).
local function wake_first()
  local head = redis.call('ZRANGE', queue_key, 0, 0)
  if head[1] then
    local _, channel = waiter(head[1])
    redis.call('PUBLISH', channel, head[1] .. '\n' .. int(now_us))
  end
end

local function soonest_expiry_in_ms()
  local soonest = redis.call('ZRANGE', expiry_key, 0, 0, 'WITHSCORES')
  if soonest[2] then
    return tonumber(soonest[2]) - now_ms
  end
  return -1
end

-- The reply shape every permit-returning script shares.
local function permit_reply(tag, id, record, expires)
  local p = decode(record)
  return { tag, id, p.count, p.fence, p.acquired, expires, p.holder }
end
