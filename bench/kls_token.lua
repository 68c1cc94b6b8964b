-- kls_token.lua: what a user would write instead of callback-guard, in Envoy's
-- Lua filter (envoy.filters.http.lua, LuaJIT 2.1). The Envoy benchmark compares
-- callback-guard against it, so it really checks the KLS push token:
--
--   body is the KLS new-version JSON callback, e.g.
--   {"App":"live","Stream":"cam1","NotifyType":"PubStart",...,
--    "PubParam":{"t":"1700000600","k":"0123456789abcdef"}}
--
--   refused with 403 {"Error":{"Code":"AuthencationFailed"}} unless
--     App == "live", NotifyType is PubStart or PubEnd, t is 10 digits,
--     a PubStart is not expired (os.time() <= t), and
--     k == characters 9..24 of hex md5(KEY .. Stream .. t);
--   otherwise forwarded with `x-lua-verified: 1`.
--
-- Fields are pulled out with Lua patterns (no JSON library). MD5 is pure Lua on
-- LuaJIT's `bit` module, written for this file from RFC 1321 (no third-party
-- code; same licence as the project, Apache-2.0).

local KEY = "benchKey0123456789"

local bit = require("bit")
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rol, tobit, tohex, bswap = bit.rol, bit.tobit, bit.tohex, bit.bswap
local byte, char, rep, floor = string.byte, string.char, string.rep, math.floor

---------------------------------------------------------------------------
-- MD5 (RFC 1321). LuaJIT's bit operations work on signed 32-bit integers;
-- sums are taken in doubles (exact up to 2^53) and wrapped with tobit().
---------------------------------------------------------------------------

-- K[i] = floor(abs(sin(i)) * 2^32), i = 1..64.
local K = {
  0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
  0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
  0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
  0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
  0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
  0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
  0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
  0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
}
for i = 1, 64 do K[i] = tobit(K[i]) end

-- Per-round left-rotation amounts.
local S = {
  7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
  5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
  4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
  6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
}

-- Which message word (1-based) each of the 64 steps uses.
local G = {}
for i = 0, 63 do
  local g
  if i < 16 then g = i
  elseif i < 32 then g = (5 * i + 1) % 16
  elseif i < 48 then g = (3 * i + 5) % 16
  else g = (7 * i) % 16 end
  G[i + 1] = g + 1
end

-- Little-endian 32-bit length field (bytes) of a message of n bytes, in bits.
local function le32(x)
  return char(x % 256, floor(x / 256) % 256, floor(x / 65536) % 256, floor(x / 16777216) % 256)
end

local function md5_hex(msg)
  local n = #msg
  -- Pad: 0x80, zeros to 56 mod 64, then the bit length as a 64-bit little-endian.
  local bits = n * 8
  local padded = msg .. "\128" .. rep("\0", (55 - n) % 64)
    .. le32(bits % 4294967296) .. le32(floor(bits / 4294967296))

  local a0, b0, c0, d0 = 0x67452301, tobit(0xefcdab89), tobit(0x98badcfe), 0x10325476
  local M = {}
  for off = 1, #padded, 64 do
    for j = 0, 15 do
      local p = off + j * 4
      local w0, w1, w2, w3 = byte(padded, p, p + 3)
      M[j + 1] = tobit(w0 + w1 * 256 + w2 * 65536 + w3 * 16777216)
    end
    local a, b, c, d = a0, b0, c0, d0
    for i = 1, 64 do
      local f
      if i <= 16 then f = bor(band(b, c), band(bnot(b), d))
      elseif i <= 32 then f = bor(band(b, d), band(c, bnot(d)))
      elseif i <= 48 then f = bxor(b, c, d)
      else f = bxor(c, bor(b, bnot(d))) end
      local t = d
      d = c
      c = b
      b = tobit(b + rol(tobit(a + f + K[i] + M[G[i]]), S[i]))
      a = t
    end
    a0, b0, c0, d0 = tobit(a0 + a), tobit(b0 + b), tobit(c0 + c), tobit(d0 + d)
  end
  -- The digest is the four words as little-endian bytes; tohex() prints
  -- big-endian lowercase, hence the byte swap.
  return tohex(bswap(a0)) .. tohex(bswap(b0)) .. tohex(bswap(c0)) .. tohex(bswap(d0))
end

---------------------------------------------------------------------------
-- The filter.
---------------------------------------------------------------------------

local DENY_HEADERS = { [":status"] = "403" }
local DENY_BODY = '{"Error":{"Code":"AuthencationFailed"}}'

-- The string value of a top-level-looking "name":"value" pair. Values with
-- escaped quotes are not handled; KLS sends none in these fields.
local function field(json, name)
  return json:match('"' .. name .. '"%s*:%s*"([^"]*)"')
end

-- Returns true if the callback body carries a valid KLS push token.
local function token_ok(json)
  if field(json, "App") ~= "live" then return false end
  local event = field(json, "NotifyType")
  if event ~= "PubStart" and event ~= "PubEnd" then return false end
  local stream = field(json, "Stream")
  if stream == nil then return false end
  local param = json:match('"PubParam"%s*:%s*(%b{})')
  if param == nil then return false end
  local t, k = field(param, "t"), field(param, "k")
  if t == nil or k == nil or not t:match("^%d%d%d%d%d%d%d%d%d%d$") then return false end
  if event == "PubStart" and os.time() > tonumber(t) then return false end
  return k == md5_hex(KEY .. stream .. t):sub(9, 24)
end

function envoy_on_request(request_handle)
  -- body() yields until the whole request body is buffered (nil if there is none).
  local body = request_handle:body()
  local json = body and body:getBytes(0, body:length()) or ""
  if not token_ok(json) then
    request_handle:respond(DENY_HEADERS, DENY_BODY)
    return
  end
  request_handle:headers():replace("x-lua-verified", "1")
end
