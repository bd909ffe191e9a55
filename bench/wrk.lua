-- wrk script of bench/load.py: which paths to ask for, and a JSON summary.
--
-- BENCH_PATH: a path; "{n}" in it becomes a key unique to each request
--   (thread id and counter), so no two requests of a run share a key.
-- BENCH_PATHS_FILE: a file of paths, one a line, cycled through instead.
-- BENCH_METHOD: the method (GET unless set).
-- The last line wrk prints is "BENCH_JSON {...}" (latencies in microseconds).

local template = os.getenv("BENCH_PATH") or "/"
local paths_file = os.getenv("BENCH_PATHS_FILE")
local method = os.getenv("BENCH_METHOD") or "GET"
local next_thread = 0
local counter = 0
local paths = nil

function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
end

function init(args)
  if paths_file and paths_file ~= "" then
    paths = {}
    for line in io.lines(paths_file) do
      if line ~= "" then table.insert(paths, line) end
    end
  end
end

function request()
  counter = counter + 1
  local path
  if paths then
    -- Threads start at different offsets so they do not ask in lockstep.
    path = paths[(counter + thread_id * 7919) % #paths + 1]
  else
    path = (string.gsub(template, "{n}", thread_id .. "-" .. counter))
  end
  return wrk.format(method, path)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %.0f, "duration_s": %.6f, "connect": %.0f, "read": %.0f, '
      .. '"write": %.0f, "status": %.0f, "timeout": %.0f, "p50_ms": %.3f, "p90_ms": %.3f, '
      .. '"p99_ms": %.3f, "mean_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.mean / 1000, latency.max / 1000))
end
