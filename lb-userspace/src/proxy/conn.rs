//! One client connection: hyper's HTTP/1.1 server plus our own idle and header timers.
//!
//! hyper's `header_read_timeout` starts as soon as hyper waits for the next request head, so
//! it would also cut idle keep-alive connections at the (short) header timeout. The proxy
//! therefore disables it and runs one watchdog per connection with two phases: idle (waiting
//! for the first byte of a request, `client_idle_timeout`) and head (first byte seen, whole
//! head not yet parsed, `header_read_timeout`). A new connection starts in the head phase, so
//! a client that connects and sends nothing is dropped after the header timeout.
//!
//! A service with TLS first completes the handshake, which must end within
//! `header_read_timeout` too; hyper then reads the decrypted stream.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::conn_clock::{BUSY, ConnClock, IDLE};
use super::framing::RequestGuard;
use super::handler::{ConnInfo, WorkerCtx, handle};
use super::settings::{
    H2_MAX_CONCURRENT_STREAMS, H2_MAX_LOCAL_ERROR_RESETS, H2_MAX_PENDING_ACCEPT_RESETS,
};
use super::stats::{Gauge, GaugeGuard, VsCounters};
use super::tls::TlsInfo;

/// The client stream (TCP or TLS), telling the clock when bytes arrive and showing them to
/// the framing watcher before hyper parses them.
struct TimedIo<S> {
    inner: S,
    /// Set when the connection is upgraded: no more HTTP to watch.
    tunnel: Arc<AtomicBool>,
    clock: Arc<ConnClock>,
    guard: RequestGuard,
    client: SocketAddr,
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let framed = !this.tunnel.load(Ordering::Relaxed);
        if framed && this.guard.owed(buf) {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.clock.on_read();
            if !framed {
                return polled;
            }
            if let Some(refusal) = this.guard.inspect(buf, before) {
                tracing::debug!(client = %this.client, reason = refusal.as_str(),
                    "refusing an ambiguously framed request with 400");
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serves one client connection until it closes, times out, or drains.
pub(crate) async fn serve_conn(
    stream: TcpStream,
    client: SocketAddr,
    listen: SocketAddr,
    ctx: Arc<WorkerCtx>,
    drain: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    // Before the gauge: whoever sees the connection counted sees its timers running.
    let clock = Arc::new(ConnClock::new(ctx.settings.clock.clone()));
    let vs = ctx.table.load().vs(listen).cloned();
    let _active = vs.as_ref().map(|vs| {
        GaugeGuard::new(Gauge::new(vs.counters.clone(), |c: &VsCounters| {
            &c.active_connections
        }))
    });
    let Some(acceptor) = vs.as_ref().and_then(|v| v.tls.clone()) else {
        return serve_http(stream, None, client, listen, clock, ctx, drain).await;
    };
    let settings = &ctx.settings;
    let deadline = settings.clock.now() + settings.header_read_timeout;
    match settings
        .clock
        .timeout_at(deadline, acceptor.accept(stream))
        .await
    {
        Ok(Ok(tls)) => {
            if let Some(vs) = &vs {
                vs.counters
                    .tls_handshakes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let info = Arc::new(TlsInfo::of(tls.get_ref().1));
            if info.alpn.as_deref() == Some("h2") {
                serve_h2(tls, info, client, listen, clock, ctx, drain).await;
            } else {
                serve_http(tls, Some(info), client, listen, clock, ctx, drain).await;
            }
        }
        Ok(Err(e)) => {
            if let Some(vs) = &vs {
                vs.counters
                    .tls_handshake_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::debug!(%client, %listen, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            if let Some(vs) = &vs {
                vs.counters
                    .tls_handshake_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tracing::debug!(%client, %listen, "closing client connection: TLS handshake timeout");
        }
    }
}

/// hyper's HTTP/2 server over a TLS stream that agreed on `h2`: every stream is a transaction
/// with the same hooks as an HTTP/1.1 request. The h2 crate enforces the limits: at most
/// [`H2_MAX_CONCURRENT_STREAMS`] open streams, a header list of at most `max_header_bytes`
/// (CONTINUATION frames count toward it, so a CONTINUATION flood ends in an error, not in
/// memory), and GOAWAY for a client that resets streams faster than they are accepted
/// (rapid reset, CVE-2023-44487) or provokes too many stream errors. The connection closes
/// after `client_idle_timeout` without a byte from the client while no stream is open, and
/// a peer that stops answering pings is dropped.
async fn serve_h2<S>(
    stream: S,
    tls: Arc<TlsInfo>,
    client: SocketAddr,
    listen: SocketAddr,
    clock: Arc<ConnClock>,
    ctx: Arc<WorkerCtx>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let open = Arc::new(AtomicUsize::new(0));
    let info = Arc::new(ConnInfo {
        client,
        listen,
        clock: clock.clone(),
        tls: Some(tls),
        // No HTTP/1.1 framing to watch: the frames are HTTP/2's.
        tunnel: Arc::new(AtomicBool::new(true)),
    });
    let settings = ctx.settings.clone();
    let io = TokioIo::new(TimedIo {
        inner: stream,
        tunnel: info.tunnel.clone(),
        clock: clock.clone(),
        guard: RequestGuard::new(),
        client,
    });
    let service_ctx = ctx.clone();
    let streams = open.clone();
    let service = service_fn(move |req| {
        let (ctx, info, streams) = (service_ctx.clone(), info.clone(), streams.clone());
        async move {
            let _open = StreamGuard::new(streams);
            handle(ctx, info, req).await
        }
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .keep_alive_interval(settings.client_idle_timeout / 2)
        .keep_alive_timeout(settings.header_read_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let seen = clock.snapshot();
        let deadline = settings.clock.now() + settings.client_idle_timeout;
        tokio::select! {
            res = &mut conn => {
                if let Err(e) = res {
                    tracing::debug!(%client, %listen, error = %e, "HTTP/2 client connection ended with an error");
                }
                return;
            }
            Ok(_) = drain.wait_for(|d| *d), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = settings.clock.sleep_until(deadline) => {
                if clock.snapshot() == seen && open.load(Ordering::Relaxed) == 0 && !draining {
                    tracing::debug!(%client, %listen, "closing HTTP/2 client connection: idle");
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// hyper's limit on request headers when none is set (`DEFAULT_MAX_HEADERS` of its HTTP/1
/// role module).
const HYPER_MAX_HEADERS: usize = 100;

/// Counts one open HTTP/2 stream for the idle check.
struct StreamGuard(Arc<AtomicUsize>);

impl StreamGuard {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// hyper's HTTP/1.1 server over `stream` with the idle and header timers.
async fn serve_http<S>(
    stream: S,
    tls: Option<Arc<TlsInfo>>,
    client: SocketAddr,
    listen: SocketAddr,
    clock: Arc<ConnClock>,
    ctx: Arc<WorkerCtx>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tunnel = Arc::new(AtomicBool::new(false));
    let info = Arc::new(ConnInfo {
        client,
        listen,
        clock: clock.clone(),
        tls,
        tunnel: tunnel.clone(),
    });
    let settings = ctx.settings.clone();
    let io = TokioIo::new(TimedIo {
        inner: stream,
        tunnel,
        clock: clock.clone(),
        guard: RequestGuard::new(),
        client,
    });
    let service_ctx = ctx.clone();
    let service = service_fn(move |req| handle(service_ctx.clone(), info.clone(), req));
    let mut builder = http1::Builder::new();
    // `RequestGuard` relies on hyper's defaults for what it does not set here; in particular
    // `ignore_invalid_headers` must stay off.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_header_size(settings.max_header_bytes);
    // Without a count set, hyper parses into a stack array of its default size, 100, which
    // it leaves uninitialised; with one, even 100, it fills a vector of that many slots for
    // every request (about 1,700 instructions per request, callgrind). The limit is the same
    // either way (`proxy::tests::the_header_count_limit_is_exact`).
    if settings.max_headers != HYPER_MAX_HEADERS {
        builder.max_headers(settings.max_headers);
    }
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    // Bounded: every iteration either ends the connection or sleeps at least `recheck`.
    let recheck = settings
        .header_read_timeout
        .min(settings.client_idle_timeout);
    let mut draining = false;
    loop {
        let snap = clock.snapshot();
        let deadline = clock
            .deadline(
                snap,
                settings.client_idle_timeout,
                settings.header_read_timeout,
            )
            .unwrap_or_else(|| settings.clock.now() + recheck);
        tokio::select! {
            res = &mut conn => {
                if let Err(e) = res {
                    tracing::debug!(%client, %listen, error = %e, "client connection ended with an error");
                }
                return;
            }
            // The listener drains: finish the request in flight, then close.
            Ok(_) = drain.wait_for(|d| *d), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = settings.clock.sleep_until(deadline) => {
                if clock.snapshot() == snap && snap & 3 != BUSY {
                    tracing::debug!(%client, %listen, phase = if snap & 3 == IDLE { "idle" } else { "header" },
                        "closing client connection: timeout");
                    return;
                }
            }
        }
    }
}
