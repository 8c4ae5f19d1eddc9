//! Server selection for the HTTP proxy: weighted round robin, least connections and
//! consistent hash, with backup servers, administrative states and slow start.
//!
//! A [`PoolBalancer`] is shared by every proxy worker. Server state is atomics per server;
//! round robin keeps nginx's smooth weighted round-robin counters under a short lock, and the
//! consistent-hash ring is rebuilt (and swapped) only when an effective weight changes.
//! When the pool's server list changes a new balancer is built ([`PoolBalancer::rebuild`]),
//! carrying over the health flags, states and in-flight counts of the servers that stay.
//! L4 services do not use this: the kernel picks from the maglev table.
//!
//! Which servers take new sessions: those up (health), ready (not drained or in maintenance)
//! and of non-zero effective weight, among the primaries; only when no primary qualifies,
//! the backups that do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use super::levers::{AdminState, WEIGHT_SCALE, full_weight, ramped_weight};
use crate::config::{Algorithm, PoolConfig, PoolServer};

/// Virtual nodes per unit of weight on the consistent-hash ring. 160 is ketama's choice: it
/// keeps the load of each server within a few percent of its share while the ring stays small.
const POINTS_PER_SERVER: usize = 160;
/// Bound on the ring's size: heavier pools get proportionally fewer points per server.
const MAX_RING_POINTS: usize = 1 << 20;

/// Which selection a pool uses. The key a consistent-hash pool hashes (header, cookie, client
/// IP) is extracted by the caller, so this module never sees a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Smooth weighted round robin (nginx's): each server in proportion to its weight,
    /// interleaved.
    RoundRobin,
    /// The server with the fewest requests in flight per unit of weight (ties rotate).
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
    backup: AtomicBool,
    up: AtomicBool,
    admin: AtomicU8,
    /// Weight in force (the configured one or one set at runtime), unscaled.
    weight: AtomicU32,
    /// What picking uses: `weight` scaled by [`WEIGHT_SCALE`] and by a slow-start ramp.
    effective: AtomicU32,
    /// When the slow-start ramp began (caller's nanosecond clock); 0 when not ramping.
    ramp_since_ns: AtomicU64,
    active: AtomicUsize,
}

impl ServerSlot {
    fn new(server: &PoolServer) -> Self {
        Self {
            addr: server.addr,
            backup: AtomicBool::new(server.backup),
            up: AtomicBool::new(true),
            admin: AtomicU8::new(AdminState::Ready.as_u8()),
            weight: AtomicU32::new(server.weight),
            effective: AtomicU32::new(full_weight(server.weight)),
            ramp_since_ns: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        }
    }

    fn admin(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Relaxed))
    }

    fn effective(&self) -> u32 {
        self.effective.load(Ordering::Relaxed)
    }

    fn is_backup(&self) -> bool {
        self.backup.load(Ordering::Relaxed)
    }

    /// Up, ready and of non-zero weight: may take a new session.
    fn takes_new(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.admin() == AdminState::Ready && self.effective() > 0
    }
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
    /// Administrative state.
    pub state: AdminState,
    /// A backup server.
    pub backup: bool,
    /// Weight in force (configured, or set at runtime).
    pub weight: u32,
    /// Weight picking uses now, in 1/[`WEIGHT_SCALE`] units (lower while slow start ramps).
    pub effective_weight: u32,
    /// Requests in flight.
    pub active: usize,
}

impl ServerStatus {
    /// Up and not in maintenance: what scripts see as "up" (a drained server still serves
    /// the sessions persisted to it).
    pub fn serves(&self) -> bool {
        self.up && self.state != AdminState::Maint
    }
}

/// Selection state of one pool.
#[derive(Debug)]
pub struct PoolBalancer {
    strategy: Strategy,
    servers: Box<[Arc<ServerSlot>]>,
    slow_start: Option<Duration>,
    cursor: AtomicUsize,
    /// Smooth weighted round robin's current weight per server.
    smooth: Mutex<Vec<i64>>,
    /// Sorted (point, server index); empty unless the strategy is consistent hash.
    ring: RwLock<Arc<[(u64, u32)]>>,
}

impl PoolBalancer {
    /// A balancer over `servers` (duplicates are ignored) of weight 1, all marked up.
    pub fn new(strategy: Strategy, servers: &[SocketAddr]) -> Self {
        let servers: Vec<PoolServer> = servers.iter().map(|&a| PoolServer::new(a)).collect();
        Self::rebuild(strategy, &servers, None, None)
    }

    /// A balancer for a configured pool, keeping the state of `previous` (see
    /// [`PoolBalancer::rebuild`]).
    pub fn from_config(pool: &PoolConfig, previous: Option<&PoolBalancer>) -> Self {
        Self::rebuild(
            Strategy::from(&pool.algorithm),
            &pool.servers,
            pool.slow_start,
            previous,
        )
    }

    /// A balancer over `servers` that keeps the up/down flag, administrative state, slow-start
    /// ramp and in-flight count of every server also in `previous`, so a reload neither
    /// resurrects a down server nor forgets the requests still running. Weights and the
    /// backup flag come from `servers`. New servers start up and ready.
    pub fn rebuild(
        strategy: Strategy,
        servers: &[PoolServer],
        slow_start: Option<Duration>,
        previous: Option<&PoolBalancer>,
    ) -> Self {
        let mut slots: Vec<Arc<ServerSlot>> = Vec::with_capacity(servers.len());
        for server in servers {
            if slots.iter().any(|s| s.addr == server.addr) {
                continue;
            }
            let slot = match previous.and_then(|p| p.slot(server.addr)) {
                Some(old) => {
                    let slot = Arc::clone(old);
                    slot.backup.store(server.backup, Ordering::Relaxed);
                    slot.weight.store(server.weight, Ordering::Relaxed);
                    slot
                }
                None => Arc::new(ServerSlot::new(server)),
            };
            slots.push(slot);
        }
        let balancer = Self {
            strategy,
            smooth: Mutex::new(vec![0; slots.len()]),
            servers: slots.into_boxed_slice(),
            slow_start,
            cursor: AtomicUsize::new(0),
            ring: RwLock::new(Arc::from(Vec::new())),
        };
        // Effective weights follow the new weights (a ramp in progress carries on from its
        // start; the caller advances it).
        for s in balancer.servers.iter() {
            if s.ramp_since_ns.load(Ordering::Relaxed) == 0 {
                s.effective.store(
                    full_weight(s.weight.load(Ordering::Relaxed)),
                    Ordering::Relaxed,
                );
            }
        }
        balancer.rebuild_ring();
        balancer
    }

    fn slot(&self, addr: SocketAddr) -> Option<&Arc<ServerSlot>> {
        self.servers.iter().find(|s| s.addr == addr)
    }

    /// The selection strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The pool's slow-start time.
    pub fn slow_start(&self) -> Option<Duration> {
        self.slow_start
    }

    /// Whether new sessions go to the backups now: no primary can take one.
    fn backups_active(&self) -> bool {
        !self.servers.iter().any(|s| !s.is_backup() && s.takes_new())
    }

    /// Servers that may take a new session now, by index.
    fn candidate(&self, i: usize, backups: bool) -> bool {
        self.servers
            .get(i)
            .is_some_and(|s| s.is_backup() == backups && s.takes_new())
    }

    /// Chooses a server for a new session, or `None` when none can take one. `hash_key` is
    /// only used by consistent hash; a consistent-hash pool without a key (header or cookie
    /// absent) falls back to round robin.
    pub fn pick(&self, hash_key: Option<&[u8]>) -> Option<ServerHandle> {
        let backups = self.backups_active();
        let index = match (self.strategy, hash_key) {
            (Strategy::ConsistentHash, Some(key)) => self.pick_hash(key, backups),
            (Strategy::LeastConnections, _) => self.pick_least(backups),
            _ => self.pick_smooth(backups),
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

    /// Sets a server's administrative state; returns the previous one, or `None` if the pool
    /// has no such server.
    pub fn set_state(&self, addr: SocketAddr, state: AdminState) -> Option<AdminState> {
        let s = self.slot(addr)?;
        Some(AdminState::from_u8(
            s.admin.swap(state.as_u8(), Ordering::Relaxed),
        ))
    }

    /// Sets the weight in force; returns false if the pool has no such server.
    pub fn set_weight(&self, addr: SocketAddr, weight: u32) -> bool {
        let Some(s) = self.slot(addr) else {
            return false;
        };
        s.weight.store(weight, Ordering::Relaxed);
        if s.ramp_since_ns.load(Ordering::Relaxed) == 0 {
            s.effective.store(full_weight(weight), Ordering::Relaxed);
        }
        self.rebuild_ring();
        true
    }

    /// Starts the slow-start ramp of a server that just came up (health or `ready`), at
    /// `now_ns` on the clock later passed to [`PoolBalancer::advance_slow_start`]. No effect
    /// without a slow-start time.
    pub fn start_slow_start(&self, addr: SocketAddr, now_ns: u64) {
        let (Some(ramp), Some(s)) = (self.slow_start, self.slot(addr)) else {
            return;
        };
        s.ramp_since_ns.store(now_ns.max(1), Ordering::Relaxed);
        let weight = s.weight.load(Ordering::Relaxed);
        s.effective.store(
            ramped_weight(weight, Duration::ZERO, Some(ramp)),
            Ordering::Relaxed,
        );
        self.rebuild_ring();
    }

    /// Moves every ramp to `now_ns`; true when an effective weight changed (the caller then
    /// re-programs what depends on weights, such as Maglev tables).
    pub fn advance_slow_start(&self, now_ns: u64) -> bool {
        let mut changed = false;
        for s in self.servers.iter() {
            let since = s.ramp_since_ns.load(Ordering::Relaxed);
            if since == 0 {
                continue;
            }
            let elapsed = Duration::from_nanos(now_ns.saturating_sub(since));
            let weight = s.weight.load(Ordering::Relaxed);
            let next = ramped_weight(weight, elapsed, self.slow_start);
            if self.slow_start.is_none_or(|ramp| elapsed >= ramp) {
                s.ramp_since_ns.store(0, Ordering::Relaxed);
            }
            if s.effective.swap(next, Ordering::Relaxed) != next {
                changed = true;
            }
        }
        if changed {
            self.rebuild_ring();
        }
        changed
    }

    /// True while a server of the pool ramps up.
    pub fn ramping(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.ramp_since_ns.load(Ordering::Relaxed) != 0)
    }

    /// Whether a server is up; `None` if the pool has no such server.
    pub fn is_up(&self, addr: SocketAddr) -> Option<bool> {
        self.slot(addr).map(|s| s.up.load(Ordering::Relaxed))
    }

    /// One server's state; `None` if the pool has no such server.
    pub fn status(&self, addr: SocketAddr) -> Option<ServerStatus> {
        self.slot(addr).map(|s| status_of(s))
    }

    /// Every server's state, in configured order.
    pub fn servers(&self) -> Vec<ServerStatus> {
        self.servers.iter().map(|s| status_of(s)).collect()
    }

    /// (serving, total) servers, as avi.pool.get_servers returns: serving is up and not in
    /// maintenance.
    pub fn up_count(&self) -> (usize, usize) {
        let up = self.servers().iter().filter(|s| s.serves()).count();
        (up, self.servers.len())
    }

    /// nginx's smooth weighted round robin: every candidate's current weight grows by its
    /// effective weight, the largest wins and gives back the total. Weights 5, 1, 1 give
    /// a a b a c a a, not a a a a a b c.
    fn pick_smooth(&self, backups: bool) -> Option<usize> {
        let mut current = self.smooth.lock();
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, cur) in current.iter_mut().enumerate() {
            if !self.candidate(i, backups) {
                continue;
            }
            let weight = self.servers.get(i).map_or(0, |s| i64::from(s.effective()));
            *cur += weight;
            total += weight;
            if best.is_none_or(|(_, b)| *cur > b) {
                best = Some((i, *cur));
            }
        }
        let (best, _) = best?;
        if let Some(c) = current.get_mut(best) {
            *c -= total;
        }
        Some(best)
    }

    fn pick_least(&self, backups: bool) -> Option<usize> {
        let n = self.servers.len();
        if n == 0 {
            return None;
        }
        // Start the scan at a rotating offset so ties spread instead of piling on server 0.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        // Best (index, load): in-flight requests plus this one, per unit of weight, compared
        // by cross-multiplication so no rounding decides.
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !self.candidate(i, backups) {
                continue;
            }
            let Some(s) = self.servers.get(i) else {
                continue;
            };
            let load = s.active.load(Ordering::Relaxed) as u64 + 1;
            let weight = u64::from(s.effective());
            if best.is_none_or(|(_, bl, bw)| load * bw < bl * weight) {
                best = Some((i, load, weight));
            }
        }
        best.map(|(i, _, _)| i)
    }

    /// Walks the ring clockwise from the key's point to the first candidate: an unusable
    /// server's keys spread over the others and every other key stays where it was.
    fn pick_hash(&self, key: &[u8], backups: bool) -> Option<usize> {
        let ring = Arc::clone(&self.ring.read());
        if ring.is_empty() {
            return None;
        }
        let h = hash64(key);
        let start = ring.partition_point(|&(p, _)| p < h);
        let len = ring.len();
        // Bounded by the ring's length, so a pool with no candidate does not spin.
        (0..len)
            .filter_map(|k| ring.get((start + k) % len))
            .map(|&(_, i)| i as usize)
            .find(|&i| self.candidate(i, backups))
    }

    fn rebuild_ring(&self) {
        if self.strategy == Strategy::ConsistentHash {
            *self.ring.write() = build_ring(&self.servers);
        }
    }
}

fn status_of(s: &ServerSlot) -> ServerStatus {
    ServerStatus {
        addr: s.addr,
        up: s.up.load(Ordering::Relaxed),
        state: s.admin(),
        backup: s.is_backup(),
        weight: s.weight.load(Ordering::Relaxed),
        effective_weight: s.effective(),
        active: s.active.load(Ordering::Relaxed),
    }
}

/// Points of each server: [`POINTS_PER_SERVER`] per unit of effective weight, so a weight
/// change adds or removes only that server's points (and keys).
fn build_ring(slots: &[Arc<ServerSlot>]) -> Arc<[(u64, u32)]> {
    let points =
        |s: &ServerSlot| s.effective() as usize * POINTS_PER_SERVER / WEIGHT_SCALE as usize;
    let total: usize = slots.iter().map(|s| points(s)).sum();
    let mut ring = Vec::with_capacity(total.min(MAX_RING_POINTS));
    for (i, s) in slots.iter().enumerate() {
        let Ok(i) = u32::try_from(i) else { break };
        let mut n = points(s);
        if total > MAX_RING_POINTS {
            n = (n * MAX_RING_POINTS / total).max(usize::from(n > 0));
        }
        // A ramping server of weight 1 may round to no point: give it one.
        if n == 0 && s.effective() > 0 {
            n = 1;
        }
        for p in 0..n {
            // Points depend only on the address, so adding or removing another server
            // leaves this server's points, and hence its keys, in place.
            ring.push((hash64(format!("{}#{p}", s.addr).as_bytes()), i));
        }
    }
    ring.sort_unstable();
    Arc::from(ring)
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
    use std::time::Duration;

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
        let configured: Vec<_> = new_servers.iter().map(|&a| PoolServer::new(a)).collect();
        let new = PoolBalancer::rebuild(Strategy::LeastConnections, &configured, None, Some(&old));
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
            servers: addrs(2).into_iter().map(PoolServer::new).collect(),
            health_monitor: None,
            slow_start: None,
            tls: None,
        };
        let b = PoolBalancer::from_config(&pool, None);
        assert_eq!(b.strategy(), Strategy::ConsistentHash);
        assert_eq!(b.up_count(), (2, 2));
    }

    fn weighted(weights: &[u32]) -> Vec<PoolServer> {
        addrs(weights.len())
            .into_iter()
            .zip(weights)
            .map(|(addr, &weight)| PoolServer {
                addr,
                weight,
                backup: false,
            })
            .collect()
    }

    fn weighted_balancer(strategy: Strategy, weights: &[u32]) -> PoolBalancer {
        PoolBalancer::rebuild(strategy, &weighted(weights), None, None)
    }

    /// Asserts each server got its weight's share of `c`, within `tolerance` (a fraction).
    fn assert_shares(c: &HashMap<SocketAddr, usize>, servers: &[PoolServer], tolerance: f64) {
        let total: usize = c.values().sum();
        let weights: u32 = servers.iter().map(|s| s.weight).sum();
        for s in servers {
            let got = c.get(&s.addr).copied().unwrap_or(0) as f64;
            let want = total as f64 * f64::from(s.weight) / f64::from(weights);
            assert!(
                (got - want).abs() <= want * tolerance + 0.5,
                "{}: weight {} got {got} of {total}, want {want:.0}: {c:?}",
                s.addr,
                s.weight
            );
        }
    }

    #[test]
    fn weighted_round_robin_is_exact_and_smooth() {
        let servers = weighted(&[5, 1, 1]);
        let b = PoolBalancer::rebuild(Strategy::RoundRobin, &servers, None, None);
        let order: Vec<usize> = (0..7)
            .filter_map(|_| b.pick(None))
            .map(|h| servers.iter().position(|s| s.addr == h.addr()).unwrap_or(9))
            .collect();
        // nginx's sequence: the heavy server is interleaved, not served in a burst.
        assert_eq!(order, [0, 0, 1, 0, 2, 0, 0]);
        let c = count(&b, 7000, |_| None);
        assert_shares(&c, &servers, 0.0);
    }

    #[test]
    fn weighted_least_connections_divides_by_weight() {
        let servers = weighted(&[3, 1]);
        let b = PoolBalancer::rebuild(Strategy::LeastConnections, &servers, None, None);
        // Handles held: in-flight requests settle at 3:1.
        let held: Vec<ServerHandle> = (0..400).filter_map(|_| b.pick(None)).collect();
        let mut c: HashMap<SocketAddr, usize> = HashMap::new();
        for h in &held {
            *c.entry(h.addr()).or_default() += 1;
        }
        assert_shares(&c, &servers, 0.01);
    }

    #[test]
    fn weighted_consistent_hash_follows_weights_and_moves_few_keys() {
        let servers = weighted(&[1, 2, 3, 4]);
        let b = PoolBalancer::rebuild(Strategy::ConsistentHash, &servers, None, None);
        let c = count(&b, 50_000, key);
        assert_shares(&c, &servers, 0.15);
        // Raising one weight moves keys only onto that server.
        let before = assignment(&b, 5000);
        assert!(b.set_weight(servers[0].addr, 2));
        let after = assignment(&b, 5000);
        for (x, y) in before.iter().zip(&after) {
            if x != y {
                assert_eq!(*y, servers[0].addr, "a key moved between two other servers");
            }
        }
        // Weight 1 keeps the unweighted ring (same keys as before weights existed).
        let plain = PoolBalancer::new(Strategy::ConsistentHash, &addrs(4));
        let ones = weighted_balancer(Strategy::ConsistentHash, &[1, 1, 1, 1]);
        assert_eq!(assignment(&plain, 2000), assignment(&ones, 2000));
    }

    #[test]
    fn weight_zero_and_drain_take_no_new_sessions_but_handles_still_work() {
        for strategy in [
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::ConsistentHash,
        ] {
            let s = addrs(3);
            let b = PoolBalancer::new(strategy, &s);
            assert_eq!(
                b.set_state(s[0], AdminState::Drain),
                Some(AdminState::Ready)
            );
            assert!(b.set_weight(s[1], 0));
            let c = count(&b, 300, key);
            assert_eq!(
                c.keys().copied().collect::<Vec<_>>(),
                [s[2]],
                "{strategy:?}"
            );
            // A script's persistence to the drained server still gets a handle.
            assert_eq!(b.get(s[0]).map(|h| h.addr()), Some(s[0]));
            let st = b.status(s[0]).expect("status");
            assert!(st.serves(), "drained is still up for scripts");
            b.set_state(s[0], AdminState::Maint);
            assert!(!b.status(s[0]).is_some_and(|st| st.serves()));
            assert_eq!(b.up_count(), (2, 3));
        }
    }

    #[test]
    fn backups_only_when_no_primary_can_take_sessions() {
        let mut servers = weighted(&[1, 1, 1, 1]);
        servers[2].backup = true;
        servers[3].backup = true;
        for strategy in [
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::ConsistentHash,
        ] {
            let b = PoolBalancer::rebuild(strategy, &servers, None, None);
            let primaries = [servers[0].addr, servers[1].addr];
            let backups = [servers[2].addr, servers[3].addr];
            let c = count(&b, 400, key);
            assert!(
                c.keys().all(|a| primaries.contains(a)),
                "{strategy:?}: {c:?}"
            );
            b.set_up(primaries[0], false);
            b.set_state(primaries[1], AdminState::Maint);
            let c = count(&b, 400, key);
            assert!(c.keys().all(|a| backups.contains(a)), "{strategy:?}: {c:?}");
            assert_eq!(c.len(), 2, "{strategy:?}: both backups share: {c:?}");
            // A primary back hands everything back.
            b.set_up(primaries[0], true);
            let c = count(&b, 400, key);
            assert_eq!(
                c.keys().copied().collect::<Vec<_>>(),
                [primaries[0]],
                "{strategy:?}"
            );
        }
    }

    #[test]
    fn slow_start_ramps_the_share_in_steps() {
        let servers = weighted(&[1, 1]);
        let ramp = Duration::from_secs(10);
        let b = PoolBalancer::rebuild(Strategy::RoundRobin, &servers, Some(ramp), None);
        let fresh = servers[1].addr;
        let t0 = 1_000_000_000u64;
        b.start_slow_start(fresh, t0);
        assert!(b.ramping());
        let share = |b: &PoolBalancer| {
            let c = count(b, 1700, |_| None);
            c.get(&fresh).copied().unwrap_or(0) as f64 / 1700.0
        };
        let first = share(&b);
        assert!(first < 0.07, "a tenth of the weight at first: {first}");
        let sec = 1_000_000_000u64;
        assert!(b.advance_slow_start(t0 + 5 * sec));
        let half = share(&b);
        assert!((0.3..0.4).contains(&half), "six tenths against one: {half}");
        assert!(
            !b.advance_slow_start(t0 + 5 * sec + 1),
            "same step: no change"
        );
        assert!(b.advance_slow_start(t0 + 11 * sec));
        assert!(!b.ramping());
        assert!((share(&b) - 0.5).abs() < 0.01);
        // Without a slow-start time a server is at full weight at once.
        let plain = PoolBalancer::rebuild(Strategy::RoundRobin, &servers, None, None);
        plain.start_slow_start(fresh, t0);
        assert!(!plain.ramping());
    }

    #[test]
    fn rebuild_keeps_states_and_takes_new_weights() {
        let s = addrs(2);
        let old = PoolBalancer::new(Strategy::RoundRobin, &s);
        old.set_state(s[0], AdminState::Drain);
        let mut servers = weighted(&[1, 4]);
        servers[1].backup = true;
        let new = PoolBalancer::rebuild(Strategy::RoundRobin, &servers, None, Some(&old));
        let st = new.servers();
        assert_eq!(st[0].state, AdminState::Drain);
        assert_eq!(
            (st[1].weight, st[1].effective_weight, st[1].backup),
            (4, 64, true)
        );
    }
}
