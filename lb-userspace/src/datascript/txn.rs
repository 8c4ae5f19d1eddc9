//! The proxy seam: [`DataScriptHooks`] (one per virtual service) and its transactions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

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
    limits: DsLimits,
    /// This configuration's environment, installed in a VM before each of its events.
    env: Arc<ScriptEnv>,
    /// Shared with the hooks of the configuration before and after this one while the
    /// service's scripts and limits stay the same (see [`DataScriptHooks::reusing`]).
    vms: Arc<Vms>,
    /// Which events have scripts (by [`Event::index`]).
    has: [bool; Event::ALL.len()],
    counters: Arc<DsCounters>,
}

/// The VMs of one virtual service, one per worker. The first is built with the hooks (so a
/// configuration whose scripts cannot be set up is refused), the others when a worker first
/// runs an event: a VM takes about a millisecond to build, and a reload that changes a
/// script used by a thousand services would otherwise build them all before it returns.
struct Vms {
    /// `None` only when the service has no scripts.
    first: Option<Mutex<Vm>>,
    /// VMs 1.. ; `None` once building failed (the worker then shares the first VM).
    others: Box<[OnceLock<Option<Mutex<Vm>>>]>,
}

impl Vms {
    fn empty() -> Self {
        Vms {
            first: None,
            others: Box::new([]),
        }
    }

    fn build(set: &Arc<ScriptSet>, env: &Arc<ScriptEnv>, n: usize) -> Result<Self, DsError> {
        Ok(Vms {
            first: Some(Mutex::new(Vm::new(set, env)?)),
            others: (1..n.max(1)).map(|_| OnceLock::new()).collect(),
        })
    }

    fn len(&self) -> usize {
        self.first.as_ref().map_or(0, |_| 1 + self.others.len())
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// VM `i` if it is built.
    fn built(&self, i: usize) -> Option<&Mutex<Vm>> {
        match i {
            0 => self.first.as_ref(),
            i => self.others.get(i - 1)?.get()?.as_ref(),
        }
    }

    /// VM `i`, built now if it never was; the first VM where it cannot be built. `None` only
    /// when the service has no scripts.
    fn get(&self, i: usize, set: &Arc<ScriptSet>, env: &Arc<ScriptEnv>) -> Option<&Mutex<Vm>> {
        let Some(slot) = i.checked_sub(1).and_then(|k| self.others.get(k)) else {
            return self.first.as_ref();
        };
        let built = slot.get_or_init(|| match Vm::new(set, env) {
            Ok(vm) => Some(Mutex::new(vm)),
            Err(e) => {
                tracing::warn!(vs = %set.vs_name(), error = %e, "a DataScript VM could not be built; this worker shares the first one");
                None
            }
        });
        built.as_ref().or(self.first.as_ref())
    }
}

/// Runs, errors and budget stops of one virtual service's scripts, per event. Kept by the
/// agent across reloads so the exported counters only ever grow.
#[derive(Debug, Default)]
pub struct DsCounters {
    runs: [AtomicU64; Event::ALL.len()],
    errors: [AtomicU64; Event::ALL.len()],
    budget_stops: [AtomicU64; Event::ALL.len()],
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
    /// Counters of `event`.
    pub fn get(&self, event: Event) -> EventCounters {
        let i = event.index();
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
        Self::reusing(None, set, env, counters)
    }

    /// Like [`DataScriptHooks::with_counters`], keeping the VMs of `previous` (the service's
    /// hooks in the running configuration) when its scripts and limits are the same: building
    /// a VM takes about a millisecond, so a reload that rebuilt every VM of a thousand
    /// services would take seconds. What else a reload may change (pools, groups, geo
    /// database, rate limiters) is the environment, which each event installs in the VM it
    /// runs on, so transactions of the previous configuration that are still running keep
    /// theirs; nothing `previous` runs changes until these hooks are used.
    pub fn reusing(
        previous: Option<&DataScriptHooks>,
        set: Arc<ScriptSet>,
        env: ScriptEnv,
        counters: Arc<DsCounters>,
    ) -> Result<Self, DsError> {
        let env = Arc::new(env);
        let reused = previous
            .map(|p| &p.shared)
            .filter(|p| p.limits == env.limits && *p.set == *set)
            .map(|p| Arc::clone(&p.vms));
        let vms = match reused {
            Some(vms) => vms,
            None if set.is_empty() => Arc::new(Vms::empty()),
            None => {
                let n = match env.limits.vms {
                    0 => std::thread::available_parallelism().map_or(1, usize::from),
                    n => n,
                };
                Arc::new(Vms::build(&set, &env, n)?)
            }
        };
        Ok(Self {
            shared: Arc::new(Shared {
                has: Event::ALL.map(|e| set.has(e)),
                limits: env.limits.clone(),
                env,
                set,
                vms,
                counters,
            }),
        })
    }

    /// True when these hooks run on the VMs `other` runs on (a reload kept them).
    pub fn shares_vms_with(&self, other: &DataScriptHooks) -> bool {
        Arc::ptr_eq(&self.shared.vms, &other.shared.vms)
    }

    /// Runs, errors and budget stops so far.
    pub fn counters(&self) -> &Arc<DsCounters> {
        &self.shared.counters
    }

    /// The scripts.
    pub fn scripts(&self) -> &Arc<ScriptSet> {
        &self.shared.set
    }

    /// Lua memory in use per VM built so far, for metrics.
    pub fn memory_used(&self) -> Vec<usize> {
        let vms = &self.shared.vms;
        (0..vms.len())
            .filter_map(|i| vms.built(i))
            .map(|v| v.lock().lua.used_memory())
            .collect()
    }
}

impl HookFactory for DataScriptHooks {
    fn begin(&self, info: TxnInfo) -> Box<dyn TxnHooks> {
        Box::new(Txn {
            shared: Arc::clone(&self.shared),
            vm: None,
            state: Some(Box::new(TxnState::new(info))),
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
    /// Always `Some` except while an event runs. Boxed: it moves into the VM's context and
    /// back at every event, and a pointer moves for less than the state.
    state: Option<Box<TxnState>>,
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
        let sh = &self.shared;
        // The worker's own VM (built now at its first event), else any built one that is free.
        let own_free = sh
            .vms
            .get(start, &sh.set, &sh.env)
            .is_some_and(|vm| !vm.is_locked());
        let i = if own_free {
            start
        } else {
            (1..n)
                .map(|k| (start + k) % n)
                .find(|i| sh.vms.built(*i).is_some_and(|vm| !vm.is_locked()))
                .unwrap_or(start)
        };
        self.vm = Some(i);
        i
    }

    /// Runs the scripts of `event` with `input` (its messages and body; `event` and `txn` are
    /// filled here) and gives the messages back.
    fn run(&mut self, event: Event, input: Ctx) -> (Outcome, Ctx) {
        if self.shared.vms.is_empty() {
            return (Outcome::Done, input);
        }
        let idx = self.vm();
        let shared = Arc::clone(&self.shared);
        let Some(vm) = shared.vms.get(idx, &shared.set, &shared.env) else {
            return (Outcome::Done, input);
        };
        let vm = vm.lock();
        let Some(mut state) = self.state.take() else {
            return (Outcome::Failed, input);
        };
        vm.shared.install_env(&shared.env);
        let scripts = &vm.events[event.index()];
        let (funcs, list) = (&scripts.indexes, &scripts.list);
        let env = state.env.take();
        *vm.shared.ctx.lock() = Ctx {
            event: Some(event),
            txn: Some(state),
            ..input
        };
        if env.is_none() {
            // The transaction's first event: garbage of earlier transactions must not fail it.
            vm.collect_if_above(75);
        }
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
        let Some(mut state) = ctx.txn.take() else {
            return (Outcome::Failed, ctx);
        };
        let slot = event.index();
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
        (outcome, ctx)
    }

    fn has(&self, event: Event) -> bool {
        self.shared.has[event.index()]
    }

    /// Runs the scripts of a request event on `request` (taken and put back).
    fn run_on_request(
        &mut self,
        event: Event,
        request: &mut http::request::Parts,
        body: Option<Bytes>,
    ) -> Outcome {
        let parts = std::mem::replace(request, empty_request());
        let (outcome, back) = self.run(
            event,
            Ctx {
                req: Some(parts),
                body,
                ..Ctx::default()
            },
        );
        if let Some(back) = back.req {
            *request = back;
        }
        outcome
    }

    /// Runs the scripts of a response event on `response` (taken and put back).
    fn run_on_response(
        &mut self,
        event: Event,
        response: &mut http::response::Parts,
        body: Option<Bytes>,
    ) -> Outcome {
        let parts = std::mem::replace(response, empty_response());
        let (outcome, back) = self.run(
            event,
            Ctx {
                resp: Some(parts),
                body,
                ..Ctx::default()
            },
        );
        if let Some(back) = back.resp {
            *response = back;
        }
        outcome
    }

    /// What the proxy does with the request after a request event ended with `outcome`.
    fn request_verdict(&self, outcome: Outcome) -> RequestVerdict {
        let Some(state) = self.state.as_ref() else {
            return RequestVerdict::Respond(internal_error());
        };
        match outcome.answer() {
            None => RequestVerdict::Forward(state.selection.clone()),
            Some(r) => RequestVerdict::Respond(r),
        }
    }

    /// Keeps a copy of the request head for the later events' scripts that read it.
    fn keep_request(&mut self, request: &http::request::Parts) {
        if !self.shared.set.resp_reads_request {
            return;
        }
        if let Some(state) = self.state.as_mut() {
            state.req_snapshot = Some(ReqSnapshot {
                method: request.method.clone(),
                uri: request.uri.clone(),
                version: request.version,
                headers: request.headers.clone(),
            });
        }
    }

    fn set_server(&mut self, server: SocketAddr) {
        if let Some(s) = self.state.as_mut() {
            s.server = Some(server);
        }
    }
}

fn response_verdict(outcome: Outcome) -> ResponseVerdict {
    match outcome.answer() {
        None => ResponseVerdict::Continue,
        Some(r) => ResponseVerdict::Respond(r),
    }
}

impl TxnHooks for Txn {
    fn on_request(&mut self, request: &mut http::request::Parts) -> RequestVerdict {
        let outcome = if self.has(Event::HttpReq) {
            self.run_on_request(Event::HttpReq, request, None)
        } else {
            Outcome::Done
        };
        self.keep_request(request);
        self.request_verdict(outcome)
    }

    fn request_body_limit(&self) -> Option<usize> {
        self.has(Event::HttpReqData)
            .then_some(self.shared.limits.max_body_buffer)
    }

    fn on_request_body(
        &mut self,
        request: &mut http::request::Parts,
        body: &Bytes,
    ) -> RequestVerdict {
        if !self.has(Event::HttpReqData) {
            return self.request_verdict(Outcome::Done);
        }
        let outcome = self.run_on_request(Event::HttpReqData, request, Some(body.clone()));
        self.keep_request(request);
        self.request_verdict(outcome)
    }

    fn on_lb_done(&mut self, server: SocketAddr) -> Option<http::Response<Bytes>> {
        self.set_server(server);
        if !self.has(Event::HttpLbDone) {
            return None;
        }
        self.run(Event::HttpLbDone, Ctx::default()).0.answer()
    }

    fn on_response_failed(&mut self, status: http::StatusCode) -> Option<http::Response<Bytes>> {
        if !self.has(Event::HttpRespFailed) {
            return None;
        }
        let input = Ctx {
            failed_status: Some(status.as_u16()),
            ..Ctx::default()
        };
        self.run(Event::HttpRespFailed, input).0.answer()
    }

    fn on_response(
        &mut self,
        response: &mut http::response::Parts,
        server: SocketAddr,
    ) -> ResponseVerdict {
        self.set_server(server);
        if !self.has(Event::HttpResp) {
            return ResponseVerdict::Continue;
        }
        response_verdict(self.run_on_response(Event::HttpResp, response, None))
    }

    fn response_body_limit(&self) -> Option<usize> {
        if !self.has(Event::HttpRespData) {
            return None;
        }
        let max = self.shared.limits.max_body_buffer;
        let asked = self.state.as_ref().and_then(|s| s.resp_body_buffer);
        Some(asked.map_or(max, |a| a.min(max)))
    }

    fn on_response_body(
        &mut self,
        response: &mut http::response::Parts,
        body: &Bytes,
    ) -> ResponseVerdict {
        if !self.has(Event::HttpRespData) {
            return ResponseVerdict::Continue;
        }
        response_verdict(self.run_on_response(Event::HttpRespData, response, Some(body.clone())))
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
        let sh = &self.shared;
        // `get` builds nothing here: the transaction's VM was chosen (and built) at its first
        // event.
        if let Some(vm) = self.vm.and_then(|i| sh.vms.get(i, &sh.set, &sh.env)) {
            let _vm = vm.lock();
            self.state = None;
        }
    }
}
