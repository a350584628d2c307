-- wrk script: GET /api?key=K for random keys that exist: <prefix><n> for n in low..high.
-- Arguments: the prefix, low and high.

function init(args)
  prefix, low, high = args[1], tonumber(args[2]), tonumber(args[3])
  math.randomseed(os.time() + (id or 0))
end

function request()
  return wrk.format("GET", "/api?key=" .. prefix .. math.random(low, high))
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("KV-SUMMARY %d %d %d %d %d %d\n", summary.duration, summary.requests,
    latency:percentile(50), latency:percentile(99), errors.status,
    errors.connect + errors.read + errors.write + errors.timeout))
end
