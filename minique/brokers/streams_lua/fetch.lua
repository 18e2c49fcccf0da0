-- Read up to COUNT new messages for a consumer, from the first stream that has any, in KEYS order
-- (highest priority first). Non-blocking; the caller blocks with XREADGROUP when this finds nothing.
-- KEYS    stream keys, in read order
-- ARGV[1] consumer group; ARGV[2] consumer; ARGV[3] count
-- Returns { {stream key, {{id, {field, value, ...}}, ...}}, ... }
local out = {}
local want = tonumber(ARGV[3])
for _, key in ipairs(KEYS) do
  if want <= 0 then break end
  if redis.call('XLEN', key) > 0 then
    local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', key, '>')
    if r and r[1] then
      local entries = r[1][2]
      if #entries > 0 then
        want = want - #entries
        table.insert(out, {key, entries})
      end
    end
  end
end
return out
