//! Per-worker pools of keep-alive HTTP/1.1 connections to servers.
//!
//! Our own pool rather than hyper-util's legacy client because the proxy must know whether a
//! failure happened while connecting (then another server may be tried with the untouched
//! request) or after the request left (then it must not be replayed).

use super::ConfigMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::RequestBody;
use super::clock::ProxyClock;
use super::settings::{ProxySettings, UpstreamTls};
use super::stats::{Gauge, GaugeGuard, ServerCounters, StatsRegistry};
use rustls::pki_types::ServerName;

pub(crate) type UpstreamSender = SendRequest<RequestBody>;

/// Why no connection to a server could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {server} timed out after {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("connect to {server}: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {server}: {source}")]
    Tls {
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/1.1 handshake with {server}: {source}")]
    Handshake {
        server: SocketAddr,
        source: hyper::Error,
    },
}

/// An upstream connection lent to one response, returned to its pool at end of body.
pub(crate) struct Lent {
    pub pool: Arc<UpstreamPool>,
    pub server: SocketAddr,
    pub sender: UpstreamSender,
    /// The connection speaks TLS (its idle list).
    pub tls: bool,
}

impl Lent {
    /// The response was read to its end: the connection may serve another request.
    pub fn give_back(self) {
        self.pool.checkin((self.server, self.tls), self.sender);
    }
}

/// A connection ready for one request.
pub(crate) struct Checkout {
    pub sender: UpstreamSender,
    /// True when it served an earlier request (the server may have closed it meanwhile).
    pub reused: bool,
}

struct Idle {
    sender: UpstreamSender,
    since: Instant,
}

impl Idle {
    /// Still open and idle for less than `timeout` at `now`.
    fn usable(&self, now: Instant, timeout: Duration) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < timeout
    }
}

/// Idle connections are kept per server and per kind (plain or TLS): one address may be in a
/// plain pool and in a TLS pool.
type IdleKey = (SocketAddr, bool);

pub(crate) struct UpstreamPool {
    idle: Mutex<ConfigMap<IdleKey, Vec<Idle>>>,
    stats: Arc<StatsRegistry>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    clock: ProxyClock,
}

impl UpstreamPool {
    /// An empty pool with the upstream limits of `settings`.
    pub fn new(stats: Arc<StatsRegistry>, settings: &ProxySettings) -> Self {
        Self {
            idle: Mutex::new(ConfigMap::default()),
            stats,
            connect_timeout: settings.upstream_connect_timeout,
            idle_timeout: settings.upstream_idle_timeout,
            max_idle: settings.max_idle_per_server,
            clock: settings.clock.clone(),
        }
    }

    /// A pooled connection to `server` if one is alive, else a new one (always new if `fresh`).
    pub async fn checkout(
        &self,
        server: SocketAddr,
        tls: Option<&UpstreamTls>,
        fresh: bool,
    ) -> Result<Checkout, ConnectError> {
        if !fresh {
            while let Some(mut sender) = self.take_idle((server, tls.is_some())) {
                if sender.is_ready() {
                    return Ok(Checkout {
                        sender,
                        reused: true,
                    });
                }
                // Just returned: the connection task may not have gone idle yet.
                if let Ok(Ok(())) = self
                    .clock
                    .timeout(self.connect_timeout, sender.ready())
                    .await
                {
                    return Ok(Checkout {
                        sender,
                        reused: true,
                    });
                }
            }
        }
        // Boxed: connecting (with its TLS handshake) is a future of several kilobytes, and
        // an unboxed one would make every request's future that large, pooled or not; the
        // request future is moved (copied) whole when hyper takes it, so its size is paid
        // on every request (measured: the request handler's future went from 7.9 to 4.6 kB,
        // about 0.3 µs of CPU less per pooled request).
        let sender = Box::pin(self.connect(server, tls)).await.inspect_err(|_| {
            self.stats
                .server(server)
                .connect_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })?;
        Ok(Checkout {
            sender,
            reused: false,
        })
    }

    fn take_idle(&self, server: IdleKey) -> Option<UpstreamSender> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(&server)?;
        let now = self.clock.now();
        while let Some(entry) = list.pop() {
            if entry.usable(now, self.idle_timeout) {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read to the end.
    pub fn checkin(&self, server: IdleKey, sender: UpstreamSender) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock();
        let list = idle.entry(server).or_default();
        if list.len() >= self.max_idle {
            // Drop the oldest: the newest are the least likely to be closed by the server.
            list.remove(0);
        }
        list.push(Idle {
            sender,
            since: self.clock.now(),
        });
    }

    /// Closes connections idle longer than the idle timeout.
    pub fn sweep(&self) {
        let now = self.clock.now();
        let mut idle = self.idle.lock();
        for list in idle.values_mut() {
            list.retain(|e| e.usable(now, self.idle_timeout));
        }
        idle.retain(|_, list| !list.is_empty());
    }

    async fn connect(
        &self,
        server: SocketAddr,
        tls: Option<&UpstreamTls>,
    ) -> Result<UpstreamSender, ConnectError> {
        let stream = match self
            .clock
            .timeout(self.connect_timeout, TcpStream::connect(server))
            .await
        {
            Err(_) => {
                return Err(ConnectError::Timeout {
                    server,
                    timeout: self.connect_timeout,
                });
            }
            Ok(Err(source)) => return Err(ConnectError::Io { server, source }),
            Ok(Ok(s)) => s,
        };
        // Small request heads must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return self.handshake(server, stream).await;
        };
        let name = tls
            .server_name
            .clone()
            .unwrap_or(ServerName::IpAddress(server.ip().into()));
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        match self
            .clock
            .timeout(self.connect_timeout, connector.connect(name, stream))
            .await
        {
            Ok(Ok(stream)) => self.handshake(server, stream).await,
            Ok(Err(source)) => Err(ConnectError::Tls { server, source }),
            Err(_) => Err(ConnectError::Timeout {
                server,
                timeout: self.connect_timeout,
            }),
        }
    }

    /// HTTP/1.1 over a connected stream, its connection task spawned.
    async fn handshake<S>(
        &self,
        server: SocketAddr,
        stream: S,
    ) -> Result<UpstreamSender, ConnectError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { server, source })?;
        let gauge = GaugeGuard::new(Gauge::new(
            self.stats.server(server),
            |c: &ServerCounters| &c.connections,
        ));
        tokio::spawn(async move {
            let _gauge = gauge;
            // An upgraded connection (101) ends here and lives on in the tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%server, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}
