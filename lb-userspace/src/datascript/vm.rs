//! One sandboxed Lua VM with the avi.* API and the scripts of a virtual service loaded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use bytes::Bytes;
use http::{HeaderMap, Method, Uri, Version};
use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, VmState};
use parking_lot::Mutex;

use super::compile::{CHUNK_PREFIX, ScriptSet, load_text};
use super::txn::ScriptEnv;
use super::{DsError, Event};
use crate::proxy::hooks::{Selection, TxnInfo};

/// The request head kept for HTTP_RESP scripts that read the request.
#[derive(Clone, Debug)]
pub(crate) struct ReqSnapshot {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Everything a transaction keeps between its two events.
pub(crate) struct TxnState {
    pub info: TxnInfo,
    /// The transaction's global environment (in its VM).
    pub env: Option<Table>,
    /// avi.vs.reqvar, created on first use.
    pub reqvar: Option<Table>,
    pub req_snapshot: Option<ReqSnapshot>,
    /// The server chosen (HTTP_LB_DONE) or that answered (HTTP_RESP).
    pub server: Option<SocketAddr>,
    /// avi.http.set_response_body_buffer_size, in bytes (HTTP_RESP).
    pub resp_body_buffer: Option<usize>,
    pub selection: Selection,
    /// A response a script asked for (avi.http.response / redirect).
    pub reply: Option<http::Response<Bytes>>,
    pub close: bool,
    pub log: String,
    /// The user id a script set (avi.http.set_userid).
    pub userid: Option<String>,
    /// Headers added or replaced by scripts so far, and their bytes (see
    /// [`TxnState::charge_added_header`]).
    pub added_headers: usize,
    pub added_header_bytes: usize,
}

impl TxnState {
    pub fn new(info: TxnInfo) -> Self {
        Self {
            info,
            env: None,
            reqvar: None,
            req_snapshot: None,
            server: None,
            resp_body_buffer: None,
            selection: Selection::default(),
            reply: None,
            close: false,
            log: String::new(),
            userid: None,
            added_headers: 0,
            added_header_bytes: 0,
        }
    }

    /// Counts a header a script adds or replaces (`bytes`: name and value) against the
    /// transaction's bound: headers live outside the Lua heap, so without it a loop of
    /// add_header calls grows the request without limit. Beyond it: a Lua error (500).
    pub fn charge_added_header(
        &mut self,
        limits: &super::DsLimits,
        func: &str,
        bytes: usize,
    ) -> mlua::Result<()> {
        self.added_headers += 1;
        self.added_header_bytes += bytes;
        if self.added_headers > limits.max_added_headers
            || self.added_header_bytes > limits.max_added_header_bytes
        {
            return Err(mlua::Error::runtime(format!(
                "{func}: too many header additions in this transaction (at most {} headers, {} bytes)",
                limits.max_added_headers, limits.max_added_header_bytes
            )));
        }
        Ok(())
    }
}

/// What the avi.* functions see during an event. Empty between events.
#[derive(Default)]
pub(crate) struct Ctx {
    pub event: Option<Event>,
    pub txn: Option<Box<TxnState>>,
    /// The live request (HTTP_REQ).
    pub req: Option<http::request::Parts>,
    /// The live response (HTTP_RESP).
    pub resp: Option<http::response::Parts>,
    /// The buffered body (HTTP_REQ_DATA: the request's, HTTP_RESP_DATA: the response's).
    pub body: Option<Bytes>,
    /// The status latch answers with when the server failed (HTTP_RESP_FAILED).
    pub failed_status: Option<u16>,
}

/// State shared by the Rust functions registered in one VM.
pub(crate) struct VmShared {
    pub ctx: Mutex<Ctx>,
    /// Work done in the current event, in instructions: the count hook's periods plus the
    /// steps of library functions that charge their own work (the pattern matcher).
    pub spent: AtomicU64,
    /// Instructions an event may spend.
    pub budget: u64,
    /// Start of the current event's clock, in nanoseconds since `epoch`; [`NO_EVENT`] while
    /// no event runs, [`CLOCK_NOT_READ`] until the event's first charge (see
    /// [`VmShared::charge`]).
    pub event_start_ns: AtomicU64,
    pub epoch: Instant,
    /// How long an event may run (wall clock).
    pub max_event_time: Duration,
    /// Set when the event must end (budget exhausted, response sent): pcall then re-raises.
    pub abort: AtomicBool,
    /// What the scripts work with: the environment of the transaction whose event runs. A
    /// reload that leaves a service's scripts and limits alone keeps its VMs, so the old
    /// and the new configuration's transactions share them; each event installs its own
    /// configuration's environment first ([`VmShared::install_env`]).
    env: ArcSwap<ScriptEnv>,
    pub set: Arc<ScriptSet>,
    /// Recently returned Lua strings (see `api::args::cached_str`). foldhash, not SipHash:
    /// it is looked up several times per event; its seed is random per process, and the
    /// cache is small and cleared when full, so no key set makes it slow for long.
    pub strings: Mutex<StringCache>,
    /// Recently returned server addresses as Lua strings (see `api::args::cached_ip`).
    pub ips: Mutex<Vec<(std::net::IpAddr, mlua::String)>>,
}

/// [`VmShared::strings`].
pub(crate) type StringCache =
    std::collections::HashMap<Box<str>, mlua::String, foldhash::fast::RandomState>;

impl VmShared {
    /// The state of a VM running `set` with `env`, before its first event.
    pub fn new(env: &Arc<ScriptEnv>, set: &Arc<ScriptSet>) -> Self {
        VmShared {
            ctx: Mutex::new(Ctx::default()),
            spent: AtomicU64::new(0),
            budget: env.limits.instruction_budget,
            // No event yet: Lua run while the VM is set up has no time limit.
            event_start_ns: AtomicU64::new(NO_EVENT),
            epoch: Instant::now(),
            max_event_time: env.limits.max_event_time,
            abort: AtomicBool::new(false),
            env: ArcSwap::new(Arc::clone(env)),
            set: Arc::clone(set),
            strings: Mutex::default(),
            ips: Mutex::default(),
        }
    }

    /// The environment of the running event's transaction.
    pub fn env(&self) -> Guard<Arc<ScriptEnv>> {
        self.env.load()
    }

    /// Makes `env` the scripts' environment, unless it already is (one load per event).
    pub fn install_env(&self, env: &Arc<ScriptEnv>) {
        if !Arc::ptr_eq(&self.env.load(), env) {
            self.env.store(Arc::clone(env));
        }
    }

    pub fn begin_event(&self) {
        self.spent.store(0, Ordering::Relaxed);
        self.event_start_ns.store(CLOCK_NOT_READ, Ordering::Relaxed);
        self.abort.store(false, Ordering::Relaxed);
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Charges `instructions` of work to the current event and checks its limits: past the
    /// instruction budget or the time limit, the event is aborted (no pcall catches it) and
    /// the error ends it. The count hook charges its period; library functions that loop in
    /// Rust charge their steps, so no function runs unbounded.
    pub fn charge(&self, instructions: u64) -> mlua::Result<()> {
        let spent = self.spent.fetch_add(instructions, Ordering::Relaxed) + instructions;
        if spent > self.budget {
            self.abort.store(true, Ordering::Relaxed);
            return Err(mlua::Error::runtime(BUDGET));
        }
        let start = self.event_start_ns.load(Ordering::Relaxed);
        if start == NO_EVENT {
            return Ok(());
        }
        let now = self.now_ns();
        if start == CLOCK_NOT_READ {
            // The event's clock starts at its first charge: most events end before the
            // first hook period (1,000 instructions) and never read the clock, which costs
            // more than their scripts. What runs before the first charge is bounded: fewer
            // instructions than one period, and library calls that charge as they go.
            self.event_start_ns.store(now, Ordering::Relaxed);
            return Ok(());
        }
        if u128::from(now.saturating_sub(start)) > self.max_event_time.as_nanos() {
            self.abort.store(true, Ordering::Relaxed);
            return Err(mlua::Error::runtime(format!(
                "{TIME_LIMIT} ({} ms)",
                self.max_event_time.as_millis()
            )));
        }
        Ok(())
    }
}

/// [`VmShared::event_start_ns`] while no event runs (Lua run to set a VM up has no time limit).
const NO_EVENT: u64 = u64::MAX;
/// [`VmShared::event_start_ns`] from the start of an event to its first charge.
const CLOCK_NOT_READ: u64 = u64::MAX - 1;

/// Bytes a C string function produces per instruction of budget it is charged. The count hook
/// fires only between Lua instructions, so without a charge a loop of `string.rep` or
/// `upper` on megabyte strings would do seconds of work per hook period.
const BYTES_PER_INSTRUCTION: usize = 16;

/// Marker message of the error that ends an event after avi.http.response/redirect.
pub(crate) const TERMINATE: &str = "latch: DataScript terminated by a response";
/// Message of the budget error.
pub(crate) const BUDGET: &str = "instruction budget exceeded";
/// Longest source `loadstring`/`load` compile (the parser runs in C, unhooked).
pub(crate) const MAX_LOAD_BYTES: usize = 256 * 1024;
/// Message of the time limit error.
pub(crate) const TIME_LIMIT: &str = "event time limit exceeded";

/// True when `message` is the error of a stop by the instruction budget or the time limit.
pub(crate) fn is_limit_stop(message: &str) -> bool {
    message.contains(BUDGET) || message.contains(TIME_LIMIT)
}

/// The scripts of one event in one VM.
pub(crate) struct EventScripts {
    /// Script indexes in the set, in order.
    pub indexes: Vec<usize>,
    /// Their functions, in the same order (what the sandbox runner calls).
    pub list: Table,
}

pub(crate) struct Vm {
    pub lua: Lua,
    /// Per event (by [`Event::index`]).
    pub events: Vec<EventScripts>,
    /// The Lua runner (see sandbox.lua).
    pub run: Function,
    pub shared: Arc<VmShared>,
    /// The heap limit in force (bytes).
    pub memory_limit: usize,
}

/// Lua side of the sandbox. Runs once per VM with the real globals; returns the sandbox
/// table scripts' environments fall back to, and the runner of one event's scripts.
const SANDBOX_LUA: &str = include_str!("sandbox.lua");

/// Seeds the VM's `math.random` from the OS. LuaJIT keeps the generator's state per Lua
/// state and seeds it with a constant, so without this every VM of every worker, before and
/// after a restart, draws the same sequence. `math.randomseed` from a script reseeds only its
/// own VM. `math.random` is still no source of secrets: `avi.utils.rand_bytes` is.
fn seed_math_random(lua: &Lua) -> mlua::Result<()> {
    let mut buf = [0u8; 8];
    getrandom::fill(&mut buf).map_err(|e| mlua::Error::external(format!("getrandom: {e}")))?;
    // A double holds 53 bits exactly; LuaJIT derives the generator state from its bits.
    let seed = (u64::from_le_bytes(buf) >> 11) as f64;
    let math: Table = lua.globals().get("math")?;
    let randomseed: Function = math.get("randomseed")?;
    randomseed.call::<()>(seed)
}

impl Vm {
    pub fn new(set: &Arc<ScriptSet>, env: &Arc<ScriptEnv>) -> Result<Vm, DsError> {
        let vs = set.vs_name().to_string();
        let vm_err = |source| DsError::Vm {
            vs: vs.clone(),
            source,
        };
        let libs =
            StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::OS | StdLib::BIT | StdLib::JIT;
        let lua = Lua::new_with(libs, LuaOptions::default()).map_err(vm_err)?;
        seed_math_random(&lua).map_err(vm_err)?;
        let limits = &env.limits;
        let shared = Arc::new(VmShared::new(env, set));
        let run = Self::sandbox(&lua, &shared).map_err(vm_err)?;
        let events = Event::ALL
            .iter()
            .map(|_| {
                Ok(EventScripts {
                    indexes: Vec::new(),
                    list: lua.create_table()?,
                })
            })
            .collect::<mlua::Result<_>>()
            .map_err(vm_err)?;
        let mut vm = Vm {
            lua,
            events,
            run,
            shared: Arc::clone(&shared),
            memory_limit: limits.memory_bytes,
        };
        for (i, s) in set.scripts.iter().enumerate() {
            let f = set.load(&vm.lua, i)?;
            let scripts = &mut vm.events[s.event.index()];
            scripts.indexes.push(i);
            scripts.list.raw_push(f).map_err(vm_err)?;
        }
        let sh = Arc::clone(&shared);
        let period = limits.hook_every.max(1);
        vm.lua
            .set_hook(
                HookTriggers::new().every_nth_instruction(period),
                move |_, _| {
                    sh.charge(u64::from(period))?;
                    Ok(VmState::Continue)
                },
            )
            .map_err(vm_err)?;
        vm.lua.gc_collect().map_err(vm_err)?;
        let used = vm.lua.used_memory();
        vm.memory_limit = limits.memory_bytes.max(used + (1 << 20));
        vm.lua.set_memory_limit(vm.memory_limit).map_err(vm_err)?;
        Ok(vm)
    }

    /// Collects garbage when the heap is more than `percent` full. LuaJIT runs no emergency
    /// collection when an allocation fails, so without this the garbage of a transaction that
    /// filled the heap would fail every later event until the next incremental cycle.
    pub fn collect_if_above(&self, percent: usize) {
        if self.lua.used_memory() > self.memory_limit / 100 * percent
            && let Err(e) = self.lua.gc_collect()
        {
            tracing::warn!(vs = %self.shared.set.vs_name(), error = %e, "DataScript VM garbage collection failed");
        }
    }

    fn sandbox(lua: &Lua, shared: &Arc<VmShared>) -> mlua::Result<Function> {
        super::strlib::install(lua, shared)?;
        let avi = super::api::install(lua, shared)?;
        let sh = Arc::clone(shared);
        let abort_requested =
            lua.create_function(move |_, ()| Ok(sh.abort.load(Ordering::Relaxed)))?;
        let compile =
            lua.create_function(move |lua, (text, name): (mlua::String, Option<String>)| {
                let name = name.as_deref().unwrap_or("loadstring");
                // Compiling runs in C, out of the hook's reach: bound the source.
                let len = text.as_bytes().len();
                if len > MAX_LOAD_BYTES {
                    return Ok((
                        None,
                        Some(format!(
                            "load: chunk of {len} bytes exceeds the limit of {MAX_LOAD_BYTES}"
                        )),
                    ));
                }
                match load_text(lua, text.as_bytes().to_vec(), name) {
                    Ok(f) => Ok((Some(f), None)),
                    Err(e) => Ok((None, Some(super::compile::root_message(&e)))),
                }
            })?;
        let sh = Arc::clone(shared);
        let log_print = lua.create_function(move |_, args: mlua::Variadic<mlua::Value>| {
            super::api::vs_log(&sh, &args)
        })?;
        let mem_kb = lua.create_function(|lua, ()| Ok(lua.used_memory() as f64 / 1024.0))?;
        // xpcall handler: the message with the script position where the error was raised
        // (errors from avi.* functions carry none of their own).
        let locate = lua.create_function(|lua, err: mlua::Value| {
            let msg = match err {
                mlua::Value::String(s) => return Ok(s.to_string_lossy()),
                mlua::Value::Error(e) => super::compile::root_message(&e),
                other => other
                    .to_string()
                    .unwrap_or_else(|_| other.type_name().into()),
            };
            let pos = (1..32).find_map(|level| {
                lua.inspect_stack(level, |d| {
                    let src = d.source().short_src.map(|s| s.into_owned())?;
                    src.starts_with(CHUNK_PREFIX)
                        .then(|| format!("{src}:{}: ", d.current_line().unwrap_or(0)))
                })
                .flatten()
            });
            Ok(format!("{}{msg}", pos.unwrap_or_default()))
        })?;
        // What the C string functions produced, charged as work: see sandbox.lua.
        let sh = Arc::clone(shared);
        let charge_bytes = lua.create_function(move |_, bytes: usize| {
            sh.charge((bytes / BYTES_PER_INSTRUCTION) as u64)
        })?;
        let (_s, run): (Table, Function) =
            lua.load(SANDBOX_LUA).set_name("=latch-sandbox").call((
                avi,
                abort_requested,
                compile,
                log_print,
                mem_kb,
                shared.env().limits.jit,
                locate,
                charge_bytes,
            ))?;
        Ok(run)
    }
}
