-- Prepended to the scripts that write lists of any length (purchase_batch.lua and the
-- order scripts) when they are loaded. Lua's unpack is bounded by its C stack: a command
-- gets at most CHUNK arguments, so `call` runs once per CHUNK items of `list`.
local CHUNK = 1000
local function each_chunk(list, call)
  for first = 1, #list, CHUNK do
    call(unpack(list, first, math.min(first + CHUNK - 1, #list)))
  end
end
