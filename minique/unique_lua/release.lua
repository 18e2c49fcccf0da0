-- Release a unique key, only if the task ending is the one holding it (a later task may hold it now).
-- KEYS[1]: the unique key; ARGV[1]: the task id. Returns 1 if released, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
