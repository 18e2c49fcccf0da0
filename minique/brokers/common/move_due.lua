-- Move due messages from a queue's delayed set into its priority queues, atomically.
-- KEYS[1]      delayed zset (score = due time in ms, member = priority digit .. message bytes)
-- KEYS[2..11]  the queue's priority queues p0..p9 (streams or lists)
-- ARGV[1]      at most this many messages
-- ARGV[2]      "streams" | "lists": how to append to a queue
-- ARGV[3]      ms a malformed member is set aside for (see below)
-- A member that does not start with a priority digit 0-9 is malformed: it is not moved but returned
-- to the caller, who dead-letters it and then removes it (the dead-letter stream is in another hash
-- slot). Its score is pushed ARGV[3] ms ahead first, so callers racing this one leave it alone; if
-- this caller dies before removing it, a later one finds it again then (dead-lettered twice at
-- worst, never lost).
-- Returns {moved, next due score in ms or false, {malformed member, ...}}.
-- "Now" is the server's clock, one clock for all hosts.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local moved, bad = 0, {}
for _, member in ipairs(due) do
  local digit = string.byte(member, 1)
  if digit and digit >= 48 and digit <= 57 then
    local prio = digit - 48
    local data = string.sub(member, 2)
    if ARGV[2] == 'streams' then
      redis.call('XADD', KEYS[prio + 2], '*', 'm', data)
    else
      -- lists carry a two-byte header: delivery count, priority
      redis.call('LPUSH', KEYS[prio + 2], string.char(0, prio) .. data)
    end
    redis.call('ZREM', KEYS[1], member)
    moved = moved + 1
  else
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[3]), member)
    table.insert(bad, member)
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then
  return {moved, nxt[2], bad}
end
return {moved, false, bad}
