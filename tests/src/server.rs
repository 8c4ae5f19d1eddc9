//! The test backend behind `latch-testd serve`, also runnable in-process inside a namespace.
//!
//! HTTP (any method, every response carries `X-Backend` and `X-Seen-Client`):
//! - `/healthz`: 200 `ok`, or 503 after [`ServerInfo::set_healthy`]`(false)`; not counted as a
//!   request, so distribution checks are not skewed by health monitors.
//! - `/login`: like `/`, plus `Set-Cookie: JSESSIONID=<name>-<n>`.
//! - `/download?bytes=N`: streams N bytes of `x`.
//! - `/upload`: counts the request body; body `<name> <count>`, header `X-Received-Bytes`.
//! - `/slow?ms=N`: answers after N ms (at most 60 s).
//! - `/headers`: body lists the request headers, one `name: value` per line.
//! - anything else: body `<name> <client ip:port>`.
//!
//! UDP: every datagram is answered with `<name> <client ip:port>`.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

use crate::body::{AnyBody, full, repeat};
use crate::error::{Error, Result, io};
use crate::netns::Netns;

/// How long a stopping server lets in-flight connections finish.
const DRAIN: Duration = Duration::from_secs(2);
const MAX_SLOW_MS: u64 = 60_000;
const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub name: String,
    pub http: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    /// Serve HTTP over TLS with this certificate and key.
    pub tls: Option<crate::tls::CertFiles>,
}

/// Counters and switches shared between a running server and the test that controls it.
#[derive(Debug)]
pub struct ServerState {
    name: String,
    healthy: AtomicBool,
    requests: AtomicU64,
    health_checks: AtomicU64,
    udp_datagrams: AtomicU64,
    cookies: AtomicU64,
}

impl ServerState {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            healthy: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            udp_datagrams: AtomicU64::new(0),
            cookies: AtomicU64::new(0),
        }
    }
}

/// What a test needs to talk to and steer a running server; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    http: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    state: Arc<ServerState>,
}

impl ServerInfo {
    pub fn name(&self) -> &str {
        &self.state.name
    }
    /// The bound HTTP address (with the real port when 0 was asked for).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp
    }
    /// Makes `/healthz` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }
    /// HTTP requests served, `/healthz` excluded.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
    pub fn health_checks(&self) -> u64 {
        self.state.health_checks.load(Ordering::SeqCst)
    }
    pub fn udp_datagrams(&self) -> u64 {
        self.state.udp_datagrams.load(Ordering::SeqCst)
    }
}

/// Sockets bound (in the caller's namespace) but not yet served: binding happens before the
/// runtime starts so that readiness means "connectable".
#[derive(Debug)]
pub struct TestServer {
    info: ServerInfo,
    http: Option<TcpListener>,
    udp: Option<UdpSocket>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl TestServer {
    pub fn bind(cfg: &ServeConfig) -> Result<Self> {
        let http = cfg
            .http
            .map(|a| TcpListener::bind(a).map_err(io(format!("bind HTTP {a}"))))
            .transpose()?;
        let udp = cfg
            .udp
            .map(|a| UdpSocket::bind(a).map_err(io(format!("bind UDP {a}"))))
            .transpose()?;
        let http_addr = http
            .as_ref()
            .map(|l| l.local_addr().map_err(io("HTTP local_addr")))
            .transpose()?;
        let udp_addr = udp
            .as_ref()
            .map(|s| s.local_addr().map_err(io("UDP local_addr")))
            .transpose()?;
        let tls = cfg
            .tls
            .as_ref()
            .map(crate::tls::server_config)
            .transpose()?;
        Ok(Self {
            info: ServerInfo {
                http: http_addr,
                udp: udp_addr,
                state: Arc::new(ServerState::new(&cfg.name)),
            },
            http,
            udp,
            tls,
        })
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The line `latch-testd` prints once it accepts traffic.
    pub fn ready_line(&self) -> String {
        let fmt = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_string(), |a| a.to_string());
        format!(
            "READY name={} http={} udp={}",
            self.info.name(),
            fmt(self.info.http),
            fmt(self.info.udp)
        )
    }

    /// Serves until `shutdown` turns true (or its sender is dropped), then lets open HTTP
    /// connections finish for up to 2 s. Must run inside a tokio runtime.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let state = Arc::clone(&self.info.state);
        let udp_task = match self.udp {
            Some(sock) => {
                sock.set_nonblocking(true).map_err(io("UDP nonblocking"))?;
                let sock = tokio::net::UdpSocket::from_std(sock).map_err(io("UDP register"))?;
                let state = Arc::clone(&state);
                let stop = shutdown.clone();
                Some(tokio::spawn(udp_loop(sock, state, stop)))
            }
            None => None,
        };
        if let Some(listener) = self.http {
            listener
                .set_nonblocking(true)
                .map_err(io("HTTP nonblocking"))?;
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(io("HTTP register"))?;
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let (stream, peer) = match accepted {
                            Ok(x) => x,
                            Err(e) => {
                                tracing::warn!(error = %e, "accept failed");
                                // Out of fds or similar: back off instead of spinning.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        };
                        let st = Arc::clone(&state);
                        let svc = service_fn(move |req| handle(req, peer, Arc::clone(&st)));
                        if let Some(acceptor) = self.tls.clone().map(tokio_rustls::TlsAcceptor::from) {
                            // TLS backends: handshake, then HTTP/1.1 (no drain wait).
                            tokio::spawn(async move {
                                let Ok(stream) = acceptor.accept(stream).await else { return };
                                let conn = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc);
                                if let Err(e) = conn.await {
                                    tracing::debug!(error = %e, %peer, "TLS connection ended with error");
                                }
                            });
                            continue;
                        }
                        // With upgrades, for /ws (the auto builder's upgradeable connection can
                        // drain gracefully; HTTP/1.1 only, as before).
                        let conn = auto::Builder::new(TokioExecutor::new())
                            .http1_only()
                            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                            .into_owned();
                        let conn = graceful.watch(conn);
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %e, %peer, "connection ended with error");
                            }
                        });
                    }
                    _ = stopped(&mut shutdown) => break,
                }
            }
            drop(listener);
            if tokio::time::timeout(DRAIN, graceful.shutdown())
                .await
                .is_err()
            {
                tracing::debug!("connections still open after drain timeout");
            }
        } else {
            stopped(&mut shutdown).await;
        }
        if let Some(t) = udp_task {
            t.abort();
        }
        Ok(())
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    // An Err means the sender is gone, which also means stop.
    let _ = rx.wait_for(|v| *v).await;
}

async fn udp_loop(
    sock: tokio::net::UdpSocket,
    state: Arc<ServerState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((_, peer)) = r else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                state.udp_datagrams.fetch_add(1, Ordering::SeqCst);
                let reply = format!("{} {peer}", state.name);
                if let Err(e) = sock.send_to(reply.as_bytes(), peer).await {
                    tracing::debug!(error = %e, %peer, "UDP reply failed");
                }
            }
            _ = stopped(&mut stop) => return,
        }
    }
}

fn query_u64(query: Option<&str>, key: &str) -> Option<u64> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// `/ws`: a WebSocket that first says `<backend> x-script=<that request header>`, then echoes
/// every message until the client closes.
fn websocket(mut req: Request<Incoming>, state: &ServerState) -> Response<AnyBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};

    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut resp = Response::new(full("not a websocket handshake"));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let script = req
        .headers()
        .get("x-script")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    let hello = format!("{} x-script={script}", state.name);
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        if ws.send(Message::text(hello)).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            let echo = match msg {
                Message::Text(_) | Message::Binary(_) => msg,
                Message::Close(_) => return,
                _ => continue,
            };
            if ws.send(echo).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    h.insert("connection", HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<ServerState>,
) -> Result<Response<AnyBody>, Infallible> {
    if req.uri().path() == "/ws" {
        state.requests.fetch_add(1, Ordering::SeqCst);
        return Ok(websocket(req, &state));
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let q = query.as_deref();
    let hello = || format!("{} {peer}", state.name);
    let mut extra: Vec<(&'static str, String)> = Vec::new();
    let (status, body) = match path.as_str() {
        "/healthz" => {
            state.health_checks.fetch_add(1, Ordering::SeqCst);
            if state.healthy.load(Ordering::SeqCst) {
                (StatusCode::OK, full("ok"))
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, full("down"))
            }
        }
        _ => {
            state.requests.fetch_add(1, Ordering::SeqCst);
            match path.as_str() {
                "/login" => {
                    let n = state.cookies.fetch_add(1, Ordering::SeqCst) + 1;
                    extra.push((
                        "set-cookie",
                        format!("JSESSIONID={}-{n}; Path=/", state.name),
                    ));
                    (StatusCode::OK, full(hello()))
                }
                "/download" => {
                    let n = query_u64(q, "bytes").unwrap_or(0);
                    (StatusCode::OK, repeat(n))
                }
                "/upload" => {
                    let mut body = req.into_body();
                    let mut count: u64 = 0;
                    while let Some(frame) = body.frame().await {
                        match frame {
                            Ok(f) => {
                                if let Some(d) = f.data_ref() {
                                    count += d.len() as u64;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "upload body error");
                                break;
                            }
                        }
                    }
                    extra.push(("x-received-bytes", count.to_string()));
                    (StatusCode::OK, full(format!("{} {count}", state.name)))
                }
                "/slow" => {
                    let ms = query_u64(q, "ms").unwrap_or(0).min(MAX_SLOW_MS);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    (StatusCode::OK, full(hello()))
                }
                "/headers" => {
                    let mut text = String::new();
                    for (k, v) in req.headers() {
                        text.push_str(k.as_str());
                        text.push_str(": ");
                        text.push_str(&String::from_utf8_lossy(v.as_bytes()));
                        text.push('\n');
                    }
                    (StatusCode::OK, full(Bytes::from(text)))
                }
                _ => (StatusCode::OK, full(hello())),
            }
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.append(k, v);
        }
    };
    set("x-backend", state.name.clone());
    set("x-seen-client", peer.to_string());
    for (k, v) in extra {
        set(k, v);
    }
    Ok(resp)
}

/// A server running on its own thread inside a namespace; stopped (and joined) on drop.
#[derive(Debug)]
pub struct ServerHandle {
    info: ServerInfo,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<Result<Result<()>>>>,
}

impl ServerHandle {
    /// Binds in `ns` and serves from a current-thread runtime on a thread inside `ns`; returns
    /// once the sockets accept traffic.
    pub fn start_in(ns: &Netns, cfg: ServeConfig) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<ServerInfo>>();
        let (stop_tx, stop_rx) = watch::channel(false);
        let thread = ns.spawn_thread(&format!("testd-{}", cfg.name), move || -> Result<()> {
            let server = match TestServer::bind(&cfg) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::Io {
                        context: format!("start server {}", cfg.name),
                        source: std::io::Error::other(e.to_string()),
                    }));
                    return Err(e);
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(io("build runtime"))?;
            let _ = ready_tx.send(Ok(server.info().clone()));
            rt.block_on(server.run(stop_rx))
        })?;
        let info = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Timeout {
                    what: "in-process test server to bind".into(),
                    after: READY_TIMEOUT,
                });
            }
        };
        Ok(Self {
            info,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Stops the server and reports how its thread ended.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        match self.thread.take() {
            Some(t) => match t.join() {
                Ok(r) => r.and_then(|inner| inner),
                Err(_) => Err(Error::ThreadPanicked {
                    name: self.info.name().to_string(),
                }),
            },
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("latch-tests: server {} ended with: {e}", self.info.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::query_u64;

    #[test]
    fn query_parameters_are_found_by_key() {
        assert_eq!(query_u64(Some("a=1&bytes=42"), "bytes"), Some(42));
        assert_eq!(query_u64(Some("bytes=x"), "bytes"), None);
        assert_eq!(query_u64(Some("ms=5"), "bytes"), None);
        assert_eq!(query_u64(None, "bytes"), None);
    }
}
