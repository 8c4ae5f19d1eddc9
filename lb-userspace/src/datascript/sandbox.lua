-- Lua side of the sandbox (vm.rs). Runs once per VM with the real globals; returns the
-- sandbox table scripts' environments fall back to, and the runner of one event's scripts.
local avi, abort_requested, compile, log_print, mem_kb, jit_on, locate, charge_bytes = ...
local G = _G
if jit and not jit_on then jit.off(); jit.flush() end
local error, setmetatable, select = error, setmetatable, select

-- Read-only views of the shared tables (string, os, avi and its namespaces...), made once
-- per VM when this file has set the shared tables up. A view is an empty table whose
-- metatable reads through to the shared table and refuses writes; the raw writers (rawset,
-- table.insert, table.remove, table.move, and table.sort for good measure) refuse views too, so nothing a transaction writes reaches a
-- table that outlives it. Per transaction only its globals table is new: this runs on every
-- request.
local function read_only(name)
  return function() error("attempt to modify read-only table '" .. name .. "'", 2) end
end

local is_view = {}

-- The view of shared table `t`: table fields are read through views of their own, copied
-- once into the table the view reads (the shared tables do not change after this file).
local function view(t, name)
  local fields = t
  for k, v in next, t do
    if type(v) == "table" then
      if fields == t then
        -- What the copy lacks is read from `t` itself, through its own metatable
        -- (avi.vs.reqvar is found that way, per transaction).
        fields = setmetatable({}, {__index = t})
        for k2, v2 in next, t do fields[k2] = v2 end
      end
      fields[k] = view(v, name .. "." .. tostring(k))
    end
  end
  local v = setmetatable({}, {__index = fields, __newindex = read_only(name), __metatable = false})
  is_view[v] = true
  return v
end

-- The raw writers, refusing views (an error as for any write to them, raised at the
-- script's call: level 3 is the caller of the wrapper that calls this).
local raw_set = rawset
local function refuse_view(t, f)
  if is_view[t] then error("bad argument #1 to '" .. f .. "' (read-only table)", 3) end
end

local S = {}
for _, k in ipairs({"assert", "error", "ipairs", "next", "pairs", "rawequal", "rawget",
    "select", "tonumber", "tostring", "type", "unpack", "setmetatable", "getmetatable"}) do
  S[k] = G[k]
end
S._VERSION = _VERSION
S.rawset = function(t, k, v)
  refuse_view(t, "rawset")
  return raw_set(t, k, v)
end

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

-- The C functions that build strings run where the count hook does not fire; their work is
-- linear in what they return, so each call charges that to the event (budget and clock are
-- checked at once). Pattern functions charge their own steps (strlib.rs).
local function charged(f)
  return function(...)
    local r = f(...)
    if type(r) == "string" then charge_bytes(#r) end
    return r
  end
end
for _, name in ipairs({"rep", "upper", "lower", "reverse", "format"}) do
  string[name] = charged(string[name])
end
table.concat = charged(table.concat)
for _, name in ipairs({"insert", "remove", "sort"}) do
  local f, fname = table[name], "table." .. name
  table[name] = function(t, ...)
    refuse_view(t, fname)
    return f(t, ...)
  end
end
-- table.move writes raw into its destination: the fifth argument, or the source without one.
if table.move then
  local move = table.move
  table.move = function(a1, f, e, t, a2)
    if a2 == nil then
      refuse_view(a1, "table.move")
      return move(a1, f, e, t)
    end
    if is_view[a2] then
      error("bad argument #5 to 'table.move' (read-only table)", 2)
    end
    return move(a1, f, e, t, a2)
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

-- What scripts' globals fall back to: S, with every shared table replaced by its view.
local shared = {}
for k, v in next, S do
  shared[k] = type(v) == "table" and view(v, k) or v
end

-- A transaction's environment: its own globals table, reading through to `shared`.
local env_meta = {__index = shared, __metatable = false}
local avi_view = shared.avi

-- Runs the scripts of one event in a transaction's environment (created on first use).
-- One call from Rust per event: every call across the boundary costs more than this loop.
-- Returns the environment and, on failure, the failing position and a located message.
local function run(env, list)
  if env == nil then
    -- Made with its _G slot, so the assignment does not grow the table. `avi` is in the
    -- table itself (the same read-only view `shared` holds): scripts reach it several times
    -- per event, and a hit here saves the fall-back through the metatable on each.
    env = setmetatable({_G = false, avi = avi_view}, env_meta)
    env._G = env
  end
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
