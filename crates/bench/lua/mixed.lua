-- wrk script: a mixed run of a fixed number of requests. Each connection alternates a POST of a
-- new key and a GET of the key it just wrote, which must answer the value written (a 200 to the
-- POST means a later read sees it). Run with one connection per thread; each thread stops after
-- its share of the requests.
-- Arguments: a key prefix unique to the run, and the number of requests per thread.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix, quota, finished = args[1] .. "-" .. id .. "-", tonumber(args[2]), args[3] .. "/" .. id
  answered, ok, failed, stale = 0, 0, "", 0
end

-- Request k (= answered + 1) is the POST of key n = ceil(k/2) if k is odd, else
-- the GET of that key.
function request()
  local k = answered + 1
  local n = math.floor((k + 1) / 2)
  if k % 2 == 1 then
    return wrk.format("POST", "/api", {["Content-Type"] = "application/json"},
      '{"' .. prefix .. n .. '":' .. n .. '}')
  end
  return wrk.format("GET", "/api?key=" .. prefix .. n)
end

function response(status, headers, body)
  answered = answered + 1
  local n = math.floor((answered + 1) / 2)
  if answered % 2 == 1 then
    if status == 200 then ok = ok + 1 else failed = failed .. n .. "," end
  elseif status ~= 200 or not string.find(body, '"data":' .. n .. '.0}', 1, true) then
    stale = stale + 1
  end
  if answered == quota then
    io.open(finished, "w"):close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local stale = 0
  for _, thread in ipairs(threads) do
    io.write(string.format("KV-THREAD %s %d %d %s\n", thread:get("prefix"),
      math.floor((thread:get("answered") + 1) / 2), thread:get("ok"), thread:get("failed")))
    stale = stale + thread:get("stale")
  end
  io.write(string.format("KV-STALE %d\n", stale))
  local errors = summary.errors
  io.write(string.format("KV-SUMMARY %d %d %d %d %d %d\n", summary.duration, summary.requests,
    latency:percentile(50), latency:percentile(99), errors.status,
    errors.connect + errors.read + errors.write + errors.timeout))
end
