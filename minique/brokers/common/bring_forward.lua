-- Make delayed messages due soon, on the server's clock (the one move_due.lua reads).
-- KEYS[1]      delayed zset (score = due time in ms)
-- ARGV[1]      ms from now
-- ARGV[2..]    members
-- A member's score becomes now + ARGV[1] unless it is already earlier (LT); a member no longer in the
-- set (moved when it fell due) is not added back (XX).
-- Returns how many members were brought forward.
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'LT', 'CH', due, ARGV[i])
end
return n
