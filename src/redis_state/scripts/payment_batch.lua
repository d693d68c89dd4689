-- Applies a batch of one activity's payments, each atomically and in order, by Redis's
-- clock: a live reservation paid before its deadline becomes PAID (an order event); one paid
-- at or after its deadline is expired now if the expirer has not yet (the unit goes back, an
-- EXPIRED order event) and the payment is PAYMENT_LATE; a payment for no such order (or
-- another user's, or in a sale without a payment window) is PAYMENT_UNKNOWN; one for an
-- order paid by another payment is ALREADY_PAID. Each answer is a payment event on the log
-- list. A payment id seen before gets its first answer back (flagged) and queues nothing.
-- Each payment sees what the ones before it in the batch did; the writes are made once, at
-- the end.
-- KEYS: 1 stock, 2 over, 3 holdings, 4 meta, 5 orders, 6 deadlines, 7 order counts,
--       8 payments, 9 logs
-- ARGV: 1 activity_id, then per payment: payment_id, order_id, user_id
-- Returns {Redis time, a code per payment}: 0 PAID, 1 PAYMENT_LATE, 2 PAYMENT_UNKNOWN,
-- 3 ALREADY_PAID, 10 + that for a repeated payment id; or -1 when the activity has no live
-- state.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local window = tonumber(redis.call('HGET', KEYS[4], 'payment_window_ms')) or 0
local now = redis_now()
local ANSWERS = {[0] = 'PAID', [1] = 'PAYMENT_LATE', [2] = 'PAYMENT_UNKNOWN', [3] = 'ALREADY_PAID'}
local COUNTS = {[0] = 'payments_paid', [1] = 'payments_late', [2] = 'payments_unknown',
  [3] = 'payments_already_paid'}
local codes = {now}
-- What this batch changed, applied once at the end (a batch of n payments costs about 3n
-- commands, not 10n): orders' new states, payments answered, events, counters.
local orders_now, answered_now = {}, {}
local order_writes, payment_writes, events, paid_ids = {}, {}, {}, {}
local counts = {}
local expired_users, expired = {}, 0
local function count(field, by)
  counts[field] = (counts[field] or 0) + by
end
for first = 2, #ARGV, 3 do
  local payment_id, order_id, user_id = ARGV[first], ARGV[first + 1], ARGV[first + 2]
  local prior = answered_now[payment_id] or redis.call('HGET', KEYS[8], payment_id)
  local code
  if prior then
    code = 10 + tonumber(string.match(prior, '^%d+'))
  else
    local state, user, pay_by
    if window > 0 then
      state, user, pay_by = parse_order(orders_now[order_id] or redis.call('HGET', KEYS[5], order_id))
    end
    if not state or user ~= user_id then
      code = 2
    elseif state == 'P' then
      code = 3
    elseif state == 'E' then
      code = 1
    elseif now < tonumber(pay_by) then
      code = 0
      orders_now[order_id] = 'P:' .. user .. ':' .. pay_by
      paid_ids[#paid_ids + 1] = order_id
      count('reserved', -1)
      count('paid', 1)
      events[#events + 1] = order_event(ARGV[1], order_id, user, 'PAID', now, pay_by, payment_id)
    else
      -- Its deadline passed and the expirer has not come by yet: expired now, as it would.
      code = 1
      orders_now[order_id] = 'E:' .. user .. ':' .. pay_by
      paid_ids[#paid_ids + 1] = order_id
      expired_users[user] = (expired_users[user] or 0) + 1
      expired = expired + 1
      count('reserved', -1)
      count('expired', 1)
      events[#events + 1] = order_event(ARGV[1], order_id, user, 'EXPIRED', now, pay_by, nil)
    end
    answered_now[payment_id] = code .. ':' .. order_id
    payment_writes[#payment_writes + 1] = payment_id
    payment_writes[#payment_writes + 1] = answered_now[payment_id]
    count(COUNTS[code], 1)
    events[#events + 1] = '{"kind":"payment","id":' .. cjson.encode(payment_id) ..
      ',"activity_id":' .. ARGV[1] .. ',"user_id":' .. user_id .. ',"order_id":' ..
      cjson.encode(order_id) .. ',"answer":"' .. ANSWERS[code] .. '","at":' .. now .. '}'
  end
  codes[#codes + 1] = code
end
for order_id, value in pairs(orders_now) do
  order_writes[#order_writes + 1] = order_id
  order_writes[#order_writes + 1] = value
end
each_chunk(order_writes, function(...) redis.call('HSET', KEYS[5], ...) end)
each_chunk(paid_ids, function(...) redis.call('ZREM', KEYS[6], ...) end)
each_chunk(payment_writes, function(...) redis.call('HSET', KEYS[8], ...) end)
each_chunk(events, function(...) redis.call('RPUSH', KEYS[9], ...) end)
for field, by in pairs(counts) do
  redis.call('HINCRBY', KEYS[7], field, by)
end
if expired > 0 then
  return_units(expired_users, expired)
end
return codes
