-- Takes stored records off a worker's processing list, copying ARGV[1] of them (the
-- undecodable ones, given first in ARGV after the count) to the dead-letter list. The
-- records of a batch are the list's head, in order (a worker takes into its own list and
-- stores batch after batch): then one LTRIM does it; otherwise each is removed by value.
-- KEYS: 1 processing list, 2 dead-letter list. ARGV: 1 dead count, then dead records,
-- then the others.
local dead = tonumber(ARGV[1])
local records = #ARGV - 1
for first = 2, dead + 1, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, first, math.min(first + 999, dead + 1)))
end
local head = redis.call('LRANGE', KEYS[1], 0, records - 1)
local wanted = {}
for i = 2, #ARGV do
  wanted[ARGV[i]] = (wanted[ARGV[i]] or 0) + 1
end
local is_head = #head == records
for _, record in ipairs(head) do
  if not wanted[record] or wanted[record] == 0 then
    is_head = false
    break
  end
  wanted[record] = wanted[record] - 1
end
if is_head then
  redis.call('LTRIM', KEYS[1], records, -1)
else
  for i = 2, #ARGV do
    redis.call('LREM', KEYS[1], 1, ARGV[i])
  end
end
return records
