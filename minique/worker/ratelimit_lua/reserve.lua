-- Reserve the next starts of a rate-limited task, cluster-wide (GCRA with a burst of one: starts are
-- at least `interval` apart, as Celery's per-worker token bucket of capacity 1, but across workers).
-- KEYS[1]: the bucket (a string: the next free start, µs, Redis's clock)
-- ARGV[1]: the interval between starts (µs, > 0); ARGV[2]: how many starts to reserve (>= 1)
-- Returns {first, now} (µs): the starts reserved are first, first + interval, ...; one at or before
-- now runs at once, a later one is its task's own (the task is parked until then and runs without
-- asking again).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local free = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local first = math.max(free, now)
local nxt = first + interval * tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.floor((nxt - now) / 1000) + 1000)
return {string.format('%.0f', first), string.format('%.0f', now)}
