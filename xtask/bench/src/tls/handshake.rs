//! The handshake client: one full TLS handshake per request. wrk cannot be used for this: on a
//! reconnect it reuses its OpenSSL `SSL` object (`SSL_shutdown` + `SSL_clear` keep the
//! session), so every connection after the first resumes (checked against `openssl s_server
//! -www`: 964 session cache hits in 966 handshakes), and h2load does not reconnect at all.
//! Here `connections` threads in the client namespace each loop: TCP connect, a rustls
//! handshake with resumption off and only X25519 offered (as OpenSSL 3.0's clients send),
//! `GET /` with `Connection: close`, read to the end.

use std::{
    io::{Read, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use latch::config::PoolTls;
use latch_tests::Netns;
use rustls::pki_types::ServerName;

use crate::http::wrk::WrkResult;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench.example\r\nConnection: close\r\n\r\n";

/// The client's rustls configuration: latch's pool client (`verify = false`: any
/// certificate, the handshake signature still checked, as wrk's `SSL_VERIFY_NONE`), X25519
/// only, no resumption, ALPN http/1.1.
pub fn client_config() -> Result<Arc<rustls::ClientConfig>> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = PoolTls {
        ca: None,
        server_name: None,
        verify: false,
    }
    .client_config_with(provider)
    .map_err(|e| anyhow!("TLS client: {e}"))?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// One connection, one handshake, one request: true on a 200 answer.
fn one(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, name: &ServerName<'static>) -> bool {
    let go = || -> Result<bool> {
        let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        sock.set_nodelay(true)?;
        let mut conn = rustls::ClientConnection::new(Arc::clone(config), name.clone())?;
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        tls.write_all(REQUEST)?;
        let mut buf = Vec::with_capacity(1024);
        match tls.read_to_end(&mut buf) {
            Ok(_) => {}
            // A close without close_notify after the whole answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
            Err(e) => return Err(e.into()),
        }
        Ok(buf.starts_with(b"HTTP/1.1 200"))
    };
    go().unwrap_or(false)
}

/// The `p`-th percentile (0..=100) of sorted microseconds, in ms.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let i = ((sorted_us.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted_us.get(i).map(|v| f64::from(*v) / 1e3)
}

/// Runs the client from `ns` against `target` for `seconds`.
pub fn run(ns: &Netns, target: SocketAddrV4, connections: u32, seconds: u64) -> Result<WrkResult> {
    let config = client_config()?;
    let name = ServerName::try_from("bench.example").map_err(|e| anyhow!("{e}"))?;
    let addr = SocketAddr::V4(target);
    let (mut lat, errors, elapsed) = ns.try_run(|| {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(seconds);
        let per_thread: Vec<(Vec<u32>, u64)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..connections)
                .map(|_| {
                    let (config, name) = (&config, &name);
                    s.spawn(move || {
                        let (mut lat, mut errors) = (Vec::new(), 0u64);
                        while Instant::now() < deadline && !crate::env::stopped() {
                            let t = Instant::now();
                            if one(addr, config, name) {
                                lat.push(
                                    u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX),
                                );
                            } else {
                                errors += 1;
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                        (lat, errors)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let elapsed = start.elapsed().as_secs_f64();
        let errors = per_thread.iter().map(|(_, e)| e).sum::<u64>();
        let lat: Vec<u32> = per_thread.into_iter().flat_map(|(l, _)| l).collect();
        (lat, errors, elapsed)
    })?;
    lat.sort_unstable();
    let requests = lat.len() as u64;
    Ok(WrkResult {
        requests,
        seconds: elapsed,
        rps: requests as f64 / elapsed.max(1e-9),
        p50_ms: percentile_ms(&lat, 50.0),
        p99_ms: percentile_ms(&lat, 99.0),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_microseconds() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), Some(51.0));
        assert_eq!(percentile_ms(&v, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }

    #[test]
    fn the_client_neither_resumes_nor_offers_more_than_x25519() {
        let c = client_config().expect("config");
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(
            c.crypto_provider()
                .kx_groups
                .iter()
                .map(|g| g.name())
                .collect::<Vec<_>>(),
            vec![rustls::NamedGroup::X25519]
        );
        // Resumption::disabled() stores no sessions: a fresh config's store holds one.
        assert!(format!("{:?}", c.resumption).contains("NoClientSessionStorage"));
    }
}
