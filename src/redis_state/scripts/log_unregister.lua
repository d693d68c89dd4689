-- Forgets a worker that holds nothing. KEYS: 1 workers, 2 its lease, 3 its list.
-- ARGV: 1 its id. Returns the records it still holds (0 when it was forgotten).
local held = redis.call('LLEN', KEYS[3])
if held == 0 then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
end
return held
