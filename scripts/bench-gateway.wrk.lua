-- wrk: POST a purchase per request, each with the next user's token and a new
-- Idempotency-Key (make bench-gateway). TOKENS: the file of tokens, one a line.
local tokens = {}
local next_token, thread_id, counter = 0, 0, 0
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  for line in io.lines(os.getenv("TOKENS")) do
    tokens[#tokens + 1] = line
  end
  thread_id = id
  next_token = id * 7919
end

function request()
  next_token = next_token % #tokens + 1
  counter = counter + 1
  return wrk.format("POST", nil, {
    ["Authorization"] = "Bearer " .. tokens[next_token],
    ["Idempotency-Key"] = "wrk-" .. thread_id .. "-" .. counter,
  })
end
