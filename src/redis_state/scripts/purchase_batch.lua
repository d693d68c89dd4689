-- The purchase of a batch of one activity's requests: each request, in order, gets exactly
-- what purchase.lua would give it (a repeated request id, in Redis or earlier in the batch,
-- its first outcome again, flagged). Lookups and writes are made once per batch (HMGET,
-- one HSET per hash, one RPUSH, the counters once) and what the batch itself adds is
-- tracked here, so a batch of n requests costs about a dozen Redis commands, not 3n to 6n.
-- The sale window is judged by Redis's clock (TIME), the same for every server.
-- In a sale with a payment window a SUCCESS is a reservation: the order (its id is the
-- request id) goes into the orders hash as `R:<user>:<pay_by>` and into the deadlines set,
-- and its record carries pay_by (= Redis time + window).
-- KEYS: 1 stock, 2 over, 3 holdings, 4 decided, 5 success, 6 logs, 7 outcome counts, 8 meta,
--       9 orders, 10 deadlines, 11 order counts
-- ARGV: 1 activity_id, 2 processed_time, then per request:
--       request_id, user_id, request_initiation_time, cost_ms
-- Returns {Redis time in ms, a code per request} (codes as purchase.lua) and, in a sale with
-- a payment window, then a pay_by per request (0 unless it is a SUCCESS); or -1 for the
-- whole batch when the activity has no live state (no stock key).
local stock = redis.call('GET', KEYS[1])
if not stock then
  return -1
end
stock = tonumber(stock)
local meta = redis.call('HMGET', KEYS[8], 'starts_at_ms', 'ends_at_ms', 'limit',
  'payment_window_ms')
local starts, ends = tonumber(meta[1]) or 0, tonumber(meta[2]) or 0
local limit = tonumber(meta[3]) or 1
local window = tonumber(meta[4]) or 0
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

-- each_chunk (commands of at most 1,000 arguments) comes from each_chunk.lua, prepended.
local function collect(command, key, list)
  local replies = {}
  each_chunk(list, function(...)
    for _, reply in ipairs(redis.call(command, key, ...)) do
      replies[#replies + 1] = reply
    end
  end)
  return replies
end

local ids, users = {}, {}
for first = 3, #ARGV, 4 do
  ids[#ids + 1] = ARGV[first]
  users[#users + 1] = ARGV[first + 1]
end
if #ids == 0 then
  return {now}
end
-- Each field of `fields` in hash `key` (false when absent). A small hash is read whole, once:
-- Redis keeps a hash of up to hash-max-listpack-entries (128, or 512 on Debian) as a listpack,
-- where every field looked up is a scan; a large one is read field by field.
local function lookup(key, fields)
  local size = redis.call('HLEN', key)
  if size > 512 and size > 2 * #fields then
    return collect('HMGET', key, fields)
  end
  local all = redis.call('HGETALL', key)
  local of = {}
  for j = 1, #all, 2 do
    of[all[j]] = all[j + 1]
  end
  local found = {}
  for i = 1, #fields do
    found[i] = of[fields[i]] or false
  end
  return found
end
local priors = lookup(KEYS[4], ids)
local held_before = lookup(KEYS[3], users)

local codes, decided, records = {now}, {}, {}
local decided_now, held, changed = {}, {}, {}
local counts = {}
local sold, over = 0, false
local not_started, ended = now < starts, ends > 0 and now >= ends
local head = ',"activity_id":' .. ARGV[1]
local tail = ',"processed_time":' .. ARGV[2] .. ',"cost_ms":'
local pay_by = now + window
local pay_by_tail = ''
if window > 0 then
  pay_by_tail = ',"pay_by":' .. pay_by
end
local orders, deadlines, pay_bys = {}, {}, {}
for i = 1, #ids do
  local request_id, user_id = ids[i], users[i]
  local code
  if priors[i] then
    code = 10 + tonumber(string.match(priors[i], '^%d+'))
    if code == 10 and window > 0 then
      -- A reservation's deadline, as its first answer gave it.
      local order = redis.call('HGET', KEYS[9], request_id)
      pay_bys[i] = tonumber(order and string.match(order, '(%d+)$')) or 0
    end
  elseif decided_now[request_id] then
    code = 10 + decided_now[request_id]
    if code == 10 and window > 0 then
      pay_bys[i] = pay_by
    end
  else
    if held[user_id] == nil then
      held[user_id] = tonumber(held_before[i]) or 0
    end
    if not_started then
      code = 4
    elseif ended then
      code = 5
    elseif held[user_id] >= limit then
      code = 3
    elseif stock <= 0 then
      over = true
      code = 1
    else
      stock = stock - 1
      sold = sold + 1
      held[user_id] = held[user_id] + 1
      changed[user_id] = true
      local first = 4 * i - 1
      records[#records + 1] = '{"request_id":' .. cjson.encode(request_id) ..
        ',"user_id":' .. user_id .. head .. ',"request_initiation_time":' ..
        ARGV[first + 2] .. tail .. ARGV[first + 3] .. pay_by_tail .. '}'
      if window > 0 then
        orders[#orders + 1] = request_id
        orders[#orders + 1] = 'R:' .. user_id .. ':' .. pay_by
        deadlines[#deadlines + 1] = pay_by
        deadlines[#deadlines + 1] = request_id
        pay_bys[i] = pay_by
      end
      if stock <= 0 then
        over = true
      end
      code = 0
    end
    decided_now[request_id] = code
    decided[#decided + 1] = request_id
    decided[#decided + 1] = code .. ':' .. user_id
    counts[code] = (counts[code] or 0) + 1
  end
  codes[i + 1] = code
end
each_chunk(decided, function(...) redis.call('HSET', KEYS[4], ...) end)
for code, count in pairs(counts) do
  redis.call('HINCRBY', KEYS[7], code, count)
end
if sold > 0 then
  local holdings = {}
  for user_id in pairs(changed) do
    holdings[#holdings + 1] = user_id
    holdings[#holdings + 1] = held[user_id]
  end
  each_chunk(holdings, function(...) redis.call('HSET', KEYS[3], ...) end)
  each_chunk(records, function(...) redis.call('RPUSH', KEYS[6], ...) end)
  redis.call('DECRBY', KEYS[1], sold)
  redis.call('INCRBY', KEYS[5], sold)
  if window > 0 then
    each_chunk(orders, function(...) redis.call('HSET', KEYS[9], ...) end)
    each_chunk(deadlines, function(...) redis.call('ZADD', KEYS[10], ...) end)
    redis.call('HINCRBY', KEYS[11], 'reserved', sold)
  end
end
if over then
  redis.call('SET', KEYS[2], '1')
end
if window > 0 then
  for i = 1, #ids do
    codes[#codes + 1] = pay_bys[i] or 0
  end
end
return codes
