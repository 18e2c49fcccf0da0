-- Reserve the next start of a rate-limited task, cluster-wide (GCRA with a burst of one: starts are
-- at least `interval` apart, as Celery's per-worker token bucket of capacity 1, but across workers).
-- KEYS[1]: the bucket (a string: the next free start, ms, Redis's clock)
-- ARGV[1]: the interval between starts (ms, > 0)
-- Returns {start, now} (ms): start <= now means "run now"; else the task is parked until start, which
-- is its own (the bucket moved past it), so it runs then without asking again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local free = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local start = math.max(free, now)
local nxt = start + interval
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.max(1, nxt - now) + 1000)
return {start, now}
