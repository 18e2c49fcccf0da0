-- Hand back everything a consumer holds in one stream, uncounted, then delete the consumer.
-- KEYS[1] the stream; ARGV[1] group; ARGV[2] consumer
-- Returns how many entries went back.
local n = 0
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 10000, ARGV[2])
if not ok then return 0 end
for _, p in ipairs(pending) do
  local id = p[1]
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if #e > 0 then
    local f = e[1][2]
    redis.call('XADD', KEYS[1], '*', unpack(f))
    redis.call('XDEL', KEYS[1], id)
    n = n + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], id)
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return n
