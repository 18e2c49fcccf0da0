-- Redeliver entries no consumer has renewed for the visibility timeout (their worker is gone).
-- KEYS[1] the stream
-- ARGV[1] group; ARGV[2] reaper consumer name; ARGV[3] min idle ms (visibility timeout);
-- ARGV[4] batch size; ARGV[5] max deliveries; ARGV[6] where to start in the pending list ('0-0' first)
-- Each entry is re-added with its delivery count + 1, or, past max deliveries, left pending
-- (owned by the reaper) and returned for the caller to dead-letter. A malformed entry (without its
-- message field `m`, or with a delivery count `d` that is not a whole number) is left pending the
-- same way and returned with its fields, for the caller to dead-letter with the reason.
-- XAUTOCLAIM looks at no more than 10 x batch size pending entries per call: the caller goes on
-- from the returned cursor until it is '0-0' again, so idle entries behind many live ones are found.
-- Returns {redelivered count, {id, data, ...}, next cursor, {id, {field, value, ...}, ...}}
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[6] or '0-0',
                     'COUNT', tonumber(ARGV[4]))
local n, dead, bad = 0, {}, {}
for _, e in ipairs(r[2]) do
  local id, f = e[1], e[2]
  if f then
    local data, d, ok = nil, 0, true
    for j = 1, #f, 2 do
      if f[j] == 'm' then
        data = f[j + 1]
      elseif f[j] == 'd' then
        if string.match(f[j + 1], '^%d+$') then d = tonumber(f[j + 1]) else ok = false end
      end
    end
    if data == nil or not ok then
      table.insert(bad, id)
      table.insert(bad, f)
    else
      d = d + 1
      if d > tonumber(ARGV[5]) then
        table.insert(dead, id)
        table.insert(dead, data)
      else
        redis.call('XADD', KEYS[1], '*', 'm', data, 'd', d)
        redis.call('XACK', KEYS[1], ARGV[1], id)
        redis.call('XDEL', KEYS[1], id)
        n = n + 1
      end
    end
  else
    redis.call('XACK', KEYS[1], ARGV[1], id)
  end
end
-- deleted entries XAUTOCLAIM reports (Redis 7) are acked too
if r[3] then
  for _, id in ipairs(r[3]) do redis.call('XACK', KEYS[1], ARGV[1], id) end
end
return {n, dead, r[1], bad}
