-- wrk script of the HTTP-layer benchmark (issue 3): GET /v1/hello with an `x-api-key`
-- rotating over the 1,000 benchmark customers, a different key on every request (the keys
-- of src/http_app.rs `api_key`). The requests are formatted once, in `init`.
--
--   wrk -t1 -c32 -d5s -s benches/scripts/http_keys.lua http://127.0.0.1:PORT/v1/hello

local customers = 1000
local requests = {}
local next_key = 0

function init(args)
   for i = 0, customers - 1 do
      local key = string.format("sk_test_%06d_0123456789abcdef", i)
      requests[i] = wrk.format("GET", "/v1/hello", { ["x-api-key"] = key })
   end
end

function request()
   local r = requests[next_key]
   next_key = (next_key + 1) % customers
   return r
end
