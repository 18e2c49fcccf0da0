-- Put one held element back in its queue (at the back), counting a delivery if asked.
-- KEYS[1] processing list; KEYS[2..11] the queue's lists p0..p9
-- ARGV[1] 1 to count a delivery, 0 not to; ARGV[2] max deliveries; ARGV[3] the element
-- An element without a valid 2-byte header (delivery count, priority 0-9) is malformed.
-- Returns {} when requeued (or no longer held), else the element left in place for the caller to
-- dead-letter (and then remove): {'dead', element} past max deliveries, {'malformed', element}.
local e = ARGV[3]
local prio = string.byte(e, 2)
if not prio or prio > 9 then
  if redis.call('LPOS', KEYS[1], e) then return {'malformed', e} end
  return {}
end
local d = string.byte(e, 1) + tonumber(ARGV[1])
if d > tonumber(ARGV[2]) then return {'dead', e} end
if redis.call('LREM', KEYS[1], -1, e) == 0 then return {} end
if d > 255 then d = 255 end
redis.call('LPUSH', KEYS[prio + 2], string.char(d, prio) .. string.sub(e, 3))
return {}
