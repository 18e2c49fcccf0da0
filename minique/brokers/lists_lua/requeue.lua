-- Put one held element back in its queue (at the back), counting a delivery if asked.
-- KEYS[1] processing list; KEYS[2..11] the queue's lists p0..p9
-- ARGV[1] 1 to count a delivery, 0 not to; ARGV[2] max deliveries; ARGV[3] the element
-- Returns {element} when it would pass max deliveries (left in place for the caller to dead-letter), else {}.
local e = ARGV[3]
local d = string.byte(e, 1) + tonumber(ARGV[1])
local prio = string.byte(e, 2)
if d > tonumber(ARGV[2]) then return {e} end
if redis.call('LREM', KEYS[1], -1, e) == 0 then return {} end
if d > 255 then d = 255 end
redis.call('LPUSH', KEYS[prio + 2], string.char(d, prio) .. string.sub(e, 3))
return {}
