-- POST /v1/check for one of 100 000 users, drawn uniformly.
math.randomseed(os.time())
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
request = function()
  local body = '{"user_id":"u' .. math.random(1, 100000) .. '","endpoint":"/api"}'
  return wrk.format(nil, "/v1/check", nil, body)
end
