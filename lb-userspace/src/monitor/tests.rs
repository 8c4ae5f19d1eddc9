//! Monitors against loopback listeners started and stopped by the tests (no root).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;

use super::*;
use crate::config::{Algorithm, PoolServer, StatusSet};

/// Upper bound on waiting for any one event; probes run every 20 ms, so this is never reached
/// unless the monitor is broken.
const WAIT: Duration = Duration::from_secs(10);

fn listener_on(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    // Accepted-and-closed probe connections leave TIME_WAIT entries on this port; rebinding
    // the same port for "the server came back" needs SO_REUSEADDR.
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket.bind(addr).expect("bind");
    socket.listen(64).expect("listen")
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn pool(name: &str, servers: Vec<SocketAddr>, kind: Option<MonitorKind>) -> PoolConfig {
    PoolConfig {
        name: name.to_owned(),
        algorithm: Algorithm::RoundRobin,
        servers: servers.into_iter().map(PoolServer::new).collect(),
        slow_start: None,
        tls: None,
        health_monitor: kind.map(|kind| HealthMonitor {
            kind,
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(500),
            fall: 2,
            rise: 3,
        }),
    }
}

fn http_kind(path: &str, expect: StatusSet) -> MonitorKind {
    MonitorKind::Http {
        path: path.to_owned(),
        expect_status: expect,
    }
}

type Events = mpsc::UnboundedReceiver<HealthEvent>;

fn start(pools: &[PoolConfig]) -> (MonitorHandle, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = Monitor::start(pools, move |e| {
        let _ = tx.send(e);
    });
    (handle, rx)
}

async fn next_event(rx: &mut Events) -> HealthEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no health event in time")
        .expect("monitor dropped its callback")
}

fn server_status(h: &MonitorHandle, pool: &str, addr: SocketAddr) -> ServerHealthStatus {
    h.snapshot()
        .into_iter()
        .find(|p| p.pool == pool)
        .and_then(|p| p.servers.into_iter().find(|s| s.addr == addr))
        .expect("server in snapshot")
}

#[tokio::test]
async fn tcp_monitor_marks_down_and_up() {
    let addr = free_port();
    let listener = listener_on(addr);
    let (h, mut rx) = start(&[pool("p", vec![addr], Some(MonitorKind::Tcp))]);
    assert!(h.is_up("p", addr), "servers start up");

    drop(listener);
    let down = next_event(&mut rx).await;
    assert_eq!(
        (down.pool.as_str(), down.server, down.up),
        ("p", addr, false)
    );
    assert!(down.reason.contains("connect"), "{}", down.reason);
    assert!(!h.is_up("p", addr));
    let st = server_status(&h, "p", addr);
    assert!(!st.up);
    assert_eq!(st.transitions, 1);
    assert!(st.last_error.is_some_and(|e| e.contains("refused")));

    let _listener = listener_on(addr);
    let up = next_event(&mut rx).await;
    assert!(up.up);
    assert_eq!(up.reason, "3 consecutive successful probes");
    assert!(h.is_up("p", addr));
    assert_eq!(server_status(&h, "p", addr).transitions, 2);
    h.stop();
}

/// A one-connection-at-a-time HTTP server answering every request with `status`.
struct FakeHttp {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    /// Requests answered with a status outside 200-399.
    failures: Arc<AtomicUsize>,
    /// Head of the last request.
    last_head: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeHttp {
    fn start(status: u16) -> Self {
        let addr = free_port();
        let listener = listener_on(addr);
        let status = Arc::new(AtomicU16::new(status));
        let failures = Arc::new(AtomicUsize::new(0));
        let last_head = Arc::new(Mutex::new(String::new()));
        let (s, f, h) = (status.clone(), failures.clone(), last_head.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let mut len = 0;
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                }
                *h.lock() = String::from_utf8_lossy(&buf[..len]).into_owned();
                let code = s.load(Ordering::SeqCst);
                if !(200..400).contains(&code) {
                    f.fetch_add(1, Ordering::SeqCst);
                }
                let reply =
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        Self {
            addr,
            status,
            failures,
            last_head,
            task,
        }
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn http_monitor_wrong_status_is_a_failure() {
    let srv = FakeHttp::start(200);
    let kind = http_kind("/healthz?full=1", StatusSet::default());
    let (h, mut rx) = start(&[pool("web", vec![srv.addr], Some(kind))]);

    srv.status.store(503, Ordering::SeqCst);
    let down = next_event(&mut rx).await;
    assert!(!down.up);
    assert_eq!(down.reason, "status 503, expected 200-399");
    assert!(
        srv.failures.load(Ordering::SeqCst) >= 2,
        "down only after `fall` failed probes"
    );
    let head = srv.last_head.lock().clone();
    assert!(
        head.starts_with("GET /healthz?full=1 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("host: {}\r\n", srv.addr)),
        "{head}"
    );

    srv.status.store(200, Ordering::SeqCst);
    let up = next_event(&mut rx).await;
    assert!(up.up);
    assert!(h.is_up("web", srv.addr));
    let st = server_status(&h, "web", srv.addr);
    assert_eq!(st.transitions, 2);
    assert_eq!(
        st.last_error.as_deref(),
        Some("status 503, expected 200-399"),
        "the last error outlives recovery"
    );
}

#[tokio::test]
async fn http_monitor_honours_expect_status() {
    let srv = FakeHttp::start(404);
    let expect = StatusSet {
        ranges: vec![(404, 404)],
    };
    let (h, mut rx) = start(&[pool("p", vec![srv.addr], Some(http_kind("/", expect)))]);
    // 404 is accepted: wait for several probes, then check no transition happened.
    let deadline = tokio::time::Instant::now() + WAIT;
    while srv.failures.load(Ordering::SeqCst) < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(srv.failures.load(Ordering::SeqCst) >= 4, "probes ran");
    assert!(
        rx.try_recv().is_err(),
        "no transition for an accepted status"
    );
    assert!(h.is_up("p", srv.addr));

    srv.status.store(200, Ordering::SeqCst);
    let down = next_event(&mut rx).await;
    assert_eq!(down.reason, "status 200, expected 404");
}

#[tokio::test]
async fn http_monitor_times_out_a_silent_server() {
    let addr = free_port();
    let listener = listener_on(addr);
    // Accepts and holds connections without answering.
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            held.push(c);
        }
    });
    let mut p = pool("p", vec![addr], Some(http_kind("/", StatusSet::default())));
    if let Some(m) = p.health_monitor.as_mut() {
        m.timeout = Duration::from_millis(50);
    }
    let (_h, mut rx) = start(&[p]);
    let down = next_event(&mut rx).await;
    assert!(!down.up);
    assert_eq!(down.reason, "no answer within 50ms");
    hold.abort();
}

#[tokio::test]
async fn reconfigure_keeps_state_and_unmonitored_servers_are_up() {
    let dead = free_port();
    let (h, mut rx) = start(&[
        pool("p", vec![dead], Some(MonitorKind::Tcp)),
        pool("plain", vec![dead], None),
    ]);
    let down = next_event(&mut rx).await;
    assert_eq!((down.pool.as_str(), down.up), ("p", false));
    assert!(
        h.is_up("plain", dead),
        "a pool without a monitor is always up"
    );
    assert!(h.is_up("unknown", dead));

    // Reload adding a server: the dead one stays down (no fresh start), the new one starts up.
    let alive = free_port();
    let _l = listener_on(alive);
    h.reconfigure(&[
        pool("p", vec![dead, alive], Some(MonitorKind::Tcp)),
        pool("plain", vec![dead], None),
    ]);
    assert!(!h.is_up("p", dead));
    assert!(h.is_up("p", alive));
    let snap = h.snapshot();
    assert_eq!(
        snap.iter().map(|p| p.pool.as_str()).collect::<Vec<_>>(),
        ["p", "plain"]
    );
    assert_eq!(snap[0].servers.len(), 2);
    assert_eq!(snap[0].servers[0].transitions, 1);
    assert!(snap[1].monitor.is_none());

    // Removing the monitor brings the down server back at once, with an event.
    h.reconfigure(&[pool("p", vec![dead, alive], None)]);
    let up = next_event(&mut rx).await;
    assert_eq!((up.server, up.up), (dead, true));
    assert_eq!(up.reason, "health monitor removed");
    assert!(h.is_up("p", dead));
    assert_eq!(h.snapshot().len(), 1, "removed pools leave the snapshot");
}
