--[[ acquire.lua: one acquire attempt for a ticket, in one atomic step.

ARGV[1] limit to create the semaphore with, or '' (then unknown is not_found)
ARGV[2] count
ARGV[3] ttl_ms
ARGV[4] holder label, or ''
ARGV[5] Idempotency-Key, or ''
ARGV[6] request fingerprint (a retry must repeat it exactly)
ARGV[7] ticket: the id the permit gets if granted, and the waiter's name
ARGV[8] '1' to join (or stay in) the queue when the units do not fit, '0' to
        give up (leaving the queue if the ticket is in it)
ARGV[9] waiter lease in ms: how long the queue keeps this ticket unless the
        instance renews it with another attempt
ARGV[10] wake channel of the calling permitd instance
ARGV[11] deadline on the Redis clock (ms), or '': the caller has given up by
         then, so an attempt that reaches Redis later (a stalled or
         partitioned link delivered it late) must grant nothing
ARGV[12] '1' when the ticket waits in the calling instance, which answers
         it from a published grant: the whole request is kept with the
         ticket, so a release can hand it its permit (see the prelude's
         hand_off); '0' when it must attempt itself (the instance waits for
         replicas before answering a grant)

Returns one of:
  {'not_found', now_us}
  {'late', now_us}                   past the deadline: nothing was changed
  {'unavailable', now_us, 0, 0, -1}  the ticket was withdrawn (leave.lua)
  {'conflict', now_us, current_limit}
  {'mismatch', now_us}               the key was used with another body
  {'in_flight', now_us}              the key's first request still waits
  {'ended', now_us}                  the key's permit ended (within the
                                     retention): never a second permit
  {'too_large', now_us, limit}       count > limit: could never succeed
  {'unavailable', now_us, limit, held, ms_until_soonest_expiry or -1}
  {'queued', now_us, position, ms_until_soonest_expiry or -1,
   ms_until_soonest_waiter_lease_end}
  {'sweeping', now_us}               the units do not fit, but ended leases
                                     are left to sweep: call again
  {'granted'|'replayed', now_us, id, count, fence, acquired_ms, expires_ms, holder}
                                     ('granted' also for a ticket that
                                     already holds its permit: a retry)

Atomic because the queue order, the capacity check, the fencing counter and
the write of the permit must see one state: two instances racing for the last
unit must not both win, and nobody may pass a waiter that arrived earlier.
]]
local ticket = ARGV[7]
-- Withdrawn while this call was in flight: the caller is gone, do nothing.
-- (Only looked up while a withdrawal may still be remembered; a semaphore
-- that does not exist has no hint, and then `left` is asked.)
if (not meta.limit or now_ms <= num('lefts')) and redis.call('ZSCORE', left_key, ticket) then
  return { 'unavailable', now_us, 0, 0, -1 }
end
if ARGV[11] ~= '' and now_ms > tonumber(ARGV[11]) then
  return { 'late', now_us }
end
local limit = meta.limit
if not limit then
  if ARGV[1] == '' then
    return { 'not_found', now_us }
  end
  create(ARGV[1])
  limit = ARGV[1]
end
limit = tonumber(limit)
-- Anything freed or any waiter dropped may let others proceed: wake them
-- before leaving, whatever this attempt's answer.
local changed = expire() + drop_dead_waiters() > 0

-- The same ticket again: its caller never heard the answer that granted it
-- (the reply was lost, or came after the call's timeout) and retries. It
-- gets the permit it holds, whatever changed since; granting again would
-- count its units twice. Before the key and the limit, which a retry must
-- not be refused by either.
if num('held') > 0 then
  local record = redis.call('HGET', permits_key, ticket)
  local expires = record and lease_end(ticket, decode(record))
  if expires and expires > now_ms then
    if changed then
      wake_heads()
    end
    local reply = permit_reply('granted', ticket, record, expires)
    table.insert(reply, 2, now_us)
    return reply
  end
end

-- What the Idempotency-Key says (see the prelude's header for the three
-- kinds of value): a live permit is replayed, a waiting first request or an
-- ended permit is refused, and a key used with another body is a mismatch.
if ARGV[5] ~= '' then
  local existing = redis.call('HGET', idem_key, ARGV[5])
  local mark = existing and string.sub(existing, 1, 1)
  local refusal
  if mark == '~' then
    refusal = 'ended'
    if string.sub(existing, 2) ~= ARGV[6] then
      refusal = 'mismatch'
    end
  elseif mark == '?' then
    local newline = string.find(existing, '\n', 1, true)
    local first = string.sub(existing, 2, newline - 1)
    if first ~= ticket and redis.call('ZSCORE', queue_key, first) then
      refusal = 'in_flight'
      if string.sub(existing, newline + 1) ~= ARGV[6] then
        refusal = 'mismatch'
      end
    end
    -- Else this is the first request itself, or one that left the queue
    -- without a permit: the key is free.
  elseif existing then
    local record = redis.call('HGET', permits_key, existing)
    local p = record and decode(record)
    local expires = p and lease_end(existing, p)
    if not record then
      -- The record was lost (eviction): nothing is known of the permit, and
      -- this attempt is a new acquire.
      redis.call('HDEL', idem_key, ARGV[5])
    elseif not (expires and expires > now_ms) then
      -- Ended, and not swept yet: it ends now.
      remove_permit(existing)
      changed = true
      refusal = 'ended'
      if p.fingerprint ~= ARGV[6] then
        refusal = 'mismatch'
      end
    else
      if dequeue(ticket) then
        changed = true
      end
      if changed then
        wake_heads()
      end
      if p.fingerprint ~= ARGV[6] then
        return { 'mismatch', now_us }
      end
      if existing ~= ticket and p.claimed ~= '1' then
        -- Handed to a retry: the request that made it may still withdraw its
        -- own ticket (it timed out elsewhere), and must not release it then.
        p.claimed = '1'
        p.expires = expires
        record = encode(p)
        redis.call('HSET', permits_key, existing, record)
      end
      local reply = permit_reply('replayed', existing, record, expires)
      table.insert(reply, 2, now_us)
      return reply
    end
  end
  if refusal then
    if dequeue(ticket) or changed then
      wake_heads()
    end
    return { refusal, now_us }
  end
end

-- After the key: a known key with the same body replays whatever the limit
-- is now (a client retrying with the limit it first sent must get its
-- permit back, not a conflict while that permit holds its units).
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= limit then
  if dequeue(ticket) or changed then
    wake_heads()
  end
  return { 'conflict', now_us, limit }
end

local count = tonumber(ARGV[2])
if count > limit then
  if dequeue(ticket) or changed then
    wake_heads()
  end
  return { 'too_large', now_us, limit }
end

local fit = fits(ticket, count)
if not fit and permits_damaged() then
  -- Looks full, but the permit keys disagree: units may be stuck behind
  -- entries a lost key left behind. Rebuild, then look again.
  repair()
  changed = true
  fit = fits(ticket, count)
end

if not fit and sweep_capped then
  -- Ended leases are still counted in `held` (more ended than one call
  -- sweeps): no refusal and no queue place is judged on that count. The
  -- caller calls again, and the next call sweeps on.
  if changed then
    wake_heads()
  end
  return { 'sweeping', now_us }
end

if not fit then
  if ARGV[8] == '1' then
    if not redis.call('ZSCORE', queue_key, ticket) then
      if num('qlen') == 0 then
        touched(nil, queue_key)
        touched(nil, waiters_key)
        touched(nil, wleases_key)
      end
      local number = num('qseq') + 1
      set_meta('qseq', int(number))
      set_meta('qlen', num('qlen') + 1)
      redis.call('ZADD', queue_key, number, ticket)
      local record = ARGV[2] .. '\n' .. ARGV[10]
      if ARGV[12] == '1' then
        record = table.concat({ record, ARGV[3], ARGV[5], ARGV[6], ARGV[4] }, '\n')
      end
      redis.call('HSET', waiters_key, ticket, record)
      if ARGV[5] ~= '' then
        -- A retry with this key while this request waits is refused (409).
        -- The mark is looked at again when the waiter lease ends, and goes
        -- once the ticket left the queue (forget_ended).
        local check = now_ms + tonumber(ARGV[9])
        redis.call('HSET', idem_key, ARGV[5], '?' .. ticket .. '\n' .. ARGV[6])
        redis.call('ZADD', ended_key, check, ARGV[5])
        lower_hint('isoon', check)
        touched(nil, idem_key)
        touched(nil, ended_key)
      end
    end
    redis.call('ZADD', wleases_key, now_ms + tonumber(ARGV[9]), ticket)
    lower_hint('wsoon', now_ms + tonumber(ARGV[9]))
    touched(now_ms + tonumber(ARGV[9]))
    lease_orphans(tonumber(ARGV[9]))
    if changed then
      wake_heads()
    end
    -- When the soonest waiter lease ends, a waiter whose instance died may
    -- be blocking the queue: the caller re-checks then, so dead waiters are
    -- swept within one lease even if nothing else happens.
    local lease = redis.call('ZRANGE', wleases_key, 0, 0, 'WITHSCORES')
    return { 'queued', now_us, redis.call('ZRANK', queue_key, ticket), soonest_expiry_in_ms(),
      tonumber(lease[2]) - now_ms }
  end
  if dequeue(ticket) or changed then
    wake_heads()
  end
  return { 'unavailable', now_us, limit, num('held'), soonest_expiry_in_ms() }
end

dequeue(ticket)
local fence = next_fence()
local expires = now_ms + tonumber(ARGV[3])
local record = encode({ count = ARGV[2], fence = int(fence), acquired = int(now_ms),
  idem = ARGV[5], fingerprint = ARGV[6], expires = expires, claimed = '0', holder = ARGV[4] })
keep_permit(ticket, record, expires, ARGV[5])
add_held(count)
-- Units this call freed (an expiry) may let the next waiters in; units
-- freed before were announced to every waiter they fit by then.
if changed then
  wake_heads()
else
  continue_wakes()
  tell_blocked_head()
end
-- The reply from the values at hand (permit_reply would decode the record
-- just encoded).
return { 'granted', now_us, ticket, count, int(fence), now_ms, expires, ARGV[4] }
