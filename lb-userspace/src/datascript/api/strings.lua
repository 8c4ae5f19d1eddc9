-- string.beginswith / endswith / contains (Avi's string extensions): plain text, not patterns,
-- case-sensitive. Numbers are taken as their text (avi.vs.client_port() may be one); a nil
-- subject is false, since Avi's own example tests a header that may be absent.
local type, tostring, error, find, sub = type, tostring, error, string.find, string.sub

local function text(v, pos, name, nil_ok)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return tostring(v) end
  if t == "nil" and nil_ok then return nil end
  error("bad argument #" .. pos .. " to '" .. name .. "' (string expected, got " .. t .. ")", 3)
end

local function beginswith(s, prefix)
  s, prefix = text(s, 1, "beginswith", true), text(prefix, 2, "beginswith")
  return s ~= nil and sub(s, 1, #prefix) == prefix
end

local function endswith(s, suffix)
  s, suffix = text(s, 1, "endswith", true), text(suffix, 2, "endswith")
  return s ~= nil and (#suffix == 0 or sub(s, -#suffix) == suffix)
end

local function contains(s, part)
  s, part = text(s, 1, "contains", true), text(part, 2, "contains")
  return s ~= nil and find(s, part, 1, true) ~= nil
end

string.beginswith, string.endswith, string.contains = beginswith, endswith, contains
