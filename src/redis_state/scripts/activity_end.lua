-- Ends a sale now, by Redis's clock: its end becomes now unless it ended already (a sale
-- not started yet starts and ends now: it answers ENDED from then on).
-- KEYS: 1 meta, 2 stock
-- Returns the end (ms since the epoch), or -1 when the activity has no live state.
if redis.call('EXISTS', KEYS[2]) == 0 then
  return -1
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ends = tonumber(redis.call('HGET', KEYS[1], 'ends_at_ms')) or 0
if ends == 0 or ends > now then
  if (tonumber(redis.call('HGET', KEYS[1], 'starts_at_ms')) or 0) > now then
    redis.call('HSET', KEYS[1], 'starts_at_ms', now)
  end
  redis.call('HSET', KEYS[1], 'ends_at_ms', now)
  return now
end
return ends
