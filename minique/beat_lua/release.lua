-- Release the beat leader lease only if we hold it (compare-and-del).
-- KEYS[1] lease key; ARGV[1] our token. Returns 1 when released, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
