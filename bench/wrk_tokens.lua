-- wrk script: POST to the path given in WRK_PATH-less form, cycling Authorization over tokens.txt;
-- prints a JSON summary (requests/s, p50/p99 in ms, non-2xx count) at the end.
local tokens = {}
local i = 0
for line in io.lines(os.getenv("BENCH_TOKENS")) do tokens[#tokens + 1] = line end

request = function()
  i = i % #tokens + 1
  return wrk.format("POST", os.getenv("BENCH_PATH"), {["Authorization"] = "Bearer " .. tokens[i]}, nil)
end

done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "rps": %.1f, "p50_ms": %.3f, "p99_ms": %.3f, "non2xx": %d, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
