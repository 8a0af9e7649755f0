-- wrk script: POST to the path given in WRK_PATH-less form, cycling Authorization over tokens.txt;
-- prints a JSON summary (requests/s, p50/p99 in ms, non-2xx count) at the end.
local tokens = {}
local i = 0
for line in io.lines(os.getenv("BENCH_TOKENS")) do tokens[#tokens + 1] = line end

-- BENCH_FORWARD_URI, when set: the forward-auth contract's headers name the original request.
local forward_uri = os.getenv("BENCH_FORWARD_URI") or ""

request = function()
  i = i % #tokens + 1
  local headers = {["Authorization"] = "Bearer " .. tokens[i]}
  if forward_uri ~= "" then
    headers["X-Forwarded-Method"] = "POST"
    headers["X-Forwarded-Uri"] = forward_uri
  end
  return wrk.format("POST", os.getenv("BENCH_PATH"), headers, nil)
end

done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "non2xx": %d, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
