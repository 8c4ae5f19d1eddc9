//! Admin REST API and Prometheus /metrics, plus the client the `latch` CLI uses.
//!
//! The server knows nothing about the agent's internals: the agent implements
//! [`AdminBackend`] (a few synchronous reads and table operations, and an asynchronous
//! reload) and hands it to [`serve`] or [`AdminServer`]. The documents are in [`model`],
//! shared with the CLI ([`client`], [`cli`]) so both ends agree by construction.
//!
//! Every endpoint answers JSON (except `/metrics`); errors are `{"error": "..."}` with 400
//! (bad query), 401 (missing or wrong token), 404 (unknown endpoint, virtual service or key),
//! 422 (reload refused, with a [`model::ReloadView`] body) or 503 (agent not ready).
//!
//! When a token is configured it is required on every endpoint, `/metrics` included: table
//! entries carry session identifiers, and a non-loopback listener without a token is refused.

pub mod cli;
pub mod client;
pub mod metrics;
pub mod model;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot};

use self::metrics::MetricsSnapshot;
use self::model::{
    DEFAULT_LIST_LIMIT, DEFAULT_TABLE, DeleteView, ErrorView, FlushView, MAX_LIST_LIMIT, PoolView,
    ReloadView, ServerChangeRequest, ServerChangeView, StatusView, TableEntryView, TableListQuery,
    TableListView, TableQuery, VirtualServiceView,
};

/// Why the admin API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A non-loopback listener without a token would expose the tables and reload to the
    /// network.
    #[error(
        "admin_listen {listen} is not a loopback address: set admin_token_file so the admin API \
         requires a bearer token, or listen on 127.0.0.1"
    )]
    TokenRequired {
        /// The configured address.
        listen: SocketAddr,
    },
    /// The token file cannot be read.
    #[error("admin token file {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The token file holds no token.
    #[error("admin token file {} is empty", path.display())]
    EmptyToken {
        /// The file.
        path: PathBuf,
    },
    /// The listener cannot be opened.
    #[error("admin API cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("admin API: {source}")]
    Serve {
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Why the backend cannot answer a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No virtual service of that name (404).
    #[error("no virtual service named {vs:?}")]
    UnknownVs {
        /// The name asked for.
        vs: String,
    },
    /// The virtual service has no tables (an L4 service) (404).
    #[error("virtual service {vs:?} has no tables (only http services do)")]
    NoTables {
        /// The name asked for.
        vs: String,
    },
    /// No such pool or server (404).
    #[error("{message}")]
    NotFound {
        /// What is missing.
        message: String,
    },
    /// The request is invalid (400).
    #[error("{message}")]
    BadRequest {
        /// Why.
        message: String,
    },
    /// The agent cannot answer now (503).
    #[error("{message}")]
    Unavailable {
        /// Why.
        message: String,
    },
}

impl BackendError {
    fn status(&self) -> StatusCode {
        match self {
            BackendError::UnknownVs { .. }
            | BackendError::NoTables { .. }
            | BackendError::NotFound { .. } => StatusCode::NOT_FOUND,
            BackendError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            BackendError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// What a reload resolves to.
pub type ReloadFuture = Pin<Box<dyn Future<Output = ReloadView> + Send + 'static>>;

/// What the agent provides to the admin API. The synchronous methods run on a blocking thread
/// (a table listing walks a whole table), so they may take locks but must not wait on the
/// agent's event loop; [`AdminBackend::reload`] is asynchronous for exactly that reason
/// ([`ReloadRequester`] is a ready-made implementation).
pub trait AdminBackend: Send + Sync + 'static {
    /// `GET /api/v1/status`.
    fn status(&self) -> StatusView;
    /// `GET /api/v1/virtual-services`, in configured order.
    fn virtual_services(&self) -> Vec<VirtualServiceView>;
    /// `GET /api/v1/pools`, in configured order.
    fn pools(&self) -> Vec<PoolView>;
    /// Live entries of `table` (all tables when `None`) of `vs` whose key starts with
    /// `prefix`, sorted by table then key, at most `limit`.
    fn table_list(
        &self,
        vs: &str,
        table: Option<&str>,
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TableEntryView>, BackendError>;
    /// One live entry; `Ok(None)` when the key is absent or expired.
    fn table_get(
        &self,
        vs: &str,
        table: &str,
        key: &str,
    ) -> Result<Option<TableEntryView>, BackendError>;
    /// Removes one entry; `Ok(false)` when the key was absent.
    fn table_delete(&self, vs: &str, table: &str, key: &str) -> Result<bool, BackendError>;
    /// Removes every entry of `table` (all tables when `None`); returns how many.
    fn table_flush(&self, vs: &str, table: Option<&str>) -> Result<u64, BackendError>;
    /// Sets a server's administrative state or weight (`server` is `ip:port`, or an IP
    /// only one server of the pool has); the change is in force when this returns.
    fn set_server(
        &self,
        pool: &str,
        server: &str,
        change: &ServerChangeRequest,
    ) -> Result<ServerChangeView, BackendError>;
    /// Reloads the configuration file, all or nothing.
    fn reload(&self) -> ReloadFuture;
    /// Every counter, for `/metrics`.
    fn metrics_snapshot(&self) -> MetricsSnapshot;
}

/// A reload asked for through the API, to be answered by the agent's event loop (which owns
/// the running configuration).
#[derive(Debug)]
pub struct ReloadRequest {
    reply: oneshot::Sender<ReloadView>,
}

impl ReloadRequest {
    /// Sends the outcome back to the API caller.
    pub fn respond(self, outcome: ReloadView) {
        // The caller may have disconnected; the reload happened anyway.
        let _ = self.reply.send(outcome);
    }
}

/// Sends [`ReloadRequest`]s to the agent's event loop: `reload()` of an [`AdminBackend`] can be
/// `self.reloader.request()`.
#[derive(Debug, Clone)]
pub struct ReloadRequester(mpsc::Sender<ReloadRequest>);

/// A requester and the receiver the agent's loop selects on.
pub fn reload_channel() -> (ReloadRequester, mpsc::Receiver<ReloadRequest>) {
    let (tx, rx) = mpsc::channel(4);
    (ReloadRequester(tx), rx)
}

impl ReloadRequester {
    /// Asks for a reload and resolves to its outcome.
    pub fn request(&self) -> ReloadFuture {
        let tx = self.0.clone();
        Box::pin(async move {
            let (reply, outcome) = oneshot::channel();
            let gone = || ReloadView {
                applied: false,
                diagnostics: vec!["the agent is shutting down".to_owned()],
                warnings: Vec::new(),
            };
            if tx.send(ReloadRequest { reply }).await.is_err() {
                return gone();
            }
            outcome.await.unwrap_or_else(|_| gone())
        })
    }
}

/// Reads a bearer token (the file's content without surrounding whitespace).
pub fn read_token_file(path: &Path) -> Result<String, ApiError> {
    let text = std::fs::read_to_string(path).map_err(|source| ApiError::TokenFile {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ApiError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

/// Refuses a non-loopback listener without a token.
pub fn check_exposure(listen: SocketAddr, token: Option<&str>) -> Result<(), ApiError> {
    if listen.ip().is_loopback() || token.is_some() {
        Ok(())
    } else {
        Err(ApiError::TokenRequired { listen })
    }
}

/// A bound admin listener; [`AdminServer::run`] serves it.
#[derive(Debug)]
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    token: Option<String>,
}

impl AdminServer {
    /// Checks the exposure rule and binds, so the agent reports a bad `admin_listen` before it
    /// says it is ready.
    pub async fn bind(listen: SocketAddr, token: Option<String>) -> Result<Self, ApiError> {
        check_exposure(listen, token.as_deref())?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ApiError::Bind { listen, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ApiError::Bind { listen, source })?;
        Ok(Self {
            listener,
            local_addr,
            token,
        })
    }

    /// The bound address (the real port when binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then finishes the requests in progress.
    pub async fn run(
        self,
        backend: Arc<dyn AdminBackend>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ApiError> {
        tracing::info!(listen = %self.local_addr, token = self.token.is_some(), "admin API listening");
        axum::serve(self.listener, router(backend, self.token))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| ApiError::Serve { source })
    }
}

/// Binds `listen` and serves the admin API until `shutdown` resolves.
pub async fn serve(
    listen: SocketAddr,
    token: Option<String>,
    backend: Arc<dyn AdminBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    AdminServer::bind(listen, token)
        .await?
        .run(backend, shutdown)
        .await
}

type Backend = Arc<dyn AdminBackend>;

/// The API's routes over `backend`, requiring `token` when given.
pub fn router(backend: Backend, token: Option<String>) -> Router {
    let token: Option<Arc<str>> = token.map(Arc::from);
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/virtual-services", get(virtual_services))
        .route("/api/v1/pools", get(pools))
        .route("/api/v1/tables/{vs}", get(table_list).delete(table_flush))
        .route(
            "/api/v1/tables/{vs}/entries/{key}",
            get(table_get).delete(table_delete),
        )
        .route("/api/v1/pools/{pool}/servers/{server}", post(set_server))
        .route("/api/v1/reload", post(reload))
        .route("/metrics", get(metrics))
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            failure(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(middleware::from_fn_with_state(token, authenticate))
        .with_state(backend)
}

/// An error response: `{"error": message}`.
fn failure(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(ErrorView {
            error: message.into(),
        }),
    )
        .into_response()
}

/// Compares without an early exit, so response timing does not reveal a token's prefix.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The token of an `Authorization: Bearer TOKEN` value. The scheme name is case-insensitive
/// and followed by one or more spaces (RFC 7235 section 2.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii_start();
    (!token.is_empty()).then_some(token)
}

async fn authenticate(State(token): State<Option<Arc<str>>>, req: Request, next: Next) -> Response {
    let Some(expected) = token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()));
    match given {
        Some(given) if token_matches(given, expected.as_bytes()) => next.run(req).await,
        _ => {
            let mut r = failure(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (latch --token-file FILE)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

type Answer<T> = Result<axum::Json<T>, Response>;

/// Runs a synchronous backend call on a blocking thread.
async fn blocking<T: Send + 'static>(
    backend: Backend,
    f: impl FnOnce(&dyn AdminBackend) -> Result<T, BackendError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(move || f(backend.as_ref())).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failure(e.status(), e.to_string())),
        Err(e) => Err(failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("admin request failed: {e}"),
        )),
    }
}

fn bad_query(e: QueryRejection) -> Response {
    failure(StatusCode::BAD_REQUEST, e.body_text())
}

fn bad_path(e: PathRejection) -> Response {
    failure(StatusCode::BAD_REQUEST, e.body_text())
}

async fn status(State(b): State<Backend>) -> Answer<StatusView> {
    blocking(b, |b| Ok(b.status())).await.map(axum::Json)
}

async fn virtual_services(State(b): State<Backend>) -> Answer<Vec<VirtualServiceView>> {
    blocking(b, |b| Ok(b.virtual_services()))
        .await
        .map(axum::Json)
}

async fn pools(State(b): State<Backend>) -> Answer<Vec<PoolView>> {
    blocking(b, |b| Ok(b.pools())).await.map(axum::Json)
}

async fn table_list(
    State(b): State<Backend>,
    vs: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<TableListQuery>, QueryRejection>,
) -> Answer<TableListView> {
    let UrlPath(vs) = vs.map_err(bad_path)?;
    let Query(q) = query.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
        ));
    }
    let (vs2, table, prefix) = (vs.clone(), q.table.clone(), q.prefix);
    // One more than asked for tells whether the listing was cut.
    let mut entries = blocking(b, move |b| {
        b.table_list(&vs2, table.as_deref(), prefix.as_deref(), limit + 1)
    })
    .await?;
    let truncated = entries.len() > limit;
    entries.truncate(limit);
    Ok(axum::Json(TableListView {
        vs,
        table: q.table,
        entries,
        truncated,
    }))
}

async fn table_get(
    State(b): State<Backend>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    query: Result<Query<TableQuery>, QueryRejection>,
) -> Answer<TableEntryView> {
    let UrlPath((vs, key)) = path.map_err(bad_path)?;
    let Query(q) = query.map_err(bad_query)?;
    let table = q.table.unwrap_or_else(|| DEFAULT_TABLE.to_owned());
    let (vs2, t2, k2) = (vs.clone(), table.clone(), key.clone());
    match blocking(b, move |b| b.table_get(&vs2, &t2, &k2)).await? {
        Some(entry) => Ok(axum::Json(entry)),
        None => Err(failure(StatusCode::NOT_FOUND, no_key(&vs, &table, &key))),
    }
}

fn no_key(vs: &str, table: &str, key: &str) -> String {
    if table.is_empty() {
        format!("no key {key:?} in the default table of {vs:?}")
    } else {
        format!("no key {key:?} in table {table:?} of {vs:?}")
    }
}

async fn table_delete(
    State(b): State<Backend>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    query: Result<Query<TableQuery>, QueryRejection>,
) -> Answer<DeleteView> {
    let UrlPath((vs, key)) = path.map_err(bad_path)?;
    let Query(q) = query.map_err(bad_query)?;
    let table = q.table.unwrap_or_else(|| DEFAULT_TABLE.to_owned());
    let (vs2, t2, k2) = (vs.clone(), table.clone(), key.clone());
    if blocking(b, move |b| b.table_delete(&vs2, &t2, &k2)).await? {
        Ok(axum::Json(DeleteView { vs, table, key }))
    } else {
        Err(failure(StatusCode::NOT_FOUND, no_key(&vs, &table, &key)))
    }
}

async fn table_flush(
    State(b): State<Backend>,
    vs: Result<UrlPath<String>, PathRejection>,
    query: Result<Query<TableQuery>, QueryRejection>,
) -> Answer<FlushView> {
    let UrlPath(vs) = vs.map_err(bad_path)?;
    let Query(q) = query.map_err(bad_query)?;
    let (vs2, t2) = (vs.clone(), q.table.clone());
    let removed = blocking(b, move |b| b.table_flush(&vs2, t2.as_deref())).await?;
    Ok(axum::Json(FlushView {
        vs,
        table: q.table,
        removed,
    }))
}

async fn set_server(
    State(b): State<Backend>,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    query: Result<Query<ServerChangeRequest>, QueryRejection>,
) -> Answer<ServerChangeView> {
    let UrlPath((pool, server)) = path.map_err(bad_path)?;
    let Query(change) = query.map_err(bad_query)?;
    if change.state.is_some() == change.weight.is_some() {
        return Err(failure(
            StatusCode::BAD_REQUEST,
            "give exactly one of ?state=ready|drain|maint and ?weight=N|config",
        ));
    }
    blocking(b, move |b| b.set_server(&pool, &server, &change))
        .await
        .map(axum::Json)
}

async fn reload(State(b): State<Backend>) -> Response {
    let outcome = b.reload().await;
    let status = if outcome.applied {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, axum::Json(outcome)).into_response()
}

async fn metrics(State(b): State<Backend>) -> Response {
    let text = blocking(b, |b| {
        metrics::encode(b.metrics_snapshot()).map_err(|e| BackendError::Unavailable {
            message: format!("encoding metrics: {e}"),
        })
    })
    .await;
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests;
