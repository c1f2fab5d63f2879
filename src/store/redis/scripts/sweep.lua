--[[ sweep.lua: removes ended leases and dead waiters, at most SWEEP_CAP of
each, and wakes who that lets in.

No ARGV of its own. Returns 1 if more may be left to sweep, else 0 (also
when the semaphore does not exist).

For a read that found more ended leases than it may skip over in one call
(status.lua): it sweeps, then reads again, so neither script runs long
however many leases ended together.
]]
if not meta.limit then
  return 0
end
if expire() + drop_dead_waiters() > 0 then
  wake_heads()
end
if sweep_capped then
  return 1
end
return 0
