//! Server selection for the HTTP proxy: round robin, least connections, consistent hash.
//!
//! A [`PoolBalancer`] is shared by every proxy worker, so picking is lock-free: server state is
//! a pair of atomics per server, and the consistent-hash ring is built once and never mutated.
//! When the pool's server list changes a new balancer is built ([`PoolBalancer::rebuild`]),
//! carrying over the health flags and in-flight counts of the servers that stay.
//! L4 services do not use this: the kernel picks from the maglev table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::config::{Algorithm, PoolConfig};

/// Virtual nodes per server on the consistent-hash ring. 160 is ketama's choice: it keeps the
/// load of each server within a few percent of its share while the ring stays small.
const POINTS_PER_SERVER: usize = 160;

/// Which selection a pool uses. The key a consistent-hash pool hashes (header, cookie, client
/// IP) is extracted by the caller, so this module never sees a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Each up server in turn.
    RoundRobin,
    /// The up server with the fewest requests in flight (ties rotate).
    LeastConnections,
    /// The same key maps to the same server while that server is up; without a key, round robin.
    ConsistentHash,
}

impl From<&Algorithm> for Strategy {
    fn from(a: &Algorithm) -> Self {
        match a {
            Algorithm::RoundRobin => Strategy::RoundRobin,
            Algorithm::LeastConnections => Strategy::LeastConnections,
            Algorithm::ConsistentHash(_) => Strategy::ConsistentHash,
        }
    }
}

#[derive(Debug)]
struct ServerSlot {
    addr: SocketAddr,
    up: AtomicBool,
    active: AtomicUsize,
}

/// A server chosen for one request. It counts as in flight on that server (for least
/// connections and for metrics) until it is dropped, so hold it for the whole exchange.
#[derive(Debug)]
pub struct ServerHandle {
    slot: Arc<ServerSlot>,
}

impl ServerHandle {
    fn new(slot: &Arc<ServerSlot>) -> Self {
        slot.active.fetch_add(1, Ordering::Relaxed);
        Self {
            slot: Arc::clone(slot),
        }
    }

    /// Address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.slot.addr
    }

    /// Whether the server is currently marked up (a script may select a down server).
    pub fn is_up(&self) -> bool {
        self.slot.up.load(Ordering::Relaxed)
    }
}

impl Clone for ServerHandle {
    fn clone(&self) -> Self {
        Self::new(&self.slot)
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.slot.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A server's state, for the admin API and avi.pool.get_servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerStatus {
    /// Address.
    pub addr: SocketAddr,
    /// Marked up by health checking (always true without a monitor).
    pub up: bool,
    /// Requests in flight.
    pub active: usize,
}

/// Selection state of one pool.
#[derive(Debug)]
pub struct PoolBalancer {
    strategy: Strategy,
    servers: Box<[Arc<ServerSlot>]>,
    cursor: AtomicUsize,
    /// Sorted (point, server index); empty unless the strategy is consistent hash.
    ring: Box<[(u64, u32)]>,
}

impl PoolBalancer {
    /// A balancer over `servers` (duplicates are ignored), all marked up.
    pub fn new(strategy: Strategy, servers: &[SocketAddr]) -> Self {
        Self::rebuild(strategy, servers, None)
    }

    /// A balancer for a configured pool.
    pub fn from_config(pool: &PoolConfig) -> Self {
        Self::new(Strategy::from(&pool.algorithm), &pool.servers)
    }

    /// A balancer over `servers` that keeps the up/down flag and in-flight count of every
    /// server also in `previous`, so a reload neither resurrects a down server nor forgets
    /// the requests still running. New servers start up.
    pub fn rebuild(
        strategy: Strategy,
        servers: &[SocketAddr],
        previous: Option<&PoolBalancer>,
    ) -> Self {
        let mut slots: Vec<Arc<ServerSlot>> = Vec::with_capacity(servers.len());
        for &addr in servers {
            if slots.iter().any(|s| s.addr == addr) {
                continue;
            }
            let slot = previous
                .and_then(|p| p.slot(addr))
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(ServerSlot {
                        addr,
                        up: AtomicBool::new(true),
                        active: AtomicUsize::new(0),
                    })
                });
            slots.push(slot);
        }
        let ring = if strategy == Strategy::ConsistentHash {
            build_ring(&slots)
        } else {
            Box::default()
        };
        Self {
            strategy,
            servers: slots.into_boxed_slice(),
            cursor: AtomicUsize::new(0),
            ring,
        }
    }

    fn slot(&self, addr: SocketAddr) -> Option<&Arc<ServerSlot>> {
        self.servers.iter().find(|s| s.addr == addr)
    }

    fn is_up_at(&self, i: usize) -> bool {
        self.servers
            .get(i)
            .is_some_and(|s| s.up.load(Ordering::Relaxed))
    }

    /// The selection strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Chooses an up server, or `None` when every server is down. `hash_key` is only used by
    /// consistent hash; a consistent-hash pool without a key (header or cookie absent) falls
    /// back to round robin.
    pub fn pick(&self, hash_key: Option<&[u8]>) -> Option<ServerHandle> {
        let index = match (self.strategy, hash_key) {
            (Strategy::ConsistentHash, Some(key)) => self.pick_hash(key),
            (Strategy::LeastConnections, _) => self.pick_least(),
            _ => self.pick_round_robin(),
        }?;
        self.servers.get(index).map(ServerHandle::new)
    }

    /// A handle on a specific server regardless of its state (avi.pool.select with a server).
    pub fn get(&self, addr: SocketAddr) -> Option<ServerHandle> {
        self.slot(addr).map(ServerHandle::new)
    }

    /// Counts a request as in flight on `addr` until [`PoolBalancer::finished`] (for callers
    /// that cannot hold a [`ServerHandle`] across their request, such as the proxy).
    pub fn started(&self, addr: SocketAddr) {
        if let Some(s) = self.slot(addr) {
            s.active.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends what [`PoolBalancer::started`] began.
    pub fn finished(&self, addr: SocketAddr) {
        if let Some(s) = self.slot(addr) {
            // Saturating: a reload may hand a fresh slot the end of an older request.
            let _ = s
                .active
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Marks a server up or down; returns false if the pool has no such server.
    pub fn set_up(&self, addr: SocketAddr, up: bool) -> bool {
        match self.slot(addr) {
            Some(s) => {
                s.up.store(up, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Whether a server is up; `None` if the pool has no such server.
    pub fn is_up(&self, addr: SocketAddr) -> Option<bool> {
        self.slot(addr).map(|s| s.up.load(Ordering::Relaxed))
    }

    /// Every server's state, in configured order.
    pub fn servers(&self) -> Vec<ServerStatus> {
        self.servers
            .iter()
            .map(|s| ServerStatus {
                addr: s.addr,
                up: s.up.load(Ordering::Relaxed),
                active: s.active.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// (up, total) servers, as avi.pool.get_servers returns.
    pub fn up_count(&self) -> (usize, usize) {
        let up = (0..self.servers.len())
            .filter(|&i| self.is_up_at(i))
            .count();
        (up, self.servers.len())
    }

    /// Advances a shared cursor past down servers, so each up server gets one turn per cycle
    /// even when its neighbour is down (scanning forward from a fixed slot would give the
    /// server after a down one a double share).
    fn pick_round_robin(&self) -> Option<usize> {
        let n = self.servers.len();
        for _ in 0..n {
            let i = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
            if self.is_up_at(i) {
                return Some(i);
            }
        }
        None
    }

    fn pick_least(&self) -> Option<usize> {
        let n = self.servers.len();
        if n == 0 {
            return None;
        }
        // Start the scan at a rotating offset so ties spread instead of piling on server 0.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(s) = self.servers.get(i) else {
                continue;
            };
            if !s.up.load(Ordering::Relaxed) {
                continue;
            }
            let active = s.active.load(Ordering::Relaxed);
            if best.is_none_or(|(_, b)| active < b) {
                best = Some((i, active));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Walks the ring clockwise from the key's point to the first up server: a down server's
    /// keys spread over the others and every other key stays where it was.
    fn pick_hash(&self, key: &[u8]) -> Option<usize> {
        if self.ring.is_empty() {
            return None;
        }
        let h = hash64(key);
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let len = self.ring.len();
        // Each server owns POINTS_PER_SERVER points, so if none of the first len points is up
        // nothing is; the bound keeps a fully-down pool from spinning.
        (0..len)
            .filter_map(|k| self.ring.get((start + k) % len))
            .map(|&(_, i)| i as usize)
            .find(|&i| self.is_up_at(i))
    }
}

fn build_ring(slots: &[Arc<ServerSlot>]) -> Box<[(u64, u32)]> {
    let mut ring = Vec::with_capacity(slots.len() * POINTS_PER_SERVER);
    for (i, s) in slots.iter().enumerate() {
        let Ok(i) = u32::try_from(i) else { break };
        for p in 0..POINTS_PER_SERVER {
            // Points depend only on the address, so adding or removing another server
            // leaves this server's points, and hence its keys, in place.
            ring.push((hash64(format!("{}#{p}", s.addr).as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

/// FNV-1a followed by murmur3's 64-bit finalizer: stable across processes, hosts and Rust
/// versions (unlike `DefaultHasher`), so every load balancer maps a key to the same server.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h = lb_common::fnv::fnv1a_64(data);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn addrs(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([192, 0, 2, 11 + i as u8], 8080)))
            .collect()
    }

    fn count(
        b: &PoolBalancer,
        picks: usize,
        key: impl Fn(usize) -> Option<Vec<u8>>,
    ) -> HashMap<SocketAddr, usize> {
        let mut m = HashMap::new();
        for i in 0..picks {
            let k = key(i);
            let h = b.pick(k.as_deref()).expect("a server is up");
            *m.entry(h.addr()).or_default() += 1;
        }
        m
    }

    #[test]
    fn round_robin_is_even() {
        let s = addrs(3);
        let b = PoolBalancer::new(Strategy::RoundRobin, &s);
        let c = count(&b, 300, |_| None);
        for a in &s {
            assert_eq!(c[a], 100, "{c:?}");
        }
    }

    #[test]
    fn round_robin_skips_down_servers_evenly() {
        let s = addrs(3);
        let b = PoolBalancer::new(Strategy::RoundRobin, &s);
        assert!(b.set_up(s[1], false));
        let c = count(&b, 300, |_| None);
        assert_eq!(c.get(&s[1]), None);
        assert_eq!((c[&s[0]], c[&s[2]]), (150, 150));
        assert_eq!(b.up_count(), (2, 3));
    }

    #[test]
    fn none_when_all_down() {
        let s = addrs(3);
        for strategy in [
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::ConsistentHash,
        ] {
            let b = PoolBalancer::new(strategy, &s);
            for a in &s {
                b.set_up(*a, false);
            }
            assert!(b.pick(Some(b"k")).is_none(), "{strategy:?}");
            assert!(b.pick(None).is_none(), "{strategy:?}");
            b.set_up(s[2], true);
            assert_eq!(
                b.pick(Some(b"k")).map(|h| h.addr()),
                Some(s[2]),
                "{strategy:?}"
            );
        }
        let empty = PoolBalancer::new(Strategy::ConsistentHash, &[]);
        assert!(empty.pick(Some(b"k")).is_none());
        assert!(
            PoolBalancer::new(Strategy::LeastConnections, &[])
                .pick(None)
                .is_none()
        );
    }

    #[test]
    fn unknown_server() {
        let b = PoolBalancer::new(Strategy::RoundRobin, &addrs(2));
        let other = SocketAddr::from(([192, 0, 2, 99], 80));
        assert!(!b.set_up(other, false));
        assert_eq!(b.is_up(other), None);
        assert!(b.get(other).is_none());
    }

    #[test]
    fn least_connections_prefers_the_idlest() {
        let s = addrs(3);
        let b = PoolBalancer::new(Strategy::LeastConnections, &s);
        let _a1 = b.get(s[0]).expect("s0");
        let _a2 = b.get(s[0]).expect("s0");
        let _b1 = b.get(s[1]).expect("s1");
        let p = b.pick(None).expect("pick");
        assert_eq!(p.addr(), s[2]);
        // Now s1 and s2 have one each, s0 two: the next pick is s1 or s2, never s0.
        let q = b.pick(None).expect("pick");
        assert_ne!(q.addr(), s[0]);
        let active: Vec<_> = b.servers().iter().map(|st| st.active).collect();
        let expected = if q.addr() == s[1] {
            [2, 2, 1]
        } else {
            [2, 1, 2]
        };
        assert_eq!(active, expected);
        drop((p, q));
        assert_eq!(b.servers().iter().map(|st| st.active).sum::<usize>(), 3);
    }

    #[test]
    fn least_connections_skips_down_and_spreads_ties() {
        let s = addrs(3);
        let b = PoolBalancer::new(Strategy::LeastConnections, &s);
        b.set_up(s[2], false);
        // Handles dropped at once: every pick is a tie, which must rotate over up servers.
        let c = count(&b, 100, |_| None);
        assert_eq!(c.get(&s[2]), None);
        assert!(c[&s[0]] >= 30 && c[&s[1]] >= 30, "{c:?}");
    }

    #[test]
    fn handles_count_in_flight_until_dropped() {
        let s = addrs(1);
        let b = PoolBalancer::new(Strategy::RoundRobin, &s);
        let h = b.pick(None).expect("pick");
        let h2 = h.clone();
        assert_eq!(b.servers()[0].active, 2);
        drop(h);
        assert_eq!(b.servers()[0].active, 1);
        drop(h2);
        assert_eq!(b.servers()[0].active, 0);
    }

    fn key(i: usize) -> Option<Vec<u8>> {
        Some(format!("session-{i}").into_bytes())
    }

    #[test]
    fn consistent_hash_is_stable_and_spread() {
        let s = addrs(4);
        let b = PoolBalancer::new(Strategy::ConsistentHash, &s);
        for i in 0..100 {
            let k = key(i);
            let first = b.pick(k.as_deref()).map(|h| h.addr());
            assert_eq!(b.pick(k.as_deref()).map(|h| h.addr()), first);
        }
        let c = count(&b, 40_000, key);
        for a in &s {
            let n = c.get(a).copied().unwrap_or(0);
            assert!((7_000..=13_000).contains(&n), "{a}: {n} of 40000: {c:?}");
        }
        // Another balancer over the same servers (another host, or after a restart) agrees.
        let b2 = PoolBalancer::new(Strategy::ConsistentHash, &s);
        for i in 0..1000 {
            let k = key(i);
            assert_eq!(
                b.pick(k.as_deref()).map(|h| h.addr()),
                b2.pick(k.as_deref()).map(|h| h.addr())
            );
        }
    }

    fn assignment(b: &PoolBalancer, keys: usize) -> Vec<SocketAddr> {
        (0..keys)
            .map(|i| b.pick(key(i).as_deref()).expect("pick").addr())
            .collect()
    }

    #[test]
    fn consistent_hash_down_server_moves_only_its_keys() {
        let s = addrs(5);
        let b = PoolBalancer::new(Strategy::ConsistentHash, &s);
        let before = assignment(&b, 5000);
        b.set_up(s[3], false);
        let after = assignment(&b, 5000);
        let mut moved = 0;
        for (x, y) in before.iter().zip(&after) {
            if *x == s[3] {
                assert_ne!(*y, s[3]);
                moved += 1;
            } else {
                assert_eq!(x, y, "a key not on the down server moved");
            }
        }
        assert!(moved > 500, "the down server owned {moved} of 5000 keys");
        b.set_up(s[3], true);
        assert_eq!(
            assignment(&b, 5000),
            before,
            "keys return when the server comes back"
        );
    }

    #[test]
    fn consistent_hash_removed_server_moves_only_its_keys() {
        let s = addrs(5);
        let before = assignment(&PoolBalancer::new(Strategy::ConsistentHash, &s), 5000);
        let fewer: Vec<_> = s.iter().copied().filter(|a| *a != s[1]).collect();
        let after = assignment(&PoolBalancer::new(Strategy::ConsistentHash, &fewer), 5000);
        for (x, y) in before.iter().zip(&after) {
            if *x != s[1] {
                assert_eq!(x, y);
            }
        }
    }

    #[test]
    fn consistent_hash_without_key_round_robins() {
        let s = addrs(2);
        let b = PoolBalancer::new(Strategy::ConsistentHash, &s);
        let c = count(&b, 10, |_| None);
        assert_eq!((c[&s[0]], c[&s[1]]), (5, 5));
    }

    #[test]
    fn rebuild_keeps_state_of_remaining_servers() {
        let s = addrs(3);
        let old = PoolBalancer::new(Strategy::RoundRobin, &s);
        old.set_up(s[0], false);
        let held = old.get(s[1]).expect("s1");
        let new_servers = [s[0], s[1], SocketAddr::from(([192, 0, 2, 20], 8080))];
        let new = PoolBalancer::rebuild(Strategy::LeastConnections, &new_servers, Some(&old));
        let st = new.servers();
        assert_eq!(st.iter().map(|x| x.addr).collect::<Vec<_>>(), new_servers);
        assert_eq!(
            st.iter().map(|x| x.up).collect::<Vec<_>>(),
            [false, true, true]
        );
        assert_eq!(st.iter().map(|x| x.active).collect::<Vec<_>>(), [0, 1, 0]);
        drop(held);
        assert_eq!(new.servers()[1].active, 0);
    }

    #[test]
    fn concurrent_picks_balance_counts() {
        let b = Arc::new(PoolBalancer::new(Strategy::LeastConnections, &addrs(3)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let h = b.pick(None);
                        assert!(h.is_some());
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        assert!(b.servers().iter().all(|s| s.active == 0));
    }

    #[test]
    fn from_config_uses_the_pool_algorithm() {
        let pool = PoolConfig {
            name: "p".into(),
            algorithm: Algorithm::ConsistentHash(crate::config::HashKey::ClientIp),
            servers: addrs(2),
            health_monitor: None,
        };
        let b = PoolBalancer::from_config(&pool);
        assert_eq!(b.strategy(), Strategy::ConsistentHash);
        assert_eq!(b.up_count(), (2, 2));
    }
}
