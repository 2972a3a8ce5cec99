-- TechEmpower's pipelining script for wrk: sends DEPTH requests per write.
--   wrk -t1 -c64 -d10s -s loadtest/pipeline.lua http://127.0.0.1:8080/plaintext -- 16
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
