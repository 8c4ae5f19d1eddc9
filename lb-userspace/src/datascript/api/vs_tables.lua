-- Argument roles of avi.vs.table_* (see vs.rs for what a write does afterwards).
--
-- Loaded once per VM with the Rust primitives, which take resolved arguments
-- (table, key, value, lifetime): these wrappers decide which argument is which by count and
-- Lua type, as the contract says. Only a Lua number stands in a lifetime position, so
-- table_insert("t", "k", "v") stores "v" under "k" in table "t", while
-- table_insert("k", "v", 30) stores "v" under "k" in the default table for 30 s.
local ins, look, refr, rem, DEFAULT, LIFETIME = ...
local type, select, error, fmt = type, select, error, string.format

local function kv(v, f, pos)
  local t = type(v)
  if t ~= "string" and t ~= "number" then
    error(fmt("bad argument #%d to '%s' (string or number expected, got %s)", pos, f, t), 3)
  end
end
local function secs(v, f, pos)
  if type(v) ~= "number" then
    error(fmt("bad argument #%d to '%s' (number of seconds expected, got %s)", pos, f, type(v)), 3)
  end
end
local function count(f, n, shape)
  error(fmt("%s: expected (%s), got %d arguments", f, shape, n), 3)
end

local function table_insert(...)
  local n, a, b, c, d = select("#", ...), ...
  local F = "table_insert"
  if n == 2 then
    kv(a, F, 1) kv(b, F, 2)
    return ins(DEFAULT, a, b, LIFETIME)
  elseif n == 3 then
    kv(a, F, 1) kv(b, F, 2)
    if type(c) == "number" then return ins(DEFAULT, a, b, c) end
    kv(c, F, 3)
    return ins(a, b, c, LIFETIME)
  elseif n == 4 then
    kv(a, F, 1) kv(b, F, 2) kv(c, F, 3) secs(d, F, 4)
    return ins(a, b, c, d)
  end
  count(F, n, "[table,] key, value [, lifetime]")
end

-- ([table,] key [, lifetime_exten]) -> table, key, exten
local function touch_args(F, n, a, b, c)
  if n == 1 then
    kv(a, F, 1)
    return DEFAULT, a, LIFETIME
  elseif n == 2 then
    kv(a, F, 1)
    if type(b) == "number" then return DEFAULT, a, b end
    kv(b, F, 2)
    return a, b, LIFETIME
  elseif n == 3 then
    kv(a, F, 1) kv(b, F, 2) secs(c, F, 3)
    return a, b, c
  end
  count(F, n, "[table,] key [, lifetime_exten]")
end

local function table_lookup(...)
  local v, r = look(touch_args("table_lookup", select("#", ...), ...))
  if v == nil then return nil end
  return v, r
end

local function table_refresh(...)
  return refr(touch_args("table_refresh", select("#", ...), ...))
end

local function table_remove(...)
  local n, a, b = select("#", ...), ...
  local F = "table_remove"
  if n == 1 then kv(a, F, 1) return rem(DEFAULT, a) end
  if n == 2 then kv(a, F, 1) kv(b, F, 2) return rem(a, b) end
  count(F, n, "[table,] key")
end

return table_insert, table_lookup, table_refresh, table_remove
