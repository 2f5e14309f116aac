-- wrk script of the memory measurement (run with -t1). Request i carries
-- `X-Forwarded-For: <address i>` (the gateway trusts it in this configuration, so every
-- request is a new key of the `address` quota) and, when $MEM_TOKENS names a file, the
-- bearer token on line i (each token once, then round again). Numbering starts at
-- $MEM_FIRST; the thread stops after $MEM_COUNT responses.
local first = tonumber(os.getenv("MEM_FIRST") or "0")
local count = tonumber(os.getenv("MEM_COUNT") or "0")
local path = os.getenv("MEM_PATH") or "/"
local tokens = {}
local file = os.getenv("MEM_TOKENS")
if file ~= nil and file ~= "" then
  for line in io.lines(file) do
    if line ~= "" then tokens[#tokens + 1] = line end
  end
end
local sent, received = 0, 0

-- 127.x.y.z from a counter: 16.7 million distinct addresses (a header value only: every
-- connection is to the gateway on loopback).
local function address(n)
  return string.format("127.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
end

function request()
  local n = first + sent
  local headers = { ["X-Forwarded-For"] = address(n) }
  if #tokens > 0 then
    headers["Authorization"] = "Bearer " .. tokens[(sent % #tokens) + 1]
  end
  sent = sent + 1
  return wrk.format("GET", path, headers)
end

function response(status, headers, body)
  received = received + 1
  if received >= count then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  io.write(string.format('MEMJSON {"requests":%d,"duration_us":%d}\n', summary.requests, summary.duration))
end
