//! One health probe of one server: the only I/O of the monitor.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use std::sync::Arc;

use crate::config::{MonitorKind, PoolConfig, PoolTls, StatusSet};

/// Why a probe failed; its text is the reason logged and shown by the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer within the monitor's timeout.
    #[error("no answer within {timeout:?}")]
    Timeout {
        /// The monitor's timeout.
        timeout: Duration,
    },
    /// The TLS handshake failed (or the TCP connection under it).
    #[error("tls: {source}")]
    Tls {
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection failed.
    #[error("connect: {source}")]
    Connect {
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed after connecting.
    #[error("http: {source}")]
    Http {
        /// The error.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built (a path the config validator should have refused).
    #[error("bad request for path {path:?}: {message}")]
    Request {
        /// The configured path.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The server answered with a status the monitor does not accept.
    #[error("status {status}, expected {expected}")]
    Status {
        /// The status received.
        status: u16,
        /// The accepted statuses.
        expected: String,
    },
}

/// The accepted statuses as written in the config ("200-399,404").
pub fn format_status_set(set: &StatusSet) -> String {
    set.ranges
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A pool's TLS as the probes speak it: a `tcp` probe then also completes the handshake
/// (certificate checked as the pool's `tls` says), an `http` probe runs over it.
#[derive(Clone)]
pub struct ProbeTls {
    config: Arc<rustls::ClientConfig>,
    tls: PoolTls,
}

impl ProbeTls {
    /// The probes' TLS for `pool`, if it has TLS (a configuration rustls refuses was
    /// already refused by the reload that built the proxy).
    pub fn of(pool: &PoolConfig) -> Option<Self> {
        let tls = pool.tls.clone()?;
        Some(Self {
            config: tls.client_config().ok()?,
            tls,
        })
    }
}

/// Runs one probe of `kind` against `addr`, over TLS with `tls`; the whole probe (connect,
/// handshake, request, status line) must finish within `timeout`.
pub async fn probe(
    kind: &MonitorKind,
    addr: SocketAddr,
    tls: Option<&ProbeTls>,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let work = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { source })?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return match kind {
                MonitorKind::Tcp => Ok(()),
                MonitorKind::Http {
                    path,
                    expect_status,
                } => probe_http(stream, addr, path, expect_status).await,
            };
        };
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(tls.tls.name_for(addr.ip()), stream)
            .await
            .map_err(|source| ProbeError::Tls { source })?;
        match kind {
            MonitorKind::Tcp => Ok(()),
            MonitorKind::Http {
                path,
                expect_status,
            } => probe_http(stream, addr, path, expect_status).await,
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ProbeError::Timeout { timeout })?
}

async fn probe_http<S>(
    stream: S,
    addr: SocketAddr,
    path: &str,
    expect: &StatusSet,
) -> Result<(), ProbeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProbeError::Http { source })?;
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(
            http::header::USER_AGENT,
            concat!("latch-health/", env!("CARGO_PKG_VERSION")),
        )
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Request {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    // The connection is driven here rather than spawned, so nothing outlives the probe: the
    // socket closes when this function returns (only the status line matters, not the body).
    let exchange = sender.send_request(request);
    tokio::pin!(conn);
    tokio::pin!(exchange);
    let response = tokio::select! {
        r = &mut exchange => r,
        c = &mut conn => match c {
            Err(source) => return Err(ProbeError::Http { source }),
            // The connection ended cleanly before answering: the exchange reports why.
            Ok(()) => exchange.await,
        },
    }
    .map_err(|source| ProbeError::Http { source })?;
    let status = response.status().as_u16();
    if expect.contains(status) {
        Ok(())
    } else {
        Err(ProbeError::Status {
            status,
            expected: format_status_set(expect),
        })
    }
}
