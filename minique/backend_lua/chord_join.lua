-- Record one chord header member's result; fire the callback exactly once.
-- KEYS[1] chord hash (header index -> encoded result); KEYS[2] the chord's done flag
-- ARGV[1] member index; ARGV[2] encoded result; ARGV[3] header size; ARGV[4] expiry s;
-- ARGV[5] lease s: how long the firing worker has to send the callback before another may
-- Joins by membership (HSET on the index), so a redelivered member never counts twice.
-- Returns the results in header order to the one caller that completes the chord, else nil.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
local size = tonumber(ARGV[3])
if redis.call('HLEN', KEYS[1]) < size then return nil end
if not redis.call('SET', KEYS[2], 'firing', 'NX', 'EX', tonumber(ARGV[5])) then return nil end
local idx = {}
for i = 0, size - 1 do idx[#idx + 1] = tostring(i) end
local out = {}
-- HMGET in slices: Lua's unpack has a stack limit
for s = 1, #idx, 1000 do
  local part = redis.call('HMGET', KEYS[1], unpack(idx, s, math.min(s + 999, #idx)))
  for _, v in ipairs(part) do out[#out + 1] = v end
end
return out
