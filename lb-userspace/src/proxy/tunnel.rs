//! An upgraded connection (101 Switching Protocols: WebSocket or any HTTP/1.1 `Upgrade`):
//! once both hyper connections hand over their sockets, bytes are copied both ways until
//! both sides close, or nothing moves either way for the idle timeout.

use std::sync::Arc;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::clock::ProxyClock;
use super::stats::{Gauge, GaugeGuard, VsCounters};

/// Bytes read from one side before they are written to the other.
const CHUNK: usize = 16 * 1024;

/// Tunnels `client` and `server` once both are upgraded; counts itself in `active_tunnels`.
pub(crate) async fn run(
    client: OnUpgrade,
    server: OnUpgrade,
    idle: Duration,
    clock: ProxyClock,
    counters: Arc<VsCounters>,
) {
    let _active = GaugeGuard::new(Gauge::new(counters, |c: &VsCounters| &c.active_tunnels));
    let (client, server) = match clock
        .timeout(idle, async { tokio::try_join!(client, server) })
        .await
    {
        Ok(Ok(both)) => both,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
        Err(_) => return,
    };
    pump(TokioIo::new(client), TokioIo::new(server), idle, &clock).await;
}

/// Copies both ways; a side that ends has its peer's write half shut down.
async fn pump<A, B>(a: A, b: B, idle: Duration, clock: &ProxyClock)
where
    A: AsyncRead + AsyncWrite,
    B: AsyncRead + AsyncWrite,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (mut abuf, mut bbuf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        let deadline = clock.now() + idle;
        tokio::select! {
            r = ar.read(&mut abuf), if a_open => match r {
                Ok(n) if n > 0 => {
                    if !matches!(clock.timeout(idle, bw.write_all(&abuf[..n])).await, Ok(Ok(()))) {
                        return;
                    }
                }
                _ => {
                    a_open = false;
                    let _ = bw.shutdown().await;
                }
            },
            r = br.read(&mut bbuf), if b_open => match r {
                Ok(n) if n > 0 => {
                    if !matches!(clock.timeout(idle, aw.write_all(&bbuf[..n])).await, Ok(Ok(()))) {
                        return;
                    }
                }
                _ => {
                    b_open = false;
                    let _ = aw.shutdown().await;
                }
            },
            () = clock.sleep_until(deadline) => {
                tracing::debug!("closing an upgraded connection: idle timeout");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_go_both_ways_and_an_idle_tunnel_closes() {
        let (client, proxy_a) = tokio::io::duplex(64);
        let (proxy_b, server) = tokio::io::duplex(64);
        let clock = ProxyClock::default();
        let task = tokio::spawn(async move {
            pump(proxy_a, proxy_b, Duration::from_millis(300), &clock).await;
        });
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        let mut buf = [0u8; 5];
        assert!(cw.write_all(b"hello").await.is_ok());
        assert!(sr.read_exact(&mut buf).await.is_ok());
        assert_eq!(&buf, b"hello");
        assert!(sw.write_all(b"world").await.is_ok());
        assert!(cr.read_exact(&mut buf).await.is_ok());
        assert_eq!(&buf, b"world");
        // Nothing moves: the tunnel ends and both sides see the end.
        let ended = tokio::time::timeout(Duration::from_secs(5), task).await;
        assert!(matches!(ended, Ok(Ok(()))));
        assert_eq!(cr.read(&mut buf).await.ok(), Some(0));
    }
}
