-- wrk script: POST /classify with test-split titles (BENCH_TEXTS file, one per line), BATCH texts a
-- request (env, default 1); prints one JSON line of results at the end.
local texts = {}
local batch = tonumber(os.getenv("BATCH") or "1")
-- EXPERTS=all|top|passed|none picks the rows of each answer (POST /classify?experts=...); unset:
-- the service's default (top; before 2026-12-03 the default was all, as in the older recordings).
local experts = os.getenv("EXPERTS") or ""
local path = experts == "" and "/classify" or ("/classify?experts=" .. experts)
-- PEER=tei: the same titles to text-embeddings-inference (POST /embed {"inputs": text}).
local tei = os.getenv("PEER") == "tei"
if tei then path = "/embed" end
for line in io.lines(os.getenv("BENCH_TEXTS")) do texts[#texts + 1] = line end
local i = 0
local function esc(s) return (s:gsub('\\', '\\\\'):gsub('"', '\\"')) end
request = function()
  local parts = {}
  for k = 1, batch do
    i = i % #texts + 1
    parts[k] = '"' .. esc(texts[i]) .. '"'
  end
  local body
  if tei then body = '{"inputs": ' .. parts[1] .. '}'
  elseif batch == 1 then body = '{"text": ' .. parts[1] .. '}' else body = '{"texts": [' .. table.concat(parts, ",") .. ']}' end
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  local s = summary.duration / 1e6
  local non2xx = (summary.errors.status or 0)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"batch": %d, "requests": %d, "seconds": %.3f, "requests_per_s": %.1f, "texts_per_s": %.1f, ' ..
    '"p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, "non_2xx": %d, "socket_errors": %d}\n',
    batch, summary.requests, s, summary.requests / s, summary.requests * batch / s,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, non2xx, errors))
end
