-- Return everything a consumer holds in one queue and drop its claim.
-- KEYS[1] consumers zset; KEYS[2] processing list; KEYS[3..12] the queue's lists p0..p9
-- ARGV[1] consumer; ARGV[2] 1 to count a delivery (its worker died), 0 not to; ARGV[3] max deliveries
-- Elements past max deliveries, and malformed ones (without a valid 2-byte header: delivery count,
-- priority 0-9), stay in the processing list and are returned for the caller to dead-letter and
-- then remove; the claim is kept until they are gone (should the caller die first, the reaper
-- finds them again).
-- Returns {returned count, {element past max deliveries, ...}, {malformed element, ...}}
local n, dead, bad = 0, {}, {}
local inc = tonumber(ARGV[2])
local items = redis.call('LRANGE', KEYS[2], 0, -1)
for i = #items, 1, -1 do
  local e = items[i]
  local prio = string.byte(e, 2)
  if not prio or prio > 9 then
    table.insert(bad, e)
  else
    local d = string.byte(e, 1) + inc
    if d > tonumber(ARGV[3]) then
      table.insert(dead, e)
    else
      if d > 255 then d = 255 end
      redis.call('LREM', KEYS[2], -1, e)
      redis.call('LPUSH', KEYS[prio + 3], string.char(d, prio) .. string.sub(e, 3))
      n = n + 1
    end
  end
end
if #dead == 0 and #bad == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return {n, dead, bad}
