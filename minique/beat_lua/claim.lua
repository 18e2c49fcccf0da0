-- Claim one schedule slot of a beat entry: compare-and-set of its last run.
-- KEYS[1] the last-run hash; ARGV[1] entry name; ARGV[2] the last run the caller
-- based its decision on ('' = never run); ARGV[3] the slot (epoch seconds).
-- Succeeds only if the stored value is still ARGV[2] and the slot is later, so
-- two beats that both think they lead can never claim (and send) the same slot.
-- Returns {1, slot} when claimed, {0, current value or ''} otherwise.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur == false then cur = '' end
if cur ~= ARGV[2] or (cur ~= '' and tonumber(ARGV[3]) <= tonumber(cur)) then
  return {0, cur}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {1, ARGV[3]}
