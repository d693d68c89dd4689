-- Moves every record of a worker whose lease lapsed to the claiming worker's processing
-- list and forgets that worker. KEYS: 1 workers, 2 its lease, 3 its list, 4 the claimer's
-- list. ARGV: 1 its id. Returns the records moved, or -1 when its lease is alive.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return -1
end
local moved = 0
while redis.call('LMOVE', KEYS[3], KEYS[4], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
redis.call('SREM', KEYS[1], ARGV[1])
return moved
