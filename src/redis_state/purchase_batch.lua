-- The purchase of a batch: each request, in order, gets exactly what purchase.lua would
-- give it (a repeated request id, in Redis or earlier in the batch, its first outcome again,
-- flagged). Lookups and writes are made once per batch (HMGET, SMISMEMBER, one HSET, one
-- SADD, one RPUSH, the counters once) and what the batch itself adds is tracked here, so a
-- batch of n requests costs about a dozen Redis commands instead of 3n to 6n.
-- KEYS: 1 stock, 2 over, 3 buyers, 4 decided, 5 success, 6 logs, 7 outcome counts
-- ARGV: 1 activity_id, 2 processed_time, then per request:
--       request_id, user_id, request_initiation_time, cost_ms
-- Returns a code per request (as purchase.lua), or -1 for the whole batch when the activity
-- was never initialised.
local stock = redis.call('GET', KEYS[1])
if not stock then
  return -1
end
stock = tonumber(stock)

-- Lua's unpack is bounded by its C stack: commands take at most this many arguments.
local CHUNK = 1000
local function each_chunk(list, call)
  for first = 1, #list, CHUNK do
    call(unpack(list, first, math.min(first + CHUNK - 1, #list)))
  end
end
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
  return {}
end
local priors = collect('HMGET', KEYS[4], ids)
local known_buyers = collect('SMISMEMBER', KEYS[3], users)

local codes, decided, new_buyers, records = {}, {}, {}, {}
local decided_now, bought = {}, {}
local counts = {}
local sold, over = 0, false
local head = ',"activity_id":' .. ARGV[1]
local tail = ',"processed_time":' .. ARGV[2] .. ',"cost_ms":'
for i = 1, #ids do
  local request_id, user_id = ids[i], users[i]
  local code
  if priors[i] then
    code = 10 + tonumber(string.match(priors[i], '^%d+'))
  elseif decided_now[request_id] then
    code = 10 + decided_now[request_id]
  else
    if known_buyers[i] == 1 or bought[user_id] then
      code = 3
    elseif stock <= 0 then
      over = true
      code = 1
    else
      stock = stock - 1
      sold = sold + 1
      bought[user_id] = true
      new_buyers[#new_buyers + 1] = user_id
      local first = 4 * i - 1
      records[#records + 1] = '{"request_id":' .. cjson.encode(request_id) ..
        ',"user_id":' .. user_id .. head .. ',"request_initiation_time":' ..
        ARGV[first + 2] .. tail .. ARGV[first + 3] .. '}'
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
  codes[i] = code
end
each_chunk(decided, function(...) redis.call('HSET', KEYS[4], ...) end)
for code, count in pairs(counts) do
  redis.call('HINCRBY', KEYS[7], code, count)
end
if sold > 0 then
  each_chunk(new_buyers, function(...) redis.call('SADD', KEYS[3], ...) end)
  each_chunk(records, function(...) redis.call('RPUSH', KEYS[6], ...) end)
  redis.call('DECRBY', KEYS[1], sold)
  redis.call('INCRBY', KEYS[5], sold)
end
if over then
  redis.call('SET', KEYS[2], '1')
end
return codes
