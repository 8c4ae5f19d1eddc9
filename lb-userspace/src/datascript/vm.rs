//! One sandboxed Lua VM with the avi.* API and the scripts of a virtual service loaded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
        }
    }
}

/// What the avi.* functions see during an event. Empty between events.
#[derive(Default)]
pub(crate) struct Ctx {
    pub event: Option<Event>,
    pub txn: Option<TxnState>,
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
    /// Hook ticks in the current event.
    pub ticks: AtomicU64,
    pub max_ticks: u64,
    /// Set when the event must end (budget exhausted, response sent): pcall then re-raises.
    pub abort: AtomicBool,
    pub env: ScriptEnv,
    pub set: Arc<ScriptSet>,
    /// Recently returned Lua strings (see `api::args::cached_str`).
    pub strings: Mutex<std::collections::HashMap<Box<str>, mlua::String>>,
}

impl VmShared {
    pub fn begin_event(&self) {
        self.ticks.store(0, Ordering::Relaxed);
        self.abort.store(false, Ordering::Relaxed);
    }
}

/// Marker message of the error that ends an event after avi.http.response/redirect.
pub(crate) const TERMINATE: &str = "latch: DataScript terminated by a response";
/// Message of the budget error.
pub(crate) const BUDGET: &str = "instruction budget exceeded";

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
}

/// Lua side of the sandbox. Runs once per VM with the real globals; returns the sandbox
/// table scripts' environments fall back to, and the runner of one event's scripts.
const SANDBOX_LUA: &str = include_str!("sandbox.lua");

impl Vm {
    pub fn new(set: &Arc<ScriptSet>, env: &ScriptEnv) -> Result<Vm, DsError> {
        let vs = set.vs_name().to_string();
        let vm_err = |source| DsError::Vm {
            vs: vs.clone(),
            source,
        };
        let libs =
            StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::OS | StdLib::BIT | StdLib::JIT;
        let lua = Lua::new_with(libs, LuaOptions::default()).map_err(vm_err)?;
        let limits = &env.limits;
        let shared = Arc::new(VmShared {
            ctx: Mutex::new(Ctx::default()),
            ticks: AtomicU64::new(0),
            max_ticks: limits
                .instruction_budget
                .div_ceil(u64::from(limits.hook_every.max(1))),
            abort: AtomicBool::new(false),
            env: env.clone(),
            set: Arc::clone(set),
            strings: Mutex::default(),
        });
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
        };
        for (i, s) in set.scripts.iter().enumerate() {
            let f = set.load(&vm.lua, i)?;
            let scripts = &mut vm.events[s.event.index()];
            scripts.indexes.push(i);
            scripts.list.raw_push(f).map_err(vm_err)?;
        }
        let sh = Arc::clone(&shared);
        {
            vm.lua
                .set_hook(
                    HookTriggers::new().every_nth_instruction(limits.hook_every.max(1)),
                    move |_, _| {
                        let t = sh.ticks.fetch_add(1, Ordering::Relaxed) + 1;
                        if t > sh.max_ticks {
                            sh.abort.store(true, Ordering::Relaxed);
                            return Err(mlua::Error::runtime(BUDGET));
                        }
                        Ok(VmState::Continue)
                    },
                )
                .map_err(vm_err)?;
        }
        vm.lua.gc_collect().map_err(vm_err)?;
        let used = vm.lua.used_memory();
        {
            vm.lua
                .set_memory_limit(limits.memory_bytes.max(used + (1 << 20)))
                .map_err(vm_err)?;
        }
        Ok(vm)
    }

    fn sandbox(lua: &Lua, shared: &Arc<VmShared>) -> mlua::Result<Function> {
        let avi = super::api::install(lua, shared)?;
        let sh = Arc::clone(shared);
        let abort_requested =
            lua.create_function(move |_, ()| Ok(sh.abort.load(Ordering::Relaxed)))?;
        let compile =
            lua.create_function(move |lua, (text, name): (mlua::String, Option<String>)| {
                let name = name.as_deref().unwrap_or("loadstring");
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
        let (_s, run): (Table, Function) =
            lua.load(SANDBOX_LUA).set_name("=latch-sandbox").call((
                avi,
                abort_requested,
                compile,
                log_print,
                mem_kb,
                shared.env.limits.jit,
                locate,
            ))?;
        Ok(run)
    }
}
