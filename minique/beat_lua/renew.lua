-- Renew the beat leader lease only while we still hold it (compare-and-pexpire).
-- KEYS[1] lease key; ARGV[1] our token; ARGV[2] lease length in ms.
-- Returns 1 when renewed, 0 when the lease is gone or held by another beat.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
