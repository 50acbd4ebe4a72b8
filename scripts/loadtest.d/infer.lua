-- wrk script for scripts/loadtest: POSTs one inference request (the binary tensor data
-- extension: JSON header, then the image as 4-byte length + bytes) until this thread has sent
-- its share of the requests (run with -t1), then says so; counts non-200 answers.
local body_file = os.getenv("LOADTEST_BODY")
local header_length = os.getenv("LOADTEST_HEADER_LENGTH")
local limit = tonumber(os.getenv("LOADTEST_REQUESTS"))

local f = assert(io.open(body_file, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = header_length

local answered = 0
local errors = 0

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then errors = errors + 1 end
  if answered == limit then
    wrk.thread:stop()
    -- wrk's main thread sleeps for -d whatever the threads do: scripts/loadtest sees this file
    -- and wakes it as Ctrl-C would.
    local done_file = io.open(os.getenv("LOADTEST_DONE"), "w")
    done_file:close()
  end
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d non2xx=%d seconds=%.3f p50_ms=%.2f p99_ms=%.2f\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, summary.errors.status,
    summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
