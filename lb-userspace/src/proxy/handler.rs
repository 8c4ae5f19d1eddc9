//! One request: scripts, server choice, upstream exchange, response scripts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;

use super::access_log::Route;
use super::body::{
    ClientFailure, CollectError, IdleTimer, RequestBody, ResponseBody, UploadWatch, collect_limited,
};
use super::conn_clock::ConnClock;
use super::headers;
use super::hooks::{RequestVerdict, ResponseVerdict, Selection, TxnInfo};
use super::picker::PickContext;
use super::route::{RoutingTable, VsRoute};
use super::settings::ProxySettings;
use super::stats::StatsRegistry;
use super::tls::TlsInfo;
use super::txn::{ServerUse, Txn};
use super::upstream::{Lent, UpstreamPool, UpstreamSender};

/// What every connection of one worker shares.
pub(crate) struct WorkerCtx {
    pub table: Arc<ArcSwap<RoutingTable>>,
    pub upstream: Arc<UpstreamPool>,
    pub settings: Arc<ProxySettings>,
    pub stats: Arc<StatsRegistry>,
}

/// Who is on the other end and which listener (by configured VIP:port) accepted them.
pub(crate) struct ConnInfo {
    pub client: SocketAddr,
    pub listen: SocketAddr,
    pub clock: Arc<ConnClock>,
    /// The TLS handshake's facts, on a TLS connection.
    pub tls: Option<Arc<TlsInfo>>,
    /// Set once the connection is upgraded: its bytes are no longer HTTP.
    pub tunnel: Arc<std::sync::atomic::AtomicBool>,
}

/// A request that could not be forwarded, answered by the proxy.
struct Failure {
    status: StatusCode,
    reason: &'static str,
    /// The chosen server failed (connect, timeout, bad or reset response): HTTP_RESP_FAILED.
    server_failed: bool,
}

fn fail(status: StatusCode, reason: &'static str) -> Failure {
    Failure {
        status,
        reason,
        server_failed: false,
    }
}

/// The chosen server gave no valid response head.
fn server_fail(status: StatusCode, reason: &'static str) -> Failure {
    Failure {
        server_failed: true,
        ..fail(status, reason)
    }
}

/// How [`forward`] ended well.
enum Forwarded {
    /// The server's response head, its body and the connection it came on.
    Response(http::response::Parts, Incoming, Lent),
    /// A script answered once the server was chosen (HTTP_LB_DONE).
    Answered(Response<Bytes>),
}

/// A short plain-text answer made by the proxy itself.
pub(crate) fn error_response(status: StatusCode) -> Response<Bytes> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut resp = Response::new(Bytes::from(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn local_response(
    resp: Response<Bytes>,
    mut txn: Txn,
    force_close: bool,
) -> Response<ResponseBody<Txn>> {
    let (mut parts, body) = resp.into_parts();
    finish_head(&mut parts, &mut txn, force_close);
    Response::from_parts(parts, ResponseBody::full(body, txn))
}

/// Last touches on the response head the client gets: `Connection: close` when the
/// connection must end after it, and its status in the transaction.
fn finish_head(parts: &mut http::response::Parts, txn: &mut Txn, force_close: bool) {
    if force_close || txn.close_requested() {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    txn.status = parts.status.as_u16();
}

pub(crate) async fn handle(
    ctx: Arc<WorkerCtx>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody<Txn>>, Infallible> {
    conn.clock.busy();
    let table = ctx.table.load_full();
    let (mut parts, body) = req.into_parts();
    // An Upgrade request keeps its hyper upgrade handle for the tunnel.
    let upgrade = headers::requested_upgrade(&parts.headers)
        .filter(|_| parts.version == Version::HTTP_11)
        .and_then(|p| Some((p, parts.extensions.remove::<OnUpgrade>()?)));
    let mut txn = Txn::new(
        conn.client,
        parts.method.clone(),
        parts.uri.clone(),
        conn.clock.clone(),
    );
    txn.tls = conn.tls.clone();
    let Some(vs) = table.vs(conn.listen).cloned() else {
        // The listener was removed by a reload and is draining.
        return Ok(local_response(
            error_response(StatusCode::SERVICE_UNAVAILABLE),
            txn,
            true,
        ));
    };
    vs.counters
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    txn.vs = Some(vs.clone());
    if let Some(status) = headers::refusal(&parts.method, parts.version, &parts.headers) {
        // Not passed on altered: answered here, before any script, and the connection ends
        // (a CONNECT client may already be sending tunnel bytes).
        return Ok(local_response(error_response(status), txn, true));
    }
    txn.hooks = vs.hooks.as_ref().map(|f| {
        f.begin(TxnInfo {
            vs_name: vs.name.to_string(),
            vs_addr: vs.listen,
            client: conn.client,
            request_id: txn.request_id,
            tls: conn.tls.clone(),
        })
    });
    let verdict = txn.hooks.as_mut().map(|h| h.on_request(&mut parts));
    txn.basic_auth_user = headers::basic_auth_user(&parts.headers);
    let mut selection = match verdict {
        Some(RequestVerdict::Respond(resp)) => return Ok(local_response(resp, txn, false)),
        Some(RequestVerdict::Forward(selection)) => selection,
        None => Selection::default(),
    };
    // A request without a body (GET, Content-Length: 0) has no data event, as in Avi.
    let body_limit = txn
        .hooks
        .as_ref()
        .filter(|_| !body.is_end_stream())
        .and_then(|h| h.request_body_limit());
    let body = match (body_limit, txn.hooks.as_mut()) {
        (Some(limit), Some(hooks)) => match collect_limited(
            body,
            limit,
            ctx.settings.client_body_idle_timeout,
            &ctx.settings.clock,
        )
        .await
        {
            Ok(bytes) => match hooks.on_request_body(&mut parts, &bytes) {
                RequestVerdict::Respond(resp) => return Ok(local_response(resp, txn, false)),
                RequestVerdict::Forward(s) => {
                    selection = s;
                    RequestBody::buffered(bytes, txn.request_bytes.clone())
                }
            },
            // The rest of the body is unread: the connection cannot carry another request.
            Err(e) => {
                let status = match e {
                    CollectError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                    CollectError::Idle(limit) => {
                        tracing::debug!(vs = %vs.name, client = %conn.client, ?limit, "request body idle timeout");
                        StatusCode::REQUEST_TIMEOUT
                    }
                    CollectError::Read(err) => {
                        tracing::debug!(vs = %vs.name, client = %conn.client, error = %err, "request body read failed");
                        StatusCode::BAD_REQUEST
                    }
                };
                return Ok(local_response(error_response(status), txn, true));
            }
        },
        _ => RequestBody::streamed(
            body,
            txn.request_bytes.clone(),
            IdleTimer::new(
                ctx.settings.client_body_idle_timeout,
                ctx.settings.clock.clone(),
            ),
        ),
    };
    let upgrade_protocol = upgrade.as_ref().map(|(p, _)| p.clone());
    let (mut rparts, rbody, lent) = match forward(
        &ctx,
        &table,
        &vs,
        &conn,
        parts,
        body,
        selection,
        upgrade_protocol,
        &mut txn,
    )
    .await
    {
        Ok(Forwarded::Response(rparts, rbody, lent)) => (rparts, rbody, lent),
        Ok(Forwarded::Answered(resp)) => return Ok(local_response(resp, txn, false)),
        Err(f) => {
            tracing::debug!(vs = %vs.name, client = %conn.client, status = f.status.as_u16(), reason = f.reason, "request not forwarded");
            let answer = match txn.hooks.as_mut() {
                Some(h) if f.server_failed => h.on_response_failed(f.status),
                _ => None,
            };
            let resp = answer.unwrap_or_else(|| error_response(f.status));
            return Ok(local_response(resp, txn, false));
        }
    };
    txn.server_status = Some(rparts.status.as_u16());
    let switching = rparts.status == StatusCode::SWITCHING_PROTOCOLS;
    let server_protocol = rparts.headers.get(header::UPGRADE).cloned();
    headers::strip_hop_by_hop(&mut rparts.headers);
    if switching {
        return Ok(switch_protocols(
            &ctx,
            &vs,
            &conn,
            upgrade,
            rparts,
            server_protocol,
            lent,
            txn,
        ));
    }
    if let Some(h) = txn.hooks.as_mut()
        && let ResponseVerdict::Respond(resp) = h.on_response(&mut rparts, lent.server)
    {
        // The server's body is abandoned, so its connection cannot be reused.
        drop((rbody, lent));
        return Ok(local_response(resp, txn, false));
    }
    let body_limit = txn
        .hooks
        .as_ref()
        .filter(|_| !rbody.is_end_stream())
        .and_then(|h| h.response_body_limit());
    if let (Some(limit), Some(hooks)) = (body_limit, txn.hooks.as_mut()) {
        let collected = collect_limited(
            rbody,
            limit,
            ctx.settings.upstream_body_idle_timeout,
            &ctx.settings.clock,
        )
        .await;
        let bytes = match collected {
            Ok(bytes) => bytes,
            Err(e) => {
                // Part of the body is unread or lost: the server connection is dropped.
                tracing::debug!(vs = %vs.name, server = %lent.server, error = ?e, "response body not buffered");
                let status = match e {
                    CollectError::Idle(_) => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                };
                return Ok(local_response(error_response(status), txn, false));
            }
        };
        let verdict = hooks.on_response_body(&mut rparts, &bytes);
        // The body was read whole: the connection can serve another request.
        txn.upstream = Some(lent);
        return Ok(match verdict {
            ResponseVerdict::Respond(resp) => local_response(resp, txn, false),
            ResponseVerdict::Continue => {
                finish_head(&mut rparts, &mut txn, false);
                Response::from_parts(rparts, ResponseBody::full(bytes, txn))
            }
        });
    }
    finish_head(&mut rparts, &mut txn, false);
    txn.upstream = Some(lent);
    Ok(Response::from_parts(
        rparts,
        ResponseBody::streamed(
            rbody,
            txn,
            IdleTimer::new(
                ctx.settings.upstream_body_idle_timeout,
                ctx.settings.clock.clone(),
            ),
        ),
    ))
}

/// A 101 from the server: the client gets it and both connections become a tunnel, when the
/// client asked for that upgrade; otherwise the server broke the protocol (502). Response
/// scripts run on the 101 head and may answer instead (then nothing is tunnelled).
#[allow(clippy::too_many_arguments)]
fn switch_protocols(
    ctx: &WorkerCtx,
    vs: &Arc<VsRoute>,
    conn: &ConnInfo,
    upgrade: Option<(HeaderValue, OnUpgrade)>,
    mut rparts: http::response::Parts,
    server_protocol: Option<HeaderValue>,
    lent: Lent,
    mut txn: Txn,
) -> Response<ResponseBody<Txn>> {
    let server_upgrade = rparts.extensions.remove::<OnUpgrade>();
    let (Some((asked, client_upgrade)), Some(server_upgrade)) = (upgrade, server_upgrade) else {
        tracing::warn!(vs = %vs.name, server = %lent.server, "server switched protocols without an upgrade request");
        return local_response(error_response(StatusCode::BAD_GATEWAY), txn, true);
    };
    if let Some(h) = txn.hooks.as_mut()
        && let ResponseVerdict::Respond(resp) = h.on_response(&mut rparts, lent.server)
    {
        return local_response(resp, txn, true);
    }
    headers::set_upgrade(&mut rparts.headers, server_protocol.unwrap_or(asked));
    // From now on the client's bytes belong to the tunnel, not to the HTTP framing checks.
    conn.tunnel
        .store(true, std::sync::atomic::Ordering::Relaxed);
    vs.counters
        .upgrades
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(super::tunnel::run(
        client_upgrade,
        server_upgrade,
        ctx.settings.client_idle_timeout,
        ctx.settings.clock.clone(),
        vs.counters.clone(),
    ));
    // The server connection is the tunnel's now: never back to the pool.
    drop(lent);
    txn.status = rparts.status.as_u16();
    Response::from_parts(rparts, ResponseBody::full(Bytes::new(), txn))
}

/// Chooses the server, sends the request and waits for the response head.
#[allow(clippy::too_many_arguments)]
async fn forward(
    ctx: &WorkerCtx,
    table: &RoutingTable,
    vs: &VsRoute,
    conn: &ConnInfo,
    mut parts: http::request::Parts,
    body: RequestBody,
    selection: Selection,
    upgrade: Option<HeaderValue>,
    txn: &mut Txn,
) -> Result<Forwarded, Failure> {
    let pool_name = selection.pool.as_deref().unwrap_or(&vs.pool);
    let picker = table
        .pool(pool_name)
        .ok_or(fail(StatusCode::SERVICE_UNAVAILABLE, "unknown pool"))?
        .clone();
    let tls = table.pool_tls(pool_name);
    let pinned = match selection.server {
        None => {
            txn.route = if selection.pool.is_some() {
                Route::ScriptPool
            } else {
                Route::Balanced
            };
            None
        }
        Some(server) => match picker.server_state(server) {
            None => return Err(fail(StatusCode::SERVICE_UNAVAILABLE, "server not in pool")),
            Some(true) => {
                txn.route = Route::ScriptServer;
                Some(server)
            }
            // A script's pick of a down server (typically a stale persistence entry) falls
            // back to the pool's algorithm, as persistence does in HAProxy with redispatch.
            Some(false) => {
                tracing::debug!(vs = %vs.name, %server, "selected server is down; balancing instead");
                txn.route = Route::ScriptServerDown;
                None
            }
        },
    };

    headers::prepare_request(&mut parts.headers, conn.client.ip(), conn.tls.is_some());
    if let Some(protocol) = upgrade {
        headers::set_upgrade(&mut parts.headers, protocol);
    }
    if let Some(authority) = parts.uri.authority()
        && !parts.headers.contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    // Servers get origin-form targets, whatever form the client used.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let origin = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .parse()
            .map_err(|_| fail(StatusCode::BAD_REQUEST, "bad request target"))?;
        parts.uri = origin;
    }
    parts.version = Version::HTTP_11;
    let mut body = body;
    let mut upload = body.watch();
    let mut req = Request::from_parts(parts, body);

    let mut failed: Vec<SocketAddr> = Vec::with_capacity(2);
    let (server, mut checkout) = loop {
        let server = match pinned {
            Some(s) => s,
            None => match picker.pick(&PickContext {
                client: conn.client,
                headers: req.headers(),
                uri: req.uri(),
                hash_key: selection.hash_key.as_deref().map(str::as_bytes),
                exclude: &failed,
            }) {
                Some(s) => s,
                None if failed.is_empty() => {
                    return Err(fail(StatusCode::SERVICE_UNAVAILABLE, "no server up"));
                }
                None => return Err(server_fail(StatusCode::BAD_GATEWAY, "connect failed")),
            },
        };
        match ctx.upstream.checkout(server, tls, false).await {
            Ok(c) => break (server, c),
            Err(e) => {
                tracing::warn!(vs = %vs.name, error = %e, "upstream connect failed");
                failed.push(server);
                // Only a balanced choice may go elsewhere, and only once.
                if pinned.is_some() || failed.len() >= 2 {
                    return Err(server_fail(StatusCode::BAD_GATEWAY, "connect failed"));
                }
            }
        }
    };
    if let Some(answer) = txn.hooks.as_mut().and_then(|h| h.on_lb_done(server)) {
        // The connection carries no request: back to the pool. Nor is it counted as one of
        // the server's requests.
        ctx.upstream
            .checkin((server, tls.is_some()), checkout.sender);
        return Ok(Forwarded::Answered(answer));
    }
    txn.server = Some(ServerUse::new(server, ctx.stats.server(server), picker));

    let response_timeout = selection
        .response_timeout
        .unwrap_or(ctx.settings.upstream_response_timeout);
    let mut retried = false;
    loop {
        match exchange(
            ctx,
            &mut checkout.sender,
            req,
            upload.as_mut(),
            response_timeout,
        )
        .await
        {
            Err(Stall::Response) => {
                return Err(server_fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream response timeout",
                ));
            }
            Err(Stall::RequestBody) => {
                tracing::warn!(vs = %vs.name, %server, "server stopped taking the request body");
                return Err(server_fail(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream stopped reading the request body",
                ));
            }
            Ok(Ok(resp)) => {
                let (rparts, rbody) = resp.into_parts();
                return Ok(Forwarded::Response(
                    rparts,
                    rbody,
                    Lent {
                        pool: ctx.upstream.clone(),
                        server,
                        sender: checkout.sender,
                        tls: tls.is_some(),
                    },
                ));
            }
            Ok(Err(mut e)) => {
                let client_failure = upload.as_ref().and_then(|u| u.progress.failure());
                match (e.take_message(), client_failure) {
                    // A pooled connection the server had closed: the request never left, so it
                    // may go once more on a new connection.
                    (Some(unsent), _) if checkout.reused && !retried => {
                        retried = true;
                        req = unsent;
                        checkout = ctx
                            .upstream
                            .checkout(server, tls, true)
                            .await
                            .map_err(|e| {
                                tracing::warn!(vs = %vs.name, "upstream reconnect failed: {e}");
                                server_fail(StatusCode::BAD_GATEWAY, "connect failed")
                            })?;
                    }
                    // The client's body broke off, was malformed or paused too long: the
                    // client's error (the connection cannot carry another request), not a
                    // 502 blamed on the server.
                    (_, Some(ClientFailure::Broken)) => {
                        tracing::debug!(vs = %vs.name, %server, error = %e.into_error(), "client request body failed");
                        return Err(fail(StatusCode::BAD_REQUEST, "client request body failed"));
                    }
                    (_, Some(ClientFailure::Idle)) => {
                        tracing::debug!(vs = %vs.name, %server, "client paused in its request body too long");
                        return Err(fail(
                            StatusCode::REQUEST_TIMEOUT,
                            "client request body idle timeout",
                        ));
                    }
                    (_, None) => {
                        tracing::warn!(vs = %vs.name, %server, error = %e.into_error(), "upstream request failed");
                        return Err(server_fail(
                            StatusCode::BAD_GATEWAY,
                            "upstream request failed",
                        ));
                    }
                }
            }
        }
    }
}

/// Why a server was given up on while a request was with it.
enum Stall {
    /// No response head within the response timeout after the request body ended.
    Response,
    /// The server stopped taking the request body while the client had more.
    RequestBody,
}

type Sent = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<RequestBody>>>;

/// Sends `req` and waits for the response head: without a response deadline while the
/// client's body is still coming (a client's pause has its own timer, in the body), then for
/// `response_timeout` from the body's end, so that a slow upload is never a 504 blamed on the
/// server. A server may answer before the body ends (413, 401); that answer is taken at once.
async fn exchange(
    ctx: &WorkerCtx,
    sender: &mut UpstreamSender,
    req: Request<RequestBody>,
    upload: Option<&mut UploadWatch>,
    response_timeout: std::time::Duration,
) -> Result<Sent, Stall> {
    let clock = &ctx.settings.clock;
    let sent = sender.try_send_request(req);
    tokio::pin!(sent);
    if let Some(up) = upload.filter(|u| !u.finished) {
        let stall = ctx.settings.upstream_body_idle_timeout;
        let mut seen = up.bytes.load(Ordering::Relaxed);
        loop {
            tokio::select! {
                biased;
                out = &mut sent => return Ok(out),
                // Ended, failed or dropped: the sender is gone either way.
                _ = &mut up.done => {
                    up.finished = true;
                    break;
                }
                () = clock.sleep_until(clock.now() + stall) => {
                    let now = up.bytes.load(Ordering::Relaxed);
                    if now == seen && !up.progress.waiting_on_client() {
                        return Err(Stall::RequestBody);
                    }
                    seen = now;
                }
            }
        }
    }
    clock
        .timeout(response_timeout, sent)
        .await
        .map_err(|_| Stall::Response)
}
