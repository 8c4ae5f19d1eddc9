//! Building a virtual service the way the agent does and sending one case through it the way
//! the proxy does (`proxy/handler.rs`), without sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONTENT_LENGTH, COOKIE, HeaderName, HeaderValue};
use parking_lot::Mutex;

use super::cases::{Case, CaseFile, HeaderValues};
use super::{BUILTIN_CONFIG, ScriptTestError};
use crate::agent::http::{HttpBuildError, Running, TableObserver, build};
use crate::agent::pools::ConfiguredPool;
use crate::balancer::levers::Levers;
use crate::config::{self, Config, ServiceType};
use crate::datascript::ScriptTableObserver;
use crate::proxy::hooks::{HookFactory, RequestId, RequestVerdict, ResponseVerdict, TxnInfo};
use crate::proxy::{PickContext, ServerPicker};
use crate::tables::{
    Clock, DEFAULT_TABLE, EntryView, ManualClock, NoMirror, TableLimits, TableStore, VsTables,
};

/// Where the runner's clock starts (any value far from 0 does; lifetimes are relative).
const CLOCK_START_NS: u64 = 1_000_000_000_000;
/// Lifetime of a `[[case.table]]` entry that gives none: Avi's table_insert default.
const DEFAULT_LIFETIME_S: u64 = 300;

/// One table write a script made, as the report shows it and `table_ops` compares it:
/// `upsert KEY=VALUE 1200s` or `remove KEY`, with `[TABLE] ` before the key in a named table.
/// A lookup or refresh that extends a lifetime is an upsert too (it is for the mirrors).
#[derive(Default)]
struct OpLog(Mutex<Vec<String>>);

fn table_prefix(table: &str) -> String {
    if table == DEFAULT_TABLE {
        String::new()
    } else {
        format!("[{table}] ")
    }
}

struct Recorder {
    ops: Arc<OpLog>,
    clock: Arc<ManualClock>,
}

impl ScriptTableObserver for Recorder {
    fn upserted(&self, _txn: &TxnInfo, entry: &EntryView) {
        self.ops.0.lock().push(format!(
            "upsert {}{}={} {}s",
            table_prefix(&entry.table),
            entry.key,
            entry.value,
            entry.remaining_s(self.clock.now_ns())
        ));
    }

    fn removed(&self, _txn: &TxnInfo, table: &str, key: &str) {
        self.ops
            .0
            .lock()
            .push(format!("remove {}{key}", table_prefix(table)));
    }
}

/// A virtual service with its scripts, pools and tables, built as the agent builds it.
pub struct Service {
    /// Its name.
    pub name: String,
    listen: SocketAddr,
    default_pool: String,
    hooks: Option<Arc<dyn HookFactory>>,
    pickers: HashMap<String, Arc<dyn ServerPicker>>,
    pools: HashMap<String, Arc<ConfiguredPool>>,
    tables: Arc<VsTables>,
    clock: Arc<ManualClock>,
    ops: Arc<OpLog>,
}

/// What happened to one case's request.
#[derive(Debug, Default)]
pub struct Happened {
    /// Pool the request went to (`None` when it was not forwarded).
    pub pool: Option<String>,
    /// Server it went to.
    pub server: Option<SocketAddr>,
    /// The request as the scripts left it (what the server gets, less the proxy's own
    /// X-Forwarded-For and hop-by-hop rewrites).
    pub request: Option<http::request::Parts>,
    /// Status the client gets.
    pub status: u16,
    /// True when the answer did not come from the server.
    pub local: bool,
    /// Why the proxy itself answered (no server, unknown pool), if it did.
    pub proxy_reason: Option<&'static str>,
    /// Headers the client gets.
    pub response_headers: http::HeaderMap,
    /// Request headers the scripts added (`+ name: value`) or removed (`- name: value`).
    pub request_changes: Vec<String>,
    /// The same for the server's response headers (empty for a local answer).
    pub response_changes: Vec<String>,
    /// Body of a local answer.
    pub body: Option<String>,
    /// A script asked for the client connection to be closed (avi.http.close_conn).
    pub close_connection: bool,
    /// The user id for the access log a script set (avi.http.set_userid).
    pub user_id: Option<String>,
    /// The server's response-head timeout a script set (avi.http.set_server_timeout), in ms.
    pub server_timeout_ms: Option<u128>,
    /// avi.vs.log lines.
    pub log: Vec<String>,
    /// The script error, as `SCRIPT: FILE:LINE: MESSAGE`.
    pub error: Option<String>,
    /// Table writes, see [`OpLog`].
    pub table_ops: Vec<String>,
    /// Every live entry after the case.
    pub tables_after: Vec<EntryView>,
    /// `now` of the runner's clock after the case, for remaining lifetimes.
    pub now_ns: u64,
}

impl Service {
    /// Builds the service `file` names, with its inline scripts if it has some.
    pub fn build(file: &CaseFile) -> Result<Self, ScriptTestError> {
        let mut config = match &file.config {
            Some(path) => config::load(path)?,
            None => config::parse(BUILTIN_CONFIG, &file.path)?,
        };
        let index = pick_service(&config, file.virtual_service.as_deref())?;
        if !file.scripts.is_empty() {
            config.virtual_services[index].datascripts = file.scripts.clone();
        }
        // One worker, one VM: cases run one after the other.
        config.agent.workers = Some(1);
        let vs = &config.virtual_services[index];
        let clock = Arc::new(ManualClock::new(CLOCK_START_NS));
        let ops = Arc::new(OpLog::default());
        let store = TableStore::new(TableLimits::default(), Arc::new(NoMirror));
        let observer: Arc<dyn ScriptTableObserver> = Arc::new(Recorder {
            ops: Arc::clone(&ops),
            clock: Arc::clone(&clock),
        });
        let plan = build(
            &config,
            &Running::default(),
            &Levers::default(),
            &store,
            clock.clone(),
            &TableObserver::Every(observer),
            &Mutex::new(HashMap::new()),
        )
        .map_err(|e| match e {
            HttpBuildError::Scripts(errors) => ScriptTestError::Scripts(errors),
            other => ScriptTestError::Build(other.to_string()),
        })?;
        let hooks = plan
            .proxy
            .virtual_services
            .iter()
            .find(|s| s.name == vs.name)
            .and_then(|s| s.hooks.clone());
        let pickers = plan
            .proxy
            .pools
            .iter()
            .map(|p| (p.name.clone(), Arc::clone(&p.picker)))
            .collect();
        Ok(Self {
            name: vs.name.clone(),
            listen: vs.listen,
            default_pool: vs.pool.clone(),
            hooks,
            pickers,
            pools: plan.pools,
            tables: store.vs(&vs.name),
            clock,
            ops,
        })
    }

    /// Sends `case` through the service. Cases of one file share the tables and the clock,
    /// as consecutive requests do.
    pub fn run(&self, case: &Case) -> Result<Happened, String> {
        self.clock.advance_s(case.advance);
        for pool in self.pools.values() {
            for server in pool.balancer().servers() {
                pool.balancer()
                    .set_up(server.addr, !case.down.contains(&server.addr));
            }
        }
        let now = self.clock.now_ns();
        for e in &case.table {
            let table = e.table.as_deref().unwrap_or(DEFAULT_TABLE);
            let lifetime = e.lifetime.unwrap_or(DEFAULT_LIFETIME_S);
            self.tables
                .insert(table, &e.key, &e.value, lifetime, now)
                .map_err(|err| format!("table entry {}: {err}", e.key))?;
        }
        self.ops.0.lock().clear();

        let mut request = request_parts(case)?;
        let sent_headers = request.headers.clone();
        let mut got = Happened::default();
        let tls = match &case.request.tls {
            Some(spec) => Some(std::sync::Arc::new(spec.info()?)),
            None => None,
        };
        let mut txn = self.hooks.as_ref().map(|h| {
            h.begin(TxnInfo {
                vs_name: self.name.clone(),
                vs_addr: self.listen,
                client: case.request.client,
                request_id: RequestId(1),
                tls,
            })
        });
        let mut verdict = txn.as_mut().map(|t| t.on_request(&mut request));
        // HTTP_REQ_DATA, as the proxy runs it: only for a request with a body, and only when
        // the service's scripts asked for the body (beyond the buffer limit: 413).
        let body = case.request.body.as_deref().filter(|b| !b.is_empty());
        let forwarded = matches!(verdict, Some(RequestVerdict::Forward(_)));
        if let (true, Some(t), Some(body)) = (forwarded, txn.as_mut(), body)
            && let Some(limit) = t.request_body_limit()
        {
            if body.len() > limit {
                got.proxy_answer(413, "request body over max_body_buffer");
                verdict = None;
            } else {
                let bytes = bytes::Bytes::copy_from_slice(body.as_bytes());
                verdict = Some(t.on_request_body(&mut request, &bytes));
            }
        }
        match verdict {
            Some(RequestVerdict::Respond(answer)) => got.local_answer(answer),
            Some(RequestVerdict::Forward(selection)) => {
                self.forward(case, &request, &selection, txn.as_deref_mut(), &mut got)?;
            }
            None if got.local => {}
            None => self.forward(case, &request, &Default::default(), None, &mut got)?,
        }
        got.request_changes = header_changes(&sent_headers, &request.headers);
        got.request = Some(request);
        if let Some(t) = &txn {
            got.close_connection = t.close_connection();
            got.user_id = t.user_id();
            let log = t.log_output().unwrap_or_default();
            for line in log.lines() {
                match line.strip_prefix(ERROR_PREFIX) {
                    Some(error) => got.error = Some(error.to_string()),
                    None => got.log.push(line.to_string()),
                }
            }
        }
        drop(txn);
        got.table_ops = std::mem::take(&mut *self.ops.0.lock());
        got.now_ns = self.clock.now_ns();
        got.tables_after = self.tables.list(None, None, usize::MAX, got.now_ns);
        Ok(got)
    }

    /// Server choice as `proxy/handler.rs` makes it, HTTP_LB_DONE, then the server's answer
    /// (or failure) through HTTP_RESP and HTTP_RESP_DATA (or HTTP_RESP_FAILED).
    fn forward(
        &self,
        case: &Case,
        request: &http::request::Parts,
        selection: &crate::proxy::hooks::Selection,
        txn: Option<&mut (dyn crate::proxy::hooks::TxnHooks + 'static)>,
        got: &mut Happened,
    ) -> Result<(), String> {
        let pool = selection.pool.clone().unwrap_or(self.default_pool.clone());
        let Some(picker) = self.pickers.get(&pool) else {
            got.proxy_answer(503, "unknown pool");
            return Ok(());
        };
        let pinned = match selection.server {
            None => None,
            Some(server) => match picker.server_state(server) {
                None => {
                    got.proxy_answer(503, "server not in pool");
                    return Ok(());
                }
                Some(true) => Some(server),
                // A script's pick of a down server falls back to the pool's algorithm.
                Some(false) => None,
            },
        };
        let server = match pinned {
            Some(s) => s,
            None => match picker.pick(&PickContext {
                client: case.request.client,
                headers: &request.headers,
                uri: &request.uri,
                hash_key: selection.hash_key.as_deref().map(str::as_bytes),
                exclude: &[],
            }) {
                Some(s) => s,
                None => {
                    got.proxy_answer(503, "no server up");
                    return Ok(());
                }
            },
        };
        got.server_timeout_ms = selection.response_timeout.map(|t| t.as_millis());
        got.pool = Some(pool);
        let Some(txn) = txn else {
            got.server = Some(server);
            return self.server_answer(case, None, server, got);
        };
        if let Some(answer) = txn.on_lb_done(server) {
            // As in the proxy: the request never reaches the server.
            got.local_answer(answer);
            return Ok(());
        }
        got.server = Some(server);
        self.server_answer(case, Some(txn), server, got)
    }

    /// The server's answer (the case's `response`) through the response events.
    fn server_answer(
        &self,
        case: &Case,
        mut txn: Option<&mut (dyn crate::proxy::hooks::TxnHooks + 'static)>,
        server: SocketAddr,
        got: &mut Happened,
    ) -> Result<(), String> {
        if let Some(failure) = case.response.failure {
            let status = http::StatusCode::from_u16(failure.status())
                .map_err(|e| format!("failure status: {e}"))?;
            match txn.and_then(|t| t.on_response_failed(status)) {
                Some(answer) => got.local_answer(answer),
                None => got.proxy_answer(failure.status(), failure.reason()),
            }
            return Ok(());
        }
        let mut response = response_parts(case)?;
        let server_headers = response.headers.clone();
        let mut verdict = txn.as_mut().map(|t| t.on_response(&mut response, server));
        let body = case.response.body.as_deref().filter(|b| !b.is_empty());
        let continued = matches!(verdict, Some(ResponseVerdict::Continue));
        if let (true, Some(t), Some(body)) = (continued, txn.as_mut(), body)
            && let Some(limit) = t.response_body_limit()
        {
            if body.len() > limit {
                got.proxy_answer(502, "response body over the buffer limit");
                return Ok(());
            }
            let bytes = bytes::Bytes::copy_from_slice(body.as_bytes());
            verdict = Some(t.on_response_body(&mut response, &bytes));
        }
        match verdict {
            Some(ResponseVerdict::Respond(answer)) => got.local_answer(answer),
            Some(ResponseVerdict::Continue) | None => {
                got.response_changes = header_changes(&server_headers, &response.headers);
                got.status = response.status.as_u16();
                got.response_headers = response.headers;
            }
        }
        Ok(())
    }
}

/// How the DataScript engine marks a script error in the transaction's log.
const ERROR_PREFIX: &str = "DataScript error in ";

impl Happened {
    fn local_answer(&mut self, answer: http::Response<bytes::Bytes>) {
        let (parts, body) = answer.into_parts();
        self.local = true;
        self.status = parts.status.as_u16();
        self.response_headers = parts.headers;
        self.body = Some(String::from_utf8_lossy(&body).into_owned());
    }

    fn proxy_answer(&mut self, status: u16, reason: &'static str) {
        self.local = true;
        self.status = status;
        self.proxy_reason = Some(reason);
    }
}

fn pick_service(config: &Config, name: Option<&str>) -> Result<usize, ScriptTestError> {
    let http: Vec<usize> = config
        .virtual_services
        .iter()
        .enumerate()
        .filter(|(_, v)| v.kind == ServiceType::Http)
        .map(|(i, _)| i)
        .collect();
    let names = || {
        http.iter()
            .map(|i| config.virtual_services[*i].name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
        Some(n) => http
            .iter()
            .copied()
            .find(|i| config.virtual_services[*i].name == n)
            .ok_or_else(|| {
                ScriptTestError::Service(format!(
                    "no http virtual service `{n}` in the config (it has: {})",
                    names()
                ))
            }),
        None => match http.as_slice() {
            [one] => Ok(*one),
            _ => Err(ScriptTestError::Service(format!(
                "the config has {} http virtual services ({}): name one with `virtual_service`",
                http.len(),
                names()
            ))),
        },
    }
}

/// `- name: value` for each header value of `before` that `after` lacks, then `+ name: value`
/// for each one `after` added (a repeated value counts as often as it appears).
fn header_changes(before: &http::HeaderMap, after: &http::HeaderMap) -> Vec<String> {
    let show = |sign: char, name: &HeaderName, v: &HeaderValue| {
        format!("{sign} {name}: {}", String::from_utf8_lossy(v.as_bytes()))
    };
    let mut out = Vec::new();
    let mut missing = |from: &http::HeaderMap, to: &http::HeaderMap, sign: char| {
        for name in from.keys() {
            let mut left: Vec<&HeaderValue> = to.get_all(name).iter().collect();
            for v in from.get_all(name) {
                match left.iter().position(|x| *x == v) {
                    Some(i) => {
                        left.remove(i);
                    }
                    None => out.push(show(sign, name, v)),
                }
            }
        }
    };
    missing(before, after, '-');
    missing(after, before, '+');
    out
}

fn add_headers(
    map: &mut http::HeaderMap,
    headers: &[(String, HeaderValues)],
) -> Result<(), String> {
    for (name, values) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("header name {name:?}: {e}"))?;
        for v in values.values() {
            let v = HeaderValue::from_str(&v).map_err(|e| format!("header {name}: {e}"))?;
            map.append(name.clone(), v);
        }
    }
    Ok(())
}

fn request_parts(case: &Case) -> Result<http::request::Parts, String> {
    let spec = &case.request;
    let mut parts = http::Request::builder()
        .method(spec.method.as_str())
        .uri(spec.uri.as_str())
        .body(())
        .map_err(|e| format!("request {} {}: {e}", spec.method, spec.uri))?
        .into_parts()
        .0;
    add_headers(&mut parts.headers, &spec.headers)?;
    if !spec.cookies.is_empty() {
        let cookie = spec
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let v = HeaderValue::from_str(&cookie).map_err(|e| format!("cookies: {e}"))?;
        parts.headers.append(COOKIE, v);
    }
    if let Some(body) = &spec.body {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    Ok(parts)
}

fn response_parts(case: &Case) -> Result<http::response::Parts, String> {
    let spec = &case.response;
    let mut parts = http::Response::builder()
        .status(spec.status)
        .body(())
        .map_err(|e| format!("server response status {}: {e}", spec.status))?
        .into_parts()
        .0;
    add_headers(&mut parts.headers, &spec.headers)?;
    if let Some(body) = &spec.body
        && !parts.headers.contains_key(CONTENT_LENGTH)
    {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    Ok(parts)
}
