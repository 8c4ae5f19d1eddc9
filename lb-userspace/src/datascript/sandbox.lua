-- Lua side of the sandbox (vm.rs). Runs once per VM with the real globals; returns the
-- sandbox table scripts' environments fall back to, and the runner of one event's scripts.
local avi, abort_requested, compile, log_print, mem_kb, jit_on, locate = ...
local G = _G
if jit and not jit_on then jit.off(); jit.flush() end
local error, setmetatable, select = error, setmetatable, select

local function ro(t, name)
  return setmetatable({}, {
    __index = t,
    __newindex = function() error("attempt to modify read-only table '" .. name .. "'", 2) end,
    __metatable = false,
  })
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
S.string = ro(string, "string")
S.table = ro(table, "table")
S.math = ro(math, "math")
if bit then S.bit = ro(bit, "bit") end
S.os = ro({time = os.time, clock = os.clock, date = os.date}, "os")

-- A budget stop or a response must end the event even inside pcall.
local raw_pcall, raw_xpcall = pcall, xpcall
local function pass(ok, ...)
  if not ok and abort_requested() then error((...), 0) end
  return ok, ...
end
S.pcall = function(...) return pass(raw_pcall(...)) end
S.xpcall = function(...) return pass(raw_xpcall(...)) end

-- Source only (compile refuses bytecode); the chunk shares its caller's environment, which
-- is the transaction's.
local getfenv, setfenv = getfenv, setfenv
local function load_text(chunk, name)
  if type(chunk) ~= "string" then return nil, "load: only source strings are allowed" end
  local f, err = compile(chunk, name)
  if f then setfenv(f, getfenv(2)) end
  return f, err
end
S.loadstring = load_text
S.load = load_text
S.print = log_print
S.collectgarbage = function(opt)
  if opt == nil or opt == "count" then return mem_kb() end
  return 0
end

-- avi and its namespaces are read-only so no transaction can change another's view.
for name, namespace in pairs(avi) do
  if type(namespace) == "table" then avi[name] = ro(namespace, "avi." .. name) end
end
S.avi = ro(avi, "avi")

local env_mt = {__index = S, __metatable = false}

-- Runs the scripts of one event in a transaction's environment (created on first use).
-- One call from Rust per event: every call across the boundary costs more than this loop.
-- Returns the environment and, on failure, the failing position and a located message.
local function run(env, list)
  if env == nil then
    env = setmetatable({}, env_mt)
    env._G = env
  end
  for i = 1, #list do
    local f = list[i]
    setfenv(f, env)
    local ok, err = raw_xpcall(f, locate)
    if not ok then return env, i, err end
  end
  return env
end
return S, run
