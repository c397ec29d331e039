-- wrk script for bench/cache.py's hit loads: request the paths listed in a file, round robin,
-- with no response() callback, so wrk does not hand every answer's headers to Lua and stays
-- as cheap as possible on the CPU it shares with the servers.
--
--   wrk ... -s bench/list.lua <url> -- <paths file>
--
-- Every thread reads the same list and starts at its own point of it. done() prints one line
-- "BENCH-JSON {...}" with wrk's summary and latency percentiles in microseconds (the same
-- fields as bench/paths.lua, less the per-answer counts: non-2xx answers are err_status).

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

local requests_list = {}
local position = 1

function init(args)
   local file_name = args[1]
   if file_name == nil then
      error("list.lua needs the paths file as its argument (wrk ... -- FILE)")
   end
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
   position = (id * 7) % #requests_list + 1
end

function request()
   local req = requests_list[position]
   position = position % #requests_list + 1
   return req
end

function done(summary, latency, requests)
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
   }
   io.write("BENCH-JSON {" .. table.concat(fields, ",") .. "}\n")
end
