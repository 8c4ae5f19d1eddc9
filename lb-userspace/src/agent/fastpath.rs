//! Fast-path stickiness (`fast_path = "client_ip"`) and the kernel copy of the tables.
//!
//! When a DataScript stores or extends a table entry whose value is a server of the virtual
//! service's pool, the requesting client's address is said to *carry* that session key (until
//! the entry leaves the table). An address is pinned to a server in PERSIST, and XDP then
//! forwards its new connections straight there, only while it carries at most
//! `fast_path_max_sessions` keys (default 1) and they all name that server. A further key
//! from the same address (which only a proxied request can show) removes the pin, so the
//! address's new connections are proxied, balanced and scripted again; when its keys expire
//! or are removed down to the limit it is pinned again. Addresses of the `fast_path_exclude`
//! IP groups are never pinned (nor tracked).
//!
//! IPv4 and IPv6 alike: an IPv6 service's pins go to PERSIST6, and an IPv6 client's
//! "address" is its first `fast_path_ipv6_prefix` bits (default 128, the address itself),
//! exactly what XDP looks up, the way L4 client-IP persistence keys on `ipv6_prefix`. So with
//! a prefix of 64 every address of a /64 counts as one address here: its keys are counted
//! together and it is pinned as one.
//!
//! [`PinState`] is that bookkeeping, pure. Which address carries which key is also written to
//! DS_TABLE, one record per (address, key), so a restarted agent rebuilds the per-address
//! counts and the pins from the records and the restored table entries
//! ([`adopt_kernel_state`]): both already survive a kill -9, and a pin is a function of them.
//!
//! Per request the work is two hash lookups and, at most once a second per address
//! ([`COALESCE_NS`]), one map write (the pin), plus one record write for a new (address, key).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::config::{Config, IpGroup, ServiceType};
use crate::dataplane::family::persist_client;
use crate::dataplane::{
    Dataplane, DataplaneError, KernelMirror, PersistPins, PinRecord, PinService, Proto,
};
use crate::datascript::ScriptTableObserver;
use crate::proxy::hooks::TxnInfo;
use crate::tables::{EntryView, Mirror, Mirrors, RemoveReason, TableStore};

/// A pin whose server is unchanged is rewritten only when its expiry moves by at least this
/// much, so a lookup that extends an entry on every request costs no syscall.
pub const COALESCE_NS: u64 = 1_000_000_000;

/// A service as PERSIST knows it: (VIP, port, protocol).
pub type ServiceAddr = PinService;

/// Where pins go: the kernel in production, a recorder in tests.
pub trait PinSink: Send + Sync {
    /// Pin `client` to `server` until `expires_ns`.
    fn pin(
        &self,
        service: ServiceAddr,
        client: IpAddr,
        server: SocketAddr,
        expires_ns: u64,
    ) -> Result<(), DataplaneError>;
    /// Remove `client`'s pin.
    fn unpin(&self, service: ServiceAddr, client: IpAddr);
    /// Record that `client` carries entry (`table`, `key`) of `vs`.
    fn record(&self, vs: &str, client: IpAddr, table: &str, key: &str);
    /// Forget that record.
    fn forget(&self, vs: &str, client: IpAddr, table: &str, key: &str);
    /// Forget a record read back after a restart (its key known only by its hash).
    fn forget_hashed(&self, record: &PinRecord);
}

/// PERSIST pins plus the (address, key) records in DS_TABLE.
pub struct KernelPins {
    pins: PersistPins,
    mirror: Arc<KernelMirror>,
}

impl PinSink for KernelPins {
    fn pin(
        &self,
        service: ServiceAddr,
        client: IpAddr,
        server: SocketAddr,
        expires_ns: u64,
    ) -> Result<(), DataplaneError> {
        self.pins.pin(service, client, server, expires_ns)
    }
    fn unpin(&self, service: ServiceAddr, client: IpAddr) {
        if let Err(err) = self.pins.unpin(service, client) {
            tracing::warn!(%err, %client, "fast-path unpin failed");
        }
    }
    fn record(&self, vs: &str, client: IpAddr, table: &str, key: &str) {
        self.mirror.record_carrier(vs, client, table, key);
    }
    fn forget(&self, vs: &str, client: IpAddr, table: &str, key: &str) {
        self.mirror.forget_carrier(vs, client, table, key);
    }
    fn forget_hashed(&self, r: &PinRecord) {
        self.mirror
            .forget_carrier_hashed(&r.vs, r.client, &r.table, r.key_hash);
    }
}

/// A table entry: (table, key).
type EntryId = (Box<str>, Box<str>);

fn entry_id(table: &str, key: &str) -> EntryId {
    (Box::from(table), Box::from(key))
}

/// One address as the agent knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Address {
    /// The live session keys it carries: the server each names and its expiry as last seen.
    sessions: HashMap<EntryId, (SocketAddr, u64)>,
    /// Its pin in PERSIST: server and expiry.
    pin: Option<(SocketAddr, u64)>,
}

/// What the kernel must be told of one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinChange {
    /// Nothing.
    Keep,
    /// Pin it to the server until the expiry.
    Pin(SocketAddr, u64),
    /// Remove its pin: `shared` when the address carries more keys than allowed (or keys of
    /// several servers), otherwise its last key left.
    Unpin {
        /// Unpinned for carrying several sessions.
        shared: bool,
    },
}

/// Which address carries which session key, and which addresses are pinned, for one virtual
/// service. Pure: the caller does the kernel writes the methods ask for.
#[derive(Debug)]
pub struct PinState {
    max_sessions: usize,
    addrs: HashMap<IpAddr, Address>,
    by_entry: HashMap<EntryId, HashSet<IpAddr>>,
    shared_unpins: u64,
}

impl Default for PinState {
    fn default() -> Self {
        Self::new(1)
    }
}

impl PinState {
    /// Empty, pinning addresses that carry at most `max_sessions` keys.
    pub fn new(max_sessions: u32) -> Self {
        Self {
            max_sessions: max_sessions.max(1) as usize,
            addrs: HashMap::new(),
            by_entry: HashMap::new(),
            shared_unpins: 0,
        }
    }

    /// Number of pinned addresses.
    pub fn pinned(&self) -> usize {
        self.addrs.values().filter(|a| a.pin.is_some()).count()
    }

    /// Number of addresses carrying at least one key.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// True when no address carries a key.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Pins removed because an address carried several sessions.
    pub fn shared_unpins(&self) -> u64 {
        self.shared_unpins
    }

    /// Keys `client` carries.
    pub fn sessions_of(&self, client: IpAddr) -> usize {
        self.addrs.get(&client).map_or(0, |a| a.sessions.len())
    }

    /// The pin `client` should have: its one server while it carries 1..=max keys, all of
    /// that server (expiry: the latest of theirs).
    fn desired(&self, a: &Address) -> Option<(SocketAddr, u64)> {
        if a.sessions.is_empty() || a.sessions.len() > self.max_sessions {
            return None;
        }
        let mut it = a.sessions.values();
        let (server, mut expires) = *it.next()?;
        for &(s, e) in it {
            if s != server {
                return None;
            }
            expires = expires.max(e);
        }
        Some((server, expires))
    }

    /// Brings `client`'s pin in line with its keys; drops an address with neither.
    fn reconcile(&mut self, client: IpAddr, coalesce_ns: u64) -> PinChange {
        let Some(a) = self.addrs.get(&client) else {
            return PinChange::Keep;
        };
        let want = self.desired(a);
        let shared = !a.sessions.is_empty();
        let change = match (want, a.pin) {
            (None, None) => PinChange::Keep,
            (None, Some(_)) => PinChange::Unpin { shared },
            (Some((s, e)), Some((ps, pe))) if s == ps && e >= pe && e - pe < coalesce_ns => {
                PinChange::Keep
            }
            (Some((s, e)), _) => PinChange::Pin(s, e),
        };
        if let Some(a) = self.addrs.get_mut(&client) {
            match change {
                PinChange::Keep => {}
                PinChange::Pin(s, e) => a.pin = Some((s, e)),
                PinChange::Unpin { .. } => a.pin = None,
            }
            if a.sessions.is_empty() && a.pin.is_none() {
                self.addrs.remove(&client);
            }
        }
        if change == (PinChange::Unpin { shared: true }) {
            self.shared_unpins += 1;
        }
        change
    }

    /// A script on a request from `client` inserted or extended entry (`table`, `key`),
    /// which names `server` until `expires_ns`. Returns whether the address carries the key
    /// newly (its record must be written) and what the kernel must be told. A pin whose
    /// server is unchanged is not rewritten while its expiry moved by less than
    /// `coalesce_ns`.
    pub fn upsert(
        &mut self,
        client: IpAddr,
        table: &str,
        key: &str,
        server: SocketAddr,
        expires_ns: u64,
        coalesce_ns: u64,
    ) -> (bool, PinChange) {
        let a = self.addrs.entry(client).or_default();
        let id = entry_id(table, key);
        let new = match a.sessions.get_mut(&id) {
            Some(v) => {
                *v = (server, expires_ns);
                false
            }
            None => {
                a.sessions.insert(id.clone(), (server, expires_ns));
                self.by_entry.entry(id).or_default().insert(client);
                true
            }
        };
        (new, self.reconcile(client, coalesce_ns))
    }

    /// The kernel refused `client`'s pin: it is not pinned.
    pub fn pin_failed(&mut self, client: IpAddr) {
        if let Some(a) = self.addrs.get_mut(&client) {
            a.pin = None;
        }
    }

    /// The entry left its table: every address that carried it, with what its pin becomes
    /// (an address back within the limit is pinned again).
    pub fn remove_entry(&mut self, table: &str, key: &str) -> Vec<(IpAddr, PinChange)> {
        let id = entry_id(table, key);
        let clients = self.by_entry.remove(&id).unwrap_or_default();
        clients
            .into_iter()
            .map(|c| {
                if let Some(a) = self.addrs.get_mut(&c) {
                    a.sessions.remove(&id);
                }
                (c, self.reconcile(c, 0))
            })
            .collect()
    }

    /// Forgets `client` entirely: the keys it carried and whether it had a pin.
    pub fn remove_client(&mut self, client: IpAddr) -> (Vec<EntryId>, bool) {
        let Some(a) = self.addrs.remove(&client) else {
            return (Vec::new(), false);
        };
        let ids: Vec<EntryId> = a.sessions.into_keys().collect();
        for id in &ids {
            if let Some(set) = self.by_entry.get_mut(id) {
                set.remove(&client);
                if set.is_empty() {
                    self.by_entry.remove(id);
                }
            }
        }
        (ids, a.pin.is_some())
    }

    /// Every address `drop` selects, forgotten (see [`PinState::remove_client`]).
    pub fn remove_clients(
        &mut self,
        drop: impl Fn(IpAddr) -> bool,
    ) -> Vec<(IpAddr, Vec<EntryId>, bool)> {
        let gone: Vec<IpAddr> = self.addrs.keys().copied().filter(|c| drop(*c)).collect();
        gone.into_iter()
            .map(|c| {
                let (ids, pinned) = self.remove_client(c);
                (c, ids, pinned)
            })
            .collect()
    }

    /// Keys naming a server `keep` refuses are dropped (the server left the pool); returns
    /// each address that lost keys, the keys and what its pin becomes.
    pub fn retain_servers(
        &mut self,
        keep: impl Fn(&SocketAddr) -> bool,
    ) -> Vec<(IpAddr, Vec<EntryId>, PinChange)> {
        let mut hit: Vec<(IpAddr, Vec<EntryId>)> = Vec::new();
        for (c, a) in &mut self.addrs {
            let gone: Vec<EntryId> = a
                .sessions
                .iter()
                .filter(|(_, (s, _))| !keep(s))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &gone {
                a.sessions.remove(id);
            }
            // A pin to a server that left goes even when the address keeps other keys.
            if a.pin.is_some_and(|(s, _)| !keep(&s)) || !gone.is_empty() {
                hit.push((*c, gone));
            }
        }
        hit.into_iter()
            .map(|(c, gone)| {
                for id in &gone {
                    if let Some(set) = self.by_entry.get_mut(id) {
                        set.remove(&c);
                        if set.is_empty() {
                            self.by_entry.remove(id);
                        }
                    }
                }
                let mut change = self.reconcile(c, 0);
                if change == PinChange::Keep
                    && let Some(a) = self.addrs.get_mut(&c)
                    && a.pin.is_some_and(|(s, _)| !keep(&s))
                {
                    a.pin = None;
                    change = PinChange::Unpin { shared: false };
                }
                (c, gone, change)
            })
            .collect()
    }

    /// A new `max_sessions` (reload): what each address's pin becomes.
    pub fn set_max_sessions(&mut self, max_sessions: u32) -> Vec<(IpAddr, PinChange)> {
        self.max_sessions = max_sessions.max(1) as usize;
        let clients: Vec<IpAddr> = self.addrs.keys().copied().collect();
        clients
            .into_iter()
            .map(|c| (c, self.reconcile(c, 0)))
            .filter(|(_, ch)| *ch != PinChange::Keep)
            .collect()
    }

    /// Pins that lapsed by themselves (their entries lived on, extended from other addresses)
    /// are forgotten; XDP already ignores them and the data-plane sweep deletes them. A later
    /// proxied request of the address pins it again. Returns how many.
    pub fn lapse(&mut self, now_ns: u64) -> usize {
        let mut n = 0;
        for a in self.addrs.values_mut() {
            if a.pin.is_some_and(|(_, e)| e <= now_ns) {
                a.pin = None;
                n += 1;
            }
        }
        n
    }
}

/// The pool server a table value names: `IP:port` (`[IPv6]:port`) must be a member; a bare IP
/// (what `avi.pool.server_ip()` returns) matches the first member with that address. An
/// IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn match_server(value: &str, servers: &[SocketAddr]) -> Option<SocketAddr> {
    let value = value.trim();
    let (ip, port) = match value.parse::<SocketAddr>() {
        Ok(sa) => (sa.ip(), Some(sa.port())),
        Err(_) => (value.parse::<IpAddr>().ok()?, None),
    };
    let ip = ip.to_canonical();
    servers
        .iter()
        .copied()
        .find(|s| s.ip() == ip && port.is_none_or(|p| p == s.port()))
}

/// One fast-path virtual service.
#[derive(Debug)]
struct FastVs {
    service: ServiceAddr,
    /// IPv6 clients are tracked and pinned by this prefix of their address (the service's
    /// persistence prefix, as XDP keys its pins; 128 when not configured).
    prefix: u32,
    servers: Vec<SocketAddr>,
    /// `fast_path_exclude`: addresses never pinned nor tracked.
    exclude: Vec<IpGroup>,
    state: Arc<Mutex<PinState>>,
}

impl FastVs {
    fn excluded(&self, client: IpAddr) -> bool {
        self.exclude.iter().any(|g| g.contains(client))
    }

    /// The address `client` is tracked and pinned as: IPv6 masked to the service's prefix
    /// (what XDP looks up). `None` for an excluded address or one of the other family (an
    /// IPv4-mapped IPv6 address counts as IPv4).
    fn pin_address(&self, client: &SocketAddr) -> Option<IpAddr> {
        let ip = client.ip().to_canonical();
        if ip.is_ipv4() != self.service.0.is_ipv4() || self.excluded(ip) {
            return None;
        }
        Some(persist_client(ip, self.prefix))
    }
}

/// Counters of the fast path (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastPathStats {
    /// Pins written to the kernel.
    pub pins: u64,
    /// Pins removed (entries removed or expired, address shared, server left the pool).
    pub unpins: u64,
    /// Pins the kernel refused (map full, server not programmed).
    pub failed: u64,
}

/// The fast path of one virtual service, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FastPathVsStats {
    /// Virtual service.
    pub vs: String,
    /// Addresses pinned now.
    pub pinned: u64,
    /// Pins removed because their address carried several sessions (since start).
    pub shared_unpins: u64,
}

/// See the module docs. Shared by the proxy workers (as [`ScriptTableObserver`]), the tables
/// (as [`Mirror`]) and the agent loop (reload, sweep).
pub struct FastPath {
    sink: Arc<dyn PinSink>,
    services: ArcSwap<HashMap<String, Arc<FastVs>>>,
    pins: AtomicU64,
    unpins: AtomicU64,
    failed: AtomicU64,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("services", &self.services.load().len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl FastPath {
    /// A fast path writing to `sink`, with no virtual service configured yet.
    pub fn new(sink: Arc<dyn PinSink>) -> Self {
        Self {
            sink,
            services: ArcSwap::from_pointee(HashMap::new()),
            pins: AtomicU64::new(0),
            unpins: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// The production fast path: PERSIST pins and DS_TABLE records of `dataplane`.
    pub fn kernel(dataplane: &Dataplane) -> Self {
        Self::new(Arc::new(KernelPins {
            pins: dataplane.persist_pins(),
            mirror: dataplane.kernel_mirror(),
        }))
    }

    /// Counters.
    pub fn stats(&self) -> FastPathStats {
        FastPathStats {
            pins: self.pins.load(Ordering::Relaxed),
            unpins: self.unpins.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// Per fast-path virtual service: pinned addresses and shared unpins.
    pub fn vs_stats(&self) -> Vec<FastPathVsStats> {
        let mut out: Vec<FastPathVsStats> = self
            .services
            .load()
            .iter()
            .map(|(name, f)| {
                let st = f.state.lock();
                FastPathVsStats {
                    vs: name.clone(),
                    pinned: st.pinned() as u64,
                    shared_unpins: st.shared_unpins(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.vs.cmp(&b.vs));
        out
    }

    /// Addresses currently pinned in `vs`.
    pub fn pinned_clients(&self, vs: &str) -> usize {
        self.services
            .load()
            .get(vs)
            .map_or(0, |f| f.state.lock().pinned())
    }

    /// Does what `change` asks for `client` (called with the state's lock held, so one
    /// address's kernel writes happen in order).
    fn apply(&self, fvs: &FastVs, state: &mut PinState, client: IpAddr, change: PinChange) {
        match change {
            PinChange::Keep => {}
            PinChange::Pin(server, expires_ns) => {
                match self.sink.pin(fvs.service, client, server, expires_ns) {
                    Ok(()) => {
                        self.pins.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        state.pin_failed(client);
                        self.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%err, %client, "fast-path pin not written");
                    }
                }
            }
            PinChange::Unpin { shared } => {
                self.sink.unpin(fvs.service, client);
                self.unpins.fetch_add(1, Ordering::Relaxed);
                if shared {
                    tracing::debug!(%client, "fast-path address carries several sessions: unpinned");
                }
            }
        }
    }

    /// Forgets addresses entirely (excluded now, or their service went): their records and
    /// pins.
    fn drop_clients(&self, vs: &str, fvs: &FastVs, gone: Vec<(IpAddr, Vec<EntryId>, bool)>) {
        for (c, ids, pinned) in gone {
            for (table, key) in &ids {
                self.sink.forget(vs, c, table, key);
            }
            if pinned {
                self.sink.unpin(fvs.service, c);
                self.unpins.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes the fast-path virtual services of `config` (start and reload). Keys naming
    /// servers that left a pool are dropped (and pins to those servers removed), addresses
    /// now excluded are forgotten and unpinned, a new `fast_path_max_sessions` applies at
    /// once, and virtual services no longer fast-pathed or moved to another address lose
    /// everything. Call after the data plane has been programmed.
    pub fn configure(&self, config: &Config) {
        let old = self.services.load_full();
        let mut new = HashMap::new();
        for vs in config
            .virtual_services
            .iter()
            .filter(|v| v.kind == ServiceType::Http && v.fast_path)
        {
            let service = (vs.listen.ip(), vs.listen.port(), Proto::Tcp);
            let prefix = vs.persistence_ipv6_prefix.map_or(128, u32::from);
            let servers = super::spec::pool_servers(config, &vs.pool);
            let exclude: Vec<IpGroup> = vs
                .fast_path_exclude
                .iter()
                .filter_map(|g| config.groups.ip.get(g).cloned())
                .collect();
            let state = match old.get(&vs.name) {
                // Addresses are tracked by the prefix: a new prefix starts afresh. The old
                // state's pins are removed below under the new prefix: a key it masks to
                // itself is deleted; any other has bits set beyond the new prefix, which no
                // lookup of XDP's carries any more.
                Some(prev) if prev.service == service && prev.prefix == prefix => {
                    Arc::clone(&prev.state)
                }
                _ => Arc::new(Mutex::new(PinState::new(vs.fast_path_max_sessions))),
            };
            let fvs = Arc::new(FastVs {
                service,
                prefix,
                servers,
                exclude,
                state,
            });
            if old
                .get(&vs.name)
                .is_some_and(|p| Arc::ptr_eq(&p.state, &fvs.state))
            {
                let mut st = fvs.state.lock();
                let excluded = st.remove_clients(|c| fvs.excluded(c));
                self.drop_clients(&vs.name, &fvs, excluded);
                let moved = st.retain_servers(|s| fvs.servers.contains(s));
                let unpinned = moved
                    .iter()
                    .filter(|(_, _, ch)| matches!(ch, PinChange::Unpin { .. }))
                    .count();
                if unpinned > 0 {
                    tracing::info!(vs = %vs.name, clients = unpinned, "fast-path clients unpinned: their server left the pool");
                }
                for (c, ids, change) in moved {
                    for (table, key) in &ids {
                        self.sink.forget(&vs.name, c, table, key);
                    }
                    self.apply(&fvs, &mut st, c, change);
                }
                for (c, change) in st.set_max_sessions(vs.fast_path_max_sessions) {
                    self.apply(&fvs, &mut st, c, change);
                }
            }
            new.insert(vs.name.clone(), fvs);
        }
        for (name, prev) in old.iter() {
            let kept = new
                .get(name)
                .is_some_and(|n| Arc::ptr_eq(&n.state, &prev.state));
            if !kept {
                let gone = prev.state.lock().remove_clients(|_| true);
                self.drop_clients(name, prev, gone);
            }
        }
        self.services.store(Arc::new(new));
    }

    /// Rebuilds the per-address keys and pins from the (address, key) records a previous
    /// agent left and the restored table entries (see [`adopt_kernel_state`]). A record whose
    /// entry is gone, no longer names a pool server, or whose address is now excluded, is
    /// forgotten; every address of a record is then pinned or unpinned as its keys say.
    /// Returns how many addresses are pinned.
    pub fn restore(&self, records: Vec<PinRecord>, tables: &TableStore, now_ns: u64) -> usize {
        let services = self.services.load();
        let mut by_hash: HashMap<(String, String), HashMap<u64, EntryView>> = HashMap::new();
        let mut touched: HashMap<String, HashSet<IpAddr>> = HashMap::new();
        for r in records {
            let Some(fvs) = services.get(&r.vs) else {
                self.sink.forget_hashed(&r);
                continue;
            };
            let index = by_hash
                .entry((r.vs.clone(), r.table.clone()))
                .or_insert_with(|| {
                    tables
                        .get_vs(&r.vs)
                        .map(|t| {
                            t.list(Some(&r.table), None, usize::MAX, now_ns)
                                .into_iter()
                                .map(|e| (crate::dataplane::mirror::key_hash64(&e.key), e))
                                .collect()
                        })
                        .unwrap_or_default()
                });
            let owner = index
                .get(&r.key_hash)
                .and_then(|e| match_server(&e.value, &fvs.servers).map(|s| (e, s)));
            touched.entry(r.vs.clone()).or_default().insert(r.client);
            // A record of another prefix or family (the service changed while no agent ran)
            // is not adopted: its pin is removed below, the client's next write pins it anew.
            let ours = r.client.is_ipv4() == fvs.service.0.is_ipv4()
                && persist_client(r.client, fvs.prefix) == r.client;
            match owner {
                Some((e, server)) if ours && !fvs.excluded(r.client) => {
                    let mut st = fvs.state.lock();
                    // Counted now, pinned below once all its keys are in.
                    st.upsert(r.client, &e.table, &e.key, server, e.expires_at_mono_ns, 0);
                    if let Some(a) = st.addrs.get_mut(&r.client) {
                        a.pin = None;
                    }
                }
                _ => self.sink.forget_hashed(&r),
            }
        }
        let mut pinned = 0;
        for (vs, clients) in touched {
            let Some(fvs) = services.get(&vs) else {
                continue;
            };
            let mut st = fvs.state.lock();
            for c in clients {
                match st.reconcile(c, 0) {
                    PinChange::Keep => self.sink.unpin(fvs.service, c),
                    change => self.apply(fvs, &mut st, c, change),
                }
            }
            pinned += st.pinned();
        }
        pinned
    }

    /// Forgets pins that lapsed by themselves (see [`PinState::lapse`]).
    pub fn sweep(&self, now_ns: u64) -> usize {
        self.services
            .load()
            .values()
            .map(|fvs| fvs.state.lock().lapse(now_ns))
            .sum()
    }
}

impl ScriptTableObserver for FastPath {
    fn upserted(&self, txn: &TxnInfo, entry: &EntryView) {
        let services = self.services.load();
        let Some(fvs) = services.get(&txn.vs_name) else {
            return;
        };
        let (Some(client), Some(server)) = (
            fvs.pin_address(&txn.client),
            match_server(&entry.value, &fvs.servers),
        ) else {
            return;
        };
        let mut state = fvs.state.lock();
        let (new, change) = state.upsert(
            client,
            &entry.table,
            &entry.key,
            server,
            entry.expires_at_mono_ns,
            COALESCE_NS,
        );
        if new {
            self.sink
                .record(&txn.vs_name, client, &entry.table, &entry.key);
        }
        self.apply(fvs, &mut state, client, change);
    }

    fn removed(&self, _txn: &TxnInfo, _table: &str, _key: &str) {
        // Every removal (script, admin API, flush, expiry) reaches `Mirror::remove`, which
        // updates the carriers; nothing more to do for the script's case.
    }
}

impl Mirror for FastPath {
    fn upsert(&self, _: &str, _: &str, _: &str, _: &str, _: u64) {
        // Keys follow the requesting address, which only the observer knows.
    }

    fn remove(&self, vs: &str, table: &str, key: &str, _reason: RemoveReason) {
        let services = self.services.load();
        let Some(fvs) = services.get(vs) else {
            return;
        };
        let mut state = fvs.state.lock();
        for (c, change) in state.remove_entry(table, key) {
            self.sink.forget(vs, c, table, key);
            self.apply(fvs, &mut state, c, change);
        }
    }
}

/// HTTP virtual service names of `config` (whose tables are kept and mirrored).
pub fn http_vs_names(config: &Config) -> Vec<String> {
    config
        .virtual_services
        .iter()
        .filter(|v| v.kind == ServiceType::Http)
        .map(|v| v.name.clone())
        .collect()
}

/// At start, after the data plane has been opened and programmed and before the proxy
/// serves: restores the tables from DS_TABLE (collecting what expired while no agent ran),
/// adopts the fast-path pins, and from then on mirrors every table change into the kernel.
pub fn adopt_kernel_state(
    config: &Config,
    dataplane: &Dataplane,
    tables: &TableStore,
    fastpath: &Arc<FastPath>,
    now_ns: u64,
) -> Result<(), DataplaneError> {
    let mirror = dataplane.kernel_mirror();
    let restored = mirror.restore(&http_vs_names(config), now_ns)?;
    let mut entries = 0;
    for (vs, list) in restored.entries {
        entries += tables.vs(&vs).restore(list, now_ns);
    }
    fastpath.configure(config);
    let pins = fastpath.restore(restored.pins, tables, now_ns);
    tables.set_mirror(Arc::new(Mirrors(vec![
        mirror as Arc<dyn Mirror>,
        Arc::clone(fastpath) as Arc<dyn Mirror>,
    ])));
    tracing::info!(
        entries,
        pins,
        removed = restored.removed,
        "DataScript tables restored from the kernel mirror"
    );
    Ok(())
}

/// On reload, after the data plane has been programmed: fast-path services follow the new
/// config, and the kernel entries of virtual services gone from it are removed.
pub fn reconfigure(config: &Config, dataplane: &Dataplane, fastpath: &FastPath) {
    fastpath.configure(config);
    match dataplane.kernel_mirror().retain_vs(&http_vs_names(config)) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            "kernel table entries of removed virtual services dropped"
        ),
        Err(err) => tracing::warn!(%err, "cleaning the kernel table mirror failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, SocketAddrV4};

    const S1: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 8080));
    const S2: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 12), 8080));
    const C1: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2));
    const C2: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 3));
    const S: u64 = 1_000_000_000;

    #[test]
    fn values_match_pool_servers_by_ip_or_ip_port() {
        let servers = [S1, S2];
        assert_eq!(match_server("192.0.2.12", &servers), Some(S2));
        assert_eq!(match_server(" 192.0.2.11:8080 ", &servers), Some(S1));
        assert_eq!(match_server("192.0.2.11:9999", &servers), None);
        assert_eq!(match_server("192.0.2.99", &servers), None);
        assert_eq!(match_server("abc", &servers), None);
        assert_eq!(match_server("::ffff:192.0.2.11", &servers), Some(S1));
    }

    #[test]
    fn repeated_extensions_are_coalesced_but_changes_are_written() {
        let mut st = PinState::default();
        assert_eq!(
            st.upsert(C1, "", "k", S1, 100 * S, COALESCE_NS),
            (true, PinChange::Pin(S1, 100 * S))
        );
        assert_eq!(
            st.upsert(C1, "", "k", S1, 100 * S + S / 2, COALESCE_NS),
            (false, PinChange::Keep)
        );
        assert_eq!(
            st.upsert(C1, "", "k", S1, 101 * S + 1, COALESCE_NS).1,
            PinChange::Pin(S1, 101 * S + 1)
        );
        // A shorter expiry (insert resetting the lifetime) is written; so is another server.
        assert_eq!(
            st.upsert(C1, "", "k", S1, 50 * S, COALESCE_NS).1,
            PinChange::Pin(S1, 50 * S)
        );
        assert_eq!(
            st.upsert(C1, "", "k", S2, 50 * S, COALESCE_NS).1,
            PinChange::Pin(S2, 50 * S)
        );
        assert_eq!(st.pinned(), 1);
        assert_eq!(
            st.remove_entry("", "k"),
            vec![(C1, PinChange::Unpin { shared: false })]
        );
        assert!(st.is_empty());
        assert_eq!(st.shared_unpins(), 0);
    }

    #[test]
    fn a_second_key_unpins_the_address_and_back_to_one_pins_it_again() {
        let mut st = PinState::default();
        assert_eq!(
            st.upsert(C1, "", "a", S1, 10 * S, 0).1,
            PinChange::Pin(S1, 10 * S)
        );
        // A second session from the same address (seen on a proxied request).
        assert_eq!(
            st.upsert(C1, "", "c", S2, 20 * S, 0),
            (true, PinChange::Unpin { shared: true })
        );
        assert_eq!(
            (st.pinned(), st.sessions_of(C1), st.shared_unpins()),
            (0, 2, 1)
        );
        // More keys, extensions: it stays unpinned, nothing to write.
        assert_eq!(st.upsert(C1, "", "b", S2, 30 * S, 0).1, PinChange::Keep);
        assert_eq!(st.upsert(C1, "", "a", S1, 40 * S, 0).1, PinChange::Keep);
        // Another address with one key is unaffected.
        assert_eq!(
            st.upsert(C2, "", "b", S2, 30 * S, 0).1,
            PinChange::Pin(S2, 30 * S)
        );
        assert_eq!(st.remove_entry("", "c"), vec![(C1, PinChange::Keep)]);
        // `b` leaves both addresses: C1 is back to one key (a), pinned to its server again;
        // C2 has none left.
        let mut back = st.remove_entry("", "b");
        back.sort_by_key(|(c, _)| *c);
        assert_eq!(
            back,
            vec![
                (C1, PinChange::Pin(S1, 40 * S)),
                (C2, PinChange::Unpin { shared: false })
            ]
        );
        assert_eq!((st.pinned(), st.len()), (1, 1));
        assert_eq!(st.shared_unpins(), 1);
    }

    #[test]
    fn max_sessions_allows_several_keys_of_one_server_only() {
        let mut st = PinState::new(2);
        assert_eq!(
            st.upsert(C1, "", "a", S1, 10 * S, 0).1,
            PinChange::Pin(S1, 10 * S)
        );
        assert_eq!(
            st.upsert(C1, "", "b", S1, 20 * S, 0).1,
            PinChange::Pin(S1, 20 * S)
        );
        assert_eq!(
            st.upsert(C1, "", "c", S1, 20 * S, 0).1,
            PinChange::Unpin { shared: true }
        );
        assert_eq!(
            st.remove_entry("", "c"),
            vec![(C1, PinChange::Pin(S1, 20 * S))]
        );
        // Two keys of two servers: two users, not pinned.
        assert_eq!(
            st.upsert(C1, "", "b", S2, 20 * S, 0).1,
            PinChange::Unpin { shared: true }
        );
        assert_eq!(
            st.remove_entry("", "b"),
            vec![(C1, PinChange::Pin(S1, 10 * S))]
        );
        assert_eq!(
            st.upsert(C1, "", "d", S1, 30 * S, 0).1,
            PinChange::Pin(S1, 30 * S)
        );
        // A reload down to 1: two keys are now too many.
        assert_eq!(
            st.set_max_sessions(1),
            vec![(C1, PinChange::Unpin { shared: true })]
        );
    }

    #[test]
    fn servers_leaving_drop_their_keys_and_pins() {
        let mut st = PinState::default();
        st.upsert(C1, "", "a", S1, 10 * S, 0);
        st.upsert(C2, "", "b", S2, 20 * S, 0);
        st.upsert(C2, "", "c", S1, 20 * S, 0);
        let mut out = st.retain_servers(|s| *s != S2);
        out.sort_by_key(|(c, _, _)| *c);
        assert_eq!(out.len(), 1);
        let (c, ids, change) = &out[0];
        assert_eq!(
            (*c, ids.len(), *change),
            (C2, 1, PinChange::Pin(S1, 20 * S))
        );
        assert_eq!(st.lapse(15 * S), 1, "C1's pin lapsed");
        assert_eq!((st.pinned(), st.len()), (1, 2));
        let (ids, pinned) = st.remove_client(C2);
        assert_eq!((ids.len(), pinned), (1, true));
        assert!(st.remove_entry("", "c").is_empty());
    }

    /// Records every kernel call.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
    }

    impl Recorder {
        fn take(&self) -> Vec<String> {
            self.calls.lock().drain(..).collect()
        }
    }

    impl PinSink for Recorder {
        fn pin(
            &self,
            _service: ServiceAddr,
            client: IpAddr,
            server: SocketAddr,
            expires_ns: u64,
        ) -> Result<(), DataplaneError> {
            self.calls
                .lock()
                .push(format!("pin {client} {server} {}", expires_ns / S));
            Ok(())
        }
        fn unpin(&self, _service: ServiceAddr, client: IpAddr) {
            self.calls.lock().push(format!("unpin {client}"));
        }
        fn record(&self, vs: &str, client: IpAddr, table: &str, key: &str) {
            self.calls
                .lock()
                .push(format!("record {vs} {client} {table}/{key}"));
        }
        fn forget(&self, vs: &str, client: IpAddr, table: &str, key: &str) {
            self.calls
                .lock()
                .push(format!("forget {vs} {client} {table}/{key}"));
        }
        fn forget_hashed(&self, r: &PinRecord) {
            self.calls
                .lock()
                .push(format!("forget {} {} {}/#", r.vs, r.client, r.table));
        }
    }

    fn config_with(servers: &str, extra: &str) -> Config {
        let text = format!(
            "[agent]\ninterfaces = [\"eth0\"]\n\n[[ip_group]]\nname = \"nat\"\n\
             entries = [\"203.0.113.3\"]\n\n[[pool]]\nname = \"web\"\nservers = [{servers}]\n\n\
             [[virtual_service]]\nname = \"shop\"\nlisten = \"198.51.100.10:80\"\ntype = \"http\"\n\
             pool = \"web\"\n{extra}"
        );
        crate::config::parse(&text, std::path::Path::new("/etc/latch/latch.toml"))
            .expect("valid config")
    }

    fn config(servers: &str, fast_path: bool) -> Config {
        config_with(
            servers,
            if fast_path {
                "fast_path = \"client_ip\"\n"
            } else {
                ""
            },
        )
    }

    fn txn(client: IpAddr) -> TxnInfo {
        TxnInfo {
            vs_name: "shop".into(),
            vs_addr: "198.51.100.10:80".parse().expect("addr"),
            client: SocketAddr::new(client, 40000),
            request_id: crate::proxy::hooks::RequestId(1),
            tls: None,
        }
    }

    fn entry(key: &str, value: &str, expires_s: u64) -> EntryView {
        EntryView {
            table: String::new(),
            key: key.into(),
            value: value.into(),
            expires_at_mono_ns: expires_s * S,
        }
    }

    #[test]
    fn script_writes_pin_removals_unpin_and_pool_changes_release() {
        let rec = Arc::new(Recorder::default());
        let fp = FastPath::new(rec.clone());
        fp.configure(&config("\"192.0.2.11:8080\", \"192.0.2.12:8080\"", true));
        fp.upserted(&txn(C1), &entry("s1", "192.0.2.11", 100));
        fp.upserted(&txn(C1), &entry("s1", "192.0.2.11", 100)); // coalesced
        fp.upserted(&txn(C2), &entry("s2", "192.0.2.12", 200));
        fp.upserted(&txn(C2), &entry("s3", "192.0.2.99", 200)); // not a pool server
        assert_eq!(
            rec.take(),
            vec![
                "record shop 203.0.113.2 /s1",
                "pin 203.0.113.2 192.0.2.11:8080 100",
                "record shop 203.0.113.3 /s2",
                "pin 203.0.113.3 192.0.2.12:8080 200",
            ]
        );
        assert_eq!(fp.stats().pins, 2);

        Mirror::remove(&fp, "shop", "", "s1", RemoveReason::Expired);
        assert_eq!(
            rec.take(),
            vec!["forget shop 203.0.113.2 /s1", "unpin 203.0.113.2"]
        );
        // Server 192.0.2.12 leaves the pool: its key goes and its client is unpinned.
        fp.configure(&config("\"192.0.2.11:8080\"", true));
        assert_eq!(
            rec.take(),
            vec!["forget shop 203.0.113.3 /s2", "unpin 203.0.113.3"]
        );
        assert_eq!(fp.pinned_clients("shop"), 0);

        // Turning fast_path off releases every pin; writes are then ignored.
        fp.upserted(&txn(C1), &entry("s1", "192.0.2.11", 300));
        fp.configure(&config("\"192.0.2.11:8080\"", false));
        fp.upserted(&txn(C2), &entry("s9", "192.0.2.11", 300));
        let calls = rec.take();
        assert_eq!(
            calls.last().map(String::as_str),
            Some("unpin 203.0.113.2"),
            "{calls:?}"
        );
        assert!(
            !calls.iter().any(|c| c.contains("203.0.113.3")),
            "{calls:?}"
        );
    }

    #[test]
    fn a_shared_address_is_unpinned_counted_and_pinned_again_at_one_key() {
        let rec = Arc::new(Recorder::default());
        let fp = FastPath::new(rec.clone());
        fp.configure(&config("\"192.0.2.11:8080\", \"192.0.2.12:8080\"", true));
        fp.upserted(&txn(C1), &entry("a", "192.0.2.11", 100));
        fp.upserted(&txn(C1), &entry("c", "192.0.2.12", 100));
        assert_eq!(
            rec.take(),
            vec![
                "record shop 203.0.113.2 /a",
                "pin 203.0.113.2 192.0.2.11:8080 100",
                "record shop 203.0.113.2 /c",
                "unpin 203.0.113.2",
            ]
        );
        let st = fp.vs_stats();
        assert_eq!(
            st,
            vec![FastPathVsStats {
                vs: "shop".into(),
                pinned: 0,
                shared_unpins: 1
            }]
        );
        Mirror::remove(&fp, "shop", "", "c", RemoveReason::Expired);
        assert_eq!(
            rec.take(),
            vec![
                "forget shop 203.0.113.2 /c",
                "pin 203.0.113.2 192.0.2.11:8080 100"
            ]
        );
        assert_eq!(fp.pinned_clients("shop"), 1);
    }

    #[test]
    fn excluded_addresses_are_never_pinned_nor_tracked() {
        let rec = Arc::new(Recorder::default());
        let fp = FastPath::new(rec.clone());
        let servers = "\"192.0.2.11:8080\"";
        fp.configure(&config(servers, true));
        // C2 is pinned before the reload that excludes it.
        fp.upserted(&txn(C2), &entry("x", "192.0.2.11", 100));
        rec.take();
        fp.configure(&config_with(
            servers,
            "fast_path = \"client_ip\"\nfast_path_exclude = [\"nat\"]\n",
        ));
        assert_eq!(
            rec.take(),
            vec!["forget shop 203.0.113.3 /x", "unpin 203.0.113.3"]
        );
        fp.upserted(&txn(C2), &entry("y", "192.0.2.11", 100));
        fp.upserted(&txn(C1), &entry("z", "192.0.2.11", 100));
        assert_eq!(
            rec.take(),
            vec![
                "record shop 203.0.113.2 /z",
                "pin 203.0.113.2 192.0.2.11:8080 100"
            ]
        );
    }

    #[test]
    fn lapsed_pins_are_forgotten_by_the_sweep() {
        let rec = Arc::new(Recorder::default());
        let fp = FastPath::new(rec.clone());
        fp.configure(&config("\"192.0.2.11:8080\"", true));
        fp.upserted(&txn(C1), &entry("s1", "192.0.2.11", 10));
        fp.upserted(&txn(C2), &entry("s1", "192.0.2.11", 30));
        rec.take();
        assert_eq!(fp.sweep(20 * S), 1);
        assert!(rec.take().is_empty(), "XDP ignores a lapsed pin");
        assert_eq!(fp.pinned_clients("shop"), 1);
        // C1 still carries s1: its next write pins it again.
        fp.upserted(&txn(C1), &entry("s1", "192.0.2.11", 40));
        assert_eq!(rec.take(), vec!["pin 203.0.113.2 192.0.2.11:8080 40"]);
    }

    #[test]
    fn restore_rebuilds_counts_and_pins_from_records_and_entries() {
        let rec = Arc::new(Recorder::default());
        let fp = FastPath::new(rec.clone());
        fp.configure(&config("\"192.0.2.11:8080\", \"192.0.2.12:8080\"", true));
        let tables = TableStore::new(
            crate::tables::TableLimits::default(),
            Arc::new(crate::tables::NoMirror),
        );
        for (k, v) in [
            ("a", "192.0.2.11"),
            ("b", "192.0.2.12"),
            ("c", "192.0.2.12"),
        ] {
            tables.vs("shop").insert("", k, v, 100, 0).expect("insert");
        }
        let record = |client, key: &str| PinRecord {
            vs: "shop".into(),
            client,
            table: String::new(),
            key_hash: crate::dataplane::mirror::key_hash64(key),
        };
        // C1 carried a (and a key now gone); C2 carried b and c: shared.
        let n = fp.restore(
            vec![
                record(C1, "a"),
                record(C1, "gone"),
                record(C2, "b"),
                record(C2, "c"),
            ],
            &tables,
            S,
        );
        assert_eq!(n, 1);
        let mut calls = rec.take();
        calls.sort();
        assert_eq!(
            calls,
            vec![
                "forget shop 203.0.113.2 /#",
                "pin 203.0.113.2 192.0.2.11:8080 100",
                "unpin 203.0.113.3",
            ]
        );
        // The counts survived: c leaving puts C2 back at one key, pinned to b's server.
        Mirror::remove(&fp, "shop", "", "c", RemoveReason::Removed);
        assert_eq!(
            rec.take(),
            vec![
                "forget shop 203.0.113.3 /c",
                "pin 203.0.113.3 192.0.2.12:8080 100"
            ]
        );
        // And a adopted by C1 still unpins it when it goes.
        Mirror::remove(&fp, "shop", "", "a", RemoveReason::Removed);
        assert_eq!(
            rec.take(),
            vec!["forget shop 203.0.113.2 /a", "unpin 203.0.113.2"]
        );
    }

    /// Shop on an IPv6 VIP over two IPv6 servers (`extra`: more keys of the service).
    fn config6(extra: &str) -> Config {
        let text = format!(
            "[agent]\ninterfaces = [\"eth0\"]\n\n[[pool]]\nname = \"web\"\n\
             servers = [\"[2001:db8:b1::2]:8080\", \"[2001:db8:b2::2]:8080\"]\n\n\
             [[virtual_service]]\nname = \"shop\"\nlisten = \"[2001:db8:f::10]:80\"\n\
             type = \"http\"\npool = \"web\"\nfast_path = \"client_ip\"\n{extra}"
        );
        crate::config::parse(&text, std::path::Path::new("/etc/latch/latch.toml"))
            .expect("valid config")
    }

    fn txn6(client: &str) -> TxnInfo {
        TxnInfo {
            vs_addr: "[2001:db8:f::10]:80".parse().expect("addr"),
            ..txn(client.parse().expect("client"))
        }
    }

    #[test]
    fn ipv6_values_match_pool_servers() {
        let s1: SocketAddr = "[2001:db8:b1::2]:8080".parse().expect("addr");
        let s2: SocketAddr = "[2001:db8:b2::2]:8080".parse().expect("addr");
        let servers = [s1, s2];
        assert_eq!(match_server("2001:db8:b2::2", &servers), Some(s2));
        assert_eq!(match_server("[2001:db8:b1::2]:8080", &servers), Some(s1));
        assert_eq!(match_server("[2001:db8:b1::2]:9999", &servers), None);
        assert_eq!(match_server("2001:db8:b1::3", &servers), None);
        // An IPv4 value never names an IPv6 server.
        assert_eq!(match_server("192.0.2.11", &servers), None);
    }

    #[test]
    fn ipv6_clients_are_pinned_by_address_and_unpinned_when_their_entry_goes() {
        let rec = Arc::new(Recorder::default());
        let fp = FastPath::new(rec.clone());
        fp.configure(&config6(""));
        // Default prefix 128: two addresses of one /64 are two addresses.
        fp.upserted(
            &txn6("2001:db8:c::100"),
            &entry("s1", "2001:db8:b1::2", 100),
        );
        fp.upserted(
            &txn6("2001:db8:c::101"),
            &entry("s2", "[2001:db8:b2::2]:8080", 200),
        );
        // An IPv4 client (or value) on the IPv6 service is not tracked.
        fp.upserted(&txn(C1), &entry("s3", "2001:db8:b1::2", 200));
        fp.upserted(&txn6("2001:db8:c::102"), &entry("s4", "192.0.2.11", 200));
        assert_eq!(
            rec.take(),
            vec![
                "record shop 2001:db8:c::100 /s1",
                "pin 2001:db8:c::100 [2001:db8:b1::2]:8080 100",
                "record shop 2001:db8:c::101 /s2",
                "pin 2001:db8:c::101 [2001:db8:b2::2]:8080 200",
            ]
        );
        assert_eq!(fp.pinned_clients("shop"), 2);
        Mirror::remove(&fp, "shop", "", "s1", RemoveReason::Expired);
        assert_eq!(
            rec.take(),
            vec!["forget shop 2001:db8:c::100 /s1", "unpin 2001:db8:c::100"]
        );
        // The server of s2 leaves the pool: its client is released.
        let one = "[agent]\ninterfaces = [\"eth0\"]\n\n[[pool]]\nname = \"web\"\n\
                   servers = [\"[2001:db8:b1::2]:8080\"]\n\n[[virtual_service]]\nname = \"shop\"\n\
                   listen = \"[2001:db8:f::10]:80\"\ntype = \"http\"\npool = \"web\"\n\
                   fast_path = \"client_ip\"\n";
        fp.configure(
            &crate::config::parse(one, std::path::Path::new("/etc/latch/latch.toml"))
                .expect("valid config"),
        );
        assert_eq!(
            rec.take(),
            vec!["forget shop 2001:db8:c::101 /s2", "unpin 2001:db8:c::101"]
        );
        assert_eq!(fp.pinned_clients("shop"), 0);
    }

    #[test]
    fn ipv6_clients_of_one_prefix_count_as_one_address() {
        let rec = Arc::new(Recorder::default());
        let fp = FastPath::new(rec.clone());
        fp.configure(&config6(""));
        fp.upserted(
            &txn6("2001:db8:c::100"),
            &entry("s0", "2001:db8:b1::2", 100),
        );
        rec.take();
        // A new prefix starts afresh: what was tracked by address is released.
        fp.configure(&config6("fast_path_ipv6_prefix = 64\n"));
        assert_eq!(
            rec.take(),
            vec!["forget shop 2001:db8:c::100 /s0", "unpin 2001:db8:c::100"]
        );
        fp.upserted(&txn6("2001:db8:c::100"), &entry("a", "2001:db8:b1::2", 100));
        fp.upserted(&txn6("2001:db8:d::1"), &entry("d", "2001:db8:b2::2", 100));
        // Another address of the first /64 with a key of its own: the /64 carries two.
        fp.upserted(&txn6("2001:db8:c::7"), &entry("b", "2001:db8:b1::2", 100));
        assert_eq!(
            rec.take(),
            vec![
                "record shop 2001:db8:c:: /a",
                "pin 2001:db8:c:: [2001:db8:b1::2]:8080 100",
                "record shop 2001:db8:d:: /d",
                "pin 2001:db8:d:: [2001:db8:b2::2]:8080 100",
                "record shop 2001:db8:c:: /b",
                "unpin 2001:db8:c::",
            ]
        );
        assert_eq!(fp.vs_stats()[0].shared_unpins, 1);
        Mirror::remove(&fp, "shop", "", "b", RemoveReason::Removed);
        assert_eq!(
            rec.take(),
            vec![
                "forget shop 2001:db8:c:: /b",
                "pin 2001:db8:c:: [2001:db8:b1::2]:8080 100"
            ]
        );

        // After a restart the records (by prefix) and the entries rebuild the pins.
        let rec2 = Arc::new(Recorder::default());
        let fp2 = FastPath::new(rec2.clone());
        fp2.configure(&config6("fast_path_ipv6_prefix = 64\n"));
        let tables = TableStore::new(
            crate::tables::TableLimits::default(),
            Arc::new(crate::tables::NoMirror),
        );
        tables
            .vs("shop")
            .insert("", "a", "2001:db8:b1::2", 100, 0)
            .expect("insert");
        let record = PinRecord {
            vs: "shop".into(),
            client: "2001:db8:c::".parse().expect("addr"),
            table: String::new(),
            key_hash: crate::dataplane::mirror::key_hash64("a"),
        };
        // A record by address (written under prefix 128) is not of this prefix: dropped.
        let by_address = PinRecord {
            client: "2001:db8:e::5".parse().expect("addr"),
            ..record.clone()
        };
        assert_eq!(fp2.restore(vec![record, by_address], &tables, S), 1);
        let mut calls = rec2.take();
        calls.sort();
        assert_eq!(
            calls,
            vec![
                "forget shop 2001:db8:e::5 /#",
                "pin 2001:db8:c:: [2001:db8:b1::2]:8080 100",
                "unpin 2001:db8:e::5",
            ]
        );
        Mirror::remove(&fp2, "shop", "", "a", RemoveReason::Expired);
        assert_eq!(
            rec2.take(),
            vec!["forget shop 2001:db8:c:: /a", "unpin 2001:db8:c::"]
        );
    }
}
