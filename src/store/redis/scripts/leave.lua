--[[ leave.lua: withdraw a ticket whose request went away.

ARGV[1] ticket
ARGV[2] ms to remember the withdrawal (longer than any call can be in flight)
Returns 1 if the ticket was queued or held a permit, 0 otherwise.

The ticket leaves the queue; if it was granted a moment ago (the client left
before hearing so) its permit is released, unless an idempotent retry was
handed that permit meanwhile (then it is the retry's). Atomic so the waiters behind it
are woken in the same step that unblocks them.

The withdrawal is also remembered in `left`: the caller may have given up
on an acquire whose script is still on its way to Redis on another
connection, and that attempt, arriving after this one, must neither grant
nor queue the ticket. The key expires by itself.
]]
redis.call('ZADD', left_key, now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', left_key, '-inf', now_ms)
redis.call('PEXPIRE', left_key, tonumber(ARGV[2]))
if not meta.limit then
  return 0
end
-- Attempts check `left` until this withdrawal is forgotten.
if now_ms + tonumber(ARGV[2]) > num('lefts') then
  set_meta('lefts', int(now_ms + tonumber(ARGV[2])))
end
local left = dequeue(ARGV[1])
-- A permit an idempotent retry was handed is that retry's now: keep it.
-- Before the sweep: a permit never delivered frees its Idempotency-Key
-- (see end_idem), also when its lease has ended meanwhile.
local record = redis.call('HGET', permits_key, ARGV[1])
local released = record and decode(record).claimed ~= '1' and remove_permit(ARGV[1], true)
local swept = expire() + drop_dead_waiters() > 0
if left or released or swept then
  wake_heads()
end
if left or released then
  return 1
end
return 0
