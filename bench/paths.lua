-- wrk script for bench/run.py: request the paths listed in a file, in order, and count the
-- answers by status and by X-Cache header.
--
--   wrk ... -s bench/paths.lua <url> -- <paths file>
--
-- The paths file holds one request path per line ("/tiles/bluemarble/2/1/3.jpg" or
-- "/arcgis/rest/services/.../exportImage?bbox=..."). A "{id}" in its name is replaced by the
-- wrk thread number (0, 1, ...), so every thread can get its own disjoint list; without it all
-- threads share one list and start at different points of it. A thread that reaches the end of
-- its list starts again from the top and counts a "wrap" (for cold-miss lists: a repeat).
-- Note: before the run wrk calls request() once in thread 0 to check the script, so thread 0
-- never sends the first path of its list (and its "sent" counts one more than it sent).
--
-- done() prints one line "BENCH-JSON {...}" with wrk's summary, latency percentiles (in
-- microseconds) and the per-answer counts summed over the threads; run.py parses that line.

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local requests_list = {}
local position = 1

-- Counters read back by done() through thread:get (globals of each thread's Lua state).
hits, misses, no_header, other_header, non2xx, wraps, sent = 0, 0, 0, 0, 0, 0, 0

function init(args)
   local pattern = args[1]
   if pattern == nil then
      error("paths.lua needs the paths file as its argument (wrk ... -- FILE)")
   end
   local per_thread = pattern:find("{id}", 1, true) ~= nil
   local file_name = pattern:gsub("{id}", tostring(id))
   local file = assert(io.open(file_name, "r"))
   for line in file:lines() do
      if #line > 0 then
         table.insert(requests_list, wrk.format("GET", line))
      end
   end
   file:close()
   if #requests_list == 0 then
      error("no paths in " .. file_name)
   end
   if not per_thread then
      -- Shared list: spread the threads over it so they do not ask in lockstep.
      position = (id * 7) % #requests_list + 1
   end
end

function request()
   local req = requests_list[position]
   position = position + 1
   sent = sent + 1
   if position > #requests_list then
      position = 1
      wraps = wraps + 1
   end
   return req
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
   local cache = headers["X-Cache"] or headers["x-cache"]
   if cache == nil then
      for name, value in pairs(headers) do
         if name:lower() == "x-cache" then
            cache = value
            break
         end
      end
   end
   if cache == nil then
      no_header = no_header + 1
   elseif cache == "HIT" then
      hits = hits + 1
   elseif cache == "MISS" then
      misses = misses + 1
   else
      other_header = other_header + 1
   end
end

function done(summary, latency, requests)
   local totals = {
      hits = 0, misses = 0, no_header = 0, other_header = 0, non2xx = 0, wraps = 0, sent = 0
   }
   local max_thread_sent = 0
   for _, thread in ipairs(threads) do
      for name, _ in pairs(totals) do
         totals[name] = totals[name] + (thread:get(name) or 0)
      end
      max_thread_sent = math.max(max_thread_sent, thread:get("sent") or 0)
   end
   local e = summary.errors
   local fields = {
      string.format('"requests":%d', summary.requests),
      string.format('"duration_us":%d', summary.duration),
      string.format('"bytes":%d', summary.bytes),
      string.format('"err_connect":%d', e.connect),
      string.format('"err_read":%d', e.read),
      string.format('"err_write":%d', e.write),
      string.format('"err_status":%d', e.status),
      string.format('"err_timeout":%d', e.timeout),
      string.format('"lat_mean_us":%.1f', latency.mean),
      string.format('"lat_max_us":%d', latency.max),
      string.format('"lat_p50_us":%d', latency:percentile(50)),
      string.format('"lat_p90_us":%d', latency:percentile(90)),
      string.format('"lat_p99_us":%d', latency:percentile(99)),
      string.format('"max_thread_sent":%d', max_thread_sent),
   }
   for name, value in pairs(totals) do
      table.insert(fields, string.format('"%s":%d', name, value))
   end
   io.write("BENCH-JSON {" .. table.concat(fields, ",") .. "}\n")
end
