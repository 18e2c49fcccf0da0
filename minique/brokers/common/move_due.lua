-- Move due messages from a queue's delayed set into its priority queues, atomically.
-- KEYS[1]      delayed zset (score = due time in ms, member = priority digit .. message bytes)
-- KEYS[2..11]  the queue's priority queues p0..p9 (streams or lists)
-- ARGV[1]      at most this many messages
-- ARGV[2]      "streams" | "lists": how to append to a queue
-- Returns {moved, next due score in ms or false}. "Now" is the server's clock, one clock for all hosts.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local prio = tonumber(string.sub(member, 1, 1))
  local data = string.sub(member, 2)
  if ARGV[2] == 'streams' then
    redis.call('XADD', KEYS[prio + 2], '*', 'm', data)
  else
    -- lists carry a two-byte header: delivery count, priority
    redis.call('LPUSH', KEYS[prio + 2], string.char(0, prio) .. data)
  end
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then
  return {#due, nxt[2]}
end
return {#due, false}
