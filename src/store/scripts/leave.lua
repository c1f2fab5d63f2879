--[[ leave.lua: withdraw a ticket whose request went away.

ARGV[1] ticket
Returns 1 if the ticket was queued or held a permit, 0 otherwise.

The ticket leaves the queue; if it was granted a moment ago (the client left
before hearing so) its permit is released. Atomic so the waiters behind it
are woken in the same step that unblocks them.
]]
if redis.call('EXISTS', meta_key) == 0 then
  return 0
end
expire()
drop_dead_waiters()
local left = dequeue(ARGV[1])
local released = remove_permit(ARGV[1])
wake_heads()
if left or released then
  return 1
end
return 0
