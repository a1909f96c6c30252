-- wrk script for bench/run.py: POST one fixed chat-completions body, and at the end print the
-- exact figures as one JSON line (prefixed BENCH_RESULT) so the bench (bench/overhead/measurement.py)
-- needs no unit parsing.
--
-- The body comes from the environment (BENCH_BODY), so the same script serves every target.
-- No per-request callback is defined (no request()/response()), which keeps wrk on its fast
-- path: the request bytes are built once per thread and reused.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
    or '{"model":"bench","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. auth
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
        '"latency_us":{"min":%d,"mean":%.2f,"max":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency.min, latency.mean, latency.max,
        latency:percentile(50), latency:percentile(75), latency:percentile(90),
        latency:percentile(99), latency:percentile(99.9)))
end
