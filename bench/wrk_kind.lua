-- One request kind of `python -m bench.load` (bench/wrk.py runs it; see bench/README.md).
--
--   RELAYPACS_BENCH_TOKEN=... wrk -t1 -c50 -d20s --timeout 30s -s bench/wrk_kind.lua \
--       http://127.0.0.1:PORT -- /api/v1/uploads/ID1?files=false /api/v1/uploads/ID2?files=false
--
-- Every request carries `Authorization: Bearer $RELAYPACS_BENCH_TOKEN` (from the environment,
-- not the command line, which `ps` shows) and takes the next of the paths after `--` in turn.
-- No response() function: wrk would then hand every response's headers and body to Lua, the
-- very cost this generator is here to avoid. At the end, done() writes one line to stdout,
-- "RELAYPACS-WRK {json}": the requests, the errors (wrk counts a status >= 400 as one, and
-- connect / read / write errors and timeouts) and the latency's percentiles in microseconds,
-- on a grid fine enough to merge two runs' distributions (bench/wrk.py).

local token = os.getenv("RELAYPACS_BENCH_TOKEN")
if token and token ~= "" then
   wrk.headers["Authorization"] = "Bearer " .. token
end

local paths = {}
local turn = 0

function init(args)
   -- args[0] is the URL; the paths follow it.
   for i = 1, #args do
      paths[#paths + 1] = args[i]
   end
   if #paths == 0 then
      paths[1] = wrk.path
   end
end

function request()
   turn = turn % #paths + 1
   return wrk.format(nil, paths[turn])
end

-- 1 % steps to P90, 0.5 % to P99, 0.1 % to P99.9, then P99.95, P99.99 and the maximum.
local function grid()
   local points = {}
   for p = 1, 90 do points[#points + 1] = p end
   for i = 1, 18 do points[#points + 1] = 90 + i * 0.5 end
   for i = 1, 9 do points[#points + 1] = 99 + i * 0.1 end
   points[#points + 1] = 99.95
   points[#points + 1] = 99.99
   points[#points + 1] = 100
   return points
end

function done(summary, latency, requests)
   local e = summary.errors
   local parts = {}
   if summary.requests > 0 then
      for _, p in ipairs(grid()) do
         -- wrk's percentile(100) ranks one past the last request and answers 0: the maximum.
         local value = p < 100 and latency:percentile(p) or latency.max
         parts[#parts + 1] = string.format("[%.2f, %d]", p, value)
      end
   end
   local min, max, mean, stdev = 0, 0, 0, 0
   if summary.requests > 0 then
      min, max, mean, stdev = latency.min, latency.max, latency.mean, latency.stdev
   end
   io.write(string.format(
      'RELAYPACS-WRK {"requests": %d, "duration_us": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f}, '
         .. '"percentiles_us": [%s]}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      min, max, mean, stdev, table.concat(parts, ", ")))
end
