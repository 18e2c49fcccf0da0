-- Give back a task's run slot, and bring the first message waiting for one forward (due now).
-- KEYS[1] slots zset, KEYS[2] waiting list, KEYS[3] the queue's delayed zset; ARGV[1] task id.
-- A waiting member no longer in the delayed set (it came due and was moved) is skipped; at most 16 are
-- looked at. Returns 1 if a waiting message was brought forward, else 0.
redis.call('ZREM', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _ = 1, 16 do
  local member = redis.call('LPOP', KEYS[2])
  if not member then
    return 0
  end
  if redis.call('ZADD', KEYS[3], 'XX', 'LT', 'CH', now, member) == 1 then
    return 1
  end
end
return 0
