-- Claim one schedule slot of a beat entry: compare-and-set of its last run.
-- KEYS[1] the last-run hash; ARGV[1] entry name; ARGV[2] the last run the caller
-- based its decision on ('' = never run); ARGV[3] the slot (epoch seconds).
-- Succeeds only if the stored value is still ARGV[2] and the slot is later, so
-- two beats that both think they lead can never claim (and send) the same slot.
-- A stored value that is not a number (a malformed record) counts as never run: the claim
-- overwrites it (the caller saw the same value and took it for never run too).
-- Returns {1, slot} when claimed, {0, current value or ''} otherwise.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur == false then cur = '' end
local last = tonumber(cur)
if last and not (last >= -62135596800 and last <= 253402300799) then last = nil end  -- years 1..9999 (nan: no)
if cur ~= ARGV[2] or (last and tonumber(ARGV[3]) <= last) then
  return {0, cur}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1, ARGV[3]}
