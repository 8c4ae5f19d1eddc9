//! Fast-path stickiness (`fast_path = "client_ip"`) and the kernel copy of the tables.
//!
//! When a DataScript stores or extends a table entry whose value is a server of the virtual
//! service's pool, the requesting client's address is pinned to that server in PERSIST with
//! the entry's expiry, and XDP forwards that client's new connections straight to the server.
//! [`FastPath`] remembers which entry owns which client's pin so that removing or expiring the
//! entry unpins its clients, and a server leaving the pool (reload) unpins the clients pinned
//! to it. Ownership is also written to DS_TABLE as pin records, so a restarted agent picks it
//! up again ([`adopt_kernel_state`]).
//!
//! Per request the work is a hash lookup and, at most once a second per client
//! ([`COALESCE_NS`]), two map writes (the pin and its record).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::config::{Config, ServiceType};
use crate::dataplane::{Dataplane, DataplaneError, KernelMirror, PersistPins, PinRecord, Proto};
use crate::datascript::ScriptTableObserver;
use crate::proxy::hooks::TxnInfo;
use crate::tables::{EntryView, Mirror, Mirrors, RemoveReason, TableStore};

/// A pin whose server is unchanged is rewritten only when its expiry moves by at least this
/// much, so a lookup that extends an entry on every request costs no syscall.
pub const COALESCE_NS: u64 = 1_000_000_000;

/// A service as PERSIST knows it: (VIP, port, protocol).
pub type ServiceAddr = (Ipv4Addr, u16, Proto);

/// Where pins go: the kernel in production, a recorder in tests.
pub trait PinSink: Send + Sync {
    /// Pin `client` to `server` until `expires_ns`.
    fn pin(
        &self,
        service: ServiceAddr,
        client: Ipv4Addr,
        server: SocketAddrV4,
        expires_ns: u64,
    ) -> Result<(), DataplaneError>;
    /// Remove `client`'s pin.
    fn unpin(&self, service: ServiceAddr, client: Ipv4Addr);
    /// Record that `client`'s pin belongs to (`table`, `key`) of `vs`.
    fn record(&self, vs: &str, client: Ipv4Addr, table: &str, key: &str, expires_ns: u64);
    /// Forget that record.
    fn forget(&self, vs: &str, client: Ipv4Addr);
}

/// PERSIST pins plus their ownership records in DS_TABLE.
pub struct KernelPins {
    pins: PersistPins,
    mirror: Arc<KernelMirror>,
}

impl PinSink for KernelPins {
    fn pin(
        &self,
        service: ServiceAddr,
        client: Ipv4Addr,
        server: SocketAddrV4,
        expires_ns: u64,
    ) -> Result<(), DataplaneError> {
        self.pins.pin(service, client, server, expires_ns)
    }
    fn unpin(&self, service: ServiceAddr, client: Ipv4Addr) {
        if let Err(err) = self.pins.unpin(service, client) {
            tracing::warn!(%err, %client, "fast-path unpin failed");
        }
    }
    fn record(&self, vs: &str, client: Ipv4Addr, table: &str, key: &str, expires_ns: u64) {
        self.mirror.record_pin(vs, client, table, key, expires_ns);
    }
    fn forget(&self, vs: &str, client: Ipv4Addr) {
        self.mirror.forget_pin(vs, client);
    }
}

/// One client's pin as the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pin {
    table: Box<str>,
    key: Box<str>,
    server: SocketAddrV4,
    expires_ns: u64,
}

/// Which entry owns which client's pin, for one virtual service. Pure: the caller does the
/// kernel writes the methods ask for.
#[derive(Debug, Default)]
pub struct PinState {
    by_client: HashMap<Ipv4Addr, Pin>,
    by_entry: HashMap<(Box<str>, Box<str>), HashSet<Ipv4Addr>>,
}

impl PinState {
    /// Number of pinned clients.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// True when no client is pinned.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// `client` is (re)pinned by entry (`table`, `key`) to `server` until `expires_ns`.
    /// Returns whether the kernel must be written: not when the same pin already exists and
    /// the expiry moved forward by less than `coalesce_ns`.
    pub fn upsert(
        &mut self,
        client: Ipv4Addr,
        table: &str,
        key: &str,
        server: SocketAddrV4,
        expires_ns: u64,
        coalesce_ns: u64,
    ) -> bool {
        if let Some(p) = self.by_client.get(&client)
            && *p.table == *table
            && *p.key == *key
            && p.server == server
            && expires_ns >= p.expires_ns
            && expires_ns - p.expires_ns < coalesce_ns
        {
            return false;
        }
        self.remove_client(client);
        self.by_entry
            .entry((Box::from(table), Box::from(key)))
            .or_default()
            .insert(client);
        self.by_client.insert(
            client,
            Pin {
                table: Box::from(table),
                key: Box::from(key),
                server,
                expires_ns,
            },
        );
        true
    }

    /// Forgets `client`'s pin; true if it had one.
    pub fn remove_client(&mut self, client: Ipv4Addr) -> bool {
        let Some(p) = self.by_client.remove(&client) else {
            return false;
        };
        let k = (p.table, p.key);
        if let Some(set) = self.by_entry.get_mut(&k) {
            set.remove(&client);
            if set.is_empty() {
                self.by_entry.remove(&k);
            }
        }
        true
    }

    /// The entry left its table: the clients it pinned, now forgotten.
    pub fn remove_entry(&mut self, table: &str, key: &str) -> Vec<Ipv4Addr> {
        let k: (Box<str>, Box<str>) = (Box::from(table), Box::from(key));
        let clients: Vec<Ipv4Addr> = self
            .by_entry
            .remove(&k)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        for c in &clients {
            self.by_client.remove(c);
        }
        clients
    }

    /// Forgets (and returns) every client whose pin fails `keep`.
    pub fn remove_where(&mut self, keep: impl Fn(&SocketAddrV4, u64) -> bool) -> Vec<Ipv4Addr> {
        let gone: Vec<Ipv4Addr> = self
            .by_client
            .iter()
            .filter(|(_, p)| !keep(&p.server, p.expires_ns))
            .map(|(c, _)| *c)
            .collect();
        for c in &gone {
            self.remove_client(*c);
        }
        gone
    }
}

/// The pool server a table value names: `IP:port` must be a member; a bare IP (what
/// `avi.pool.server_ip()` returns) matches the first member with that address.
pub fn match_server(value: &str, servers: &[SocketAddrV4]) -> Option<SocketAddrV4> {
    let value = value.trim();
    if let Ok(sa) = value.parse::<SocketAddr>() {
        let sa = match sa {
            SocketAddr::V4(v4) => v4,
            SocketAddr::V6(v6) => SocketAddrV4::new(v6.ip().to_ipv4_mapped()?, v6.port()),
        };
        return servers.iter().copied().find(|s| *s == sa);
    }
    let ip: IpAddr = value.parse().ok()?;
    let ip = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
    };
    servers.iter().copied().find(|s| *s.ip() == ip)
}

fn client_v4(addr: &SocketAddr) -> Option<Ipv4Addr> {
    match addr.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// One fast-path virtual service.
#[derive(Debug)]
struct FastVs {
    service: ServiceAddr,
    servers: Vec<SocketAddrV4>,
    state: Arc<Mutex<PinState>>,
}

/// Counters of the fast path (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastPathStats {
    /// Pins written to the kernel.
    pub pins: u64,
    /// Pins removed (entry removed or expired, server left the pool, pin lapsed).
    pub unpins: u64,
    /// Pins the kernel refused (map full, server not programmed).
    pub failed: u64,
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

    /// Clients currently pinned in `vs`.
    pub fn pinned_clients(&self, vs: &str) -> usize {
        self.services
            .load()
            .get(vs)
            .map_or(0, |f| f.state.lock().len())
    }

    fn unpin_all(&self, vs: &str, fvs: &FastVs, clients: &[Ipv4Addr]) {
        for &c in clients {
            self.sink.unpin(fvs.service, c);
            self.sink.forget(vs, c);
            self.unpins.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the fast-path virtual services of `config` (start and reload). Pins of servers
    /// that left a pool, and of virtual services no longer fast-pathed or moved to another
    /// address, are removed. Call after the data plane has been programmed.
    pub fn configure(&self, config: &Config) {
        let old = self.services.load_full();
        let mut new = HashMap::new();
        for vs in config
            .virtual_services
            .iter()
            .filter(|v| v.kind == ServiceType::Http && v.fast_path)
        {
            let SocketAddr::V4(listen) = vs.listen else {
                continue;
            };
            let service = (*listen.ip(), listen.port(), Proto::Tcp);
            let servers = super::spec::pool_servers_v4(config, &vs.pool);
            let state = match old.get(&vs.name) {
                Some(prev) if prev.service == service => {
                    let gone = prev
                        .state
                        .lock()
                        .remove_where(|server, _| servers.contains(server));
                    if !gone.is_empty() {
                        tracing::info!(vs = %vs.name, clients = gone.len(), "fast-path clients unpinned: their server left the pool");
                    }
                    self.unpin_all(&vs.name, prev, &gone);
                    Arc::clone(&prev.state)
                }
                _ => Arc::new(Mutex::new(PinState::default())),
            };
            new.insert(
                vs.name.clone(),
                Arc::new(FastVs {
                    service,
                    servers,
                    state,
                }),
            );
        }
        for (name, prev) in old.iter() {
            let kept = new
                .get(name)
                .is_some_and(|n| Arc::ptr_eq(&n.state, &prev.state));
            if !kept {
                let gone = prev.state.lock().remove_where(|_, _| false);
                self.unpin_all(name, prev, &gone);
            }
        }
        self.services.store(Arc::new(new));
    }

    /// Takes back the pin records a previous agent left (see [`adopt_kernel_state`]). A
    /// record whose entry is gone or no longer names a pool server is unpinned. Returns how
    /// many pins were adopted.
    pub fn restore(&self, records: Vec<PinRecord>, tables: &TableStore, now_ns: u64) -> usize {
        let services = self.services.load();
        let mut by_hash: HashMap<(String, String), HashMap<u64, EntryView>> = HashMap::new();
        let mut adopted = 0;
        for r in records {
            let Some(fvs) = services.get(&r.vs) else {
                self.sink.forget(&r.vs, r.client);
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
            match owner {
                Some((e, server)) if r.expires_ns > now_ns => {
                    fvs.state
                        .lock()
                        .upsert(r.client, &e.table, &e.key, server, r.expires_ns, 0);
                    adopted += 1;
                }
                _ => self.unpin_all(&r.vs, fvs, &[r.client]),
            }
        }
        adopted
    }

    /// Forgets pins that lapsed by themselves (their entry lived on, extended by other
    /// clients); XDP already ignores them and the data-plane sweep deletes them.
    pub fn sweep(&self, now_ns: u64) -> usize {
        let mut n = 0;
        for (name, fvs) in self.services.load().iter() {
            let gone = fvs.state.lock().remove_where(|_, exp| exp > now_ns);
            for c in &gone {
                self.sink.forget(name, *c);
            }
            n += gone.len();
        }
        n
    }
}

impl ScriptTableObserver for FastPath {
    fn upserted(&self, txn: &TxnInfo, entry: &EntryView) {
        let services = self.services.load();
        let Some(fvs) = services.get(&txn.vs_name) else {
            return;
        };
        let (Some(client), Some(server)) = (
            client_v4(&txn.client),
            match_server(&entry.value, &fvs.servers),
        ) else {
            return;
        };
        let mut state = fvs.state.lock();
        if !state.upsert(
            client,
            &entry.table,
            &entry.key,
            server,
            entry.expires_at_mono_ns,
            COALESCE_NS,
        ) {
            return;
        }
        match self
            .sink
            .pin(fvs.service, client, server, entry.expires_at_mono_ns)
        {
            Ok(()) => {
                self.pins.fetch_add(1, Ordering::Relaxed);
                self.sink.record(
                    &txn.vs_name,
                    client,
                    &entry.table,
                    &entry.key,
                    entry.expires_at_mono_ns,
                );
            }
            Err(err) => {
                state.remove_client(client);
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%err, %client, "fast-path pin not written");
            }
        }
    }

    fn removed(&self, _txn: &TxnInfo, _table: &str, _key: &str) {
        // Every removal (script, admin API, flush, expiry) reaches `Mirror::remove`, which
        // unpins; nothing more to do for the script's case.
    }
}

impl Mirror for FastPath {
    fn upsert(&self, _: &str, _: &str, _: &str, _: &str, _: u64) {
        // Pins follow the requesting client, which only the observer knows.
    }

    fn remove(&self, vs: &str, table: &str, key: &str, _reason: RemoveReason) {
        let services = self.services.load();
        let Some(fvs) = services.get(vs) else {
            return;
        };
        let clients = fvs.state.lock().remove_entry(table, key);
        self.unpin_all(vs, fvs, &clients);
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

    const S1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 11), 8080);
    const S2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 12), 8080);
    const C1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    const C2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
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
        assert!(st.upsert(C1, "", "k", S1, 100 * S, COALESCE_NS));
        assert!(!st.upsert(C1, "", "k", S1, 100 * S + S / 2, COALESCE_NS));
        assert!(st.upsert(C1, "", "k", S1, 101 * S + 1, COALESCE_NS));
        // A shorter expiry (insert resetting the lifetime) is written.
        assert!(st.upsert(C1, "", "k", S1, 50 * S, COALESCE_NS));
        // Another server or another owning entry is written.
        assert!(st.upsert(C1, "", "k", S2, 50 * S, COALESCE_NS));
        assert!(st.upsert(C1, "", "k2", S2, 50 * S, COALESCE_NS));
        assert_eq!(st.len(), 1);
        // The client moved to k2: removing k unpins nobody.
        assert!(st.remove_entry("", "k").is_empty());
        assert_eq!(st.remove_entry("", "k2"), vec![C1]);
        assert!(st.is_empty());
    }

    #[test]
    fn an_entry_owns_several_clients_and_removal_releases_all() {
        let mut st = PinState::default();
        st.upsert(C1, "t", "k", S1, 10 * S, 0);
        st.upsert(C2, "t", "k", S1, 20 * S, 0);
        let mut gone = st.remove_entry("t", "k");
        gone.sort();
        assert_eq!(gone, vec![C1, C2]);
        assert!(st.is_empty());
        assert!(st.by_entry.is_empty());
    }

    #[test]
    fn remove_where_filters_by_server_and_expiry() {
        let mut st = PinState::default();
        st.upsert(C1, "", "a", S1, 10 * S, 0);
        st.upsert(C2, "", "b", S2, 20 * S, 0);
        assert_eq!(st.remove_where(|s, _| *s != S2), vec![C2]);
        assert_eq!(st.remove_where(|_, exp| exp > 11 * S), vec![C1]);
        assert!(st.is_empty());
    }

    /// Records every kernel call.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
    }

    impl PinSink for Recorder {
        fn pin(
            &self,
            _service: ServiceAddr,
            client: Ipv4Addr,
            server: SocketAddrV4,
            expires_ns: u64,
        ) -> Result<(), DataplaneError> {
            self.calls
                .lock()
                .push(format!("pin {client} {server} {}", expires_ns / S));
            Ok(())
        }
        fn unpin(&self, _service: ServiceAddr, client: Ipv4Addr) {
            self.calls.lock().push(format!("unpin {client}"));
        }
        fn record(&self, vs: &str, client: Ipv4Addr, table: &str, key: &str, _: u64) {
            self.calls
                .lock()
                .push(format!("record {vs} {client} {table}/{key}"));
        }
        fn forget(&self, vs: &str, client: Ipv4Addr) {
            self.calls.lock().push(format!("forget {vs} {client}"));
        }
    }

    fn config(servers: &str, fast_path: bool) -> Config {
        let text = format!(
            "[agent]\ninterfaces = [\"eth0\"]\n\n[[pool]]\nname = \"web\"\nservers = [{servers}]\n\n\
             [[virtual_service]]\nname = \"shop\"\nlisten = \"198.51.100.10:80\"\ntype = \"http\"\n\
             pool = \"web\"\n{}",
            if fast_path {
                "fast_path = \"client_ip\"\n"
            } else {
                ""
            }
        );
        crate::config::parse(&text, std::path::Path::new("/etc/latch/latch.toml"))
            .expect("valid config")
    }

    fn txn(client: Ipv4Addr) -> TxnInfo {
        TxnInfo {
            vs_name: "shop".into(),
            vs_addr: "198.51.100.10:80".parse().expect("addr"),
            client: SocketAddr::from((client, 40000)),
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
            rec.calls.lock().drain(..).collect::<Vec<_>>(),
            vec![
                "pin 203.0.113.2 192.0.2.11:8080 100",
                "record shop 203.0.113.2 /s1",
                "pin 203.0.113.3 192.0.2.12:8080 200",
                "record shop 203.0.113.3 /s2",
            ]
        );
        assert_eq!(fp.stats().pins, 2);

        Mirror::remove(&fp, "shop", "", "s1", RemoveReason::Expired);
        assert_eq!(
            rec.calls.lock().drain(..).collect::<Vec<_>>(),
            vec!["unpin 203.0.113.2", "forget shop 203.0.113.2"]
        );
        // Server 192.0.2.12 leaves the pool: its client is unpinned.
        fp.configure(&config("\"192.0.2.11:8080\"", true));
        assert_eq!(
            rec.calls.lock().drain(..).collect::<Vec<_>>(),
            vec!["unpin 203.0.113.3", "forget shop 203.0.113.3"]
        );
        assert_eq!(fp.pinned_clients("shop"), 0);

        // Turning fast_path off releases every pin; writes are then ignored.
        fp.upserted(&txn(C1), &entry("s1", "192.0.2.11", 300));
        fp.configure(&config("\"192.0.2.11:8080\"", false));
        fp.upserted(&txn(C2), &entry("s9", "192.0.2.11", 300));
        let calls: Vec<String> = rec.calls.lock().drain(..).collect();
        assert_eq!(
            calls.last().map(String::as_str),
            Some("forget shop 203.0.113.2")
        );
        assert!(
            !calls.iter().any(|c| c.contains("203.0.113.3")),
            "{calls:?}"
        );
    }

    #[test]
    fn lapsed_pins_are_forgotten_by_the_sweep() {
        let rec = Arc::new(Recorder::default());
        let fp = FastPath::new(rec.clone());
        fp.configure(&config("\"192.0.2.11:8080\"", true));
        fp.upserted(&txn(C1), &entry("s1", "192.0.2.11", 10));
        fp.upserted(&txn(C2), &entry("s1", "192.0.2.11", 30));
        rec.calls.lock().clear();
        assert_eq!(fp.sweep(20 * S), 1);
        assert_eq!(rec.calls.lock().clone(), vec!["forget shop 203.0.113.2"]);
        assert_eq!(fp.pinned_clients("shop"), 1);
    }

    #[test]
    fn restore_adopts_records_whose_entry_still_names_a_server() {
        let rec = Arc::new(Recorder::default());
        let fp = FastPath::new(rec.clone());
        fp.configure(&config("\"192.0.2.11:8080\"", true));
        let tables = TableStore::new(
            crate::tables::TableLimits::default(),
            Arc::new(crate::tables::NoMirror),
        );
        tables
            .vs("shop")
            .insert("", "s1", "192.0.2.11", 100, 0)
            .expect("insert");
        let record = |client, key: &str| PinRecord {
            vs: "shop".into(),
            client,
            table: String::new(),
            key_hash: crate::dataplane::mirror::key_hash64(key),
            expires_ns: 50 * S,
        };
        let n = fp.restore(vec![record(C1, "s1"), record(C2, "gone")], &tables, S);
        assert_eq!(n, 1);
        assert_eq!(
            rec.calls.lock().drain(..).collect::<Vec<_>>(),
            vec!["unpin 203.0.113.3", "forget shop 203.0.113.3"]
        );
        // The adopted pin is owned by its entry again.
        Mirror::remove(&fp, "shop", "", "s1", RemoveReason::Removed);
        assert_eq!(
            rec.calls.lock().drain(..).collect::<Vec<_>>(),
            vec!["unpin 203.0.113.2", "forget shop 203.0.113.2"]
        );
    }
}
