-- Shared by the scripts that change orders (payment_batch.lua, order_expire.lua): prepended
-- to each when it is loaded. An order lives in the activity's orders hash as
-- `<state>:<user id>:<pay_by ms>`, state R (reserved), P (paid) or E (expired); a live
-- reservation is also in the deadlines sorted set, scored by its pay_by.
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
