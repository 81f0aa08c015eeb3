-- wrk script: POST a distinct bot callback per request, spread over many conversations and
-- apps; prints one JSON line of figures when done. Arguments: AUTH_HEADER CONVERSATIONS APPS
local auth, conversations, apps = nil, 2000, 64
local counter = 0

function init(args)
  if args[1] and args[1] ~= "-" then auth = args[1] end
  conversations = tonumber(args[2] or "2000")
  apps = tonumber(args[3] or "64")
end

local template = '{"trigger":"after_message","data":{"id":"%d","conversationId":"user-%d_user_bench_bot",'
  .. '"sender":"user-%d","receiverType":"user","receiver":"bench_bot","category":"message",'
  .. '"type":"text","data":{"text":"hello %d","entities":{"sender":{"entity":{"uid":"user-%d",'
  .. '"name":"User %d"},"entityType":"user"}}},"sentAt":%d},"appId":"app%03d","region":"eu",'
  .. '"bot":"bench_bot"}'

function request()
  counter = counter + 1
  local user = counter % conversations
  local body = string.format(template, counter, user, user, counter, user, counter,
                             1700000000 + counter, user % apps)
  local headers = {["Content-Type"] = "application/json"}
  if auth then headers["Authorization"] = auth end
  return wrk.format("POST", "/callback", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.6f,"errors":%d,"non_2xx":%d,'
    .. '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,"mean_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3, latency.mean / 1e3))
end
