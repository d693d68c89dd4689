-- Expires up to ARGV[2] reservations whose deadline passed (by Redis's clock), in one
-- bounded slice: each unit goes back to the stock (a sold-out sale re-opens), the user holds
-- one purchase less (and may buy again), and an EXPIRED order event is queued on the log
-- list, from where log_worker stores and publishes it. Called again while slices come back
-- full, so Redis never runs one long call.
-- KEYS: 1 stock, 2 over, 3 holdings, 4 orders, 5 deadlines, 6 order counts, 7 logs
-- ARGV: 1 activity_id, 2 most orders this call
-- Returns {orders expired, next deadline (-1: none), Redis time}, or {-1} when the activity
-- has no live state.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1}
end
local now = redis_now()
local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local expired = 0
if #due > 0 then
  local values = redis.call('HMGET', KEYS[4], unpack(due))
  local changes, events, users = {}, {}, {}
  for i, order_id in ipairs(due) do
    local state, user, pay_by = parse_order(values[i])
    if state == 'R' then
      expired = expired + 1
      changes[#changes + 1] = order_id
      changes[#changes + 1] = 'E:' .. user .. ':' .. pay_by
      events[#events + 1] = order_event(ARGV[1], order_id, user, 'EXPIRED', now, pay_by, nil)
      users[user] = (users[user] or 0) + 1
    end
  end
  each_chunk(due, function(...) redis.call('ZREM', KEYS[5], ...) end)
  if expired > 0 then
    each_chunk(changes, function(...) redis.call('HSET', KEYS[4], ...) end)
    return_units(users, expired)
    redis.call('HINCRBY', KEYS[6], 'reserved', -expired)
    redis.call('HINCRBY', KEYS[6], 'expired', expired)
    each_chunk(events, function(...) redis.call('RPUSH', KEYS[7], ...) end)
  end
end
local next_due = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
return {expired, tonumber(next_due[2]) or -1, now}
