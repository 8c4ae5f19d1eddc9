//! The kernel copies of user-space state that must outlive the agent: the DataScript tables
//! (DS_TABLE, through [`KernelMirror`]) and the fast-path client pins (PERSIST, through
//! [`PersistPins`]).
//!
//! Both are written from proxy worker threads while a request runs, so their immediate writes
//! take no lock around the syscall: [`RawHash`] issues `BPF_MAP_*_ELEM` directly on a map descriptor (aya's
//! typed maps want `&mut self` to write). A mirror write costs one syscall (1-2 µs here).
//! New entries, value changes and removals are written at once, so a kill -9 loses none of
//! them. Lifetime-only changes are queued and written by [`KernelMirror::flush`], which the
//! agent calls ten times a second: the seed's JSESSIONID scripts extend a session's lifetime
//! on every request (lookup with the default extension, insert on the response), and
//! writing each of those cost about 2 µs of the request's CPU. A restored entry's expiry is
//! then at most one flush period stale.
//!
//! DS_TABLE layout (see [`lb_common::DsKey`]): `{vs id, table id, key bytes} -> {value bytes,
//! expires_ns}` with ids from [`lb_common::ds_name_id`], so they are stable across restarts
//! without any state. Keys and values longer than [`DS_KEY_BYTES`] / [`DS_VALUE_BYTES`] stay
//! in user space only (counted in [`MirrorStats::too_large`]): after a restart those entries
//! are gone. Two kinds of reserved records live in the same map: name records (`vs id` =
//! [`ds_ids::NAMES`]) mapping an id back to its name, and fast-path records (`table id` =
//! [`ds_ids::PINS`]), one per (client address, table entry) the address carries.

use std::{
    collections::{HashMap, HashSet},
    io,
    marker::PhantomData,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;
use aya::maps::{HashMap as AyaHashMap, Map, MapData, MapError};
use dashmap::DashMap;
use lb_common::{
    DS_KEY_BYTES, DS_VALUE_BYTES, DsKey, DsValue, Persist, PersistKey, PersistKey6, PersistKeyOf,
    ds_ids, ds_name_id, map_names, service_flags,
};

use super::family::{Family, V4, V6};
use super::{DataplaneError, Proto, plan};
use crate::tables::EntryView;

const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
/// `BPF_EXIST`: update only a key that is present.
const BPF_EXIST: u64 = 2;

/// The `bpf_attr` member of the `BPF_MAP_*_ELEM` commands. The kernel zero-fills whatever
/// follows when the size passed is shorter than its union.
#[repr(C, align(8))]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn syscall_error(call: &'static str, io_error: io::Error) -> MapError {
    MapError::SyscallError(aya::sys::SyscallError { call, io_error })
}

/// A BPF hash map written through `&self` (see the module docs).
pub(crate) struct RawHash<K, V> {
    name: &'static str,
    map: AyaHashMap<MapData, K, V>,
    _types: PhantomData<(K, V)>,
}

impl<K: aya::Pod, V: aya::Pod> RawHash<K, V> {
    pub(crate) fn new(name: &'static str, map: AyaHashMap<MapData, K, V>) -> Self {
        Self {
            name,
            map,
            _types: PhantomData,
        }
    }

    /// A second handle on a pinned map (its own descriptor).
    pub(crate) fn from_pin(name: &'static str, path: &Path) -> Result<Self, DataplaneError> {
        let data =
            MapData::from_pin(path).map_err(|e| DataplaneError::map(name, "open pinned", e))?;
        let map = Map::from_map_data(data).map_err(|e| DataplaneError::map(name, "open", e))?;
        let map = AyaHashMap::try_from(map).map_err(|e| DataplaneError::map(name, "open", e))?;
        Ok(Self::new(name, map))
    }

    fn elem(
        &self,
        cmd: libc::c_int,
        key: &K,
        value: Option<*const V>,
        flags: u64,
    ) -> io::Result<()> {
        use aya::maps::IterableMap;
        let fd = self.map.map().fd().as_fd().as_raw_fd();
        let mut attr = ElemAttr {
            map_fd: fd as u32,
            _pad: 0,
            key: std::ptr::from_ref(key) as u64,
            value: value.map_or(0, |v| v as u64),
            flags,
        };
        // SAFETY: `attr` points at a key (and value) of the map's sizes, which live until the
        // call returns; the kernel reads at most `size_of::<ElemAttr>()` bytes of `attr`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<ElemAttr>() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Inserts or replaces `key`, with the kernel's error as it came (E2BIG: the map is full).
    pub(crate) fn try_update(&self, key: &K, value: &V) -> io::Result<()> {
        self.elem(BPF_MAP_UPDATE_ELEM, key, Some(std::ptr::from_ref(value)), 0)
    }

    /// Inserts or replaces `key`.
    pub(crate) fn update(&self, key: &K, value: &V) -> Result<(), DataplaneError> {
        self.elem(BPF_MAP_UPDATE_ELEM, key, Some(std::ptr::from_ref(value)), 0)
            .map_err(|e| {
                DataplaneError::map(self.name, "write", syscall_error("bpf_map_update_elem", e))
            })
    }

    /// Replaces `key` if it is present; false when it was not there (never creates it).
    pub(crate) fn update_existing(&self, key: &K, value: &V) -> Result<bool, DataplaneError> {
        match self.elem(
            BPF_MAP_UPDATE_ELEM,
            key,
            Some(std::ptr::from_ref(value)),
            BPF_EXIST,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(DataplaneError::map(
                self.name,
                "write",
                syscall_error("bpf_map_update_elem", e),
            )),
        }
    }

    /// Removes `key`; false when it was not there.
    pub(crate) fn delete(&self, key: &K) -> Result<bool, DataplaneError> {
        match self.elem(BPF_MAP_DELETE_ELEM, key, None, 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(DataplaneError::map(
                self.name,
                "delete",
                syscall_error("bpf_map_delete_elem", e),
            )),
        }
    }

    /// The value of `key`, if present.
    pub(crate) fn lookup(&self, key: &K) -> Result<Option<V>, DataplaneError> {
        let mut out = std::mem::MaybeUninit::<V>::zeroed();
        match self.elem(
            BPF_MAP_LOOKUP_ELEM,
            key,
            Some(out.as_mut_ptr().cast_const()),
            0,
        ) {
            // SAFETY: the kernel filled all `size_of::<V>()` bytes; V is Pod.
            Ok(()) => Ok(Some(unsafe { out.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(DataplaneError::map(
                self.name,
                "read",
                syscall_error("bpf_map_lookup_elem", e),
            )),
        }
    }

    /// The map's descriptor.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use aya::maps::IterableMap;
        self.map.map().fd().as_fd()
    }

    /// Every entry (the whole map read in batches: startup and reload only).
    pub(crate) fn entries(&self) -> Result<Vec<(K, V)>, DataplaneError> {
        let (ks, vs) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
        let mut out = Vec::new();
        super::maps::lookup_batches(self.fd(), ks, vs, |keys, values, n| {
            for i in 0..n {
                // SAFETY: the kernel wrote `n` keys of `ks` bytes and values of `vs` bytes
                // back to back; K and V are Pod (any bytes are a valid value), read unaligned.
                let kv = unsafe {
                    (
                        std::ptr::read_unaligned(keys[i * ks..].as_ptr().cast::<K>()),
                        std::ptr::read_unaligned(values[i * vs..].as_ptr().cast::<V>()),
                    )
                };
                out.push(kv);
            }
        })
        .map_err(|e| {
            DataplaneError::map(self.name, "read", syscall_error("bpf_map_lookup_batch", e))
        })?;
        Ok(out)
    }
}

// ---- fast-path pins ---------------------------------------------------------------------------

/// A service as PERSIST knows it: (VIP, port, protocol).
pub type PinService = (IpAddr, u16, Proto);

/// What [`PersistPins`] needs to know of the programmed state (both families): refreshed by
/// every apply.
#[derive(Debug, Default)]
pub(crate) struct PinIndex {
    /// Persistence group and IPv6 client prefix of each programmed service.
    services: HashMap<PinService, (u32, u32)>,
    /// Id and generation of each programmed backend (ids are one space for both families).
    backends: HashMap<SocketAddr, (u32, u32)>,
}

impl PinIndex {
    pub(crate) fn from_states(v4: &plan::State<V4>, v6: &plan::State<V6>) -> Self {
        let mut index = Self::default();
        index.add(v4);
        index.add(v6);
        index
    }

    fn add<F: Family>(&mut self, state: &plan::State<F>) {
        self.services
            .extend(state.services.iter().filter_map(|(k, s)| {
                let (vip, port, proto) = plan::service_key_parts::<F>(k)?;
                let prefix = service_flags::persist_prefix(s.flags);
                Some(((vip.into(), port, proto), (s.persist_group, prefix)))
            }));
        self.backends
            .extend(state.backend_ids.iter().map(|(addr, id)| {
                let generation = state.backend(*id).map_or(0, |b| b.generation);
                ((*addr).into(), (*id, generation))
            }));
    }
}

/// A PERSIST (IPv4) or PERSIST6 (IPv6) key.
enum PinKey {
    V4(PersistKey),
    V6(PersistKey6),
}

/// The persistence key of `client` in `group`: XDP's (`lb-ebpf/src/persist.rs`), an IPv6
/// client masked to `prefix`.
fn persist_key<F: Family>(group: u32, prefix: u32, client: F::Ip) -> PersistKeyOf<F::Raw> {
    PersistKeyOf {
        group,
        client_addr: F::persist_addr(&F::raw(client), prefix),
    }
}

/// A cheap, cloneable handle that pins clients in PERSIST / PERSIST6 from any thread, without
/// waiting on the agent's data-plane lock or on a reload.
#[derive(Clone)]
pub struct PersistPins {
    map: Arc<RawHash<PersistKey, Persist>>,
    map6: Arc<RawHash<PersistKey6, Persist>>,
    index: Arc<ArcSwap<PinIndex>>,
}

impl std::fmt::Debug for PersistPins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistPins").finish_non_exhaustive()
    }
}

impl PersistPins {
    pub(crate) fn new(
        map: RawHash<PersistKey, Persist>,
        map6: RawHash<PersistKey6, Persist>,
        index: Arc<ArcSwap<PinIndex>>,
    ) -> Self {
        Self {
            map: Arc::new(map),
            map6: Arc::new(map6),
            index,
        }
    }

    fn key(
        &self,
        index: &PinIndex,
        service: PinService,
        client: IpAddr,
    ) -> Result<PinKey, DataplaneError> {
        let (vip, port, proto) = service;
        let (group, prefix) =
            index
                .services
                .get(&service)
                .copied()
                .ok_or(DataplaneError::UnknownService {
                    service: SocketAddr::new(vip, port),
                    proto,
                })?;
        match (vip, client) {
            (IpAddr::V4(_), IpAddr::V4(c)) => Ok(PinKey::V4(persist_key::<V4>(group, prefix, c))),
            (IpAddr::V6(_), IpAddr::V6(c)) => Ok(PinKey::V6(persist_key::<V6>(group, prefix, c))),
            _ => Err(DataplaneError::PinFamily {
                client,
                service: SocketAddr::new(vip, port),
            }),
        }
    }

    /// Pins `client` to `backend` for new connections to `service` until `expires_ns`
    /// (CLOCK_MONOTONIC). An IPv6 client is pinned by the service's persistence prefix (as
    /// XDP looks it up), so the pin covers every address of that prefix.
    pub fn pin(
        &self,
        service: PinService,
        client: IpAddr,
        backend: SocketAddr,
        expires_ns: u64,
    ) -> Result<(), DataplaneError> {
        let index = self.index.load();
        let key = self.key(&index, service, client)?;
        let (backend_id, generation) = index
            .backends
            .get(&backend)
            .copied()
            .ok_or(DataplaneError::UnknownBackend { addr: backend })?;
        let value = Persist {
            backend_id,
            generation,
            expires_ns,
        };
        match key {
            PinKey::V4(k) => self.map.update(&k, &value),
            PinKey::V6(k) => self.map6.update(&k, &value),
        }
    }

    /// Removes a client's pin; false when there was none (or the service is gone, which took
    /// its pins with it).
    pub fn unpin(&self, service: PinService, client: IpAddr) -> Result<bool, DataplaneError> {
        let index = self.index.load();
        match self.key(&index, service, client) {
            Ok(PinKey::V4(k)) => self.map.delete(&k),
            Ok(PinKey::V6(k)) => self.map6.delete(&k),
            Err(DataplaneError::UnknownService { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The backend and expiry a client is pinned to (diagnostics and tests).
    pub fn pinned(
        &self,
        service: PinService,
        client: IpAddr,
    ) -> Result<Option<(SocketAddr, u64)>, DataplaneError> {
        let index = self.index.load();
        let found = match self.key(&index, service, client)? {
            PinKey::V4(k) => self.map.lookup(&k)?,
            PinKey::V6(k) => self.map6.lookup(&k)?,
        };
        let Some(p) = found else {
            return Ok(None);
        };
        Ok(index
            .backends
            .iter()
            .find(|(_, (id, _))| *id == p.backend_id)
            .map(|(addr, _)| (*addr, p.expires_ns)))
    }
}

// ---- DataScript table mirror ------------------------------------------------------------------

/// The DS_TABLE key of an entry; `None` when the key is too long for the kernel mirror.
pub fn ds_key(vs_id: u32, table_id: u32, key: &[u8]) -> Option<DsKey> {
    if key.len() > DS_KEY_BYTES {
        return None;
    }
    let mut k = DsKey {
        vs_id,
        table_id,
        key_len: key.len() as u32,
        ..DsKey::default()
    };
    k.key[..key.len()].copy_from_slice(key);
    Some(k)
}

/// The DS_TABLE value of an entry; `None` when the value is too long for the kernel mirror.
pub fn ds_value(value: &[u8], expires_ns: u64) -> Option<DsValue> {
    if value.len() > DS_VALUE_BYTES {
        return None;
    }
    let mut v = DsValue {
        expires_ns,
        value_len: value.len() as u32,
        ..DsValue::default()
    };
    v.value[..value.len()].copy_from_slice(value);
    Some(v)
}

fn key_bytes(k: &DsKey) -> Option<&[u8]> {
    k.key.get(..k.key_len as usize)
}

fn value_bytes(v: &DsValue) -> Option<&[u8]> {
    v.value.get(..v.value_len as usize)
}

/// 64-bit FNV-1a of a table key: how a fast-path record names the entry an address carries.
pub fn key_hash64(key: &str) -> u64 {
    lb_common::fnv::fnv1a_64(key.as_bytes())
}

fn name_key(id: u32) -> DsKey {
    let mut k = DsKey {
        vs_id: ds_ids::NAMES,
        key_len: 4,
        ..DsKey::default()
    };
    k.key[..4].copy_from_slice(&id.to_le_bytes());
    k
}

/// Bytes after the address in a fast-path record's key: table id and key hash.
const CARRIER_TAIL: usize = 12;

/// The record saying that `client` carries the entry of table `table_id` whose key hashes to
/// `key_hash`: key `{vs id, PINS, client ++ table id ++ key hash}` (the client's 4 or 16
/// bytes, so the key length tells the family), an empty value that never expires (it goes
/// with its entry, see [`KernelMirror::restore`]).
fn carrier_key(vs_id: u32, client: IpAddr, table_id: u32, key_hash: u64) -> DsKey {
    let octets = match client {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let n = octets.len();
    let mut k = DsKey {
        vs_id,
        table_id: ds_ids::PINS,
        key_len: (n + CARRIER_TAIL) as u32,
        ..DsKey::default()
    };
    k.key[..n].copy_from_slice(&octets);
    k.key[n..n + 4].copy_from_slice(&table_id.to_le_bytes());
    k.key[n + 4..n + CARRIER_TAIL].copy_from_slice(&key_hash.to_le_bytes());
    k
}

fn carrier_value() -> DsValue {
    DsValue {
        expires_ns: u64::MAX,
        ..DsValue::default()
    }
}

/// A fast-path record read back after a restart: `client` carries a session key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinRecord {
    /// Virtual service name.
    pub vs: String,
    /// The client address (IPv6: as pinned, masked to the service's prefix).
    pub client: IpAddr,
    /// Table of the entry.
    pub table: String,
    /// [`key_hash64`] of the entry's key.
    pub key_hash: u64,
}

/// What [`KernelMirror::restore`] found.
#[derive(Debug, Default)]
pub struct Restored {
    /// Live entries per virtual service.
    pub entries: HashMap<String, Vec<EntryView>>,
    /// Fast-path (address, key) records of configured virtual services.
    pub pins: Vec<PinRecord>,
    /// Entries and records removed: expired, of virtual services no longer configured, or
    /// unreadable.
    pub removed: usize,
}

/// Table entries of one virtual service the mirror could not take (monotonic counts of
/// writes): they live in user space only and are lost when the agent is killed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unmirrored {
    /// DS_TABLE was full (`[agent.capacity] table_mirror_entries`).
    pub full: u64,
    /// Key over [`DS_KEY_BYTES`], value over [`DS_VALUE_BYTES`], or a table or virtual
    /// service name that cannot be recorded.
    pub too_large: u64,
    /// The kernel refused the write otherwise (out of memory).
    pub failed: u64,
}

impl Unmirrored {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.full + self.too_large + self.failed
    }
}

/// Why an entry was not mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Miss {
    Full,
    TooLarge,
    Failed,
}

impl Miss {
    fn as_str(self) -> &'static str {
        match self {
            Miss::Full => "the kernel mirror is full ([agent.capacity] table_mirror_entries)",
            Miss::TooLarge => "key or value longer than the kernel mirror holds (64 bytes)",
            Miss::Failed => "the kernel refused the write",
        }
    }
}

/// Least time between two warnings about entries not mirrored.
const UNMIRRORED_LOG_INTERVAL_NS: u64 = 10_000_000_000;

/// Counters of the mirror (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorStats {
    /// Entries written (insert, refresh, extension).
    pub written: u64,
    /// Entries removed (script, admin, expiry).
    pub removed: u64,
    /// Entries kept in user space only: key, value, table or VS name too long, or a 32-bit
    /// name id collision.
    pub too_large: u64,
    /// Writes the kernel refused (map full, out of memory).
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    removed: AtomicU64,
    too_large: AtomicU64,
    failed: AtomicU64,
}

/// Mirrors every DataScript table change into DS_TABLE (implements [`crate::tables::Mirror`]).
pub struct KernelMirror {
    map: Arc<RawHash<DsKey, DsValue>>,
    /// Name -> id once its name record is known to be in the map; `None`: not mirrorable.
    names: DashMap<Box<str>, Option<u32>>,
    /// Lifetime-only changes not written yet, the latest per key (see the module docs).
    /// [`KernelMirror::flush`] writes each under this lock and an immediate write drops its
    /// key from here first, so a queued extension never lands after a newer value or a
    /// removal.
    pending: parking_lot::Mutex<HashMap<DsKey, DsValue>>,
    counters: Counters,
    /// Entries not mirrored, per virtual service.
    unmirrored: DashMap<Box<str>, Unmirrored>,
    /// Monotonic time of the last warning about them (0: never), and how many since.
    last_warning_ns: AtomicU64,
    since_warning: AtomicU64,
}

impl std::fmt::Debug for KernelMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMirror")
            .field("names", &self.names.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl KernelMirror {
    pub(crate) fn new(map: Arc<RawHash<DsKey, DsValue>>) -> Self {
        Self {
            map,
            names: DashMap::new(),
            pending: parking_lot::Mutex::new(HashMap::new()),
            counters: Counters::default(),
            unmirrored: DashMap::new(),
            last_warning_ns: AtomicU64::new(0),
            since_warning: AtomicU64::new(0),
        }
    }

    /// Entry writes refused because DS_TABLE was full, all virtual services together.
    pub fn full_total(&self) -> u64 {
        self.unmirrored.iter().map(|u| u.full).sum()
    }

    /// Entries of `vs` the mirror could not take since the agent started.
    pub fn unmirrored(&self, vs: &str) -> Unmirrored {
        self.unmirrored.get(vs).map(|u| *u).unwrap_or_default()
    }

    /// Counts an entry of `vs` that stays in user space only, and warns, at most once every
    /// ten seconds (with how many there were since the last warning).
    fn miss(&self, vs: &str, table: &str, why: Miss) {
        let totals = {
            let mut u = self.unmirrored.entry(Box::from(vs)).or_default();
            match why {
                Miss::Full => u.full += 1,
                Miss::TooLarge => u.too_large += 1,
                Miss::Failed => u.failed += 1,
            }
            *u
        };
        match why {
            Miss::TooLarge => self.counters.too_large.fetch_add(1, Ordering::Relaxed),
            Miss::Full | Miss::Failed => self.counters.failed.fetch_add(1, Ordering::Relaxed),
        };
        let since = self.since_warning.fetch_add(1, Ordering::Relaxed) + 1;
        let now = super::monotonic_now_ns();
        let last = self.last_warning_ns.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= UNMIRRORED_LOG_INTERVAL_NS)
            && self
                .last_warning_ns
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.since_warning.store(0, Ordering::Relaxed);
            tracing::warn!(
                vs,
                table,
                reason = why.as_str(),
                since_last_warning = since,
                vs_unmirrored_total = totals.total(),
                "table entries not mirrored into the kernel: they live in user space only and are \
                 lost if the agent is killed (latch_table_unmirrored_total in /metrics)"
            );
        }
    }

    /// Writes the queued lifetime-only changes, in chunks written under the queue's lock (so
    /// an immediate write of the same key waits for at most one chunk). An entry removed
    /// meanwhile stays removed: the write only replaces a present key.
    pub fn flush(&self) {
        const CHUNK: usize = 64;
        loop {
            let mut pending = self.pending.lock();
            let chunk: Vec<(DsKey, DsValue)> =
                pending.iter().take(CHUNK).map(|(k, v)| (*k, *v)).collect();
            for (k, v) in &chunk {
                pending.remove(k);
                match self.map.update_existing(k, v) {
                    Ok(true) => {
                        self.counters.written.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(err) => {
                        self.counters.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%err, "table lifetime not mirrored into the kernel");
                    }
                }
            }
            if chunk.len() < CHUNK {
                return;
            }
        }
    }

    /// The mirror's counters.
    pub fn stats(&self) -> MirrorStats {
        let c = &self.counters;
        MirrorStats {
            written: c.written.load(Ordering::Relaxed),
            removed: c.removed.load(Ordering::Relaxed),
            too_large: c.too_large.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// The id of `name`, making sure its name record is in the map (one lookup, and maybe one
    /// write, the first time a name is seen). `None` when the name cannot be mirrored: longer
    /// than a value, or its id already names another name.
    fn id(&self, name: &str) -> Option<u32> {
        if let Some(id) = self.names.get(name) {
            return *id;
        }
        let id = self.register(name);
        self.names.insert(Box::from(name), id);
        id
    }

    fn register(&self, name: &str) -> Option<u32> {
        let id = ds_name_id(name.as_bytes());
        let value = ds_value(name.as_bytes(), u64::MAX)?;
        let key = name_key(id);
        match self.map.lookup(&key) {
            Ok(Some(existing)) if value_bytes(&existing) == Some(name.as_bytes()) => Some(id),
            Ok(Some(existing)) => {
                tracing::warn!(
                    name,
                    other = %String::from_utf8_lossy(value_bytes(&existing).unwrap_or_default()),
                    "name id collision: this name's table entries stay in user space only"
                );
                None
            }
            Ok(None) => match self.map.update(&key, &value) {
                Ok(()) => Some(id),
                Err(err) => {
                    tracing::warn!(name, %err, "cannot record a table name in the kernel mirror");
                    None
                }
            },
            Err(err) => {
                tracing::warn!(name, %err, "cannot read the kernel mirror's name records");
                None
            }
        }
    }

    fn entry_key(&self, vs: &str, table: &str, key: &str) -> Option<DsKey> {
        ds_key(self.id(vs)?, self.id(table)?, key.as_bytes())
    }

    /// Records that `client` carries entry (`table`, `key`) of `vs` (fast path).
    pub fn record_carrier(&self, vs: &str, client: IpAddr, table: &str, key: &str) {
        let (Some(vs_id), Some(table_id)) = (self.id(vs), self.id(table)) else {
            return;
        };
        let k = carrier_key(vs_id, client, table_id, key_hash64(key));
        if let Err(err) = self.map.update(&k, &carrier_value()) {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%err, %client, "cannot record a fast-path session carrier");
        }
    }

    /// Forgets that record.
    pub fn forget_carrier(&self, vs: &str, client: IpAddr, table: &str, key: &str) {
        self.forget_carrier_hashed(vs, client, table, key_hash64(key));
    }

    /// Forgets a record known by its key's hash (after a restart, when the entry is gone).
    pub fn forget_carrier_hashed(&self, vs: &str, client: IpAddr, table: &str, key_hash: u64) {
        let (Some(vs_id), Some(table_id)) = (self.id(vs), self.id(table)) else {
            return;
        };
        if let Err(err) = self
            .map
            .delete(&carrier_key(vs_id, client, table_id, key_hash))
        {
            tracing::debug!(%err, %client, "cannot remove a fast-path session record");
        }
    }

    /// Reads the mirror back after a restart: returns the live entries and fast-path records of
    /// `configured` virtual services, and deletes everything else (expired entries, entries
    /// of other virtual services, records whose names are unknown). Name records are kept.
    pub fn restore(&self, configured: &[String], now_ns: u64) -> Result<Restored, DataplaneError> {
        let all = self.map.entries()?;
        let mut names: HashMap<u32, String> = HashMap::new();
        for (k, v) in &all {
            if k.vs_id != ds_ids::NAMES {
                continue;
            }
            let (Some(kb), Some(vb)) = (key_bytes(k), value_bytes(v)) else {
                continue;
            };
            let (Ok(id), Ok(name)) = (<[u8; 4]>::try_from(kb), std::str::from_utf8(vb)) else {
                continue;
            };
            let id = u32::from_le_bytes(id);
            if ds_name_id(name.as_bytes()) == id {
                self.names.insert(Box::from(name), Some(id));
                names.insert(id, name.to_owned());
            }
        }
        let vs_by_id: HashMap<u32, &String> = configured
            .iter()
            .map(|n| (ds_name_id(n.as_bytes()), n))
            .collect();
        let mut out = Restored::default();
        let mut stale = Vec::new();
        for (k, v) in all {
            if k.vs_id == ds_ids::NAMES {
                continue;
            }
            let Some(vs) = vs_by_id.get(&k.vs_id) else {
                stale.push(k);
                continue;
            };
            if v.expires_ns <= now_ns {
                stale.push(k);
                continue;
            }
            let decoded = if k.table_id == ds_ids::PINS {
                decode_pin(&k, &v, &names).map(|(client, table, key_hash)| {
                    if k.key_len == LEGACY_PIN_KEY_LEN {
                        // One record per pinned client (before issue 18): rewritten as the
                        // (address, key) record it amounts to.
                        let new =
                            carrier_key(k.vs_id, client, ds_name_id(table.as_bytes()), key_hash);
                        if self.map.update(&new, &carrier_value()).is_ok() {
                            stale.push(k);
                        }
                    }
                    out.pins.push(PinRecord {
                        vs: (*vs).clone(),
                        client,
                        table,
                        key_hash,
                    });
                })
            } else {
                decode_entry(&k, &v, &names).map(|e| {
                    out.entries.entry((*vs).clone()).or_default().push(e);
                })
            };
            if decoded.is_none() {
                stale.push(k);
            }
        }
        for k in &stale {
            if self.map.delete(k)? {
                out.removed += 1;
            }
        }
        Ok(out)
    }

    /// Deletes every entry and fast-path record of virtual services not in `keep` (reload).
    pub fn retain_vs(&self, keep: &[String]) -> Result<usize, DataplaneError> {
        let ids: HashSet<u32> = keep.iter().map(|n| ds_name_id(n.as_bytes())).collect();
        let mut n = 0;
        for (k, _) in self.map.entries()? {
            if k.vs_id != ds_ids::NAMES && !ids.contains(&k.vs_id) && self.map.delete(&k)? {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn decode_entry(k: &DsKey, v: &DsValue, names: &HashMap<u32, String>) -> Option<EntryView> {
    Some(EntryView {
        table: names.get(&k.table_id)?.clone(),
        key: std::str::from_utf8(key_bytes(k)?).ok()?.to_owned(),
        value: std::str::from_utf8(value_bytes(v)?).ok()?.to_owned(),
        expires_at_mono_ns: v.expires_ns,
    })
}

/// Key length of the fast-path records older agents wrote: `{client}` -> `{table id, key
/// hash}`, one per pinned client.
const LEGACY_PIN_KEY_LEN: u32 = 4;

fn decode_pin(
    k: &DsKey,
    v: &DsValue,
    names: &HashMap<u32, String>,
) -> Option<(IpAddr, String, u64)> {
    let kb = key_bytes(k)?;
    let (addr, rest) = if k.key_len == LEGACY_PIN_KEY_LEN {
        (kb, value_bytes(v)?)
    } else {
        kb.split_at_checked(kb.len().checked_sub(CARRIER_TAIL)?)?
    };
    let client = match addr.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
        _ => return None,
    };
    if rest.len() != CARRIER_TAIL {
        return None;
    }
    let table_id = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    let hash = u64::from_le_bytes(rest.get(4..12)?.try_into().ok()?);
    Some((client, names.get(&table_id)?.clone(), hash))
}

impl crate::tables::Mirror for KernelMirror {
    fn upsert(&self, vs: &str, table: &str, key: &str, value: &str, expires_at_mono_ns: u64) {
        let (Some(k), Some(v)) = (
            self.entry_key(vs, table, key),
            ds_value(value.as_bytes(), expires_at_mono_ns),
        ) else {
            self.miss(vs, table, Miss::TooLarge);
            return;
        };
        self.pending.lock().remove(&k);
        match self.map.try_update(&k, &v) {
            Ok(()) => {
                self.counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                let why = if err.raw_os_error() == Some(libc::E2BIG) {
                    Miss::Full
                } else {
                    Miss::Failed
                };
                tracing::debug!(%err, vs, table, "table entry not mirrored into the kernel");
                self.miss(vs, table, why);
            }
        }
    }

    fn extend(&self, vs: &str, table: &str, key: &str, value: &str, expires_at_mono_ns: u64) {
        // Too large or unnamed: the entry was never mirrored, so neither is its lifetime.
        let (Some(k), Some(v)) = (
            self.entry_key(vs, table, key),
            ds_value(value.as_bytes(), expires_at_mono_ns),
        ) else {
            return;
        };
        self.pending.lock().insert(k, v);
    }

    fn remove(&self, vs: &str, table: &str, key: &str, _reason: crate::tables::RemoveReason) {
        // Entries that were never mirrored have no key here and nothing to delete.
        let Some(k) = self.entry_key(vs, table, key) else {
            return;
        };
        self.pending.lock().remove(&k);
        match self.map.delete(&k) {
            Ok(true) => {
                self.counters.removed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(err) => tracing::debug!(%err, vs, table, "mirrored entry not removed"),
        }
    }
}

/// Opens the handles the mirror and pins use, next to the loader's own.
pub(crate) fn open_pins(
    vdir: &Path,
    index: Arc<ArcSwap<PinIndex>>,
) -> Result<PersistPins, DataplaneError> {
    let persist = RawHash::from_pin(map_names::PERSIST, &vdir.join(map_names::PERSIST))?;
    let persist6 = RawHash::from_pin(map_names::PERSIST6, &vdir.join(map_names::PERSIST6))?;
    Ok(PersistPins::new(persist, persist6, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_zero_padded_and_bounded() {
        let k = ds_key(7, 9, b"abc").expect("fits");
        assert_eq!((k.vs_id, k.table_id, k.key_len), (7, 9, 3));
        assert_eq!(&k.key[..3], b"abc");
        assert!(k.key[3..].iter().all(|&b| b == 0));
        assert_eq!(key_bytes(&k), Some(&b"abc"[..]));
        assert_eq!(ds_key(7, 9, b"abc"), Some(k), "equal keys are equal bytes");
        assert!(ds_key(1, 1, &[b'x'; DS_KEY_BYTES]).is_some());
        assert!(ds_key(1, 1, &[b'x'; DS_KEY_BYTES + 1]).is_none());
        let v = ds_value(b"192.0.2.11", 42).expect("fits");
        assert_eq!(value_bytes(&v), Some(&b"192.0.2.11"[..]));
        assert_eq!(v.expires_ns, 42);
        assert!(ds_value(&[b'x'; DS_VALUE_BYTES + 1], 1).is_none());
    }

    #[test]
    fn entries_and_pins_decode_with_their_names() {
        let names: HashMap<u32, String> = [("", ds_name_id(b"")), ("ids", ds_name_id(b"ids"))]
            .into_iter()
            .map(|(n, id)| (id, n.to_owned()))
            .collect();
        let k = ds_key(5, ds_name_id(b"ids"), b"s1").expect("key");
        let v = ds_value(b"192.0.2.12:8080", 1000).expect("value");
        let e = decode_entry(&k, &v, &names).expect("decodes");
        assert_eq!(
            (e.table.as_str(), e.key.as_str(), e.value.as_str()),
            ("ids", "s1", "192.0.2.12:8080")
        );
        assert_eq!(e.expires_at_mono_ns, 1000);
        // An unknown table id does not decode (and is then deleted by restore).
        let orphan = ds_key(5, 12345, b"s1").expect("key");
        assert!(decode_entry(&orphan, &v, &names).is_none());

        let client = IpAddr::from([203, 0, 113, 2]);
        let pk = carrier_key(5, client, ds_name_id(b""), key_hash64("cookie"));
        let (c, table, hash) = decode_pin(&pk, &carrier_value(), &names).expect("record decodes");
        assert_eq!((c, table.as_str()), (client, ""));
        assert_eq!(hash, key_hash64("cookie"));
        assert_ne!(hash, key_hash64("cookie2"));
        // Two keys of one address are two records.
        assert_ne!(
            pk,
            carrier_key(5, client, ds_name_id(b""), key_hash64("cookie2"))
        );
        // The one-record-per-client form of older agents still decodes.
        let mut legacy = DsKey {
            vs_id: 5,
            table_id: ds_ids::PINS,
            key_len: LEGACY_PIN_KEY_LEN,
            ..DsKey::default()
        };
        legacy.key[..4].copy_from_slice(&[203, 0, 113, 2]);
        let mut lv = DsValue {
            expires_ns: 77,
            value_len: 12,
            ..DsValue::default()
        };
        lv.value[..4].copy_from_slice(&ds_name_id(b"ids").to_le_bytes());
        lv.value[4..12].copy_from_slice(&key_hash64("k").to_le_bytes());
        let (c, table, hash) = decode_pin(&legacy, &lv, &names).expect("legacy decodes");
        assert_eq!((c, table.as_str(), hash), (client, "ids", key_hash64("k")));

        // An IPv6 address's record: 16 address bytes, decoded as IPv6, distinct from every
        // IPv4 one.
        let client6: IpAddr = "2001:db8:c::100".parse().expect("addr");
        let pk6 = carrier_key(5, client6, ds_name_id(b"ids"), key_hash64("cookie"));
        assert_eq!(pk6.key_len, 28);
        let (c, table, hash) = decode_pin(&pk6, &carrier_value(), &names).expect("v6 decodes");
        assert_eq!(
            (c, table.as_str(), hash),
            (client6, "ids", key_hash64("cookie"))
        );
        // A key of another length is not a record.
        let mut bad = pk6;
        bad.key_len = 20;
        assert!(decode_pin(&bad, &carrier_value(), &names).is_none());
    }

    #[test]
    fn name_ids_avoid_reserved_values_and_records_round_trip() {
        for n in ["", "shop", "ids", "a-long-virtual-service-name"] {
            let id = ds_name_id(n.as_bytes());
            assert_ne!(id, ds_ids::NAMES);
            assert_ne!(id, ds_ids::PINS);
        }
        let k = name_key(0xdead_beef);
        assert_eq!(k.vs_id, ds_ids::NAMES);
        assert_eq!(key_bytes(&k), Some(&0xdead_beefu32.to_le_bytes()[..]));
    }
}
