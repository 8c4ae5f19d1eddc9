-- Lua side of the sandbox (vm.rs). Runs once per VM with the real globals; returns the
-- sandbox table scripts' environments fall back to, and the runner of one event's scripts.
local avi, abort_requested, compile, log_print, mem_kb, jit_on, locate = ...
local G = _G
if jit and not jit_on then jit.off(); jit.flush() end
local error, setmetatable, select = error, setmetatable, select

-- Read-only views of the shared tables (string, os, avi and its namespaces...). Every
-- transaction gets views of its own, so whatever a raw write (rawset, table.insert) stores in
-- a view dies with the transaction; the shared tables behind them are never reachable.
local function read_only(name)
  return function() error("attempt to modify read-only table '" .. name .. "'", 2) end
end

-- Metatables of the views of tables without table fields: the same for every transaction.
local flat_meta = {}
local function has_table_fields(t)
  for _, v in next, t do
    if type(v) == "table" then return true end
  end
  return false
end

-- A view maker for one transaction: one view per shared table, made on first use.
local function new_views()
  local views = {}
  local function view(t, name)
    local v = views[t]
    if v then return v end
    local mt = flat_meta[t]
    if mt == nil and has_table_fields(t) then
      -- Table fields are handed out as views of this transaction too.
      mt = {
        __index = function(_, k)
          local x = rawget(t, k)
          if x == nil then return t[k] end
          if type(x) == "table" then return view(x, name .. "." .. tostring(k)) end
          return x
        end,
        __newindex = read_only(name),
        __metatable = false,
      }
    elseif mt == nil then
      mt = {__index = t, __newindex = read_only(name), __metatable = false}
      flat_meta[t] = mt
    end
    v = setmetatable({}, mt)
    views[t] = v
    return v
  end
  return view
end

local S = {}
for _, k in ipairs({"assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget", "rawset",
    "select", "tonumber", "tostring", "type", "unpack", "setmetatable", "getmetatable"}) do
  S[k] = G[k]
end
S._VERSION = _VERSION

-- Without string.dump no script can produce bytecode; the shared string metatable is hidden
-- so no script can change how every other transaction's strings behave.
string.dump = nil
getmetatable("").__metatable = false
-- table.sort in Lua: LuaJIT's sorts in C, where the count hook never fires, and a crafted
-- order makes its quicksort quadratic. Heapsort is O(n log n) whatever the input, and every
-- step is counted. Like LuaJIT's, it reads and writes the array raw and is not stable.
local rawget, rawset, floor = rawget, rawset, math.floor
local function default_less(a, b) return a < b end
function table.sort(t, less)
  if type(t) ~= "table" then
    error("bad argument #1 to 'sort' (table expected, got " .. type(t) .. ")", 2)
  end
  if less == nil then
    less = default_less
  elseif type(less) ~= "function" then
    error("bad argument #2 to 'sort' (function expected, got " .. type(less) .. ")", 2)
  end
  local function sift(root, last)
    local v = rawget(t, root)
    while true do
      local child = 2 * root
      if child > last then break end
      local c = rawget(t, child)
      if child < last then
        local right = rawget(t, child + 1)
        if less(c, right) then child, c = child + 1, right end
      end
      if not less(v, c) then break end
      rawset(t, root, c)
      root = child
    end
    rawset(t, root, v)
  end
  local n = #t
  for i = floor(n / 2), 1, -1 do sift(i, n) end
  for last = n, 2, -1 do
    local top = rawget(t, 1)
    rawset(t, 1, rawget(t, last))
    rawset(t, last, top)
    sift(1, last - 1)
  end
end

S.string = string
S.table = table
S.math = math
if bit then S.bit = bit end
S.os = {time = os.time, clock = os.clock, date = os.date}

-- A budget stop or a response must end the event even inside pcall.
local raw_pcall, raw_xpcall = pcall, xpcall
local function pass(ok, ...)
  if not ok and abort_requested() then error((...), 0) end
  return ok, ...
end
S.pcall = function(...) return pass(raw_pcall(...)) end
S.xpcall = function(...) return pass(raw_xpcall(...)) end

-- The environment of the transaction whose event runs (set by run below).
local current_env

-- Source only (compile refuses bytecode); the chunk runs in the environment of the
-- transaction that loads it, whoever calls load (pcall(loadstring, ...) too).
local setfenv = setfenv
local function load_text(chunk, name)
  if type(chunk) ~= "string" then return nil, "load: only source strings are allowed" end
  local f, err = compile(chunk, name)
  if f then setfenv(f, current_env) end
  return f, err
end
S.loadstring = load_text
S.load = load_text
S.print = log_print
S.collectgarbage = function(opt)
  if opt == nil or opt == "count" then return mem_kb() end
  return 0
end

S.avi = avi

-- A transaction's environment: its globals, falling back to S. Shared tables are seen
-- through the transaction's own read-only views; what S holds is copied into the
-- environment on first use, so later reads are plain table hits.
local function new_env()
  local view = new_views()
  local env = setmetatable({}, {
    __index = function(env, k)
      local x = S[k]
      if type(x) == "table" then x = view(x, k) end
      if x ~= nil then rawset(env, k, x) end
      return x
    end,
    __metatable = false,
  })
  env._G = env
  return env
end

-- Runs the scripts of one event in a transaction's environment (created on first use).
-- One call from Rust per event: every call across the boundary costs more than this loop.
-- Returns the environment and, on failure, the failing position and a located message.
local function run(env, list)
  if env == nil then env = new_env() end
  current_env = env
  for i = 1, #list do
    local f = list[i]
    setfenv(f, env)
    local ok, err = raw_xpcall(f, locate)
    if not ok then
      current_env = nil
      return env, i, err
    end
  end
  current_env = nil
  return env
end
return S, run
