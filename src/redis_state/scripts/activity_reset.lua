-- Resets an activity to a fresh sale (server_kafka --initial-stock, the quick path): every
-- key of it removed, records still queued included, then the live state written.
-- KEYS: 1 meta, 2 stock, 3 initial_stock, 4 added_stock, 5 success, 6 decided, then every
--       other key of the activity to remove (fixed keys and the log_workers' lists and leases)
-- ARGV: 1 stock, 2 starts_at_ms, 3 ends_at_ms, 4 per-user limit, 5 payment_window_ms
for i = 1, #KEYS, 1000 do
  redis.call('DEL', unpack(KEYS, i, math.min(i + 999, #KEYS)))
end
redis.call('HSET', KEYS[1], 'starts_at_ms', ARGV[2], 'ends_at_ms', ARGV[3], 'limit', ARGV[4],
  'payment_window_ms', ARGV[5])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], 0)
redis.call('SET', KEYS[5], 0)
-- As on create: the decided hash gets one field of its own, '' (no request id is empty), with a value
-- longer than Redis keeps in a listpack (hash-max-listpack-value, 64 by default): the hash is
-- a hashtable from the start. As a listpack (up to 128 fields, 512 on Debian) every request
-- id looked up or added is a scan of the whole hash: 15% of Redis's time in the 100-sale
-- benchmark (docs/BENCHMARKS.md).
redis.call('HSET', KEYS[6], '', string.rep('-', 300))
redis.call('SET', KEYS[2], ARGV[1])
return 1
