-- Renews a worker's lease, unless its records were claimed meanwhile (it is no longer in
-- the workers set). KEYS: 1 workers, 2 lease. ARGV: 1 worker id, 2 lease in ms.
-- Returns 1 when renewed, 0 when the worker lost its records.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
return 1
