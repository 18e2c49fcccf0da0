-- Take a run slot of a concurrency-limited task, or park the message until one may be free.
-- KEYS[1] slots: zset task id -> lease end (ms, Redis's clock); KEYS[2] waiting: list of parked members;
-- KEYS[3] the queue's delayed zset.
-- ARGV[1] task id, ARGV[2] limit, ARGV[3] lease (ms), ARGV[4] the delayed-set member (priority digit +
-- message) to park, ARGV[5] the longest a parked message waits before it looks again (ms).
-- Returns {1} when the slot is taken (also when this task holds one already: a redelivery), else
-- {0, due}: the message is parked in the delayed set until due, and listed as waiting, so that the
-- release of a slot brings the first one waiting forward (release.lua). Leases that ended (a lost
-- worker's) are dropped first: a slot never leaks for longer than its lease.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease + 60000)
  return {1}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local due = math.min(tonumber(first[2]), now + tonumber(ARGV[5]))
redis.call('ZADD', KEYS[3], due, ARGV[4])
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[2], lease + 60000)
return {0, due}
