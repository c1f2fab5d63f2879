--[[ set_limit.lua: create the semaphore or change its limit.

ARGV[1] limit
Returns {'created'}, {'unchanged'} or {'changed', previous_limit}.

Lowering a limit never touches held permits: new acquires wait until what
is held fits. Raising it wakes the waiters that fit now, in the same step.
A new semaphore's fencing counter starts at the Redis clock in microseconds,
so tokens keep increasing across a delete and re-create.
]]
local current = meta.limit
if not current then
  create(ARGV[1])
  return { 'created' }
end
if current == ARGV[1] then
  return { 'unchanged' }
end
set_meta('limit', ARGV[1])
expire()
drop_dead_waiters()
-- Wake the head even if it no longer fits (a lowered limit): it re-aims
-- its timer at the next lease end.
head_left = true
wake_heads()
return { 'changed', tonumber(current) }
