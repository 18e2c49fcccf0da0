-- Claim a unique key for a task about to be sent.
-- KEYS[1]: the unique key; ARGV[1]: the task id; ARGV[2]: seconds it holds at most (unique_for)
-- Returns false when claimed, else the id of the task that holds it (the send is then skipped).
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    return false
end
return redis.call('GET', KEYS[1])
