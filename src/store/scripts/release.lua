--[[ release.lua: give a live permit's units back.

ARGV[1] permit id
Returns 1 if the permit was live, 0 if unknown or already expired.

Atomic so the held count and the permit record can never disagree.
]]
if redis.call('EXISTS', meta_key) == 0 then
  return 0
end
expire()
if remove_permit(ARGV[1]) then
  return 1
end
return 0
