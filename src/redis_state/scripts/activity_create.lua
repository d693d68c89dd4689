-- Pre-warms a new activity's live state, unless it has one.
-- KEYS: 1 meta, 2 stock, 3 initial_stock, 4 added_stock, 5 success, 6 over, 7 holdings,
--       8 decided, 9 outcome counts, 10 orders, 11 deadlines, 12 order counts, 13 payments
-- ARGV: 1 stock, 2 starts_at_ms (0: open now), 3 ends_at_ms (0: no end), 4 per-user limit,
--       5 payment_window_ms (0: a purchase is final)
-- Returns 1 when written, 0 when the activity has live state already (nothing changed).
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
-- Leftovers of a state half gone (never the log lists: they hold unstored purchases).
redis.call('DEL', KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12],
  KEYS[13])
redis.call('HSET', KEYS[1], 'starts_at_ms', ARGV[2], 'ends_at_ms', ARGV[3], 'limit', ARGV[4],
  'payment_window_ms', ARGV[5])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], 0)
redis.call('SET', KEYS[5], 0)
-- The decided hash gets one field of its own, '' (no request id is empty), with a value
-- longer than Redis keeps in a listpack (hash-max-listpack-value, 64 by default): the hash is
-- a hashtable from the start. As a listpack (up to 128 fields, 512 on Debian) every request
-- id looked up or added is a scan of the whole hash: 15% of Redis's time in the 100-sale
-- benchmark (docs/BENCHMARKS.md).
redis.call('HSET', KEYS[8], '', string.rep('-', 300))
redis.call('SET', KEYS[2], ARGV[1])
return 1
