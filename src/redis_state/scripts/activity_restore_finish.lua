-- Makes a rebuilt sale live: its definition, counters and remaining stock (written last: a
-- stock key is what makes a sale live).
-- KEYS: 1 meta, 2 stock, 3 initial_stock, 4 added_stock, 5 success, 6 over, 7 outcome counts
-- ARGV: 1 initial stock, 2 added stock, 3 units sold, 4 starts_at_ms, 5 ends_at_ms, 6 limit
local remaining = tonumber(ARGV[1]) + tonumber(ARGV[2]) - tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'starts_at_ms', ARGV[4], 'ends_at_ms', ARGV[5], 'limit', ARGV[6])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], ARGV[2])
redis.call('SET', KEYS[5], ARGV[3])
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[7], 0, ARGV[3])
end
if remaining <= 0 then
  redis.call('SET', KEYS[6], '1')
end
redis.call('SET', KEYS[2], remaining)
return remaining
