-- wrk: POST a purchase per request, each with the next user's token and a new
-- Idempotency-Key (make bench-gateway). TOKENS: the file of tokens, one a line; RUN_KEY: a
-- tag new in every run, so that no key repeats one of an earlier run (whose stored outcome
-- the gateway would answer without a purchase).
local tokens = {}
local next_token, thread_id, counter = 0, 0, 0
local threads = 0
local run_key = os.getenv("RUN_KEY") or "0"

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
    ["Idempotency-Key"] = "wrk-" .. run_key .. "-" .. thread_id .. "-" .. counter,
  })
end
