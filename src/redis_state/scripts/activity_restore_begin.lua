-- Starts rebuilding a sale whose live state was lost, refusing while any of it exists.
-- KEYS: 1 meta, 2 stock, 3 logs, 4 success, 5 over, 6 holdings, 7 decided, 8 outcome counts,
--       9 initial_stock, 10 added_stock
-- Returns 1 when the rebuild may go on, 0 when live state exists, -2 when records wait in
-- the log list (not yet in PostgreSQL: log_worker must store them first).
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if redis.call('LLEN', KEYS[3]) > 0 then
  return -2
end
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10])
-- As on create: the decided hash in Redis's hashtable encoding from the start.
redis.call('HSET', KEYS[7], '', string.rep('-', 300))
return 1
