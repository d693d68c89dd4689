-- Rebuilds part of a lost sale's purchases from the rows stored in PostgreSQL: each user's
-- holdings, and each successful request's decision (so a redelivered winning request is
-- answered SUCCESS again). The sale is not live until activity_restore_finish.lua.
-- KEYS: 1 holdings, 2 decided
-- ARGV: request_id, user_id, request_id, user_id, ...
for i = 1, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i + 1], 1)
  redis.call('HSET', KEYS[2], ARGV[i], '0:' .. ARGV[i + 1])
end
return #ARGV / 2
