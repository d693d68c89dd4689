-- Moves up to ARGV[1] records from the queue to a worker's processing list in one round trip
-- (three commands, whatever the count).
local taken = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #taken == 0 then
  return taken
end
for first = 1, #taken, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(taken, first, math.min(first + 999, #taken)))
end
redis.call('LTRIM', KEYS[1], #taken, -1)
return taken
