//! Typed handles on the pinned maps, the layout check done before aya adopts a pin, and the
//! layout manifest.
//!
//! aya reuses a pinned map by name without comparing its shape with the object's definition,
//! and then reads and writes it with the new sizes. So every pin is checked here first.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapInfo, MapType, PerCpuArray, PerCpuValues};
use lb_common::{
    Backend, Backend6, CONNTRACK_FLAGS, Capacities, DS_TABLE_FLAGS, DsKey, DsValue, Flow, FlowKey,
    FlowKey6, FlowKeyOf, LAYOUT_VERSION, NAT_REPLY_FLAGS, NAT_SERVER_WORDS, Persist, PersistKey,
    PersistKey6, PersistKeyOf, ReplyKey, ReplyKey6, ReplyKeyOf, ReplySources, ReplySources6,
    ReplySourcesOf, Service, ServiceKey, ServiceKey6, TrafficCounters, map_names, stat,
};
use parking_lot::Mutex;

use super::error::DataplaneError;
use super::family::{Family, V4, V6};
use super::plan::{Key, Slot};

/// Kernel map kinds latch uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Hash,
    LruHash,
    Array,
    PerCpuArray,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Hash => "hash",
            Kind::LruHash => "lru_hash",
            Kind::Array => "array",
            Kind::PerCpuArray => "percpu_array",
        }
    }

    fn of(t: MapType) -> Option<Self> {
        match t {
            MapType::Hash => Some(Kind::Hash),
            MapType::LruHash => Some(Kind::LruHash),
            MapType::Array => Some(Kind::Array),
            MapType::PerCpuArray => Some(Kind::PerCpuArray),
            _ => None,
        }
    }
}

/// Shape of one map as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub kind: Option<Kind>,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} key {}B value {}B max_entries {} flags {:#x}",
            self.kind.map_or("unknown type", Kind::name),
            self.key_size,
            self.value_size,
            self.max_entries,
            self.flags
        )
    }
}

const fn shape(kind: Kind, key_size: usize, value_size: usize, max_entries: u32) -> Shape {
    Shape {
        kind: Some(kind),
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
        flags: 0,
    }
}

use core::mem::size_of;

/// Every map the XDP object declares, with the shape lb-common's types and the configured
/// capacities give it. A map added later (DS_TABLE) may be absent from an older pin directory
/// of the same layout version: the loader then creates and pins it, and the manifest is
/// rewritten (see [`check_pins`]).
pub(crate) const fn expected(caps: &Capacities) -> [(&'static str, Shape); 16] {
    [
        (
            map_names::SERVICES,
            shape(
                Kind::Hash,
                size_of::<ServiceKey>(),
                size_of::<Service>(),
                caps.services,
            ),
        ),
        (
            map_names::BACKENDS,
            shape(Kind::Array, 4, size_of::<Backend>(), caps.backends),
        ),
        (
            map_names::MAGLEV,
            shape(Kind::Array, 4, 4, caps.maglev_entries()),
        ),
        (
            map_names::CONNTRACK,
            Shape {
                flags: CONNTRACK_FLAGS,
                ..shape(
                    Kind::LruHash,
                    size_of::<FlowKey>(),
                    size_of::<Flow>(),
                    caps.connections,
                )
            },
        ),
        (
            map_names::PERSIST,
            shape(
                Kind::Hash,
                size_of::<PersistKey>(),
                size_of::<Persist>(),
                caps.client_pins,
            ),
        ),
        (
            map_names::STATS,
            shape(Kind::PerCpuArray, 4, 8, stat::COUNT),
        ),
        (
            map_names::SERVICE_STATS,
            shape(
                Kind::PerCpuArray,
                4,
                size_of::<TrafficCounters>(),
                caps.services,
            ),
        ),
        (
            map_names::BACKEND_STATS,
            shape(
                Kind::PerCpuArray,
                4,
                size_of::<TrafficCounters>(),
                caps.backends,
            ),
        ),
        (
            map_names::DS_TABLE,
            Shape {
                flags: DS_TABLE_FLAGS,
                ..shape(
                    Kind::Hash,
                    size_of::<DsKey>(),
                    size_of::<DsValue>(),
                    caps.table_mirror_entries,
                )
            },
        ),
        (
            map_names::NAT_REPLY,
            Shape {
                flags: NAT_REPLY_FLAGS,
                ..shape(
                    Kind::Hash,
                    size_of::<ReplyKey>(),
                    size_of::<ReplySources>(),
                    caps.nat_reply_entries(),
                )
            },
        ),
        (
            map_names::NAT_SERVERS,
            shape(Kind::Array, 4, 8, NAT_SERVER_WORDS),
        ),
        (
            map_names::SERVICES6,
            shape(
                Kind::Hash,
                size_of::<ServiceKey6>(),
                size_of::<Service>(),
                caps.services,
            ),
        ),
        (
            map_names::BACKENDS6,
            shape(Kind::Array, 4, size_of::<Backend6>(), caps.backends),
        ),
        (
            map_names::CONNTRACK6,
            Shape {
                flags: CONNTRACK_FLAGS,
                ..shape(
                    Kind::LruHash,
                    size_of::<FlowKey6>(),
                    size_of::<Flow>(),
                    caps.connections_v6,
                )
            },
        ),
        (
            map_names::PERSIST6,
            shape(
                Kind::Hash,
                size_of::<PersistKey6>(),
                size_of::<Persist>(),
                caps.client_pins_v6,
            ),
        ),
        (
            map_names::NAT_REPLY6,
            Shape {
                flags: NAT_REPLY_FLAGS,
                ..shape(
                    Kind::Hash,
                    size_of::<ReplyKey6>(),
                    size_of::<ReplySources6>(),
                    caps.nat_reply_entries(),
                )
            },
        ),
    ]
}

/// Maps the layout manifest does not list: the manifest is one fixed 1 KiB value, which the
/// IPv6 maps' lines would overflow. Their shapes are still checked pin by pin
/// ([`check_pins`]), which is what refuses an incompatible layout.
const UNLISTED: [&str; 5] = [
    map_names::SERVICES6,
    map_names::BACKENDS6,
    map_names::CONNTRACK6,
    map_names::PERSIST6,
    map_names::NAT_REPLY6,
];

/// The maps whose size may change between agents: the capacities, and STATS when counters
/// are added.
pub(crate) const RESIZABLE: [&str; 15] = [
    map_names::STATS,
    map_names::SERVICES,
    map_names::BACKENDS,
    map_names::MAGLEV,
    map_names::CONNTRACK,
    map_names::PERSIST,
    map_names::SERVICE_STATS,
    map_names::BACKEND_STATS,
    map_names::DS_TABLE,
    map_names::NAT_REPLY,
    map_names::SERVICES6,
    map_names::BACKENDS6,
    map_names::CONNTRACK6,
    map_names::PERSIST6,
    map_names::NAT_REPLY6,
];

/// `BPF_MAP_LOOKUP_BATCH`.
const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;

/// The `batch` member of `bpf_attr`.
#[repr(C, align(8))]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads a (non per-CPU) hash map whole in batches of 4096 entries (one syscall each, about
/// 50 ms for a million entries where a key-by-key walk takes two syscalls per entry), handing
/// each batch's keys and values (`n` of each, `key_size` and `value_size` bytes apart) to
/// `batch`. Returns the entries read.
pub(crate) fn lookup_batches(
    fd: std::os::fd::BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    mut batch: impl FnMut(&[u8], &[u8], usize),
) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    const BATCH: usize = 4096;
    let mut keys = vec![0u8; key_size * BATCH];
    let mut values = vec![0u8; value_size * BATCH];
    // The hash map's batch token is a bucket index (u32); room for a u64.
    let mut token_in = 0u64;
    let mut token_out = 0u64;
    let mut total = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_mut(&mut token_in) as u64
            },
            out_batch: std::ptr::from_mut(&mut token_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` points at buffers of `count` keys and values of the map's sizes and at
        // two 8-byte tokens, all alive until the call returns; the kernel reads at most
        // `size_of::<BatchAttr>()` bytes of `attr` and writes back `count` and the tokens.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let n = (attr.count as usize).min(BATCH);
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                // The last (maybe partial) batch.
                batch(&keys[..n * key_size], &values[..n * value_size], n);
                return Ok(total + n as u64);
            }
            return Err(e);
        }
        batch(&keys[..n * key_size], &values[..n * value_size], n);
        total += n as u64;
        token_in = token_out;
        first = false;
    }
}

/// Entries of a (non per-CPU) hash map (see [`lookup_batches`]).
pub(crate) fn count_entries(
    fd: std::os::fd::BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
) -> std::io::Result<u64> {
    lookup_batches(fd, key_size, value_size, |_, _, _| {})
}

/// How full one map is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapFill {
    /// `connections`, `client_pins`, `connections_v6`, `client_pins_v6` or `table_mirror`
    /// (named as their `[agent.capacity]` keys).
    pub map: &'static str,
    /// Entries present.
    pub entries: u64,
    /// Its capacity.
    pub capacity: u32,
    /// Entries evicted to make room (the connection table, an LRU map: estimated as the
    /// entries XDP wrote minus the growth and minus the agent's removals since start).
    pub evictions: u64,
    /// Writes refused because the map was full (client pins by XDP, table entries by the
    /// mirror).
    pub full: u64,
}

/// Kernel memory of one map, as [`kernel_memory`] estimates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapMemory {
    /// Map name.
    pub name: &'static str,
    /// Allocated when the map is created, whether used or not.
    pub fixed_bytes: u64,
    /// Allocated per entry present (maps created without preallocation: DS_TABLE).
    pub per_entry_bytes: u64,
    /// Entries it holds at most.
    pub max_entries: u32,
}

/// `struct htab_elem` before its key (kernel 6.x, 64-bit): the bucket list node, the LRU node
/// and the hash.
const HTAB_ELEM_BYTES: u64 = 48;
/// `struct bucket`: list head and lock.
const HTAB_BUCKET_BYTES: u64 = 16;

const fn round8(n: u32) -> u64 {
    (n as u64).div_ceil(8) * 8
}

/// The smallest kmalloc size class holding `n` bytes (what a non-preallocated entry takes).
const fn kmalloc_class(n: u64) -> u64 {
    let classes = [8u64, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096];
    let mut i = 0;
    while i < classes.len() {
        if n <= classes[i] {
            return classes[i];
        }
        i += 1;
    }
    n
}

/// The kernel memory the maps take with `caps` on a host with `cpus` possible CPUs, by the
/// kernel's own allocation rules (hash maps: one `htab_elem` with key and value per entry,
/// preallocated unless created with `BPF_F_NO_PREALLOC`, plus a power-of-two bucket array;
/// arrays: their values; per-CPU arrays: their values on every CPU). The agent's
/// `latch check` prints it; a root test compares it with what the kernel reports.
pub fn kernel_memory(caps: &Capacities, cpus: u32) -> Vec<MapMemory> {
    expected(caps)
        .iter()
        .map(|(name, sh)| {
            let n = u64::from(sh.max_entries);
            let value = round8(sh.value_size);
            let (fixed, per_entry) = match sh.kind {
                Some(Kind::Hash) | Some(Kind::LruHash) => {
                    let elem = HTAB_ELEM_BYTES + round8(sh.key_size) + value;
                    let buckets = n.next_power_of_two() * HTAB_BUCKET_BYTES;
                    // BPF_F_NO_PREALLOC (DS_TABLE, NAT_REPLY): allocated per entry.
                    if sh.flags & DS_TABLE_FLAGS != 0 && sh.kind == Some(Kind::Hash) {
                        (buckets, kmalloc_class(elem))
                    } else {
                        // Preallocated; a plain hash keeps one spare element per CPU.
                        let spare = if sh.kind == Some(Kind::Hash) {
                            u64::from(cpus)
                        } else {
                            0
                        };
                        (buckets + (n + spare) * elem, 0)
                    }
                }
                Some(Kind::PerCpuArray) => (n * value * u64::from(cpus), 0),
                _ => (n * value, 0),
            };
            MapMemory {
                name,
                fixed_bytes: fixed,
                per_entry_bytes: per_entry,
                max_entries: sh.max_entries,
            }
        })
        .collect()
}

/// Name of the pinned one-entry array that records the layout the pins were made with.
/// bpffs holds only BPF objects, so the manifest is itself a map (readable with
/// `bpftool map dump pinned <dir>/v2/LATCH_LAYOUT`).
pub(crate) const MANIFEST_NAME: &str = "LATCH_LAYOUT";
const MANIFEST_LEN: usize = 1024;

/// The manifest text: layout version and every map's shape, one per line.
pub(crate) fn manifest_text(caps: &Capacities) -> String {
    let mut s = format!("latch pinned map layout v{LAYOUT_VERSION}\n");
    for (name, sh) in expected(caps) {
        if UNLISTED.contains(&name) {
            continue;
        }
        s.push_str(&format!("{name} {sh}\n"));
    }
    s
}

fn manifest_bytes(caps: &Capacities) -> [u8; MANIFEST_LEN] {
    let mut out = [0u8; MANIFEST_LEN];
    let text = manifest_text(caps);
    let n = text.len().min(MANIFEST_LEN);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

fn manifest_from_bytes(b: &[u8; MANIFEST_LEN]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(MANIFEST_LEN);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Compares a pinned map's shape with what this build expects.
pub(crate) fn check_shape(
    path: &Path,
    dir: &Path,
    expected: &Shape,
    found: &Shape,
) -> Result<(), DataplaneError> {
    if expected == found {
        return Ok(());
    }
    Err(DataplaneError::LayoutMismatch {
        path: path.to_owned(),
        dir: dir.to_owned(),
        expected: expected.to_string(),
        found: found.to_string(),
    })
}

/// What [`check_pins`] found under the pin directory.
#[derive(Debug, Default)]
pub(crate) struct PinCheck {
    /// Some map pin exists: this is an adoption.
    pub adopted: bool,
    /// Pinned maps of the right kind, key and value whose size is another capacity: (name,
    /// pinned max_entries, configured max_entries). They are migrated (see `migrate.rs`).
    pub resized: Vec<(&'static str, u32, u32)>,
}

/// Checks every pin that exists under `vdir` against this build's layout and the configured
/// capacities, before aya adopts them. A map that differs only in its size is a capacity
/// change, reported in [`PinCheck::resized`]; any other difference is refused.
pub(crate) fn check_pins(
    vdir: &Path,
    root: &Path,
    caps: &Capacities,
) -> Result<PinCheck, DataplaneError> {
    let mut out = PinCheck::default();
    for (name, expected) in &expected(caps) {
        let path = vdir.join(name);
        if !path.exists() {
            continue;
        }
        out.adopted = true;
        let found = pinned_shape(&path, name)?;
        let resized = Shape {
            max_entries: expected.max_entries,
            ..found
        };
        if found.max_entries != expected.max_entries
            && RESIZABLE.contains(name)
            && resized == *expected
        {
            out.resized
                .push((name, found.max_entries, expected.max_entries));
            continue;
        }
        check_shape(&path, root, expected, &found)?;
    }

    let mpath = vdir.join(MANIFEST_NAME);
    if mpath.exists() {
        let found = read_manifest(&mpath)?;
        let expected = manifest_text(caps);
        if !manifest_compatible(&found, &expected) {
            return Err(DataplaneError::LayoutMismatch {
                path: mpath,
                dir: root.to_owned(),
                expected: format!("manifest {expected:?}"),
                found: format!("manifest {found:?}"),
            });
        }
    } else if out.adopted {
        tracing::warn!(
            dir = %vdir.display(),
            "pinned maps without a layout manifest; their shapes match, adopting them"
        );
    }
    Ok(out)
}

/// The shape of a pinned map as the kernel reports it.
pub(crate) fn pinned_shape(path: &Path, name: &'static str) -> Result<Shape, DataplaneError> {
    let info = MapInfo::from_pin(path).map_err(|e| {
        DataplaneError::or_permission(&e, format!("opening pinned map {}", path.display()))
            .unwrap_or_else(|| DataplaneError::map(name, "open pinned", e))
    })?;
    Ok(Shape {
        kind: info.map_type().ok().and_then(Kind::of),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

/// A manifest is compatible when it is this build's, or an older one of the same layout
/// version that lacks maps added since (every line it has is one this build expects, the
/// version line first). Sizes are left out of the comparison: they are capacities, checked
/// map by map and migrated. The shapes of the maps that do exist were checked one by one.
pub(crate) fn manifest_compatible(found: &str, expected: &str) -> bool {
    let mut found_lines = found.lines();
    let header_ok = found_lines.next() == expected.lines().next();
    header_ok
        && found_lines.all(|l| {
            expected
                .lines()
                .skip(1)
                .any(|e| without_size(e) == without_size(l))
        })
}

/// A manifest line without its `max_entries N`.
fn without_size(line: &str) -> String {
    let mut words = line.split(' ');
    let mut out = Vec::new();
    while let Some(w) = words.next() {
        if w == "max_entries" {
            words.next();
        } else {
            out.push(w);
        }
    }
    out.join(" ")
}

fn read_manifest(path: &Path) -> Result<String, DataplaneError> {
    let data = MapData::from_pin(path)
        .map_err(|e| DataplaneError::map(MANIFEST_NAME, "open pinned", e))?;
    let map = Map::from_map_data(data)
        .map_err(|e| DataplaneError::map(MANIFEST_NAME, "open pinned", e))?;
    let arr: Array<MapData, [u8; MANIFEST_LEN]> =
        Array::try_from(map).map_err(|_| DataplaneError::LayoutMismatch {
            path: path.to_owned(),
            dir: path.parent().unwrap_or(path).to_owned(),
            expected: format!("a one-entry array of {MANIFEST_LEN} bytes"),
            found: "another map shape".into(),
        })?;
    let bytes = arr
        .get(&0, 0)
        .map_err(|e| DataplaneError::map(MANIFEST_NAME, "read", e))?;
    Ok(manifest_from_bytes(&bytes))
}

/// Pins the manifest if it is not there yet, or brings an older compatible one up to date
/// (once the loader has created the maps it lacked).
pub(crate) fn write_manifest(vdir: &Path, caps: &Capacities) -> Result<(), DataplaneError> {
    let path = vdir.join(MANIFEST_NAME);
    if path.exists() {
        if read_manifest(&path)? == manifest_text(caps) {
            return Ok(());
        }
        let data = MapData::from_pin(&path)
            .map_err(|e| DataplaneError::map(MANIFEST_NAME, "open pinned", e))?;
        let map = Map::from_map_data(data)
            .map_err(|e| DataplaneError::map(MANIFEST_NAME, "open pinned", e))?;
        let mut arr: Array<MapData, [u8; MANIFEST_LEN]> =
            Array::try_from(map).map_err(|e| DataplaneError::map(MANIFEST_NAME, "open", e))?;
        tracing::info!(path = %path.display(), "layout manifest updated (maps added or resized)");
        return arr
            .set(0, manifest_bytes(caps), 0)
            .map_err(|e| DataplaneError::map(MANIFEST_NAME, "write", e));
    }
    let mut arr: Array<MapData, [u8; MANIFEST_LEN]> =
        Array::create(1, 0).map_err(|e| DataplaneError::map(MANIFEST_NAME, "create", e))?;
    arr.set(0, manifest_bytes(caps), 0)
        .map_err(|e| DataplaneError::map(MANIFEST_NAME, "write", e))?;
    arr.pin(&path).map_err(|e| DataplaneError::Pin {
        what: "the layout manifest".into(),
        path: path.clone(),
        source: Box::new(e),
    })
}

/// Typed handles on every map. Maps written from `&self` paths (pins, sweeps) sit behind
/// mutexes because aya's write methods take `&mut`; the kernel itself serialises nothing
/// here that matters.
pub(crate) struct Maps {
    /// SERVICES, BACKENDS, CONNTRACK, PERSIST, NAT_REPLY.
    pub v4: FamilyMaps<V4>,
    /// Their IPv6 counterparts.
    pub v6: FamilyMaps<V6>,
    pub maglev: Array<MapData, u32>,
    pub nat_servers: Array<MapData, u64>,
    pub stats: PerCpuArray<MapData, u64>,
    pub service_stats: PerCpuArray<MapData, TrafficCounters>,
    pub backend_stats: PerCpuArray<MapData, TrafficCounters>,
    /// Shared with the mirror and fast-path pins, which write from request threads.
    pub ds_table: std::sync::Arc<super::mirror::RawHash<DsKey, DsValue>>,
    /// Tunnel mode's outer source per family (not pinned).
    pub tunnel_source: Array<MapData, lb_common::Addr6>,
}

fn take(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<Map, DataplaneError> {
    ebpf.take_map(name)
        .ok_or_else(|| DataplaneError::MissingObject {
            what: "map",
            name: name.to_owned(),
        })
}

macro_rules! typed {
    ($ebpf:expr, $name:expr) => {
        take($ebpf, $name)?
            .try_into()
            .map_err(|e| DataplaneError::map($name, "open", e))?
    };
}

/// Every entry of a hash map (an entry deleted during the walk is skipped).
fn read_hash<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<std::collections::HashMap<K, V>, DataplaneError> {
    let mut out = std::collections::HashMap::new();
    for kv in map.iter() {
        match kv {
            Ok((k, v)) => {
                out.insert(k, v);
            }
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(DataplaneError::map(name, "read", e)),
        }
    }
    Ok(out)
}

/// The maps one address family has of its own, with their names (for errors).
pub(crate) struct FamilyMaps<F: Family> {
    pub services: HashMap<MapData, Key<F>, Service>,
    pub backends: Array<MapData, Slot<F>>,
    pub conntrack: Mutex<HashMap<MapData, FlowKeyOf<F::Raw>, Flow>>,
    pub persist: Mutex<HashMap<MapData, PersistKeyOf<F::Raw>, Persist>>,
    pub nat_reply: HashMap<MapData, ReplyKeyOf<F::Raw>, ReplySourcesOf<F::Raw>>,
    pub names: FamilyNames,
}

/// Names of one family's maps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FamilyNames {
    pub services: &'static str,
    pub backends: &'static str,
    pub conntrack: &'static str,
    pub persist: &'static str,
    pub nat_reply: &'static str,
}

/// The IPv4 maps' names.
pub(crate) const NAMES_V4: FamilyNames = FamilyNames {
    services: map_names::SERVICES,
    backends: map_names::BACKENDS,
    conntrack: map_names::CONNTRACK,
    persist: map_names::PERSIST,
    nat_reply: map_names::NAT_REPLY,
};

/// The IPv6 maps' names.
pub(crate) const NAMES_V6: FamilyNames = FamilyNames {
    services: map_names::SERVICES6,
    backends: map_names::BACKENDS6,
    conntrack: map_names::CONNTRACK6,
    persist: map_names::PERSIST6,
    nat_reply: map_names::NAT_REPLY6,
};

impl<F: Family> FamilyMaps<F> {
    fn take(ebpf: &mut aya::Ebpf, names: FamilyNames) -> Result<Self, DataplaneError> {
        Ok(Self {
            services: typed!(ebpf, names.services),
            backends: typed!(ebpf, names.backends),
            conntrack: Mutex::new(typed!(ebpf, names.conntrack)),
            persist: Mutex::new(typed!(ebpf, names.persist)),
            nat_reply: typed!(ebpf, names.nat_reply),
            names,
        })
    }

    /// Services and backend slots, for adoption.
    #[allow(clippy::type_complexity)]
    pub(crate) fn read_state(
        &self,
    ) -> Result<(std::collections::HashMap<Key<F>, Service>, Vec<Slot<F>>), DataplaneError> {
        let services = read_hash(&self.services, self.names.services)?;
        let n = self.backends.len();
        let mut backends = Vec::with_capacity(n as usize);
        for i in 0..n {
            backends.push(
                self.backends
                    .get(&i, 0)
                    .map_err(|e| DataplaneError::map(self.names.backends, "read", e))?,
            );
        }
        Ok((services, backends))
    }

    /// NAT reply sources.
    pub(crate) fn read_replies(&self) -> Result<super::plan::Replies<F>, DataplaneError> {
        read_hash(&self.nat_reply, self.names.nat_reply)
    }
}

impl Maps {
    pub(crate) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, DataplaneError> {
        Ok(Self {
            v4: FamilyMaps::take(ebpf, NAMES_V4)?,
            v6: FamilyMaps::take(ebpf, NAMES_V6)?,
            maglev: typed!(ebpf, map_names::MAGLEV),
            nat_servers: typed!(ebpf, map_names::NAT_SERVERS),
            stats: typed!(ebpf, map_names::STATS),
            service_stats: typed!(ebpf, map_names::SERVICE_STATS),
            backend_stats: typed!(ebpf, map_names::BACKEND_STATS),
            ds_table: std::sync::Arc::new(super::mirror::RawHash::new(
                map_names::DS_TABLE,
                typed!(ebpf, map_names::DS_TABLE),
            )),
            tunnel_source: typed!(ebpf, map_names::TUNNEL_SOURCE),
        })
    }

    /// NAT_SERVERS contents, word by word.
    pub(crate) fn read_nat_servers(&self) -> Result<Vec<u64>, DataplaneError> {
        (0..self.nat_servers.len())
            .map(|i| {
                self.nat_servers
                    .get(&i, 0)
                    .map_err(|e| DataplaneError::map(map_names::NAT_SERVERS, "read", e))
            })
            .collect()
    }

    pub(crate) fn zero_counters(
        map: &mut PerCpuArray<MapData, TrafficCounters>,
        name: &'static str,
        index: u32,
    ) -> Result<(), DataplaneError> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| {
            DataplaneError::io("reading", "/sys/devices/system/cpu/possible", e)
        })?;
        let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); n])
            .map_err(|e| DataplaneError::map(name, "zero", e.into()))?;
        map.set(index, zeros, 0)
            .map_err(|e| DataplaneError::map(name, "zero", e))
    }

    pub(crate) fn sum_counters(
        map: &PerCpuArray<MapData, TrafficCounters>,
        name: &'static str,
        index: u32,
    ) -> Result<TrafficCounters, DataplaneError> {
        let vals = map
            .get(&index, 0)
            .map_err(|e| DataplaneError::map(name, "read", e))?;
        Ok(vals
            .iter()
            .fold(TrafficCounters::default(), |a, c| TrafficCounters {
                packets: a.packets.wrapping_add(c.packets),
                bytes: a.bytes.wrapping_add(c.bytes),
                new_flows: a.new_flows.wrapping_add(c.new_flows),
            }))
    }
}

/// `<root>/v<LAYOUT_VERSION>`.
pub fn versioned_dir(root: &Path) -> PathBuf {
    root.join(format!("v{LAYOUT_VERSION}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_shapes_match_lb_common() {
        let by: std::collections::HashMap<_, _> =
            expected(&Capacities::DEFAULT).iter().copied().collect();
        assert_eq!(by.len(), 16, "map names are distinct");
        assert_eq!(by[map_names::NAT_SERVERS].max_entries, NAT_SERVER_WORDS);
        assert_eq!(by[map_names::NAT_REPLY].key_size, 8);
        assert_eq!(by[map_names::NAT_REPLY].value_size, 72);
        assert_eq!(by[map_names::NAT_REPLY].flags, NAT_REPLY_FLAGS);
        assert_eq!(by[map_names::NAT_REPLY].max_entries, 2 * 16_384);
        assert_eq!(by[map_names::DS_TABLE].key_size, 76);
        assert_eq!(by[map_names::DS_TABLE].value_size, 80);
        assert_eq!(by[map_names::DS_TABLE].flags, DS_TABLE_FLAGS);
        assert_eq!(by[map_names::SERVICES].key_size, 8);
        assert_eq!(by[map_names::SERVICES].value_size, 24);
        assert_eq!(
            by[map_names::MAGLEV].max_entries,
            Capacities::DEFAULT.maglev_entries()
        );
        assert_eq!(by[map_names::CONNTRACK].kind, Some(Kind::LruHash));
        assert_eq!(by[map_names::BACKEND_STATS].value_size, 24);
        // The IPv6 maps: 16-byte addresses, their own connection and pin capacities.
        assert_eq!(by[map_names::SERVICES6].key_size, 20);
        assert_eq!(by[map_names::BACKENDS6].value_size, 28);
        assert_eq!(by[map_names::CONNTRACK6].key_size, 40);
        assert_eq!(by[map_names::CONNTRACK6].flags, CONNTRACK_FLAGS);
        assert_eq!(
            by[map_names::CONNTRACK6].max_entries,
            Capacities::DEFAULT.connections_v6
        );
        assert_eq!(
            by[map_names::PERSIST6].max_entries,
            Capacities::DEFAULT.client_pins_v6
        );
        assert_eq!(by[map_names::NAT_REPLY6].value_size, 8 + 20 * 8);
    }

    #[test]
    fn shape_mismatch_names_both_sides_and_the_fix() {
        let exp = expected(&Capacities::DEFAULT)[1].1;
        let found = Shape {
            value_size: exp.value_size + 8,
            ..exp
        };
        let err = check_shape(
            Path::new("/sys/fs/bpf/latch/v1/LATCH_BACKENDS"),
            Path::new("/sys/fs/bpf/latch"),
            &exp,
            &found,
        )
        .expect_err("mismatch");
        let msg = err.to_string();
        assert!(msg.contains("value 16B"), "{msg}");
        assert!(msg.contains("value 24B"), "{msg}");
        assert!(msg.contains("latch down"), "{msg}");
        assert!(check_shape(Path::new("x"), Path::new("y"), &exp, &exp).is_ok());
    }

    #[test]
    fn older_manifest_without_new_maps_is_compatible_but_not_a_changed_one() {
        let expected = manifest_text(&Capacities::DEFAULT);
        let older: String = expected
            .lines()
            .filter(|l| !l.starts_with(map_names::DS_TABLE))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(older, expected);
        assert!(manifest_compatible(&older, &expected));
        assert!(manifest_compatible(&expected, &expected));
        let changed = expected.replace("key 8B value 24B", "key 8B value 32B");
        assert_ne!(changed, expected);
        assert!(!manifest_compatible(&changed, &expected));
        let other_version = expected.replacen(
            &format!("v{LAYOUT_VERSION}"),
            &format!("v{}", LAYOUT_VERSION + 1),
            1,
        );
        assert!(!manifest_compatible(&other_version, &expected));
        // Another capacity is a migration, not an incompatible layout.
        let resized = manifest_text(&Capacities {
            connections: 1024,
            ..Capacities::DEFAULT
        });
        assert_ne!(resized, expected);
        assert!(manifest_compatible(&resized, &expected));
    }

    #[test]
    fn kernel_memory_follows_the_kernels_rules() {
        let caps = Capacities::DEFAULT;
        let mem = kernel_memory(&caps, 4);
        let by: std::collections::HashMap<_, _> = mem.iter().map(|m| (m.name, *m)).collect();
        // CONNTRACK: 48 + 16 + 32 bytes per preallocated entry, 16 per bucket.
        let ct = by[map_names::CONNTRACK];
        assert_eq!(ct.fixed_bytes, 2_097_152 * (96 + 16));
        assert_eq!(ct.per_entry_bytes, 0);
        // DS_TABLE: buckets only, then 48 + 80 + 80 = 208 -> a 256-byte allocation per entry.
        let ds = by[map_names::DS_TABLE];
        assert_eq!(ds.fixed_bytes, 2_097_152 * 16);
        assert_eq!(ds.per_entry_bytes, 256);
        // NAT_REPLY: buckets only, then 48 + 8 + 72 = 128 bytes per entry.
        let nr = by[map_names::NAT_REPLY];
        assert_eq!(nr.fixed_bytes, 32_768 * 16);
        assert_eq!(nr.per_entry_bytes, 128);
        // Array values are rounded up to 8 bytes.
        assert_eq!(
            by[map_names::MAGLEV].fixed_bytes,
            u64::from(caps.maglev_entries()) * 8
        );
        assert_eq!(by[map_names::BACKEND_STATS].fixed_bytes, 16_384 * 24 * 4);
    }

    #[test]
    fn manifest_round_trips_and_fits() {
        let text = manifest_text(&Capacities::DEFAULT);
        assert!(text.len() < MANIFEST_LEN);
        assert_eq!(
            manifest_from_bytes(&manifest_bytes(&Capacities::DEFAULT)),
            text
        );
        assert!(text.contains(map_names::CONNTRACK));
        assert!(text.starts_with(&format!("latch pinned map layout v{LAYOUT_VERSION}")));
    }
}
