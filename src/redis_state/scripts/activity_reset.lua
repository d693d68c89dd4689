-- Resets an activity to a fresh sale (server_kafka --initial-stock, the quick path): every
-- key of it removed, records still queued included, then the live state written.
-- KEYS: 1 meta, 2 stock, 3 initial_stock, 4 added_stock, 5 success, then every other key of
--       the activity to remove (fixed keys and the log_workers' lists and leases)
-- ARGV: 1 stock, 2 starts_at_ms, 3 ends_at_ms, 4 per-user limit
for i = 1, #KEYS, 1000 do
  redis.call('DEL', unpack(KEYS, i, math.min(i + 999, #KEYS)))
end
redis.call('HSET', KEYS[1], 'starts_at_ms', ARGV[2], 'ends_at_ms', ARGV[3], 'limit', ARGV[4])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], 0)
redis.call('SET', KEYS[5], 0)
redis.call('SET', KEYS[2], ARGV[1])
return 1
