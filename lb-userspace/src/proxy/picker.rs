//! The seam to the load-balancing algorithms: the proxy asks a pool's [`ServerPicker`] for a
//! server and tells it when requests start and end (for least-connections).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::hooks::ServerView;

/// What an algorithm may look at to choose a server.
#[derive(Clone, Copy, Debug)]
pub struct PickContext<'a> {
    /// The client's address (consistent hash on client IP).
    pub client: SocketAddr,
    /// Request headers, after the HTTP_REQ scripts (consistent hash on a header or cookie).
    pub headers: &'a http::HeaderMap,
    /// Request target.
    pub uri: &'a http::Uri,
    /// A key a script chose (avi.pool.chash): a consistent-hash pool hashes it instead of
    /// the configured one.
    pub hash_key: Option<&'a [u8]>,
    /// Servers that already failed for this request: do not return them.
    pub exclude: &'a [SocketAddr],
}

/// A pool's load-balancing algorithm together with its servers' health.
pub trait ServerPicker: Send + Sync {
    /// An up server not in `ctx.exclude`, or `None` when there is none.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<SocketAddr>;

    /// Every server of the pool, up or down.
    fn servers(&self) -> Vec<ServerView>;

    /// `Some(up)` for a server of this pool, `None` for a stranger.
    fn server_state(&self, server: SocketAddr) -> Option<bool> {
        self.servers()
            .into_iter()
            .find(|s| s.addr == server)
            .map(|s| s.up)
    }

    /// A request was sent to `server` (least-connections bookkeeping).
    fn request_started(&self, _server: SocketAddr) {}

    /// A request to `server` finished, successfully or not.
    fn request_finished(&self, _server: SocketAddr) {}
}

/// Plain round robin over the up servers; the fallback and the test double.
#[derive(Debug)]
pub struct RoundRobin {
    servers: Vec<(SocketAddr, AtomicBool)>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// All servers start up.
    pub fn new(servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            servers: servers
                .into_iter()
                .map(|s| (s, AtomicBool::new(true)))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Marks `server` up or down; false when it is not in the pool.
    pub fn set_up(&self, server: SocketAddr, up: bool) -> bool {
        match self.servers.iter().find(|(s, _)| *s == server) {
            Some((_, state)) => {
                state.store(up, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

impl ServerPicker for RoundRobin {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<SocketAddr> {
        let n = self.servers.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.servers[(start + i) % n])
            .find(|(s, up)| up.load(Ordering::Relaxed) && !ctx.exclude.contains(s))
            .map(|(s, _)| *s)
    }

    fn servers(&self) -> Vec<ServerView> {
        self.servers
            .iter()
            .map(|(addr, up)| ServerView {
                addr: *addr,
                up: up.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn pick(rr: &RoundRobin, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        let headers = http::HeaderMap::new();
        let uri = http::Uri::from_static("/");
        rr.pick(&PickContext {
            client: addr(1),
            headers: &headers,
            uri: &uri,
            hash_key: None,
            exclude,
        })
    }

    #[test]
    fn round_robin_rotates_and_skips_down_and_excluded() {
        let rr = RoundRobin::new([addr(10), addr(11), addr(12)]);
        let first: Vec<_> = (0..3).filter_map(|_| pick(&rr, &[])).collect();
        assert_eq!(first, vec![addr(10), addr(11), addr(12)]);
        assert!(rr.set_up(addr(11), false));
        let picks: Vec<_> = (0..4).filter_map(|_| pick(&rr, &[addr(12)])).collect();
        assert_eq!(picks, vec![addr(10); 4]);
        assert_eq!(rr.server_state(addr(11)), Some(false));
        assert_eq!(rr.server_state(addr(99)), None);
        assert!(!rr.set_up(addr(99), false));
        rr.set_up(addr(10), false);
        rr.set_up(addr(12), false);
        assert_eq!(pick(&rr, &[]), None);
    }
}
