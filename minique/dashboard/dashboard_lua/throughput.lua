-- Add task counts to the throughput hash, each events entry at most once (dashboards restart and
-- read the stream again from its start; several dashboards may follow it at once).
-- KEYS[1] minique:throughput (hash: "<bucket>:<s|f|r>" -> count, "last" -> last entry id counted)
-- ARGV: ttl (s), oldest bucket kept (epoch s; older fields are dropped, older counts ignored),
--       prune (1: drop the fields of buckets older than that now), then per entry:
--       entry id, n, and n pairs of (bucket, code, count)
local key = KEYS[1]
local ttl, oldest, prune = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == "1"

local function parse(id)
  local ms, seq = string.match(id or "", "^(%d+)-(%d+)$")
  return tonumber(ms or "0"), tonumber(seq or "0")
end
local function after(a, b)  -- stream id a comes after b
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams > bms or (ams == bms and aseq > bseq)
end

local last = redis.call("HGET", key, "last") or "0-0"
local i, counted = 4, 0
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  local fresh = after(id, last)
  for j = 0, n - 1 do
    local at = i + 2 + 3 * j
    local bucket = tonumber(ARGV[at])
    if fresh and bucket >= oldest then
      redis.call("HINCRBY", key, ARGV[at] .. ":" .. ARGV[at + 1], tonumber(ARGV[at + 2]))
    end
  end
  if fresh then
    last = id
    counted = counted + 1
  end
  i = i + 2 + 3 * n
end
redis.call("HSET", key, "last", last)
if prune then
  for _, field in ipairs(redis.call("HKEYS", key)) do
    local bucket = tonumber(string.match(field, "^(%d+):"))
    if bucket and bucket < oldest then
      redis.call("HDEL", key, field)
    end
  end
end
redis.call("EXPIRE", key, ttl)
return counted
