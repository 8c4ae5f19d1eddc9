//! A small HTTP/1 client for the admin API: one connection per call, which is all a CLI
//! needs, with the documents of [`super::model`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::model::{
    DeleteView, ErrorView, FlushView, PoolView, ReloadView, ServerChangeRequest, ServerChangeView,
    StatusView, TableEntryView, TableListView, VirtualServiceView,
};

/// Time for ordinary calls (a reload gets [`RELOAD_TIMEOUT`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// A reload compiles every DataScript and reprograms the data plane.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the address (or it does not accept in time).
    #[error("no latch agent answers on {addr}: is `latch run` running? ({reason})")]
    NoAgent {
        /// The admin address.
        addr: SocketAddr,
        /// What the connection attempt said.
        reason: String,
    },
    /// The agent accepted but did not answer in time.
    #[error("the latch agent on {addr} did not answer within {timeout:?}")]
    Timeout {
        /// The admin address.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The HTTP exchange failed.
    #[error("talking to the latch agent on {addr}: {source}")]
    Http {
        /// The admin address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built.
    #[error("bad request {path}: {message}")]
    Request {
        /// Path and query.
        path: String,
        /// Why.
        message: String,
    },
    /// The API answered with an error.
    #[error("{message} (HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// The `error` of the body, or the body itself.
        message: String,
    },
    /// The answer is not the expected document (an agent of another version?).
    #[error("unexpected answer to {path}: {source}")]
    Decode {
        /// Path and query.
        path: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

/// A raw answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl RawResponse {
    fn error(&self) -> ClientError {
        let message = serde_json::from_slice::<ErrorView>(&self.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).trim().to_owned());
        ClientError::Api {
            status: self.status.as_u16(),
            message,
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so a key with `/`, `?`,
/// `%`, `+` or spaces reaches the agent unchanged as one path segment or query value.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode_component(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Where a listener on `addr` is reached from this host: an unspecified address (0.0.0.0,
/// ::) means every local address, so the loopback one is used.
pub fn connect_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// Client of one agent's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: Option<String>,
}

impl AdminClient {
    /// A client of the agent listening on `addr`, sending `token` as bearer token.
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        Self {
            addr: connect_addr(addr),
            token,
        }
    }

    /// The address connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One request; any status is returned as is.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<RawResponse, ClientError> {
        let addr = self.addr;
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::NoAgent {
                addr,
                reason: format!("no connection within {timeout:?}"),
            })?
            .map_err(|e| ClientError::NoAgent {
                addr,
                reason: e.to_string(),
            })?;
        let mut builder = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, addr.to_string())
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("latch-cli/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Request {
                path: path_and_query.to_owned(),
                message: e.to_string(),
            })?;
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|source| ClientError::Http { addr, source })?;
            let call = async {
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|source| ClientError::Http { addr, source })?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|source| ClientError::Http { addr, source })?
                    .to_bytes();
                Ok(RawResponse {
                    status,
                    headers,
                    body,
                })
            };
            // The connection is driven alongside the exchange; neither outlives this call.
            tokio::pin!(conn);
            tokio::pin!(call);
            tokio::select! {
                r = &mut call => r,
                c = &mut conn => match c {
                    Err(source) => Err(ClientError::Http { addr, source }),
                    // Ended cleanly: the exchange has its answer (or its error) already.
                    Ok(()) => call.await,
                },
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout { addr, timeout })?
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        timeout: Duration,
    ) -> Result<(T, RawResponse), ClientError> {
        let raw = self.request(method, path, timeout).await?;
        if !raw.status.is_success() {
            return Err(raw.error());
        }
        let v = serde_json::from_slice(&raw.body).map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })?;
        Ok((v, raw))
    }

    /// `GET /api/v1/status`.
    pub async fn status(&self) -> Result<StatusView, ClientError> {
        Ok(self
            .json(Method::GET, "/api/v1/status", DEFAULT_TIMEOUT)
            .await?
            .0)
    }

    /// `GET /api/v1/virtual-services`.
    pub async fn virtual_services(&self) -> Result<Vec<VirtualServiceView>, ClientError> {
        Ok(self
            .json(Method::GET, "/api/v1/virtual-services", DEFAULT_TIMEOUT)
            .await?
            .0)
    }

    /// `GET /api/v1/pools`.
    pub async fn pools(&self) -> Result<Vec<PoolView>, ClientError> {
        Ok(self
            .json(Method::GET, "/api/v1/pools", DEFAULT_TIMEOUT)
            .await?
            .0)
    }

    /// `GET /api/v1/tables/{vs}`.
    pub async fn table_list(
        &self,
        vs: &str,
        table: Option<&str>,
        prefix: Option<&str>,
        limit: Option<usize>,
    ) -> Result<TableListView, ClientError> {
        let limit = limit.map(|l| l.to_string());
        let path = format!(
            "/api/v1/tables/{}{}",
            encode_component(vs),
            query(&[
                ("table", table),
                ("prefix", prefix),
                ("limit", limit.as_deref())
            ])
        );
        Ok(self.json(Method::GET, &path, DEFAULT_TIMEOUT).await?.0)
    }

    fn entry_path(vs: &str, key: &str, table: Option<&str>) -> String {
        format!(
            "/api/v1/tables/{}/entries/{}{}",
            encode_component(vs),
            encode_component(key),
            query(&[("table", table)])
        )
    }

    /// `GET /api/v1/tables/{vs}/entries/{key}`.
    pub async fn table_get(
        &self,
        vs: &str,
        key: &str,
        table: Option<&str>,
    ) -> Result<TableEntryView, ClientError> {
        let path = Self::entry_path(vs, key, table);
        Ok(self.json(Method::GET, &path, DEFAULT_TIMEOUT).await?.0)
    }

    /// `DELETE /api/v1/tables/{vs}/entries/{key}`.
    pub async fn table_delete(
        &self,
        vs: &str,
        key: &str,
        table: Option<&str>,
    ) -> Result<DeleteView, ClientError> {
        let path = Self::entry_path(vs, key, table);
        Ok(self.json(Method::DELETE, &path, DEFAULT_TIMEOUT).await?.0)
    }

    /// `DELETE /api/v1/tables/{vs}`.
    pub async fn table_flush(
        &self,
        vs: &str,
        table: Option<&str>,
    ) -> Result<FlushView, ClientError> {
        let path = format!(
            "/api/v1/tables/{}{}",
            encode_component(vs),
            query(&[("table", table)])
        );
        Ok(self.json(Method::DELETE, &path, DEFAULT_TIMEOUT).await?.0)
    }

    /// `POST /api/v1/pools/{pool}/servers/{server}?state=...` or `?weight=...`.
    pub async fn set_server(
        &self,
        pool: &str,
        server: &str,
        change: &ServerChangeRequest,
    ) -> Result<ServerChangeView, ClientError> {
        let path = format!(
            "/api/v1/pools/{}/servers/{}{}",
            encode_component(pool),
            encode_component(server),
            query(&[
                ("state", change.state.as_deref()),
                ("weight", change.weight.as_deref())
            ])
        );
        Ok(self.json(Method::POST, &path, DEFAULT_TIMEOUT).await?.0)
    }

    /// `POST /api/v1/reload`; a refused reload is an `Ok` with `applied == false`.
    pub async fn reload(&self) -> Result<ReloadView, ClientError> {
        let path = "/api/v1/reload";
        let raw = self.request(Method::POST, path, RELOAD_TIMEOUT).await?;
        if raw.status.is_success() || raw.status == StatusCode::UNPROCESSABLE_ENTITY {
            serde_json::from_slice(&raw.body).map_err(|source| ClientError::Decode {
                path: path.to_owned(),
                source,
            })
        } else {
            Err(raw.error())
        }
    }

    /// `GET /metrics` (OpenMetrics text).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let raw = self
            .request(Method::GET, "/metrics", DEFAULT_TIMEOUT)
            .await?;
        if !raw.status.is_success() {
            return Err(raw.error());
        }
        Ok(String::from_utf8_lossy(&raw.body).into_owned())
    }
}
