-- Shared by the scripts that change orders (payment_batch.lua, order_expire.lua): prepended
-- to each when it is loaded. An order lives in the activity's orders hash as
-- `<state>:<user id>:<pay_by ms>`, state R (reserved), P (paid) or E (expired); a live
-- reservation is also in the deadlines sorted set, scored by its pay_by. Both scripts put
-- the sale's stock, over flag and holdings in KEYS[1], KEYS[2] and KEYS[3].
local function redis_now()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local function parse_order(value)
  if not value then
    return nil
  end
  local state, user, pay_by = string.match(value, '^(%a):(%d+):(%d+)$')
  return state, user, pay_by
end
-- The order event log_worker publishes (and stores in PostgreSQL's orders table).
local function order_event(activity_id, order_id, user, state, at, pay_by, payment_id)
  local paid_with = ''
  if payment_id then
    paid_with = ',"payment_id":' .. cjson.encode(payment_id)
  end
  return '{"kind":"order","id":' .. cjson.encode(order_id) .. ',"activity_id":' ..
    activity_id .. ',"user_id":' .. user .. ',"state":"' .. state .. '","at":' .. at ..
    ',"pay_by":' .. pay_by .. paid_with .. '}'
end

-- each_chunk comes from each_chunk.lua, prepended before this file.

-- The units of `count` expired orders go back: each user in `held_by` (user -> orders)
-- holds that many fewer (none left: out of the holdings), the stock grows, and a sold-out
-- sale re-opens.
local function return_units(held_by, count)
  for user, held in pairs(held_by) do
    if redis.call('HINCRBY', KEYS[3], user, -held) <= 0 then
      redis.call('HDEL', KEYS[3], user)
    end
  end
  redis.call('INCRBY', KEYS[1], count)
  redis.call('DEL', KEYS[2])
end
