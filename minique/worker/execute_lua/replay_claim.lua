-- Take a delivery's once-only replay mark (see minique/replay.py), or say who holds it.
-- (SET NX GET in one command needs Redis 7; this works from Redis 6.2.)
-- KEYS[1] the mark (minique:replay:{ID}:<retries>:<deliveries>)
-- ARGV[1] this delivery's token; ARGV[2] the mark's time to live in ms
-- Returns the token that holds the mark (ours, when asked again), or false when it is ours now.
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
