-- TechEmpower's pipelining script for wrk: sends DEPTH requests per write,
-- and prints exact latency percentiles (µs) in a line corelane-loadtest reads.
--   wrk -t1 -c64 -d10s --latency -s loadtest/pipeline.lua http://127.0.0.1:8080/plaintext -- 16
init = function(args)
  local depth = tonumber(args[1]) or 1
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format()
  end
  req = table.concat(r)
end

request = function()
  return req
end

done = function(summary, latency, requests)
  io.write(string.format(
    "corelane-latency-us p50=%d p90=%d p99=%d p999=%d max=%d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
