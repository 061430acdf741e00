-- wrk script of bench/bench_serving.py: POST one random known id per request.
--
-- wrk ... -s bench/wrk/post_ids.lua URL -- IDS_FILE BODY_TEMPLATE DELAY_MS
--   IDS_FILE       one integer id a line (known entities, from the lake)
--   BODY_TEMPLATE  the JSON body with %d where the id goes (every %d gets the same id), e.g. {"user_ids":[%d]}
--   DELAY_MS       0 = each connection sends its next request as soon as the answer is in (max throughput);
--                  > 0 = pacing: before each request a connection waits a delay drawn uniformly from
--                  [0.5, 1.5] x DELAY_MS (mean DELAY_MS), so connections drift apart instead of firing in step.
--                  This is closed-loop pacing per connection, not an open-loop arrival process: a slow answer
--                  delays that connection's next request (coordinated omission is possible).
-- Headers (Authorization) come from wrk's -H. done() prints one line "WRK_JSON {...}", latencies in microseconds;
-- socket_errors counts connect, read and write errors and timeouts (answers slower than wrk's --timeout, whose
-- latency wrk does not record), timeouts those alone.

local ids = {}
local template = ""
local pause = 0

function init(args)
   for line in io.lines(args[1]) do
      ids[#ids + 1] = tonumber(line)
   end
   template = args[2]
   pause = tonumber(args[3])
   math.randomseed(7)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   local body = string.gsub(template, "%%d", tostring(ids[math.random(#ids)]))
   return wrk.format(nil, nil, nil, body)
end

function delay()
   if pause <= 0 then
      return 0
   end
   return math.floor(pause * (0.5 + math.random()))
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"http_errors":%d,"socket_errors":%d,"timeouts":%d,'
         .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
      summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max
   ))
end
