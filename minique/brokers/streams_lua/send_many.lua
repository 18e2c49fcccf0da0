-- Add many messages in one call: the bulk path (a group's members, delay_many). One reply for
-- all of them instead of one per XADD, which costs the client more than building the message.
-- KEYS    the stream keys the messages go to
-- ARGV    pairs: index into KEYS (1-based), message bytes
-- Returns the number of messages added.
local n = 0
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[tonumber(ARGV[i])], '*', 'm', ARGV[i + 1])
  n = n + 1
end
return n
