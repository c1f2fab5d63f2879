--[[ prelude.lua: shared by every permitd script, so each script stays one
atomic call. `scripts.rs` builds two texts from it and the bodies: one Redis
Functions library holding every script as a function (Redis 7: loaded once,
called with FCALL), and per script the prelude with its body (EVALSHA, for
Redis before 7). Either way each body runs as `run(body, KEYS, ARGV)` (at
the end of this file), and the prelude's own code only defines: everything
a call reads or changes is set up by `begin()`, so the library's functions,
which are defined once and called many times, share nothing between calls.

KEYS (the same nine for every script, all under the semaphore's hash tag
`{name}` so every script runs on Redis Cluster):
  KEYS[1] meta     hash: limit, held (sum of live counts), fence (last token),
                   qseq (last queue ticket number), and hints that let the
                   common path skip work (see "The meta hash" below): qlen,
                   soon, wsoon, lefts, isoon; idle (its own idle TTL) and
                   dies (when its keys expire)
  KEYS[2] expiry   zset: permit id -> lease end, ms on the Redis clock
  KEYS[3] permits  hash: permit id -> record (see encode below)
  KEYS[4] idem     hash: Idempotency-Key -> a live permit's id, or a mark
                   (see below)
  KEYS[5] queue    zset: waiting ticket -> arrival number (FIFO order)
  KEYS[6] waiters  hash: waiting ticket -> count "\n" wake channel, and
                   when it may be handed its permit (see hand_off) the rest
                   of its request: "\n" ttl "\n" Idempotency-Key "\n"
                   fingerprint "\n" holder
  KEYS[7] wleases  zset: waiting ticket -> waiter lease end (ms); a waiter
                   whose instance stopped renewing it is dropped from the queue
  KEYS[8] left     zset: withdrawn ticket -> when to forget it (ms); an attempt
                   of a ticket found here does nothing (see leave.lua)
  KEYS[9] ended    zset: Idempotency-Key -> when to look at it again (ms): a
                   key whose permit ended is forgotten then (until then a
                   retry with it is told the permit ended instead of being
                   granted a second one); a key marked waiting loses its mark
                   then if its ticket left the queue

The idem hash holds one of three things per key: a live permit's id; "?"
ticket "\n" fingerprint while the key's first request waits in the queue (a
retry then hears it is still running); "~" fingerprint once its permit ended
(kept for the retention, see `ended`).

ARGV: each script's own, then two more that `RedisStore` appends to every
call and the prelude reads from the end: the default idle TTL in ms (0:
never) and the Idempotency-Key retention in ms (0: keys are forgotten with
their permit).

Idle semaphores expire: every key carries the key expiry `dies` (in meta),
which is kept at least the semaphore's idle TTL (meta `idle`, else the
default) past now and past every lease, waiter lease and remembered
Idempotency-Key, so a semaphore is only forgotten once nothing used it for
that long. Pushing `dies` out costs a PEXPIREAT per key, so it is pushed an
eighth of the idle TTL further than needed and not touched again until
needed; a key this call may have created (the first permit, the first
waiter) gets the current `dies` on its own.

Time is Redis `TIME`, read once per script, so every instance of permitd and
every client share one clock. A permit is live while now_ms < its lease end.

Reply envelope: `run()` replies {swept, <the body's reply>}, where `swept`
is how many expired permits `expire()` removed during this call. Each body's
header describes only its own reply; the Rust side unwraps the envelope and
counts `swept` as lease expiries (the sign that a holder crashed or forgot to
release). Read-only scripts never sweep, so their `swept` is 0.

Lost keys: under a maxmemory eviction policy (or after a careless DEL) any
of these keys may vanish on its own. No script fails on a missing key, and
none lets more than `limit` units be held because of one: a re-created meta
recounts `held` from the permit records, permit records and expiry entries
rebuild each other (repair()), a waiter without its record or its lease is
dropped or given one. What cannot be rebuilt is lost safely: a lost `idem`
makes a retry take a new permit, a lost queue makes waiters queue again.

The meta hash: read once per script (one HMGET, below) into `meta`, changed
there, and written back once after the body (`flush_meta`, one HSET of the
fields that changed), so the common path pays two commands for it whatever
it touches. Its hints are only ever safe to trust:
  qlen   how many tickets are queued: kept by enqueue and dequeue, recounted
         when the meta is created; 0 lets an acquire skip the queue walk
  soon   at most the soonest lease end in `expiry` ('' unknown, '+' none):
         a grant lowers it, a sweep recomputes it, a release leaves it (still
         a lower bound); before it, no lease can have ended, so the sweep is
         skipped
  wsoon  the same for the waiter leases in `wleases`
  lefts  when the last withdrawal in `left` is forgotten: before it, an
         attempt checks `left`; after it, `left` is empty
  wnext, wfree  where a capped serve of the queue stopped (see serve)
A hint that is missing (data written before they existed) is recomputed.

Serving waiters: when a change may let waiters proceed, the script serves
the ones that fit, in queue order, so a release serves one waiter, not all
of them. A waiter whose whole request is stored is handed its permit by that
script, which PUBLISHes the grant on the channel of the permitd instance
where the ticket waits (see hand_off): a contended cycle is then two script
calls, the holder's release and the waiter's first attempt. Any other is
woken: "ticket \n now_us" on that channel, and its instance runs acquire for
it again. A new head of the queue that does not fit is told "ticket \n
now_us \n ms until the soonest lease ends (-1: none)" instead: its instance
aims the waiter's timer there without running acquire (see tell_head).
]]
-- The state of one call: the keys and settings it was passed, the clock,
-- the meta hash. Set by begin() at the start of every call and nowhere kept
-- past it: loaded as a Redis Functions library, the code below runs once and
-- its functions many times, so these must not carry over between calls.
local all_keys, meta_key, expiry_key, permits_key, idem_key
local queue_key, waiters_key, wleases_key, left_key, ended_key
local IDLE_DEFAULT, RETENTION, now_ms, now_us

-- Numbers are doubles in Lua 5.1 and `..`/tostring print them with 14
-- significant digits, which would round fencing tokens: format integers by hand.
local function int(n)
  return string.format('%d', n)
end

-- The meta hash (see the header). `meta.limit` is nil when the semaphore
-- does not exist; `meta_gone` stops the write-back after a delete.
local META_FIELDS = { 'limit', 'held', 'fence', 'qseq', 'qlen', 'soon', 'wsoon', 'lefts', 'wnext',
  'wfree', 'idle', 'dies', 'isoon' }
local meta, dirty, meta_gone
-- Set by the read-only scripts: nothing is written back, not even a hint.
local read_only

local function num(field)
  return tonumber(meta[field]) or 0
end

local function set_meta(field, value)
  meta[field] = value
  dirty[field] = true
end

-- The latest end (ms) of anything this call made live: a lease, a waiter
-- lease, a remembered Idempotency-Key; and the keys it may have created.
-- The key expiry must outlast the first by the idle TTL, and the second get
-- it at once (see the header).
local lease_top, fresh

local function touched(until_ms, key)
  if until_ms and until_ms > lease_top then
    lease_top = until_ms
  end
  if key then
    fresh[key] = true
  end
end

-- The highest score of a sorted set, or 0.
local function top_score(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  return tonumber(last[2]) or 0
end

-- Decides the key expiry after the body (see the header); returns the keys
-- to give it and when, applied once the meta hash exists.
local function plan_expiry()
  local idle = tonumber(meta.idle or IDLE_DEFAULT) or 0
  if idle <= 0 then
    if meta.dies and meta.dies ~= '' and meta.dies ~= '0' then
      set_meta('dies', '0')
      -- `left` keeps its own short expiry (leave.lua).
      return { meta_key, expiry_key, permits_key, idem_key, queue_key, waiters_key, wleases_key,
        ended_key }, nil
    end
    return {}, nil
  end
  local dies = tonumber(meta.dies) or 0
  if dies > now_ms + idle + math.floor(idle / 4) and num('held') == 0 and num('qlen') == 0 then
    -- Emptied long before `dies` (a lease much longer than the idle TTL
    -- was released early): its idle time counts from now, not from the end
    -- of that lease. Never in the common case (`dies` is at most an eighth
    -- of the idle TTL past what a live lease needs).
    dies = 0
  end
  if dies <= 0 then
    -- Unknown (a new semaphore, a new idle TTL): everything live counts.
    touched(top_score(expiry_key))
    touched(top_score(wleases_key))
    touched(top_score(ended_key))
  end
  local need = math.max(now_ms, lease_top) + idle
  if dies < need then
    dies = need + math.floor(idle / 8)
    set_meta('dies', int(dies))
    return all_keys, dies
  end
  local keys = {}
  for key in pairs(fresh) do
    keys[#keys + 1] = key
  end
  return keys, dies
end

-- Writes back what changed, after the body, and keeps the key expiry: never
-- for a semaphore that does not exist (that would create one without a
-- limit) or was just deleted.
local function flush_meta()
  if meta_gone or read_only or not meta.limit then
    return
  end
  local expiring, dies = plan_expiry()
  local args = {}
  for field in pairs(dirty) do
    args[#args + 1] = field
    args[#args + 1] = meta[field]
  end
  if #args > 0 then
    redis.call('HSET', meta_key, unpack(args))
  end
  for i = 1, #expiring do
    if dies then
      local at = dies
      if expiring[i] == left_key and num('lefts') > at then
        -- A withdrawal is remembered for its own time (leave.lua), even past
        -- the semaphore's idle end: an attempt of that ticket still on its
        -- way must find it, also once the rest is forgotten.
        at = num('lefts')
      end
      redis.call('PEXPIREAT', expiring[i], at)
    else
      redis.call('PERSIST', expiring[i])
    end
  end
end

-- The soonest score of a sorted set, as a hint value: '+' when it is empty.
local function soonest_score(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return first[2] or '+'
end

-- Whether a hint says nothing in its set can have ended yet.
local function not_due(hint)
  local value = meta[hint]
  if value == '+' then
    return true
  end
  return value ~= nil and value ~= '' and now_ms < tonumber(value)
end

-- A score added to the set behind a hint: the hint stays a lower bound.
local function lower_hint(hint, score)
  local value = meta[hint]
  if value == '+' or (value ~= nil and value ~= '' and score < tonumber(value)) then
    set_meta(hint, int(score))
  end
end

-- The withdrawal hint, from the `left` set itself.
local function recount_lefts()
  local last = redis.call('ZRANGE', left_key, -1, -1, 'WITHSCORES')
  set_meta('lefts', last[2] or '0')
end

-- A permit record: count, fence, acquired_at, idempotency key, request
-- fingerprint, lease end, claimed, holder, joined by newlines. Holder is last
-- and validated to hold no control characters, so splitting is unambiguous.
-- The lease end is kept here as well as in `expiry`, so that either key can
-- be rebuilt from the other if one vanishes (see repair()). `claimed` is '1'
-- once an idempotent retry (another ticket) was handed this permit: from then
-- on, withdrawing the ticket that made it must not release it (leave.lua).
-- Records written before these two fields were kept have six fields; decode
-- reads both shapes.
local function encode(p)
  return table.concat({ p.count, p.fence, p.acquired, p.idem, p.fingerprint, int(p.expires),
    p.claimed, p.holder }, '\n')
end

local function decode(record)
  local f = {}
  for field in string.gmatch(record .. '\n', '([^\n]*)\n') do
    f[#f + 1] = field
  end
  if #f < 8 then
    return { count = tonumber(f[1]), fence = f[2], acquired = tonumber(f[3]),
             idem = f[4], fingerprint = f[5], claimed = '0', holder = f[6] }
  end
  return { count = tonumber(f[1]), fence = f[2], acquired = tonumber(f[3]),
           idem = f[4], fingerprint = f[5], expires = tonumber(f[6]), claimed = f[7],
           holder = f[8] }
end

-- A permit's lease end: from `expiry`, or from its record when that entry is
-- missing. nil when neither knows (a record from before lease ends were kept
-- whose entry vanished: it is treated as ended).
local function lease_end(id, p)
  local score = redis.call('ZSCORE', expiry_key, id)
  if score then
    return tonumber(score)
  end
  return p.expires
end

-- Adds `delta` to held, never below 0: a count that drifted (keys lost to
-- eviction) must not turn into extra capacity.
local function add_held(delta)
  local held = num('held') + delta
  if held < 0 then
    held = 0
  end
  set_meta('held', int(held))
end

-- A permit made under an Idempotency-Key ended: for the retention, a retry
-- with the key is told so (410) instead of being granted a second permit.
-- A permit never `delivered` (its request went away before hearing of it,
-- leave.lua) frees its key instead: a retry is a new request.
local function end_idem(p, delivered)
  if p.idem == '' then
    return
  end
  if RETENTION <= 0 or not delivered then
    redis.call('HDEL', idem_key, p.idem)
    return
  end
  local forget = now_ms + RETENTION
  redis.call('HSET', idem_key, p.idem, '~' .. p.fingerprint)
  redis.call('ZADD', ended_key, forget, p.idem)
  lower_hint('isoon', forget)
  touched(forget, ended_key)
end

-- Forgets the ended keys whose retention is over, and the waiting marks
-- ("?" ticket) of tickets that left the queue without a permit; a mark of a
-- ticket still queued is looked at again when its waiter lease ends (at most
-- SWEEP_CAP per call; see expire()). A key used again since holds a live
-- permit's id now and stays.
local function forget_ended()
  if not_due('isoon') then
    return
  end
  local due = redis.call('ZRANGEBYSCORE', ended_key, '-inf', now_ms, 'LIMIT', 0, 500)
  for i = 1, #due do
    local value = redis.call('HGET', idem_key, due[i])
    local mark = value and string.sub(value, 1, 1)
    local again
    if mark == '?' then
      -- Still queued: looked at again when its waiter lease ends (or in a
      -- second, when that lease is past or lost: the dead-waiter sweep or
      -- lease_orphans settles it meanwhile).
      local waiting = string.sub(value, 2, (string.find(value, '\n', 1, true) or 0) - 1)
      if redis.call('ZSCORE', queue_key, waiting) then
        local lease = tonumber(redis.call('ZSCORE', wleases_key, waiting))
        again = (lease and lease > now_ms) and lease or now_ms + 1000
      end
    end
    if again then
      redis.call('ZADD', ended_key, again, due[i])
    else
      if mark == '~' or mark == '?' then
        redis.call('HDEL', idem_key, due[i])
      end
      redis.call('ZREM', ended_key, due[i])
    end
  end
  set_meta('isoon', soonest_score(ended_key))
end

-- Removes one permit and gives its units back (see end_idem for
-- `undelivered`). Returns false if unknown.
local function remove_permit(id, undelivered)
  local record = redis.call('HGET', permits_key, id)
  if not record then
    return false
  end
  local p = decode(record)
  redis.call('HDEL', permits_key, id)
  redis.call('ZREM', expiry_key, id)
  add_held(-p.count)
  end_idem(p, not undelivered)
  return true
end

-- The most expired permits, or dead waiters, one call sweeps (see expire).
local SWEEP_CAP = 500

-- Expired permits removed during this call: the first element of the reply
-- envelope (see the header).
local swept

-- Set when a sweep stopped at SWEEP_CAP: ended leases (or dead waiters) may
-- remain, so `held` (or the queue) still counts some that no longer count.
-- A decision that this could change is not made by this call: the caller
-- calls again, and each call sweeps SWEEP_CAP more (see acquire.lua and
-- sweep.lua), so no script runs long however many leases end together.
local sweep_capped

-- Rebuilds the permit state from the records after a key vanished
-- (eviction under maxmemory, a careless DEL): every live record gets its
-- `expiry` entry back, records whose lease ended are removed, and `held` is
-- recounted from the live records. An expiry entry whose record was lost
-- keeps its place until its lease ends: its count is unknown, so while any
-- such entry lives, `held` stays at least what it was (never less than is
-- truly held). O(n), so it runs only when a cheap check finds the keys
-- disagree. Only call it when meta exists.
local function repair()
  local known = 0
  local records = redis.call('HGETALL', permits_key)
  for i = 1, #records, 2 do
    local id, p = records[i], decode(records[i + 1])
    local expires = lease_end(id, p)
    if expires and expires > now_ms then
      redis.call('ZADD', expiry_key, expires, id)
      known = known + p.count
    else
      redis.call('HDEL', permits_key, id)
      redis.call('ZREM', expiry_key, id)
      end_idem(p, true)
      swept = swept + 1
    end
  end
  local held = known
  if redis.call('ZCARD', expiry_key) > redis.call('HLEN', permits_key) then
    local before = math.min(num('held'), num('limit'))
    if before > held then
      held = before
    end
  end
  set_meta('held', int(held))
  set_meta('soon', '')
end

-- Whether the permit keys disagree (one of them lost entries): two O(1)
-- calls, for the paths where lost units would hurt (the semaphore looks full).
local function permits_damaged()
  return redis.call('ZCARD', expiry_key) ~= redis.call('HLEN', permits_key)
end

-- Drops every permit whose lease has ended. Only call it when meta exists:
-- HINCRBY on a missing meta would create a semaphore without a limit. An
-- ended entry without its record means the records were lost: the units it
-- held are unknown, so everything is recounted.
local function expire()
  forget_ended()
  if not_due('soon') then
    return 0
  end
  -- At most SWEEP_CAP per call, so no script runs long after many leases
  -- ended at once; `soon` then stays due, and the next call goes on.
  local ended = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', now_ms, 'LIMIT', 0, SWEEP_CAP)
  local lost = false
  if #ended > 0 then
    -- remove_permit for each, in four commands for the lot instead of three
    -- per permit: a sweep of 500 took 10-13 ms one by one.
    local records = redis.call('HMGET', permits_key, unpack(ended))
    local freed = 0
    for i = 1, #ended do
      local record = records[i]
      if record then
        -- Only the count, unless the record names a key (its fourth field
        -- is not empty): a whole decode per permit was most of a sweep's time.
        freed = freed + tonumber(string.match(record, '^%d+'))
        if not string.find(record, '^[^\n]*\n[^\n]*\n[^\n]*\n\n') then
          end_idem(decode(record), true)
        end
      else
        lost = true
      end
    end
    redis.call('HDEL', permits_key, unpack(ended))
    redis.call('ZREM', expiry_key, unpack(ended))
    add_held(-freed)
  end
  swept = swept + #ended
  if #ended == SWEEP_CAP then
    sweep_capped = true
  end
  if lost then
    repair()
  end
  set_meta('soon', soonest_score(expiry_key))
  return #ended
end

-- The next fencing token: one more than the last, and never below the store
-- clock in microseconds, so tokens keep increasing even when the state rolled
-- back (a restart from an older snapshot, a failover to a replica that missed
-- the last writes) as long as the clocks of the Redis nodes agree to within
-- the time such a restart or failover takes.
local function next_fence()
  local fence = math.max(num('fence') + 1, now_us)
  set_meta('fence', int(fence))
  return fence
end

-- Creates the semaphore's meta. Permits may outlive a lost meta: then `held`
-- is recounted from them, so they still count against the limit.
local function create(limit)
  set_meta('limit', limit)
  set_meta('held', 0)
  set_meta('qlen', redis.call('ZCARD', queue_key))
  set_meta('soon', '')
  set_meta('wsoon', '')
  set_meta('isoon', soonest_score(ended_key))
  recount_lefts()
  if redis.call('HLEN', permits_key) > 0 or redis.call('ZCARD', expiry_key) > 0 then
    repair()
  end
end

-- Whether this call took the head of the queue out: the new head must then
-- be told it is head (see wake_heads), or it would wait for its periodic
-- re-check instead of aiming a timer at the next lease end.
local head_left

-- Takes a ticket out of the queue. Returns whether it was there.
local function dequeue(ticket)
  if num('qlen') == 0 then
    return false
  end
  local rank = redis.call('ZRANK', queue_key, ticket)
  if not rank then
    return false
  end
  redis.call('ZREM', queue_key, ticket)
  set_meta('qlen', math.max(num('qlen') - 1, 0))
  redis.call('HDEL', waiters_key, ticket)
  redis.call('ZREM', wleases_key, ticket)
  if rank == 0 then
    head_left = true
  end
  return true
end

-- Drops waiters whose lease ran out: their permitd instance stopped renewing
-- them (it died, or lost Redis). Returns how many.
local function drop_dead_waiters()
  if not_due('wsoon') then
    return 0
  end
  local dead = redis.call('ZRANGEBYSCORE', wleases_key, '-inf', now_ms, 'LIMIT', 0, SWEEP_CAP)
  for i = 1, #dead do
    if not dequeue(dead[i]) then
      redis.call('ZREM', wleases_key, dead[i])
    end
  end
  if #dead == SWEEP_CAP then
    sweep_capped = true
  end
  set_meta('wsoon', soonest_score(wleases_key))
  return #dead
end

-- Gives every queued ticket without a waiter lease one (the lease set was
-- lost): a live waiter renews it with its next attempt, a dead one is then
-- dropped like any other. O(n), only when the queue and the leases disagree.
local function lease_orphans(lease_ms)
  if redis.call('ZCARD', queue_key) == redis.call('ZCARD', wleases_key) then
    return
  end
  local queued = redis.call('ZRANGE', queue_key, 0, -1)
  for i = 1, #queued do
    redis.call('ZADD', wleases_key, 'NX', now_ms + lease_ms, queued[i])
  end
  lower_hint('wsoon', now_ms + lease_ms)
end

-- A waiter's count, wake channel, and the rest of its request when it may be
-- handed its permit (see hand_off): "ttl \n key \n fingerprint \n holder",
-- else nil. A queued ticket whose record vanished is taken out of the queue
-- (it cannot be woken, and must not block those behind it; its next attempt
-- queues it again): nil then.
local function waiter(ticket)
  local record = redis.call('HGET', waiters_key, ticket)
  if not record then
    dequeue(ticket)
    return nil
  end
  local first = string.find(record, '\n', 1, true)
  local second = string.find(record, '\n', first + 1, true)
  if not second then
    return tonumber(string.sub(record, 1, first - 1)), string.sub(record, first + 1)
  end
  return tonumber(string.sub(record, 1, first - 1)), string.sub(record, first + 1, second - 1),
    string.sub(record, second + 1)
end

local function free_units()
  local free = num('limit') - num('held')
  if free < 0 then
    return 0
  end
  return free
end

-- Calls visit(ticket, count, channel, rest) for each waiter in queue order
-- (rest: see waiter()), in batches, until it returns false or the queue
-- ends; it returns 'gone' when it took the ticket out of the queue (a
-- handoff). Waiters whose record vanished are dropped on the way.
local function each_waiter(visit)
  if num('qlen') == 0 then
    return
  end
  local at = 0
  while true do
    local batch = redis.call('ZRANGE', queue_key, at, at + 15)
    if #batch == 0 then
      if at == 0 then
        -- The queue was lost (eviction): nobody waits.
        set_meta('qlen', 0)
      end
      return
    end
    local gone = 0
    for i = 1, #batch do
      local count, channel, rest = waiter(batch[i])
      if not count then
        gone = gone + 1
      else
        local went = visit(batch[i], count, channel, rest)
        if not went then
          return
        elseif went == 'gone' then
          gone = gone + 1
        end
      end
    end
    at = at + #batch - gone
  end
end

-- The most waiters one call serves, or walks past to decide (see serve).
local WAKE_CAP = 100

-- Whether `count` units for `ticket` fit after every waiter ahead of it (the
-- whole queue when the ticket is not in it). The walk stops as soon as the
-- units ahead exceed what is free, so it is short whatever the queue length
-- while units are scarce. When many are free (a raise, with a capped serve
-- going on), it stops after WAKE_CAP waiters ahead: this ticket does not fit
-- yet, and the serve reaches it in order. Walked to the end, a re-check of
-- a ticket 5,000 deep took 15 ms.
local function fits(ticket, count)
  local free = free_units()
  local needed = count
  if needed > free then
    return false
  end
  local walked = 0
  each_waiter(function(waiting, ahead)
    if waiting == ticket then
      return false
    end
    walked = walked + 1
    needed = needed + ahead
    if walked >= WAKE_CAP then
      needed = free + 1
    end
    return needed <= free
  end)
  return needed <= free
end

local function soonest_expiry_in_ms()
  local soonest = redis.call('ZRANGE', expiry_key, 0, 0, 'WITHSCORES')
  if soonest[2] then
    return tonumber(soonest[2]) - now_ms
  end
  return -1
end

-- Wakes a waiter: it attempts again.
local function wake(ticket, channel)
  redis.call('PUBLISH', channel, ticket .. '\n' .. int(now_us))
end

-- Tells a waiter that it is now the head of the queue but does not fit, and
-- in how many ms the soonest lease ends (-1: no lease): it aims its timer
-- there without attempting (an attempt now would only find what this call
-- found, and cost a script).
local function tell_head(ticket, channel)
  redis.call('PUBLISH', channel, ticket .. '\n' .. int(now_us) .. '\n' .. int(soonest_expiry_in_ms()))
end

-- Keeps a granted permit: its record, lease and Idempotency-Key. The first
-- permit of an idle semaphore creates the permit keys (see touched()).
local function keep_permit(id, record, expires, idem)
  if num('held') == 0 then
    touched(nil, permits_key)
    touched(nil, expiry_key)
  end
  redis.call('HSET', permits_key, id, record)
  redis.call('ZADD', expiry_key, expires, id)
  lower_hint('soon', expires)
  touched(expires)
  if idem ~= '' then
    redis.call('HSET', idem_key, idem, id)
    touched(nil, idem_key)
  end
end

-- Grants a waiter its permit in this call, from the request stored with
-- its ticket (`rest`, see waiter()), and publishes the grant to its
-- instance, which answers the waiting request from it with no script of
-- its own ("ticket \n now_us \n g \n fence \n acquired_ms \n expires_ms").
-- Only while that instance listens on its channel: a grant nobody hears
-- would hold its units until the lease ends, so a waiter whose instance is
-- gone is only woken (nobody hears it either) and leaves the queue when its
-- waiter lease ends. A grant published but lost on the way (the
-- subscription dropped) is not lost: the instance re-checks every waiter
-- when it subscribes again, and an attempt of a ticket that holds its
-- permit returns that permit; a waiter that left meanwhile releases it
-- (leave.lua). Returns whether it granted.
local function hand_off(ticket, count, channel, rest)
  if redis.call('PUBSUB', 'NUMSUB', channel)[2] == 0 then
    return false
  end
  local ttl, idem, fingerprint, holder = string.match(rest, '^(%d+)\n([^\n]*)\n([^\n]*)\n(.*)$')
  if not ttl then
    return false
  end
  dequeue(ticket)
  local fence = int(next_fence())
  local expires = now_ms + tonumber(ttl)
  keep_permit(ticket, encode({ count = int(count), fence = fence, acquired = int(now_ms),
    idem = idem, fingerprint = fingerprint, expires = expires, claimed = '0', holder = holder }),
    expires, idem)
  add_held(count)
  redis.call('PUBLISH', channel, table.concat({ ticket, int(now_us), 'g', fence, int(now_ms),
    int(expires) }, '\n'))
  return true
end

-- Serves the waiters that fit now, in queue order, from `free` units: each
-- is handed its permit (hand_off) or, when it cannot be, woken to attempt.
-- The first that does not fit blocks the rest (strict FIFO); if every one
-- before it was handed its permit and the head left, it is the new head and
-- is told so (tell_head), to aim its timer at the next lease end.
--
-- At most WAKE_CAP are served by one call, so that no script runs long
-- whatever the queue (a raise with 10,000 waiters took 62 ms in one
-- script; 200 handoffs took 5 ms, and the scripts around them a few more). The last one it serves is woken, not handed its permit, and
-- `wnext` (its queue score) and `wfree` (the units left after it) say where
-- to go on: its own attempt, and any grant after, serves the next WAKE_CAP
-- from there (continue_wakes), so the rest follow as the first are served.
local function serve(visit_from, free, at_head)
  local served, handed, capped = 0, 0, nil
  visit_from(function(ticket, count, channel, rest, score)
    if count > free then
      if at_head and served == handed and head_left then
        tell_head(ticket, channel)
      end
      return false
    end
    free = free - count
    if served == WAKE_CAP - 1 then
      -- The last this call serves: woken, so that its attempt goes on.
      wake(ticket, channel)
      capped = score or redis.call('ZSCORE', queue_key, ticket)
      return false
    end
    served = served + 1
    if rest and hand_off(ticket, count, channel, rest) then
      handed = handed + 1
      return 'gone'
    end
    wake(ticket, channel)
    return true
  end)
  if capped then
    set_meta('wnext', capped)
    set_meta('wfree', int(free))
  elseif meta.wnext and meta.wnext ~= '' then
    set_meta('wnext', '')
  end
end

-- Serves the head of the queue (see serve), after a change that may let
-- waiters proceed.
local function wake_heads()
  local free = free_units()
  if free == 0 and not head_left then
    if meta.wnext and meta.wnext ~= '' then
      set_meta('wnext', '')
    end
    return
  end
  serve(each_waiter, free, true)
end

-- After a grant, when a capped serve left waiters that fit unserved: serves
-- the next WAKE_CAP after where it stopped, from the units it left.
local function continue_wakes()
  local from = meta.wnext
  if not from or from == '' then
    return
  end
  serve(function(visit)
    local batch = redis.call('ZRANGEBYSCORE', queue_key, '(' .. from, '+inf', 'WITHSCORES',
      'LIMIT', 0, WAKE_CAP + 1)
    for i = 1, #batch, 2 do
      local count, channel, rest = waiter(batch[i])
      if count and not visit(batch[i], count, channel, rest, batch[i + 1]) then
        return
      end
    end
  end, num('wfree'), false)
end

-- After a grant that freed nothing: the waiters that fit were all woken by
-- the change that freed their units, so waking them again would only repeat
-- it (a limit raise with n waiters sent n^2/2 wakes that way). Only a new
-- head that does not fit is told, so it aims its timer at the next lease end.
local function tell_blocked_head()
  if not head_left then
    return
  end
  local free = free_units()
  each_waiter(function(ticket, count, channel)
    if count > free then
      tell_head(ticket, channel)
    end
    return false
  end)
end

-- Tells the head waiter when the soonest lease ends now (it re-aims its
-- timer), or wakes it if it fits.
local function wake_first()
  local head = redis.call('ZRANGE', queue_key, 0, 0)
  if head[1] then
    local count, channel = waiter(head[1])
    if not count then
      return
    end
    if count > free_units() then
      tell_head(head[1], channel)
    else
      wake(head[1], channel)
    end
  end
end

-- The reply shape every permit-returning script shares.
local function permit_reply(tag, id, record, expires)
  local p = decode(record)
  return { tag, id, p.count, p.fence, p.acquired, expires, p.holder }
end

-- Starts a call: its keys and settings, one reading of the clock, the meta
-- hash in one HMGET, and everything else per call back to its start.
local function begin(keys, argv)
  all_keys = keys
  meta_key, expiry_key, permits_key, idem_key = keys[1], keys[2], keys[3], keys[4]
  queue_key, waiters_key, wleases_key, left_key = keys[5], keys[6], keys[7], keys[8]
  ended_key = keys[9]
  IDLE_DEFAULT, RETENTION = argv[#argv - 1], tonumber(argv[#argv])
  local clock = redis.call('TIME')
  now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  meta, dirty, meta_gone, read_only = {}, {}, false, false
  lease_top, fresh, swept, head_left, sweep_capped = 0, {}, 0, false, false
  local values = redis.call('HMGET', meta_key, unpack(META_FIELDS))
  for i = 1, #META_FIELDS do
    if values[i] then
      meta[META_FIELDS[i]] = values[i]
    end
  end
  -- Data written before the hints existed: fill them in once.
  if meta.limit then
    if not meta.qlen then
      set_meta('qlen', redis.call('ZCARD', queue_key))
    end
    if not meta.lefts then
      recount_lefts()
    end
    if not meta.isoon then
      set_meta('isoon', soonest_score(ended_key))
    end
  end
end

-- One call of a script's body: the reply is {swept, the body's reply} (see
-- the header), and the meta hash is written back once after the body,
-- whichever `return` it took. `swept` is read after the body has run.
local function run(body, keys, argv)
  begin(keys, argv)
  local reply = body(keys, argv)
  flush_meta()
  return { swept, reply }
end
