-- Adds stock to a live sale at once; a sold-out sale re-opens.
-- KEYS: 1 stock, 2 added_stock, 3 over
-- ARGV: 1 units to add
-- Returns the remaining stock after the addition, or -1 when the activity has no live state.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
redis.call('INCRBY', KEYS[2], ARGV[1])
local remaining = redis.call('INCRBY', KEYS[1], ARGV[1])
if remaining > 0 then
  redis.call('DEL', KEYS[3])
end
return remaining
