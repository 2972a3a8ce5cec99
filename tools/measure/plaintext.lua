-- The TechEmpower plaintext request, its headers in TechEmpower's order:
-- Host, Accept, Connection (`-- keep-alive` or `-- close`). wrk's own `-H`
-- headers go out in an order that changes from run to run (a Lua table's),
-- which moves a server's instruction count per request by up to 3%: which
-- line ends the head decides how its last bytes are scanned.
--   wrk -t1 -c16 -d3s -s tools/measure/plaintext.lua http://127.0.0.1:8080/plaintext -- keep-alive
init = function(args)
  local connection = args[1] or "keep-alive"
  req = "GET /plaintext HTTP/1.1\r\n"
    .. "Host: localhost\r\n"
    .. "Accept: text/plain,text/html;q=0.9,application/xhtml+xml;q=0.9,"
    .. "application/xml;q=0.8,*/*;q=0.7\r\n"
    .. "Connection: " .. connection .. "\r\n\r\n"
end

request = function()
  return req
end
