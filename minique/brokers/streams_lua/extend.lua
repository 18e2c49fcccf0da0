-- Renew a live consumer's claim on everything it holds in one stream (resets idle time,
-- does not count a delivery), so the reaper leaves its running and prefetched tasks alone.
-- KEYS[1] the stream; ARGV[1] group; ARGV[2] consumer
-- Returns how many entries were renewed.
local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 10000, ARGV[2])
if not ok or #pending == 0 then return 0 end
local ids = {}
for _, p in ipairs(pending) do table.insert(ids, p[1]) end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids), 'JUSTID')
return #ids
