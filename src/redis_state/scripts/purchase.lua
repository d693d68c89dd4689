-- The purchase of one request. A request id is decided once: its outcome is kept (with the
-- user id) in the decided hash, and a repeated request (a redelivery, a duplicated send) is
-- answered with that outcome again, flagged as a repeat, without touching anything. The
-- sale window is judged by Redis's clock (TIME).
-- KEYS: 1 stock, 2 over, 3 holdings, 4 decided, 5 success, 6 logs, 7 outcome counts, 8 meta
-- ARGV: 1 request_id, 2 user_id, 3 record JSON
-- Returns 0 SUCCESS, 1 SOLD_OUT, 3 ALREADY_BOUGHT, 4 NOT_STARTED, 5 ENDED, 10 + that for a
-- repeat, or -1 when the activity has no live state (no stock key), -3 when the sale has a
-- payment window (its purchases are reservations: purchase_batch.lua makes them).
local stock = redis.call('GET', KEYS[1])
if not stock then
  return -1
end
local prior = redis.call('HGET', KEYS[4], ARGV[1])
if prior then
  return 10 + tonumber(string.match(prior, '^%d+'))
end
local meta = redis.call('HMGET', KEYS[8], 'starts_at_ms', 'ends_at_ms', 'limit',
  'payment_window_ms')
if (tonumber(meta[4]) or 0) > 0 then
  return -3
end
local starts, ends = tonumber(meta[1]) or 0, tonumber(meta[2]) or 0
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local code
if now < starts then
  code = 4
elseif ends > 0 and now >= ends then
  code = 5
elseif (tonumber(redis.call('HGET', KEYS[3], ARGV[2])) or 0) >= (tonumber(meta[3]) or 1) then
  code = 3
elseif tonumber(stock) <= 0 then
  redis.call('SET', KEYS[2], '1')
  code = 1
else
  local remaining = redis.call('DECR', KEYS[1])
  redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
  redis.call('INCR', KEYS[5])
  redis.call('RPUSH', KEYS[6], ARGV[3])
  if remaining <= 0 then
    redis.call('SET', KEYS[2], '1')
  end
  code = 0
end
redis.call('HSET', KEYS[4], ARGV[1], code .. ':' .. ARGV[2])
redis.call('HINCRBY', KEYS[7], code, 1)
return code
