-- wrk script: unique ADD_MESSAGE bodies (template from bench/bodies.py), a JSON summary at the end.
-- Arguments after `--`: token, run id, body template with two %s (thread id, message serial).
local next_thread = 0

function setup(thread)
   thread:set("tid", next_thread)
   next_thread = next_thread + 1
end

function init(args)
   template = args[3]
   prefix = args[2] .. "-" .. tid
   headers = {["Content-Type"] = "application/json", ["X-WEBHOOK-TOKEN"] = args[1]}
   serial = 0
end

function request()
   serial = serial + 1
   local thread = prefix .. "-" .. math.floor(serial / 10)
   local body = string.format(template, thread, prefix .. "-" .. serial)
   return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH {"requests": %d, "seconds": %.6f, "socket_errors": %d, "non_2xx": %d, '
      .. '"p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
      summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
      e.status, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
