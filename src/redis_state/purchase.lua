-- KEYS: 1 stock, 2 over, 3 buyers, 4 requests, 5 success, 6 logs
-- ARGV: 1 request_id, 2 user_id, 3 record JSON
local stock = redis.call('GET', KEYS[1])
if not stock then
  return -1
end
if redis.call('SADD', KEYS[4], ARGV[1]) == 0 then
  return 2
end
if redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 1 then
  return 3
end
if tonumber(stock) <= 0 then
  redis.call('SET', KEYS[2], '1')
  return 1
end
local remaining = redis.call('DECR', KEYS[1])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('INCR', KEYS[5])
redis.call('RPUSH', KEYS[6], ARGV[3])
if remaining <= 0 then
  redis.call('SET', KEYS[2], '1')
end
return 0
