-- Delete every waiting (undelivered) entry of a stream, leaving delivered ones to their consumers.
-- KEYS[1] the stream; ARGV[1] group. Returns how many entries were deleted.
local ok, info = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
local last = '0-0'
if ok then
  for _, g in ipairs(info) do
    for j = 1, #g, 2 do
      if g[j] == 'name' and g[j + 1] == ARGV[1] then
        for k = 1, #g, 2 do if g[k] == 'last-delivered-id' then last = g[k + 1] end end
      end
    end
  end
else
  return 0
end
local n = 0
local entries = redis.call('XRANGE', KEYS[1], '(' .. last, '+')
for _, e in ipairs(entries) do
  redis.call('XDEL', KEYS[1], e[1])
  n = n + 1
end
return n
