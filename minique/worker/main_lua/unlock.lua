-- Release a short lock only if we still hold it (compare-and-delete): a holder whose lock
-- expired must not delete the lock another holder has taken since.
-- KEYS[1] lock key; ARGV[1] our token. Returns 1 when released, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
