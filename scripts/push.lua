-- wrk script: push-by-mid requests, mids 0..MIDS-1 round robin (each wrk
-- thread starts at its own offset), one user per request. Used by
-- scripts/bench-push.sh; MIDS comes from the environment (default 1000).
local mids = tonumber(os.getenv("MIDS") or "1000")
local counter = 0
local threads = 0

function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

function request()
  counter = counter + 1
  local mid = ((offset or 0) + counter) % mids
  return wrk.format(nil, "/im/push/mids", nil, "mids=" .. mid .. "&msg=hi")
end
