-- wrk script: GET /health, a route that passes every layer of the front-server (request id,
-- span, metrics) and touches no broker: the HTTP rate this machine allows the front-server.

function request()
  return wrk.format("GET", "/health")
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("KV-SUMMARY %d %d %d %d %d %d\n", summary.duration, summary.requests,
    latency:percentile(50), latency:percentile(99), errors.status,
    errors.connect + errors.read + errors.write + errors.timeout))
end
