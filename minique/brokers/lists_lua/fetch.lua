-- Move up to COUNT messages into a consumer's processing list, highest priority first,
-- and renew the consumer's claim deadline.
-- KEYS[1] consumers zset (consumer -> deadline ms); KEYS[2] the consumer's processing list;
-- KEYS[3..] the queue's lists, highest priority first
-- ARGV[1] consumer; ARGV[2] count; ARGV[3] visibility timeout in ms
-- Returns the moved elements (2-byte header .. message).
local out = {}
local want = tonumber(ARGV[2])
for i = 3, #KEYS do
  while #out < want do
    local e = redis.call('LMOVE', KEYS[i], KEYS[2], 'RIGHT', 'LEFT')
    if not e then break end
    table.insert(out, e)
  end
  if #out >= want then break end
end
if #out > 0 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[3]), ARGV[1])
end
return out
