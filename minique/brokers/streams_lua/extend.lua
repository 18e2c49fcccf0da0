-- Renew a live consumer's claim on everything it holds in one stream (resets idle time,
-- does not count a delivery), so the reaper leaves its running and prefetched tasks alone.
-- KEYS[1] the stream; ARGV[1] group; ARGV[2] consumer
-- Returns how many entries were renewed.
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 10000, ARGV[2])
if not ok or #pending == 0 then return 0 end
-- unpack() expands only as the last argument of a call, and has a stack limit: build each
-- XCLAIM's whole argument list, 1000 ids at a time
for s = 1, #pending, 1000 do
  local args = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
  for i = s, math.min(s + 999, #pending) do table.insert(args, pending[i][1]) end
  table.insert(args, 'JUSTID')
  redis.call(unpack(args))
end
return #pending
