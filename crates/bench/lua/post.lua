-- wrk script: POST /api with a new key per request, and a record of which writes were answered
-- 200, so that kv-bench can check each of them is in SQLite. A thread serves several
-- connections, so a response is matched to its request by the key the answer names
-- ("Value 7 stored for key 'post-0-7'"), not by order.
-- Arguments: a key prefix unique to the run.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1] .. "-" .. id .. "-"
  sent, ok, pending = 0, 0, {}
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  sent = sent + 1
  pending[sent] = true
  return wrk.format(nil, "/api", nil, '{"' .. prefix .. sent .. '":' .. sent .. '}')
end

function response(status, headers, body)
  if status == 200 then
    local n = tonumber(string.match(body, "%-(%d+)'"))
    if n and pending[n] then
      pending[n] = nil
      ok = ok + 1
    end
  end
end

-- One line per thread for kv-bench: its keys are <prefix>1 .. <prefix><sent>, and those listed
-- last got no 200 (refused, failed, or still in flight when the run ended).
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local unacknowledged = {}
    for n in pairs(thread:get("pending")) do
      table.insert(unacknowledged, n)
    end
    io.write(string.format("KV-THREAD %s %d %d %s\n", thread:get("prefix"), thread:get("sent"),
      thread:get("ok"), table.concat(unacknowledged, ",")))
  end
  local errors = summary.errors
  io.write(string.format("KV-SUMMARY %d %d %d %d %d %d\n", summary.duration, summary.requests,
    latency:percentile(50), latency:percentile(99), errors.status,
    errors.connect + errors.read + errors.write + errors.timeout))
end
