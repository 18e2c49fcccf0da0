-- Put pending entries back at the end of their stream as new entries, and forget the old ones.
-- KEYS[1] the stream
-- ARGV[1] group; ARGV[2] 1 to count a delivery (the task had started), 0 not to;
-- ARGV[3] max deliveries; ARGV[4..] entry ids
-- Entries that would pass max deliveries are left pending and returned as {id, data, ...}, and
-- malformed ones (without their message field `m`, or with a delivery count `d` that is not a
-- whole number) as {id, {field, value, ...}, ...}, for the caller to dead-letter.
-- Returns {those past max deliveries, the malformed ones}.
local dead, bad = {}, {}
local inc = tonumber(ARGV[2])
for i = 4, #ARGV do
  local id = ARGV[i]
  local e = redis.call('XRANGE', KEYS[1], id, id)
  if #e == 0 then
    redis.call('XACK', KEYS[1], ARGV[1], id)
  else
    local f = e[1][2]
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
      d = d + inc
      if d > tonumber(ARGV[3]) then
        table.insert(dead, id)
        table.insert(dead, data)
      else
        if d > 0 then
          redis.call('XADD', KEYS[1], '*', 'm', data, 'd', d)
        else
          redis.call('XADD', KEYS[1], '*', 'm', data)
        end
        redis.call('XACK', KEYS[1], ARGV[1], id)
        redis.call('XDEL', KEYS[1], id)
      end
    end
  end
end
return {dead, bad}
