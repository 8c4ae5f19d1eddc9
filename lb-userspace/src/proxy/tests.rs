//! Loopback tests: an in-process hyper backend, the proxy on its own worker threads, and
//! clients speaking hyper or raw bytes. Every wait is bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::hooks::{HookFactory, RequestVerdict, ResponseVerdict, Selection, TxnHooks, TxnInfo};
use super::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const MIB: u64 = 1024 * 1024;

type TestError = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), TestError>;
type ClientBody = UnsyncBoxBody<Bytes, Infallible>;

fn err(msg: impl Into<String>) -> TestError {
    msg.into().into()
}

/// Polls `cond` every 5 ms for at most `limit`.
async fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let steps = limit.as_millis() / 5;
    for _ in 0..steps {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

/// Shared state of the in-process backend and the test.
#[derive(Default)]
struct BackendState {
    connections: AtomicUsize,
    requests: AtomicUsize,
    upload_seen: AtomicU64,
    client_got: AtomicU64,
    /// What `/gate` waits for before it answers.
    gate: tokio::sync::Notify,
}

struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BackendBody = UnsyncBoxBody<Bytes, TestError>;

fn text(status: StatusCode, body: String) -> Response<BackendBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

async fn backend_service(
    state: Arc<BackendState>,
    me: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<BackendBody>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let num = query
        .split('=')
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    match path.as_str() {
        "/headers" => {
            let mut out = format!("server={me}\n");
            for (k, v) in req.headers() {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Ok(text(StatusCode::OK, out))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(num)).await;
            Ok(text(StatusCode::OK, "slow done".into()))
        }
        "/gate" => {
            state.gate.notified().await;
            Ok(text(StatusCode::OK, "gate opened".into()))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut chunks = 0u64;
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Ok(text(StatusCode::BAD_REQUEST, "broken body".into()));
                };
                if let Some(d) = frame.data_ref() {
                    chunks += 1;
                    total += d.len() as u64;
                    state.upload_seen.store(total, Ordering::SeqCst);
                }
            }
            Ok(text(
                StatusCode::OK,
                format!("bytes={total} chunks={chunks}"),
            ))
        }
        "/upload-gate" => {
            // Reads the whole body, then answers only when the gate opens.
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Ok(text(StatusCode::BAD_REQUEST, "broken body".into()));
                };
                if let Some(d) = frame.data_ref() {
                    total += d.len() as u64;
                    state.upload_seen.store(total, Ordering::SeqCst);
                }
            }
            state.gate.notified().await;
            Ok(text(StatusCode::OK, format!("bytes={total}")))
        }
        "/ignore-body" => {
            // Never reads the request body; answers when the gate opens.
            state.gate.notified().await;
            Ok(text(StatusCode::OK, "ignored".into()))
        }
        "/stream" => {
            // `bytes` bytes as fast as the reader takes them, then "end" once the gate opens.
            let total = num;
            let st = state.clone();
            let stream = futures_util::stream::unfold(0u64, move |sent| {
                let st = st.clone();
                async move {
                    if sent < total {
                        let n = (64 * 1024u64).min(total - sent);
                        let data = Bytes::from(vec![b's'; n as usize]);
                        return Some((Ok(Frame::data(data)), sent + n));
                    }
                    if sent == total {
                        st.gate.notified().await;
                        return Some((Ok(Frame::data(Bytes::from_static(b"end"))), sent + 1));
                    }
                    None
                }
            });
            Ok(Response::new(StreamBody::new(stream).boxed_unsync()))
        }
        "/stall-body" => {
            // The head and a first chunk, then nothing until the gate opens.
            let st = state.clone();
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let st = st.clone();
                async move {
                    match step {
                        0 => Some((Ok(Frame::data(Bytes::from_static(b"first "))), 1)),
                        1 => {
                            st.gate.notified().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"rest"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Ok(Response::new(StreamBody::new(stream).boxed_unsync()))
        }
        "/download" => {
            // Sends the first MiB, then waits for the client to have it before the rest: a
            // proxy that buffered the whole body would deadlock here.
            let total = num;
            let chunk = 64 * 1024u64;
            let st = state.clone();
            let stream = futures_util::stream::unfold(0u64, move |sent| {
                let st = st.clone();
                async move {
                    if sent >= total {
                        return None;
                    }
                    if sent == MIB {
                        let ok = wait_until(Duration::from_secs(10), || {
                            st.client_got.load(Ordering::SeqCst) >= MIB
                        })
                        .await;
                        if !ok {
                            return Some((Err(err("client never got the first MiB")), total));
                        }
                    }
                    let n = chunk.min(total - sent);
                    let data = Bytes::from(vec![b'x'; n as usize]);
                    Some((Ok(Frame::data(data)), sent + n))
                }
            });
            Ok(Response::new(StreamBody::new(stream).boxed_unsync()))
        }
        _ => Ok(text(StatusCode::NOT_FOUND, "no such path".into())),
    }
}

async fn backend() -> Result<Backend, TestError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(BackendState::default());
    let st = state.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            st.connections.fetch_add(1, Ordering::SeqCst);
            let st = st.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| backend_service(st.clone(), addr, req));
                // More headers than the proxy admits, so that its limit is what tests see
                // (the proxy adds X-Forwarded-*).
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_headers(200)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(Backend { addr, state, task })
}

/// An address where nothing listens.
async fn dead_addr() -> Result<SocketAddr, TestError> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?)
}

struct Setup {
    proxy: HttpProxy,
    addr: SocketAddr,
    picker: Arc<RoundRobin>,
}

fn vip() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn settings() -> ProxySettings {
    ProxySettings {
        workers: 2,
        ..ProxySettings::default()
    }
}

fn config(
    servers: &[SocketAddr],
    hooks: Option<Arc<dyn HookFactory>>,
) -> (ProxyConfig, Arc<RoundRobin>) {
    let picker = Arc::new(RoundRobin::new(servers.iter().copied()));
    let config = ProxyConfig {
        virtual_services: vec![VirtualServiceSpec {
            name: "shop".into(),
            listen: vip(),
            pool: "web".into(),
            hooks,
            tls: None,
        }],
        pools: vec![PoolSpec {
            name: "web".into(),
            picker: picker.clone(),
            tls: None,
        }],
    };
    (config, picker)
}

fn start(
    servers: &[SocketAddr],
    hooks: Option<Arc<dyn HookFactory>>,
    settings: ProxySettings,
) -> Result<Setup, TestError> {
    let (config, picker) = config(servers, hooks);
    let proxy = HttpProxy::start(settings, config)?;
    let addr = proxy.local_addr(vip()).ok_or_else(|| err("no listener"))?;
    Ok(Setup {
        proxy,
        addr,
        picker,
    })
}

async fn client(addr: SocketAddr) -> Result<SendRequest<ClientBody>, TestError> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn get(path: &str) -> Result<Request<ClientBody>, TestError> {
    Ok(Request::get(path)
        .header("host", "shop.example")
        .body(Empty::new().boxed_unsync())?)
}

async fn send(
    c: &mut SendRequest<ClientBody>,
    req: Request<ClientBody>,
) -> Result<(http::response::Parts, String), TestError> {
    c.ready().await?;
    let resp = c.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok((parts, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Writes raw bytes and reads until the server closes (bounded).
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Result<String, TestError> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn run(test: impl std::future::Future<Output = TestResult>) -> TestResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async { tokio::time::timeout(TEST_TIMEOUT, test).await })?
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Test settings on a clock only the test moves: the proxy's timers fire exactly when the
/// test advances it past their deadline.
fn manual_settings() -> (ProxySettings, Arc<ManualClock>) {
    let manual = Arc::new(ManualClock::new());
    let settings = ProxySettings {
        clock: ProxyClock::manual(manual.clone()),
        ..settings()
    };
    (settings, manual)
}

/// Waits (bounded) until the proxy holds `n` connections of "shop": their timers then run.
async fn connections_open(proxy: &HttpProxy, n: u64) -> bool {
    wait_until(Duration::from_secs(5), || {
        proxy
            .stats()
            .vs("shop")
            .is_some_and(|v| v.active_connections == n)
    })
    .await
}

/// Waits (bounded) until the proxy has finished `n` responses of "shop": their connections'
/// keep-alive timers then run.
async fn responses_done(proxy: &HttpProxy, n: u64) -> bool {
    wait_until(Duration::from_secs(5), || {
        proxy
            .stats()
            .vs("shop")
            .is_some_and(|v| v.responses.iter().sum::<u64>() >= n)
    })
    .await
}

/// Waits (bounded) until the backend has received `n` requests.
async fn requests_seen(state: &BackendState, n: usize) -> bool {
    wait_until(Duration::from_secs(5), || {
        state.requests.load(Ordering::SeqCst) >= n
    })
    .await
}

/// Waits (bounded) until nothing accepts connections on `addr` any more.
async fn listener_closed(addr: SocketAddr) -> bool {
    wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await
}

/// True when nothing (neither bytes nor the end) arrives on `s` for a moment. Only used to
/// check that a timer did not fire early: on a manual clock it cannot fire on its own.
async fn quiet(s: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(ms(50), s.read(&mut byte))
        .await
        .is_err()
}

#[test]
fn keep_alive_reuses_upstream_and_rewrites_headers() -> TestResult {
    run(async {
        let b = backend().await?;
        let s = start(&[b.addr], None, settings())?;
        let mut c = client(s.addr).await?;
        for _ in 0..5 {
            let req = Request::get("/headers")
                .header("host", "shop.example")
                .header("connection", "keep-alive, x-drop-me")
                .header("x-drop-me", "1")
                .header("x-forwarded-for", "203.0.113.9")
                .header("proxy-authorization", "secret")
                .body(Empty::new().boxed_unsync())?;
            let (parts, body) = send(&mut c, req).await?;
            assert_eq!(parts.status, StatusCode::OK);
            assert!(body.contains("host: shop.example\n"), "{body}");
            assert!(
                body.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"),
                "{body}"
            );
            assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
            assert!(!body.contains("x-drop-me"), "{body}");
            assert!(!body.contains("proxy-authorization"), "{body}");
        }
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 5);
        assert_eq!(
            b.state.connections.load(Ordering::SeqCst),
            1,
            "upstream connection reused"
        );
        let stats = s.proxy.stats();
        let vs = stats.vs("shop").ok_or_else(|| err("no vs stats"))?;
        assert_eq!(vs.requests, 5);
        assert_eq!(vs.responses[1], 5);
        let server = stats.server(b.addr).ok_or_else(|| err("no server stats"))?;
        assert_eq!(server.requests, 5);
        assert_eq!(server.connections, 1);
        assert_eq!(server.active_requests, 0);
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn large_bodies_stream_both_ways() -> TestResult {
    run(async {
        let b = backend().await?;
        let s = start(&[b.addr], None, settings())?;
        let total = 20 * MIB;

        // Upload: the second half is only sent once the backend holds the first MiB.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let req = Request::post("/upload")
            .header("host", "shop.example")
            .header("content-length", total.to_string())
            .body(StreamBody::new(stream).boxed_unsync())?;
        let mut c = client(s.addr).await?;
        let state = b.state.clone();
        let producer = tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
            let mut sent = 0u64;
            while sent < total {
                if sent == 2 * MIB {
                    let seen = wait_until(Duration::from_secs(10), || {
                        state.upload_seen.load(Ordering::SeqCst) >= MIB
                    })
                    .await;
                    if !seen {
                        return Err("backend did not get the first MiB while the upload went on");
                    }
                }
                if tx.send(chunk.clone()).await.is_err() {
                    return Err("request body dropped");
                }
                sent += chunk.len() as u64;
            }
            Ok(())
        });
        let (parts, body) = send(&mut c, req).await?;
        producer.await?.map_err(err)?;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(body.starts_with(&format!("bytes={total} ")), "{body}");

        // Download: the backend waits for the client to hold the first MiB.
        c.ready().await?;
        let resp = c
            .send_request(get(&format!("/download?bytes={total}"))?)
            .await?;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame?.data_ref() {
                got += d.len() as u64;
                b.state.client_got.store(got, Ordering::SeqCst);
            }
        }
        assert_eq!(got, total);
        let stats = s.proxy.stats();
        let vs = stats.vs("shop").ok_or_else(|| err("no vs stats"))?;
        assert!(
            wait_until(Duration::from_secs(2), || {
                s.proxy
                    .stats()
                    .vs("shop")
                    .is_some_and(|v| v.response_bytes >= total)
            })
            .await
        );
        assert!(vs.request_bytes >= total, "{vs:?}");
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn requests_not_to_pass_on_are_answered_by_the_proxy() -> TestResult {
    run(async {
        let b = backend().await?;
        let s = start(&[b.addr], None, settings())?;
        for (request, status) in [
            (&b"GET /headers HTTP/1.1\r\n\r\n"[..], "400"),
            (b"GET /headers HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
            (b"CONNECT 192.0.2.99:443 HTTP/1.1\r\nHost: 192.0.2.99:443\r\n\r\n", "405"),
            (
                b"POST /headers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "501",
            ),
        ] {
            let resp = raw(s.addr, request).await?;
            assert!(
                resp.starts_with(&format!("HTTP/1.1 {status} ")),
                "{}: {resp}",
                String::from_utf8_lossy(request)
            );
        }
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 0);
        // A client whose body breaks off (a chunk size that overflows, or the client gone
        // before its Content-Length is in) made the error: 400 or a close, never a 502.
        let resp = raw(
            s.addr,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n",
        )
        .await?;
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 400 "),
            "{resp}"
        );
        let mut c = TcpStream::connect(s.addr).await?;
        c.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.shutdown().await?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await??;
        let resp = String::from_utf8_lossy(&out);
        assert!(
            resp.is_empty() || resp.starts_with("HTTP/1.1 400 "),
            "{resp}"
        );
        // HTTP/1.0 may leave Host out.
        let resp = raw(s.addr, b"GET /headers HTTP/1.0\r\n\r\n").await?;
        assert!(
            resp.starts_with("HTTP/1.0 200 ") || resp.starts_with("HTTP/1.1 200 "),
            "{resp}"
        );
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

/// A request head of `count` headers (at least 2): Host, `Connection: close` (the
/// response then ends the connection) and fillers.
fn head_with_headers(count: usize) -> String {
    let mut head = String::from("GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 2..count {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// `max_headers` admits exactly that many headers, at the default (100, where hyper is left
/// to its own limit) and at another value.
#[test]
fn the_header_count_limit_is_exact() -> TestResult {
    run(async {
        let b = backend().await?;
        for limit in [crate::proxy::settings::DEFAULT_MAX_HEADERS, 20] {
            let s = start(
                &[b.addr],
                None,
                ProxySettings {
                    max_headers: limit,
                    ..settings()
                },
            )?;
            let resp = raw(s.addr, head_with_headers(limit).as_bytes()).await?;
            assert!(resp.starts_with("HTTP/1.1 200 "), "{limit}: {resp}");
            let resp = raw(s.addr, head_with_headers(limit + 1).as_bytes()).await?;
            assert!(resp.starts_with("HTTP/1.1 431 "), "{limit}: {resp}");
            s.proxy.shutdown(Duration::from_secs(1)).await;
        }
        Ok(())
    })
}

#[test]
fn protocol_violations_never_reach_the_backend() -> TestResult {
    run(async {
        let b = backend().await?;
        let s = start(&[b.addr], None, settings())?;

        let big = "a".repeat(20 * 1024);
        let resp = raw(
            s.addr,
            format!("GET /headers HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        )
        .await?;
        assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");

        let resp = raw(s.addr, head_with_headers(150).as_bytes()).await?;
        assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");

        // Framing that cannot be read one way only is refused.
        for bad in [
            &b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello"[..],
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            b"POST /upload HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let resp = raw(s.addr, bad).await?;
            assert!(resp.starts_with("HTTP/1.1 400 "), "{}: {resp}", String::from_utf8_lossy(bad));
        }
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 0);

        // Content-Length together with Transfer-Encoding (the request-smuggling vector) is
        // refused, in either order, with either line ending, whatever the Content-Length says.
        for bad in [
            &b"POST /headers HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /headers HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n",
            b"POST /headers HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\nContent-Length: x\n\n0\r\n\r\n",
        ] {
            let resp = raw(s.addr, bad).await?;
            assert!(resp.starts_with("HTTP/1.1 400 "), "{}: {resp}", String::from_utf8_lossy(bad));
            assert!(!resp.contains("smuggled") && !resp.contains("404"), "{resp}");
        }
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 0);
        // The end of the head arriving on its own: hyper, holding a partial head, parses
        // again only when it sees an empty line, which the refusal provides.
        for bad in [
            &b"POST /headers HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST /headers HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\nContent-Length: 3\n\n",
        ] {
            for last in 1..=3 {
                let mut c = TcpStream::connect(s.addr).await?;
                c.set_nodelay(true)?;
                c.write_all(&bad[..bad.len() - last]).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                c.write_all(&bad[bad.len() - last..]).await?;
                let mut out = Vec::new();
                tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await??;
                let resp = String::from_utf8_lossy(&out);
                assert!(resp.starts_with("HTTP/1.1 400 "), "last {last}: {resp}");
            }
        }
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 0);

        // Also behind earlier requests on a keep-alive connection: the first two (with a
        // chunked body and a Content-Length body that look like conflicting heads) are
        // answered, the third is refused, nothing after it is read.
        let decoy =
            "GET /smuggled HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let pipelined = format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x};ext=1\r\n{decoy}\r\n0\r\nX-Trailer: t\r\n\r\n\
             POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{decoy}\
             POST /headers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n\
             0\r\n\r\nGET /headers HTTP/1.1\r\nHost: x\r\n\r\n",
            decoy.len(),
            decoy.len(),
        );
        let resp = raw(s.addr, pipelined.as_bytes()).await?;
        // The bodies end without a newline, so split on the status lines themselves.
        let statuses: Vec<&str> = resp
            .split("HTTP/1.1 ")
            .skip(1)
            .map(|r| r.get(..3).unwrap_or(r))
            .collect();
        assert_eq!(statuses, ["200", "200", "400"], "{resp}");
        let uploaded = format!("bytes={} chunks=", decoy.len());
        assert_eq!(resp.matches(&uploaded).count(), 2, "{resp}");
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 2);

        let resp = raw(
            s.addr,
            b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await?;
        assert!(
            resp.starts_with("HTTP/1.1 200 "),
            "a good request still works: {resp}"
        );
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 3);
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

/// Deterministic xorshift, so a failing stream can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// One valid request exercising a framing feature hyper accepts; body bytes mimic heads.
fn random_request(rng: &mut Rng) -> Vec<u8> {
    let nl = rng.pick(&["\r\n", "\n"]);
    let mut out = rng.pick(&["", "\r\n", "\n\r\n"]).to_string();
    let decoy = "\r\n\r\nPOST /smuggled HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
    match rng.below(3) {
        0 => {
            out.push_str(&format!("GET /headers HTTP/1.1{nl}Host: x{nl}Content-Lengthy: 1{nl}X-Transfer-Encoding: y{nl}{nl}"));
        }
        1 => {
            let body = &decoy[..rng.below(decoy.len() + 1)];
            let name = rng.pick(&["Content-Length", "content-length", "CONTENT-LENGTH"]);
            out.push_str(&format!(
                "POST /upload HTTP/1.1{nl}Host: x{nl}{name}: \t{}  {nl}{nl}{body}",
                body.len()
            ));
        }
        _ => {
            let name = rng.pick(&["Transfer-Encoding", "transfer-encoding"]);
            out.push_str(&format!(
                "POST /upload HTTP/1.1{nl}Host: x{nl}{name}: chunked{nl}{nl}"
            ));
            for _ in 0..rng.below(4) {
                let data = &decoy[..1 + rng.below(decoy.len())];
                let size = match rng.below(3) {
                    0 => format!("{:x}", data.len()),
                    1 => format!("{:X}", data.len()),
                    _ => format!("00{:x}", data.len()),
                };
                let ext = rng.pick(&["", " ", "\t;a=b", ";x=\"q\";y", " ;e"]);
                out.push_str(&format!("{size}{ext}\r\n{data}\r\n"));
            }
            let ext = rng.pick(&["", ";last"]);
            let trailers = rng.pick(&["", "X-Sum: 1\r\n", "X-A: a\r\nContent-Length: 9\r\n"]);
            out.push_str(&format!("0{ext}\r\n{trailers}\r\n"));
        }
    }
    out.into_bytes()
}

#[test]
fn random_keep_alive_streams_stay_in_step_with_hyper() -> TestResult {
    run(async {
        let b = backend().await?;
        let s = start(&[b.addr], None, settings())?;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut served = 0;
        for round in 0..24 {
            let n = 1 + rng.below(4);
            let mut stream = Vec::new();
            for _ in 0..n {
                stream.extend(random_request(&mut rng));
            }
            let conflict = rng.pick(&[
                "POST /headers HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                "POST /headers HTTP/1.1\nTransfer-Encoding: chunked\nHost: x\ncontent-length: 5\n\n",
            ]);
            // Nothing after it: bytes arriving after the proxy closed would draw a reset.
            stream.extend_from_slice(conflict.as_bytes());
            // Several writes with pauses, so heads and chunk lines arrive split.
            let mut c = TcpStream::connect(s.addr).await?;
            c.set_nodelay(true)?;
            let mut at = 0;
            for _ in 0..4 {
                let end = (at + rng.below(stream.len() / 2 + 1)).min(stream.len());
                c.write_all(&stream[at..end]).await?;
                at = end;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            c.write_all(&stream[at..]).await?;
            let mut out = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
            let resp = String::from_utf8_lossy(&out);
            assert!(
                matches!(read, Ok(Ok(_))),
                "round {round}: {read:?}\n{:?}\n---\n{resp}",
                String::from_utf8_lossy(&stream)
            );
            let statuses: Vec<&str> = resp
                .split("HTTP/1.1 ")
                .skip(1)
                .map(|r| r.get(..3).unwrap_or(r))
                .collect();
            let mut want = vec!["200"; n];
            want.push("400");
            assert_eq!(
                statuses,
                want,
                "round {round}: {}\n---\n{resp}",
                String::from_utf8_lossy(&stream)
            );
            served += n;
            assert_eq!(
                b.state.requests.load(Ordering::SeqCst),
                served,
                "round {round}"
            );
        }
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

type ReqFn = dyn Fn(&mut http::request::Parts) -> RequestVerdict + Send + Sync;
type RespFn = dyn Fn(&mut http::response::Parts, SocketAddr) -> ResponseVerdict + Send + Sync;

/// Hooks made of closures, standing in for the DataScript engine.
struct FnHooks {
    on_req: Arc<ReqFn>,
    on_resp: Arc<RespFn>,
    close: bool,
    begun: Arc<std::sync::Mutex<Vec<TxnInfo>>>,
}

impl FnHooks {
    fn new(
        on_req: impl Fn(&mut http::request::Parts) -> RequestVerdict + Send + Sync + 'static,
        on_resp: impl Fn(&mut http::response::Parts, SocketAddr) -> ResponseVerdict
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self {
            on_req: Arc::new(on_req),
            on_resp: Arc::new(on_resp),
            close: false,
            begun: Arc::default(),
        }
    }
}

struct FnTxn {
    on_req: Arc<ReqFn>,
    on_resp: Arc<RespFn>,
    close: bool,
}

impl TxnHooks for FnTxn {
    fn on_request(&mut self, request: &mut http::request::Parts) -> RequestVerdict {
        (self.on_req)(request)
    }

    fn on_response(
        &mut self,
        response: &mut http::response::Parts,
        server: SocketAddr,
    ) -> ResponseVerdict {
        (self.on_resp)(response, server)
    }

    fn log_output(&self) -> Option<String> {
        Some("script said hi".into())
    }

    fn close_connection(&self) -> bool {
        self.close
    }
}

impl HookFactory for FnHooks {
    fn begin(&self, info: TxnInfo) -> Box<dyn TxnHooks> {
        if let Ok(mut b) = self.begun.lock() {
            b.push(info);
        }
        Box::new(FnTxn {
            on_req: self.on_req.clone(),
            on_resp: self.on_resp.clone(),
            close: self.close,
        })
    }
}

fn respond(status: StatusCode, body: &'static str) -> http::Response<Bytes> {
    let mut r = http::Response::new(Bytes::from_static(body.as_bytes()));
    *r.status_mut() = status;
    r
}

#[test]
fn request_hook_can_answer_without_a_backend() -> TestResult {
    run(async {
        let b = backend().await?;
        let hooks = FnHooks::new(
            |req| {
                if req.uri.path() == "/blocked" {
                    RequestVerdict::Respond(respond(StatusCode::FORBIDDEN, "denied by script"))
                } else {
                    req.headers
                        .insert("x-from-script", http::HeaderValue::from_static("yes"));
                    RequestVerdict::Forward(Selection::default())
                }
            },
            |_, _| ResponseVerdict::Continue,
        );
        let begun = hooks.begun.clone();
        let s = start(&[b.addr], Some(Arc::new(hooks)), settings())?;
        let mut c = client(s.addr).await?;
        let (parts, body) = send(&mut c, get("/blocked")?).await?;
        assert_eq!(parts.status, StatusCode::FORBIDDEN);
        assert_eq!(body, "denied by script");
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 0);

        let (parts, body) = send(&mut c, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(body.contains("x-from-script: yes\n"), "{body}");
        let begun = begun.lock().map_err(|_| err("poisoned"))?.clone();
        assert_eq!(begun.len(), 2);
        assert_eq!(begun[0].vs_name, "shop");
        assert_eq!(begun[0].vs_addr, vip());
        assert_eq!(begun[0].client.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn response_hook_edits_or_replaces_the_response() -> TestResult {
    run(async {
        let b = backend().await?;
        let seen_server = Arc::new(std::sync::Mutex::new(None));
        let seen = seen_server.clone();
        let hooks = FnHooks::new(
            |_| RequestVerdict::Forward(Selection::default()),
            move |resp, server| {
                if let Ok(mut s) = seen.lock() {
                    *s = Some(server);
                }
                if resp.status == StatusCode::NOT_FOUND {
                    return ResponseVerdict::Respond(respond(StatusCode::GONE, "replaced"));
                }
                resp.headers.insert(
                    "set-cookie",
                    http::HeaderValue::from_static("JSESSIONID=abc"),
                );
                ResponseVerdict::Continue
            },
        );
        let s = start(&[b.addr], Some(Arc::new(hooks)), settings())?;
        let mut c = client(s.addr).await?;
        let (parts, _) = send(&mut c, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(
            parts.headers.get("set-cookie").map(|v| v.as_bytes()),
            Some(&b"JSESSIONID=abc"[..])
        );
        assert_eq!(
            *seen_server.lock().map_err(|_| err("poisoned"))?,
            Some(b.addr)
        );
        let (parts, body) = send(&mut c, get("/missing")?).await?;
        assert_eq!(parts.status, StatusCode::GONE);
        assert_eq!(body, "replaced");
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn script_selection_pins_a_server_or_fails_with_503() -> TestResult {
    run(async {
        let b1 = backend().await?;
        let b2 = backend().await?;
        let target = b2.addr;
        let stranger = dead_addr().await?;
        let hooks = FnHooks::new(
            move |req| {
                let server = match req.uri.path() {
                    "/headers" => Some(target),
                    _ => Some(stranger),
                };
                RequestVerdict::Forward(Selection {
                    pool: None,
                    server,
                    ..Selection::default()
                })
            },
            |_, _| ResponseVerdict::Continue,
        );
        let s = start(&[b1.addr, b2.addr], Some(Arc::new(hooks)), settings())?;
        let mut c = client(s.addr).await?;
        for _ in 0..4 {
            let (parts, body) = send(&mut c, get("/headers")?).await?;
            assert_eq!(parts.status, StatusCode::OK);
            assert!(body.starts_with(&format!("server={target}\n")), "{body}");
        }
        assert_eq!(b1.state.requests.load(Ordering::SeqCst), 0);
        let (parts, _) = send(&mut c, get("/elsewhere")?).await?;
        assert_eq!(
            parts.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "server not in the pool"
        );
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn unknown_pool_from_script_is_503() -> TestResult {
    run(async {
        let b = backend().await?;
        let hooks = FnHooks::new(
            |_| {
                RequestVerdict::Forward(Selection {
                    pool: Some("nope".into()),
                    server: None,
                    ..Selection::default()
                })
            },
            |_, _| ResponseVerdict::Continue,
        );
        let s = start(&[b.addr], Some(Arc::new(hooks)), settings())?;
        let mut c = client(s.addr).await?;
        let (parts, _) = send(&mut c, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 0);
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn upstream_failures_map_to_502_503_504() -> TestResult {
    run(async {
        let dead = dead_addr().await?;
        let (settings, manual) = manual_settings();
        let settings = ProxySettings {
            upstream_response_timeout: ms(300),
            ..settings
        };
        // Only a dead server: 502.
        let s = start(&[dead], None, settings.clone())?;
        let mut c = client(s.addr).await?;
        let (parts, _) = send(&mut c, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
        assert!(
            s.proxy
                .stats()
                .server(dead)
                .is_some_and(|st| st.connect_failures >= 1)
        );
        // Every server down: 503.
        s.picker.set_up(dead, false);
        let (parts, _) = send(&mut c, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        s.proxy.shutdown(Duration::from_secs(1)).await;

        // A dead server and a live one: the connect failure is retried elsewhere.
        let b = backend().await?;
        let s = start(&[dead, b.addr], None, settings.clone())?;
        let mut c = client(s.addr).await?;
        for _ in 0..4 {
            let (parts, _) = send(&mut c, get("/headers")?).await?;
            assert_eq!(parts.status, StatusCode::OK);
        }
        // A server that does not answer: 504 at the response timeout, not before. The
        // timeout starts before the request leaves, so once the server has it the test may
        // move the clock.
        let seen = b.state.requests.load(Ordering::SeqCst);
        let waiting = tokio::spawn(async move {
            let answer = send(&mut c, get("/gate")?).await?;
            Ok::<_, TestError>((c, answer))
        });
        assert!(requests_seen(&b.state, seen + 1).await);
        manual.advance(ms(299));
        tokio::time::sleep(ms(50)).await;
        assert!(
            !waiting.is_finished(),
            "answered before the response timeout"
        );
        manual.advance(ms(1));
        let (mut c, (parts, _)) = waiting.await??;
        assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
        let (parts, _) = send(&mut c, get("/slow?ms=10")?).await?;
        assert_eq!(
            parts.status,
            StatusCode::OK,
            "the client connection survives a 504"
        );
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn a_script_server_timeout_replaces_the_response_timeout() -> TestResult {
    run(async {
        let b = backend().await?;
        let (settings, manual) = manual_settings();
        let settings = ProxySettings {
            upstream_response_timeout: ms(300),
            ..settings
        };
        // avi.http.set_server_timeout: /short waits 100 ms, /long 1000 ms.
        let hooks = FnHooks::new(
            |req| {
                let timeout = match req.uri.query() {
                    Some("short") => ms(100),
                    _ => ms(1000),
                };
                RequestVerdict::Forward(Selection {
                    response_timeout: Some(timeout),
                    ..Selection::default()
                })
            },
            |_, _| ResponseVerdict::Continue,
        );
        let s = start(&[b.addr], Some(Arc::new(hooks)), settings)?;
        for (query, timeout) in [("short", 100), ("long", 1000)] {
            let mut c = client(s.addr).await?;
            let seen = b.state.requests.load(Ordering::SeqCst);
            let uri = format!("/gate?{query}");
            let waiting = tokio::spawn(async move { send(&mut c, get(&uri)?).await });
            assert!(requests_seen(&b.state, seen + 1).await);
            manual.advance(ms(timeout - 1));
            tokio::time::sleep(ms(50)).await;
            assert!(
                !waiting.is_finished(),
                "{query}: answered before its timeout"
            );
            manual.advance(ms(1));
            let (parts, _) = waiting.await??;
            assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT, "{query}");
        }
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn graceful_drain_finishes_in_flight_requests() -> TestResult {
    run(async {
        let b = backend().await?;
        // The drain deadline never comes: the clock is not moved.
        let (settings, _manual) = manual_settings();
        let s = start(&[b.addr], None, settings)?;
        let mut c = client(s.addr).await?;
        let in_flight = tokio::spawn(async move { send(&mut c, get("/gate")?).await });
        assert!(requests_seen(&b.state, 1).await);
        let mut idle = client(s.addr).await?;
        let (parts, _) = send(&mut idle, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::OK);

        let addr = s.addr;
        let shutdown = tokio::spawn(s.proxy.shutdown(Duration::from_secs(10)));
        assert!(listener_closed(addr).await, "listener closed");
        b.state.gate.notify_one();
        let (parts, body) = in_flight.await??;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, "gate opened");
        let report = shutdown.await?;
        assert_eq!(report.aborted_connections, 0);
        assert!(
            idle.ready().await.is_err(),
            "idle keep-alive connection closed"
        );
        Ok(())
    })
}

#[test]
fn drain_deadline_aborts_stuck_requests() -> TestResult {
    run(async {
        let b = backend().await?;
        let (settings, manual) = manual_settings();
        let s = start(&[b.addr], None, settings)?;
        let mut c = client(s.addr).await?;
        let in_flight = tokio::spawn(async move { send(&mut c, get("/gate")?).await });
        assert!(requests_seen(&b.state, 1).await);
        // The drain deadline is set by the call, before the future runs.
        let shutdown = tokio::spawn(s.proxy.shutdown(ms(200)));
        manual.advance(ms(199));
        tokio::time::sleep(ms(50)).await;
        assert!(!shutdown.is_finished(), "aborted before the drain deadline");
        manual.advance(ms(1));
        let report = shutdown.await?;
        assert_eq!(report.aborted_connections, 1);
        assert!(in_flight.await?.is_err());
        Ok(())
    })
}

#[test]
fn close_connection_from_script_closes_after_the_response() -> TestResult {
    run(async {
        let b = backend().await?;
        let mut hooks = FnHooks::new(
            |_| RequestVerdict::Forward(Selection::default()),
            |_, _| ResponseVerdict::Continue,
        );
        hooks.close = true;
        let s = start(&[b.addr], Some(Arc::new(hooks)), settings())?;
        let resp = raw(s.addr, b"GET /headers HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
        assert!(
            resp.to_ascii_lowercase().contains("connection: close"),
            "{resp}"
        );
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn client_timeouts_close_idle_and_slow_connections() -> TestResult {
    run(async {
        let b = backend().await?;
        let (settings, manual) = manual_settings();
        let settings = ProxySettings {
            header_read_timeout: ms(300),
            client_idle_timeout: ms(800),
            ..settings
        };
        let s = start(&[b.addr], None, settings)?;

        // A partial head is cut at the header timeout, without a response.
        let mut slow = TcpStream::connect(s.addr).await?;
        slow.write_all(b"GET /headers HTTP/1.1\r\nHo").await?;
        assert!(connections_open(&s.proxy, 1).await);
        manual.advance(ms(299));
        assert!(quiet(&mut slow).await, "cut before the header timeout");
        manual.advance(ms(1));
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await??;
        assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
        assert!(connections_open(&s.proxy, 0).await);

        // A keep-alive connection outlives the header timeout while idle, then is closed at
        // the idle timeout.
        let mut c = client(s.addr).await?;
        let (parts, _) = send(&mut c, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(responses_done(&s.proxy, 1).await);
        manual.advance(ms(450));
        let (parts, _) = send(&mut c, get("/headers")?).await?;
        assert_eq!(
            parts.status,
            StatusCode::OK,
            "idle for longer than the header timeout"
        );
        assert!(responses_done(&s.proxy, 2).await);
        manual.advance(ms(799));
        tokio::time::sleep(ms(50)).await;
        assert!(!c.is_closed(), "closed before the idle timeout");
        manual.advance(ms(1));
        let closed = wait_until(Duration::from_secs(5), || c.is_closed()).await;
        assert!(closed, "idle connection closed");
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn reload_swaps_routes_and_listeners_without_dropping_connections() -> TestResult {
    run(async {
        let b1 = backend().await?;
        let b2 = backend().await?;
        let s = start(&[b1.addr], None, settings())?;
        let mut c = client(s.addr).await?;
        let (_, body) = send(&mut c, get("/headers")?).await?;
        assert!(body.starts_with(&format!("server={}\n", b1.addr)), "{body}");

        // Same listener now points at another pool; a second service appears.
        let (mut cfg, _) = config(&[b2.addr], None);
        // Keep the bound port of the first service: its listener is identified by `vip()`.
        let second_listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.virtual_services.push(VirtualServiceSpec {
            name: "blog".into(),
            listen: SocketAddr::from(([127, 0, 0, 2], 0)),
            pool: "web".into(),
            hooks: None,
            tls: None,
        });
        s.proxy.reload(cfg)?;
        let (_, body) = send(&mut c, get("/headers")?).await?;
        assert!(
            body.starts_with(&format!("server={}\n", b2.addr)),
            "same connection, new pool: {body}"
        );
        let blog = s
            .proxy
            .local_addr(SocketAddr::from(([127, 0, 0, 2], 0)))
            .ok_or_else(|| err("blog not listening"))?;
        let mut c2 = client(blog).await?;
        let (parts, _) = send(&mut c2, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::OK);

        // A reload that fails changes nothing.
        let (mut bad, _) = config(&[b2.addr], None);
        bad.virtual_services[0].pool = "missing".into();
        assert!(s.proxy.reload(bad).is_err());
        let (parts, _) = send(&mut c, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::OK);

        // Remove the first service: its listener closes, the other stays.
        let mut only_blog = ProxyConfig {
            virtual_services: vec![VirtualServiceSpec {
                name: "blog".into(),
                listen: SocketAddr::from(([127, 0, 0, 2], 0)),
                pool: "web".into(),
                hooks: None,
                tls: None,
            }],
            pools: vec![],
        };
        only_blog.pools.push(PoolSpec {
            name: "web".into(),
            picker: Arc::new(RoundRobin::new([b2.addr])),
            tls: None,
        });
        s.proxy.reload(only_blog)?;
        let addr = s.addr;
        assert!(listener_closed(addr).await, "removed listener closed");
        assert!(s.proxy.local_addr(second_listen).is_none());
        let (parts, _) = send(&mut c2, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(s.proxy.stats().vs("shop").is_none());
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

/// Collects what the global subscriber writes.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn one_access_log_line_per_request() -> TestResult {
    static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    let capture = CAPTURE.get_or_init(|| {
        let capture = Capture::default();
        let writer = capture.clone();
        // The proxy logs from its own threads, so only a global subscriber sees the lines.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("latch::access=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        capture
    });
    run(async {
        let b = backend().await?;
        let hooks = FnHooks::new(
            |_| RequestVerdict::Forward(Selection::default()),
            |_, _| ResponseVerdict::Continue,
        );
        let s = start(&[b.addr], Some(Arc::new(hooks)), settings())?;
        let mut c = client(s.addr).await?;
        for _ in 0..3 {
            // Basic-Auth user "alice".
            let probe = Request::get("/access-log-probe")
                .header("host", "shop.example")
                .header("authorization", "Basic YWxpY2U6c2VjcmV0")
                .body(Empty::new().boxed_unsync())?;
            let (parts, _) = send(&mut c, probe).await?;
            assert_eq!(parts.status, StatusCode::NOT_FOUND);
        }
        s.proxy.shutdown(Duration::from_secs(1)).await;
        let text = capture
            .0
            .lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .map_err(|_| err("poisoned"))?;
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("/access-log-probe"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let ids: std::collections::HashSet<&str> = lines
            .iter()
            .filter_map(|l| l.split("request_id=").nth(1)?.split(' ').next())
            .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        assert_eq!(ids.len(), 3, "one distinct request id per line: {text}");
        for line in lines {
            assert!(
                line.contains("user=\"alice\"") || line.contains("user=alice"),
                "{line}"
            );
            assert!(line.contains("latch::access"), "{line}");
            assert!(line.contains("vs=\"shop\""), "{line}");
            assert!(line.contains(&format!("server={}", b.addr)), "{line}");
            assert!(line.contains("method=GET"), "{line}");
            assert!(line.contains("status=404"), "{line}");
            assert!(line.contains("script said hi"), "{line}");
            assert!(line.contains("complete=true"), "{line}");
            assert!(
                line.contains("route=\"balanced\"") || line.contains("route=balanced"),
                "{line}"
            );
        }
        Ok(())
    })
}

// ---- module layers ---------------------------------------------------------------------------

/// Every module of the proxy with its source, as compiled.
const MODULE_SOURCES: &[(&str, &str)] = &[
    ("access_log", include_str!("access_log.rs")),
    ("body", include_str!("body.rs")),
    ("clock", include_str!("clock.rs")),
    ("conn", include_str!("conn.rs")),
    ("conn_clock", include_str!("conn_clock.rs")),
    ("error", include_str!("error.rs")),
    ("framing", include_str!("framing.rs")),
    ("handler", include_str!("handler.rs")),
    ("headers", include_str!("headers.rs")),
    ("hooks", include_str!("hooks.rs")),
    ("picker", include_str!("picker.rs")),
    ("route", include_str!("route.rs")),
    ("server", include_str!("server.rs")),
    ("settings", include_str!("settings.rs")),
    ("stats", include_str!("stats.rs")),
    ("tls", include_str!("tls.rs")),
    ("txn", include_str!("txn.rs")),
    ("tunnel", include_str!("tunnel.rs")),
    ("upstream", include_str!("upstream.rs")),
];

/// The layer of each module, from the numbered list in mod.rs's "Module layers" section.
fn documented_layers() -> std::collections::HashMap<String, usize> {
    let mut layers = std::collections::HashMap::new();
    for line in include_str!("mod.rs").lines() {
        let Some((number, rest)) = line.strip_prefix("//! ").and_then(|l| l.split_once(". "))
        else {
            continue;
        };
        let Ok(layer) = number.parse::<usize>() else {
            continue;
        };
        let names = rest.split(':').next().unwrap_or("");
        for name in names.split('`').skip(1).step_by(2) {
            layers.insert(name.to_string(), layer);
        }
    }
    layers
}

/// Modules of the proxy named by `super::` or `crate::proxy::` paths in the code (comments and
/// the tests at the end excluded).
fn used_modules(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or("");
    let mut used = Vec::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for prefix in ["super::", "crate::proxy::"] {
            for (i, _) in line.match_indices(prefix) {
                let after = &line[i + prefix.len()..];
                let items = match after.strip_prefix('{') {
                    Some(list) => list.split('}').next().unwrap_or("").split(',').collect(),
                    None => vec![after],
                };
                for item in items {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    used.push(name);
                }
            }
        }
    }
    used
}

#[test]
fn modules_use_only_lower_layers() {
    let layers = documented_layers();
    let declared: Vec<&str> = include_str!("mod.rs")
        .lines()
        .filter_map(|l| l.trim_start_matches("pub ").strip_prefix("mod "))
        .map(|l| l.trim_end_matches(';'))
        .filter(|m| *m != "tests")
        .collect();
    let listed: Vec<&str> = MODULE_SOURCES.iter().map(|(m, _)| *m).collect();
    assert_eq!(declared.len(), listed.len(), "{declared:?} vs {listed:?}");
    for module in &declared {
        assert!(
            listed.contains(module),
            "{module} missing from MODULE_SOURCES"
        );
        assert!(
            layers.contains_key(*module),
            "{module} has no layer in mod.rs"
        );
    }
    for (module, source) in MODULE_SOURCES {
        let own = layers[*module];
        for used in used_modules(source) {
            if let Some(layer) = layers.get(&used) {
                assert!(
                    *layer < own,
                    "{module} (layer {own}) uses {used} (layer {layer})"
                );
            }
        }
    }
}

// The DataScript events beyond HTTP_REQ and HTTP_RESP, as the proxy drives them.
mod events;
mod timeouts;
