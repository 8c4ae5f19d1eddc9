//! Traffic helpers for tests, bounded in time. The blocking functions build their own small
//! runtime, so call them from plain threads (such as inside [`crate::Netns::run`]), not from
//! inside an async runtime; async code uses [`http_request_async`].

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::body::{AnyBody, empty, full, repeat};
use crate::error::{Error, Result, io};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Response bodies are counted in full but only this much is kept in memory.
pub const BODY_KEEP: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub enum RequestBody {
    Empty,
    Bytes(Bytes),
    /// `n` bytes of `x`, streamed.
    Repeat(u64),
}

impl RequestBody {
    fn into_body(self) -> AnyBody {
        match self {
            Self::Empty => empty(),
            Self::Bytes(b) => full(b),
            Self::Repeat(n) => repeat(n),
        }
    }
}

/// A response with the test server's headers decoded.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// `X-Backend`: which backend answered.
    pub backend: Option<String>,
    /// `X-Seen-Client`: the client address the backend saw (NAT vs. proxy vs. DSR checks).
    pub seen_client: Option<SocketAddr>,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The first [`BODY_KEEP`] bytes of the body.
    pub body: Bytes,
    /// The full body length received.
    pub body_len: u64,
    /// The client's local address for this connection.
    pub local_addr: Option<SocketAddr>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name` (case-insensitive), e.g. several `Set-Cookie`.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of cookie `name` from the `Set-Cookie` headers.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.header_all("set-cookie").into_iter().find_map(|c| {
            let first = c.split(';').next()?;
            let (k, v) = first.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }
}

async fn connect(addr: SocketAddr) -> Result<(SendRequest<AnyBody>, Option<SocketAddr>)> {
    connect_from(None, addr).await
}

/// Connects from source address `from` (any port) when given, else from the routing default.
async fn connect_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
) -> Result<(SendRequest<AnyBody>, Option<SocketAddr>)> {
    let stream = match from {
        None => tokio::net::TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(io("TCP socket"))?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(io(format!("bind {ip}")))?;
            socket.connect(addr).await
        }
    }
    .map_err(io(format!("connect {addr}")))?;
    let local = stream.local_addr().ok();
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| Error::Http { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "client connection ended with error");
        }
    });
    Ok((sender, local))
}

async fn send(
    sender: &mut SendRequest<AnyBody>,
    addr: SocketAddr,
    local: Option<SocketAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: RequestBody,
) -> Result<Response> {
    let mut builder = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        builder = builder.header("host", addr.to_string());
    }
    if let RequestBody::Repeat(n) = &body {
        builder = builder.header("content-length", n.to_string());
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder
        .body(body.into_body())
        .map_err(|e| Error::Protocol {
            addr,
            what: format!("cannot build request: {e}"),
        })?;
    sender
        .ready()
        .await
        .map_err(|source| Error::Http { addr, source })?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|source| Error::Http { addr, source })?;
    let (parts, mut incoming) = resp.into_parts();
    let mut kept = Vec::new();
    let mut body_len: u64 = 0;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|source| Error::Http { addr, source })?;
        if let Some(data) = frame.data_ref() {
            body_len += data.len() as u64;
            let room = BODY_KEEP.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    Ok(Response {
        status: parts.status.as_u16(),
        backend: find("x-backend"),
        seen_client: find("x-seen-client").and_then(|v| v.parse().ok()),
        headers,
        body: Bytes::from(kept),
        body_len,
        local_addr: local,
    })
}

/// One request on a fresh connection, all of it (connect included) within `timeout`.
pub async fn http_request_async(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: RequestBody,
    timeout: Duration,
) -> Result<Response> {
    let work = async {
        let (mut sender, local) = connect(addr).await?;
        send(&mut sender, addr, local, method, path, headers, body).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("{method} http://{addr}{path}"),
            after: timeout,
        })?
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("build client runtime"))
}

/// Blocking [`http_request_async`].
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: RequestBody,
    timeout: Duration,
) -> Result<Response> {
    runtime()?.block_on(http_request_async(
        addr, method, path, headers, body, timeout,
    ))
}

/// `GET path` on a fresh connection, bounded by [`DEFAULT_TIMEOUT`].
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    http_request(
        addr,
        "GET",
        path,
        headers,
        RequestBody::Empty,
        DEFAULT_TIMEOUT,
    )
}

/// `GET path` on a fresh connection from source address `from`, bounded by [`DEFAULT_TIMEOUT`].
pub fn http_get_from(from: std::net::IpAddr, addr: SocketAddr, path: &str) -> Result<Response> {
    runtime()?.block_on(async {
        let work = async {
            let (mut sender, local) = connect_from(Some(from), addr).await?;
            send(
                &mut sender,
                addr,
                local,
                "GET",
                path,
                &[],
                RequestBody::Empty,
            )
            .await
        };
        tokio::time::timeout(DEFAULT_TIMEOUT, work)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("GET http://{addr}{path} from {from}"),
                after: DEFAULT_TIMEOUT,
            })?
    })
}

/// Downloads `/download?bytes=n` and returns how many body bytes arrived.
pub fn http_download(addr: SocketAddr, n: u64, timeout: Duration) -> Result<u64> {
    let path = format!("/download?bytes={n}");
    let r = http_request(addr, "GET", &path, &[], RequestBody::Empty, timeout)?;
    Ok(r.body_len)
}

/// Uploads `n` bytes to `/upload` and returns the count the server reported receiving.
pub fn http_upload(addr: SocketAddr, n: u64, timeout: Duration) -> Result<u64> {
    let r = http_request(
        addr,
        "POST",
        "/upload",
        &[],
        RequestBody::Repeat(n),
        timeout,
    )?;
    r.header("x-received-bytes")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Protocol {
            addr,
            what: format!("no X-Received-Bytes in {} response", r.status),
        })
}

/// A keep-alive HTTP/1.1 connection for several requests over one TCP connection (e.g. to
/// check that a flow stays on one backend). Every request is bounded by the given timeout.
#[derive(Debug)]
pub struct HttpConn {
    rt: tokio::runtime::Runtime,
    sender: SendRequest<AnyBody>,
    addr: SocketAddr,
    local: Option<SocketAddr>,
    timeout: Duration,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self> {
        Self::connect_with(None, addr, timeout)
    }

    /// A connection from source address `from` (any port).
    pub fn connect_from(
        from: std::net::IpAddr,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Self> {
        Self::connect_with(Some(from), addr, timeout)
    }

    fn connect_with(
        from: Option<std::net::IpAddr>,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Self> {
        let rt = runtime()?;
        let (sender, local) = rt
            .block_on(async { tokio::time::timeout(timeout, connect_from(from, addr)).await })
            .map_err(|_| Error::Timeout {
                what: format!("connect {addr}"),
                after: timeout,
            })??;
        Ok(Self {
            rt,
            sender,
            addr,
            local,
            timeout,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: RequestBody,
    ) -> Result<Response> {
        let (addr, local, timeout) = (self.addr, self.local, self.timeout);
        let sender = &mut self.sender;
        self.rt
            .block_on(async {
                tokio::time::timeout(
                    timeout,
                    send(sender, addr, local, method, path, headers, body),
                )
                .await
            })
            .map_err(|_| Error::Timeout {
                what: format!("{method} http://{addr}{path} on a kept-alive connection"),
                after: timeout,
            })?
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
        self.request("GET", path, headers, RequestBody::Empty)
    }
}

/// A UDP reply: its text and who sent it.
#[derive(Debug, Clone)]
pub struct UdpReply {
    pub text: String,
    pub from: SocketAddr,
    /// The local address the request left from.
    pub local_addr: SocketAddr,
}

impl UdpReply {
    /// The answering backend's name (first word of the test server's reply).
    pub fn backend(&self) -> Option<&str> {
        self.text.split_whitespace().next()
    }
    /// The client address the backend saw (second word).
    pub fn seen_client(&self) -> Option<SocketAddr> {
        self.text.split_whitespace().nth(1)?.parse().ok()
    }
}

/// Sends one datagram from a fresh socket and waits up to `timeout` for one reply.
pub fn udp_roundtrip(addr: SocketAddr, payload: &[u8], timeout: Duration) -> Result<UdpReply> {
    // A socket of the target's address family (an IPv4 one cannot send to IPv6).
    let any: std::net::IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let sock = UdpSocket::bind((any, 0)).map_err(io("bind UDP client"))?;
    udp_roundtrip_on(&sock, addr, payload, timeout)
}

/// [`udp_roundtrip`] on a given socket (to reuse one source port across datagrams).
pub fn udp_roundtrip_on(
    sock: &UdpSocket,
    addr: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<UdpReply> {
    sock.set_read_timeout(Some(timeout))
        .map_err(io("UDP read timeout"))?;
    sock.send_to(payload, addr)
        .map_err(io(format!("UDP send to {addr}")))?;
    let local_addr = sock.local_addr().map_err(io("UDP local_addr"))?;
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Ok(UdpReply {
            text: String::from_utf8_lossy(&buf[..n]).into_owned(),
            from,
            local_addr,
        }),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(Error::Timeout {
                what: format!("UDP reply from {addr}"),
                after: timeout,
            })
        }
        Err(e) => Err(Error::Io {
            context: format!("UDP receive from {addr}"),
            source: e,
        }),
    }
}

/// A WebSocket client (tungstenite, blocking) on a plain TCP connection.
pub struct WsClient {
    socket: tungstenite::WebSocket<std::net::TcpStream>,
}

fn ws_err(addr: SocketAddr) -> impl Fn(tungstenite::Error) -> Error {
    move |e| Error::Protocol {
        addr,
        what: format!("websocket: {e}"),
    }
}

impl WsClient {
    /// Opens `ws://addr{path}` (the handshake done), every read bounded by `timeout`.
    pub fn connect(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Self> {
        let stream = std::net::TcpStream::connect_timeout(&addr, timeout)
            .map_err(io(format!("connect {addr}")))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(io("set_read_timeout"))?;
        let url = format!("ws://{addr}{path}");
        let (socket, _) =
            tungstenite::client::client(url.as_str(), stream).map_err(|e| Error::Protocol {
                addr,
                what: format!("websocket handshake: {e}"),
            })?;
        Ok(Self { socket })
    }

    /// The next text message.
    pub fn recv(&mut self) -> Result<String> {
        let addr = self.peer();
        loop {
            match self.socket.read().map_err(ws_err(addr))? {
                tungstenite::Message::Text(t) => return Ok(t.to_string()),
                tungstenite::Message::Close(_) => {
                    return Err(Error::Protocol {
                        addr,
                        what: "websocket closed".into(),
                    });
                }
                _ => {}
            }
        }
    }

    /// Sends a text message and returns the next text message.
    pub fn echo(&mut self, text: &str) -> Result<String> {
        let addr = self.peer();
        self.socket
            .send(tungstenite::Message::text(text))
            .map_err(ws_err(addr))?;
        self.recv()
    }

    /// Closes the WebSocket (best effort).
    pub fn close(mut self) {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
    }

    fn peer(&self) -> SocketAddr {
        self.socket
            .get_ref()
            .peer_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, &str)]) -> Response {
        Response {
            status: 200,
            backend: None,
            seen_client: None,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Bytes::new(),
            body_len: 0,
            local_addr: None,
        }
    }

    #[test]
    fn set_cookie_picks_the_named_cookie_among_several() {
        let r = resp(&[
            ("set-cookie", "other=1; Path=/"),
            ("Set-Cookie", "JSESSIONID=b2-7; Path=/; HttpOnly"),
        ]);
        assert_eq!(r.set_cookie("JSESSIONID").as_deref(), Some("b2-7"));
        assert_eq!(r.set_cookie("other").as_deref(), Some("1"));
        assert_eq!(r.set_cookie("missing"), None);
        assert_eq!(r.header("SET-COOKIE"), Some("other=1; Path=/"));
    }

    #[test]
    fn udp_reply_words_decode() {
        let r = UdpReply {
            text: "b3 203.0.113.2:4000".into(),
            from: SocketAddr::from(([192, 0, 2, 13], 9000)),
            local_addr: SocketAddr::from(([203, 0, 113, 2], 4000)),
        };
        assert_eq!(r.backend(), Some("b3"));
        assert_eq!(
            r.seen_client(),
            Some(SocketAddr::from(([203, 0, 113, 2], 4000)))
        );
    }
}
