-- Replays pre-signed raw HTTP requests written by bench/ingest.py and counts response statuses.
--
--   wrk -t T -c C -d 10s -s bench/wrk_post.lua http://127.0.0.1:PORT -- REQUESTS INDEX T
--
-- REQUESTS holds complete HTTP/1.1 requests back to back, INDEX one byte length per line. Thread k
-- (0-based) of T sends requests k, k+T, k+2T, ... so no two threads send the same body; a thread
-- that runs out starts over (ingest.py sizes the pool so that Pruner's run never does).
-- done() prints "BENCH ..." lines that ingest.py parses.

local threads = {}

function setup(thread)
  thread:set("thread_no", #threads)
  table.insert(threads, thread)
end

-- Per-thread globals (thread:get reads globals of the thread's Lua state).
pool = {}
size = 0
sent = 0
statuses = {}

function init(args)
  local nthreads = tonumber(args[3]) or 1
  local data = assert(io.open(args[1], "rb"))
  local i = 0
  for line in io.lines(args[2]) do
    local chunk = data:read(tonumber(line))
    if i % nthreads == thread_no then
      size = size + 1
      pool[size] = chunk
    end
    i = i + 1
  end
  data:close()
  assert(size > 0, "no requests for thread " .. thread_no)
end

function request()
  local req = pool[sent % size + 1]
  sent = sent + 1
  return req
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts, total_sent, total_pool = {}, 0, 0
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      counts[code] = (counts[code] or 0) + n
    end
    total_sent = total_sent + thread:get("sent")
    total_pool = total_pool + thread:get("size")
  end
  io.write(string.format("BENCH summary requests=%d duration_us=%d sent=%d pool=%d\n",
    summary.requests, summary.duration, total_sent, total_pool))
  io.write(string.format("BENCH latency p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
  local e = summary.errors
  io.write(string.format("BENCH errors connect=%d read=%d write=%d timeout=%d status=%d\n",
    e.connect, e.read, e.write, e.timeout, e.status))
  for code, n in pairs(counts) do
    io.write(string.format("BENCH status %d %d\n", code, n))
  end
end
