--[[ set_limit.lua: create the semaphore or change its limit.

ARGV[1] limit
ARGV[2] idle TTL in ms ('0': never forgotten), or '' to leave it as it is
        (a new semaphore then has the default)
Returns {'created'}, {'unchanged'} or {'changed', previous_limit}; the
idle TTL is not part of the answer.

Lowering a limit never touches held permits: new acquires wait until what
is held fits. Raising it wakes the waiters that fit now, in the same step.
A new semaphore's fencing counter starts at the Redis clock in microseconds,
so tokens keep increasing across a delete and re-create.
]]
-- A new idle TTL: the key expiry is decided again from everything live
-- (see plan_expiry), or dropped when the semaphore is never forgotten.
local function set_idle()
  if ARGV[2] == '' or ARGV[2] == meta.idle then
    return
  end
  set_meta('idle', ARGV[2])
  if ARGV[2] ~= '0' then
    set_meta('dies', '')
  end
end

local current = meta.limit
if not current then
  create(ARGV[1])
  set_idle()
  return { 'created' }
end
set_idle()
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
