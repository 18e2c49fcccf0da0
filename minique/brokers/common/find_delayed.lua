-- Find delayed messages by task id, one page of the delayed set at a time (reads only).
-- KEYS[1]      delayed zset (score = due time in ms, member = priority digit .. message bytes)
-- ARGV[1]      ZSCAN cursor ("0" to start)
-- ARGV[2]      ZSCAN COUNT hint
-- ARGV[3..]    task ids
-- Returns {next cursor ("0" when done), {member, score, ...}}: the page's members whose bytes hold one
-- of the ids. A plain substring search, so only candidates: an id is also in the messages of its
-- children (as their root or parent) and of chains (their next steps), and the caller confirms each
-- member's own id (message.peek_id). Paging with ZSCAN keeps each call short on a large set, and
-- finds every member that stays in the set for the whole scan.
local page = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', tonumber(ARGV[2]))
local items, found = page[2], {}
for i = 1, #items, 2 do
  local member = items[i]
  for j = 3, #ARGV do
    if string.find(member, ARGV[j], 1, true) then
      table.insert(found, member)
      table.insert(found, items[i + 1])
      break
    end
  end
end
return {page[1], found}
