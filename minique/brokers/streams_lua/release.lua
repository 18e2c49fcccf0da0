-- Hand back everything a consumer holds in one stream, uncounted, then delete the consumer.
-- KEYS[1] the stream; ARGV[1] group; ARGV[2] consumer; ARGV[3] the reaper's consumer name
-- A malformed entry (without its message field `m`, or with a delivery count `d` that is not a
-- whole number) is not handed back: it is moved to the reaper (still pending, so it outlives the
-- consumer) and returned with its fields, for the caller to dead-letter and then remove. Should the
-- caller die first, the reaper finds it again after the visibility timeout.
-- Returns {how many entries went back, {id, {field, value, ...}, ...}}.
local n, bad = 0, {}
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 10000, ARGV[2])
if not ok then return {0, bad} end
for _, p in ipairs(pending) do
  local id = p[1]
  local e = redis.call('XRANGE', KEYS[1], id, id)
  local handed = true
  if #e > 0 then
    local f = e[1][2]
    local good = false
    for j = 1, #f, 2 do
      if f[j] == 'm' then good = true end
    end
    for j = 1, #f, 2 do
      if f[j] == 'd' and not string.match(f[j + 1], '^%d+$') then good = false end
    end
    if good then
      redis.call('XADD', KEYS[1], '*', unpack(f))
      redis.call('XDEL', KEYS[1], id)
      n = n + 1
    else
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, id, 'JUSTID')
      table.insert(bad, id)
      table.insert(bad, f)
      handed = false
    end
  end
  if handed then redis.call('XACK', KEYS[1], ARGV[1], id) end
end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return {n, bad}
