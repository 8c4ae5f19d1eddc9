//! The proxy seam: [`DataScriptHooks`] (one per virtual service) and its transactions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use mlua::Table;
use parking_lot::Mutex;

use super::compile::ScriptSet;
use super::limiter::RateLimits;
use super::vm::{Ctx, ReqSnapshot, TxnState, Vm};
use super::{DsError, DsLimits, Event};
use crate::config::{GeoDatabase, Groups};
use crate::proxy::hooks::{
    HookFactory, PoolView, RequestVerdict, ResponseVerdict, TxnHooks, TxnInfo,
};
use crate::tables::{Clock, EntryView, VsTables};

/// Told when a script stores, extends or removes a table entry, with the transaction it
/// happened in: the agent uses it to pin the client to the server for the XDP fast path.
pub trait ScriptTableObserver: Send + Sync {
    /// `entry` was inserted or its lifetime extended by a script.
    fn upserted(&self, txn: &TxnInfo, entry: &EntryView);
    /// A script removed `key` from `table`.
    fn removed(&self, txn: &TxnInfo, table: &str, key: &str);
}

/// What scripts of one virtual service work with.
#[derive(Clone)]
pub struct ScriptEnv {
    /// The virtual service's tables.
    pub tables: Arc<VsTables>,
    /// Pools and server health.
    pub pools: Arc<dyn PoolView>,
    /// Clock for table lifetimes (CLOCK_MONOTONIC in production).
    pub clock: Arc<dyn Clock>,
    /// Limits.
    pub limits: DsLimits,
    /// Optional observer of script table writes.
    pub observer: Option<Arc<dyn ScriptTableObserver>>,
    /// The MaxMind database of `avi.utils.get_geo_from_ip`, if one is configured.
    pub geo: Option<GeoDatabase>,
    /// The string and IP groups of the config (`avi.stringgroup`, `avi.ipgroup`).
    pub groups: Arc<Groups>,
    /// The buckets of the service's rate limiters (`avi.vs.ratelimit`, `avi.vs.rate_limit`).
    pub rate_limits: Arc<RateLimits>,
}

struct Shared {
    set: Arc<ScriptSet>,
    vms: Vec<Mutex<Vm>>,
    has_req: bool,
    has_resp: bool,
    counters: Arc<DsCounters>,
}

/// Runs, errors and budget stops of one virtual service's scripts, per event. Kept by the
/// agent across reloads so the exported counters only ever grow.
#[derive(Debug, Default)]
pub struct DsCounters {
    runs: [AtomicU64; 2],
    errors: [AtomicU64; 2],
    budget_stops: [AtomicU64; 2],
}

/// One event's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCounters {
    /// Events run (all scripts of the event together).
    pub runs: u64,
    /// Runs that ended in a Lua error (budget stops not included).
    pub errors: u64,
    /// Runs stopped by the instruction budget or the time limit (`max_event_time`).
    pub budget_stops: u64,
}

impl DsCounters {
    fn slot(event: Event) -> usize {
        match event {
            Event::HttpReq => 0,
            Event::HttpResp => 1,
        }
    }

    /// Counters of `event`.
    pub fn get(&self, event: Event) -> EventCounters {
        let i = Self::slot(event);
        EventCounters {
            runs: self.runs[i].load(Ordering::Relaxed),
            errors: self.errors[i].load(Ordering::Relaxed),
            budget_stops: self.budget_stops[i].load(Ordering::Relaxed),
        }
    }
}

/// The [`HookFactory`] of one virtual service.
#[derive(Clone)]
pub struct DataScriptHooks {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DataScriptHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataScriptHooks")
            .field("vs", &self.shared.set.vs_name())
            .field("scripts", &self.shared.set.len())
            .field("vms", &self.shared.vms.len())
            .finish()
    }
}

impl DataScriptHooks {
    /// Build the VMs of a virtual service (`env.limits.vms` of them, 0 = one per CPU).
    pub fn new(set: Arc<ScriptSet>, env: ScriptEnv) -> Result<Self, DsError> {
        Self::with_counters(set, env, Arc::default())
    }

    /// Like [`DataScriptHooks::new`], counting into `counters` (shared with the hooks this
    /// replaces on a reload).
    pub fn with_counters(
        set: Arc<ScriptSet>,
        env: ScriptEnv,
        counters: Arc<DsCounters>,
    ) -> Result<Self, DsError> {
        let n = match env.limits.vms {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let vms = if set.is_empty() {
            Vec::new()
        } else {
            (0..n)
                .map(|_| Vm::new(&set, &env).map(Mutex::new))
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            shared: Arc::new(Shared {
                has_req: set.has(Event::HttpReq),
                has_resp: set.has(Event::HttpResp),
                set,
                vms,
                counters,
            }),
        })
    }

    /// Runs, errors and budget stops so far.
    pub fn counters(&self) -> &Arc<DsCounters> {
        &self.shared.counters
    }

    /// The scripts.
    pub fn scripts(&self) -> &Arc<ScriptSet> {
        &self.shared.set
    }

    /// Lua memory in use per VM, for metrics.
    pub fn memory_used(&self) -> Vec<usize> {
        self.shared
            .vms
            .iter()
            .map(|v| v.lock().lua.used_memory())
            .collect()
    }
}

impl HookFactory for DataScriptHooks {
    fn begin(&self, info: TxnInfo) -> Box<dyn TxnHooks> {
        Box::new(Txn {
            shared: Arc::clone(&self.shared),
            vm: None,
            state: Some(TxnState::new(info)),
        })
    }
}

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    /// Each worker thread prefers its own VM.
    static SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
}

struct Txn {
    shared: Arc<Shared>,
    vm: Option<usize>,
    /// Always `Some` except while an event runs.
    state: Option<TxnState>,
}

fn empty_request() -> http::request::Parts {
    http::Request::new(()).into_parts().0
}

fn empty_response() -> http::response::Parts {
    http::Response::new(()).into_parts().0
}

fn internal_error() -> http::Response<Bytes> {
    let mut r = http::Response::new(Bytes::from_static(b"Internal Server Error\n"));
    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

/// How an event ended.
enum Outcome {
    Done,
    /// A script answered (avi.http.response / redirect).
    Reply(http::Response<Bytes>),
    /// A script failed: answered 500.
    Failed,
}

impl Outcome {
    /// The response the client gets instead of the server's, if any.
    fn answer(self) -> Option<http::Response<Bytes>> {
        match self {
            Outcome::Done => None,
            Outcome::Reply(r) => Some(r),
            Outcome::Failed => Some(internal_error()),
        }
    }
}

impl Txn {
    /// The transaction's VM: chosen at the first event (the worker's own VM unless busy),
    /// kept afterwards because the transaction's globals live there.
    fn vm(&mut self) -> usize {
        let n = self.shared.vms.len();
        if let Some(i) = self.vm {
            return i;
        }
        let start = SLOT.with(|s| *s) % n;
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|i| !self.shared.vms[*i].is_locked())
            .unwrap_or(start);
        self.vm = Some(i);
        i
    }

    fn run(
        &mut self,
        event: Event,
        req: Option<http::request::Parts>,
        resp: Option<http::response::Parts>,
    ) -> (
        Outcome,
        Option<http::request::Parts>,
        Option<http::response::Parts>,
    ) {
        if self.shared.vms.is_empty() {
            return (Outcome::Done, req, resp);
        }
        let idx = self.vm();
        let shared = Arc::clone(&self.shared);
        let vm = shared.vms[idx].lock();
        let Some(mut state) = self.state.take() else {
            return (Outcome::Failed, req, resp);
        };
        let (funcs, list) = match event {
            Event::HttpReq => (&vm.req, &vm.req_list),
            Event::HttpResp => (&vm.resp, &vm.resp_list),
        };
        let env = state.env.take();
        *vm.shared.ctx.lock() = Ctx {
            event: Some(event),
            txn: Some(state),
            req,
            resp,
        };
        // Garbage of earlier transactions must not fail this one.
        vm.collect_if_above(75);
        vm.shared.begin_event();
        let result = vm
            .run
            .call::<(Option<Table>, Option<usize>, Option<String>)>((env, list));
        let mut ctx = std::mem::take(&mut *vm.shared.ctx.lock());
        let failure = match result {
            Ok((env, pos, err)) => {
                if let Some(t) = ctx.txn.as_mut() {
                    t.env = env;
                }
                pos.map(|p| {
                    let script = p.checked_sub(1).and_then(|p| funcs.get(p)).copied();
                    (script, mlua::Error::runtime(err.unwrap_or_default()))
                })
            }
            Err(e) => Some((None, e)),
        };
        if failure.is_some()
            && let Some(t) = ctx.txn.as_mut()
            && t.reply.is_none()
        {
            // A failed event ends the transaction's scripts: what it holds in Lua goes now,
            // so a request that filled the heap leaves it usable for the next one.
            t.env = None;
            t.reqvar = None;
            vm.collect_if_above(50);
        }
        drop(vm);
        let Some(mut state) = ctx.txn else {
            return (Outcome::Failed, ctx.req, ctx.resp);
        };
        let slot = DsCounters::slot(event);
        let counters = &shared.counters;
        counters.runs[slot].fetch_add(1, Ordering::Relaxed);
        let failed = match failure {
            // avi.http.response/redirect end the event with an error on purpose.
            Some(_) if state.reply.is_some() => false,
            Some((script, e)) => {
                if crate::datascript::vm::is_limit_stop(&e.to_string()) {
                    counters.budget_stops[slot].fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.errors[slot].fetch_add(1, Ordering::Relaxed);
                }
                let vs = &state.info.vs_name;
                match script {
                    Some(i) => {
                        let err = shared.set.error(i, &e);
                        let name = &shared.set.scripts[i].name;
                        tracing::warn!(vs = %vs, script = %name, event = %event, error = %err, "DataScript error, answering 500");
                        // Also in the request's log line.
                        if !state.log.is_empty() {
                            state.log.push('\n');
                        }
                        state
                            .log
                            .push_str(&format!("DataScript error in {name}: {err}"));
                    }
                    None => {
                        tracing::warn!(vs = %vs, event = %event, error = %e, "DataScript runner error, answering 500");
                        // A limit stop can also fire in the runner's own few instructions
                        // after a script was stopped (the hook raises until the event ends):
                        // the request's log line still says why it was answered 500.
                        let message = e.to_string();
                        if crate::datascript::vm::is_limit_stop(&message) {
                            if !state.log.is_empty() {
                                state.log.push('\n');
                            }
                            let reason = crate::datascript::compile::root_message(&e);
                            state.log.push_str(&format!("DataScript stopped: {reason}"));
                        }
                    }
                }
                true
            }
            None => false,
        };
        let outcome = if failed {
            Outcome::Failed
        } else if let Some(r) = state.reply.take() {
            Outcome::Reply(r)
        } else {
            Outcome::Done
        };
        self.state = Some(state);
        (outcome, ctx.req, ctx.resp)
    }
}

impl TxnHooks for Txn {
    fn on_request(&mut self, request: &mut http::request::Parts) -> RequestVerdict {
        let outcome = if self.shared.has_req {
            let parts = std::mem::replace(request, empty_request());
            let (outcome, back, _) = self.run(Event::HttpReq, Some(parts), None);
            if let Some(back) = back {
                *request = back;
            }
            outcome
        } else {
            Outcome::Done
        };
        let Some(state) = self.state.as_mut() else {
            return RequestVerdict::Respond(internal_error());
        };
        if self.shared.has_resp && self.shared.set.resp_reads_request {
            state.req_snapshot = Some(ReqSnapshot {
                method: request.method.clone(),
                uri: request.uri.clone(),
                version: request.version,
                headers: request.headers.clone(),
            });
        }
        match outcome.answer() {
            None => RequestVerdict::Forward(state.selection.clone()),
            Some(r) => RequestVerdict::Respond(r),
        }
    }

    fn on_response(
        &mut self,
        response: &mut http::response::Parts,
        server: SocketAddr,
    ) -> ResponseVerdict {
        if let Some(s) = self.state.as_mut() {
            s.server = Some(server);
        }
        if !self.shared.has_resp {
            return ResponseVerdict::Continue;
        }
        let parts = std::mem::replace(response, empty_response());
        let (outcome, _, back) = self.run(Event::HttpResp, None, Some(parts));
        if let Some(back) = back {
            *response = back;
        }
        match outcome.answer() {
            None => ResponseVerdict::Continue,
            Some(r) => ResponseVerdict::Respond(r),
        }
    }

    fn log_output(&self) -> Option<String> {
        self.state
            .as_ref()
            .filter(|s| !s.log.is_empty())
            .map(|s| s.log.clone())
    }

    fn close_connection(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.close)
    }

    fn user_id(&self) -> Option<String> {
        self.state.as_ref().and_then(|s| s.userid.clone())
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        // Release the transaction's Lua references while holding its VM, so the release never
        // waits inside Lua on another thread's event.
        if let Some(i) = self.vm {
            let _vm = self.shared.vms[i].lock();
            self.state = None;
        }
    }
}
