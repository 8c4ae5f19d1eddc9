//! A capacity change is a layout change: the pinned maps were made with other sizes, and a BPF
//! map cannot be resized. So the next agent moves the pins of the resized maps aside (into
//! `<vdir>/migrate/`), lets the loader create the maps with the configured sizes, copies every
//! entry across and only then removes the old pins. Connections, client pins, services,
//! backends, their counters and the DataScript table mirror survive; what does not fit a
//! smaller map is counted and logged.
//!
//! An agent killed in the middle leaves `migrate/` behind: the next one copies from it again
//! (writes are idempotent), and a map of the same name under `<vdir>` is the interrupted
//! copy, which is deleted rather than set aside if its size is wrong again. XDP keeps running
//! the old program on the old maps until `attach` swaps in the new program; flows that start
//! in that window (the copy takes about 3 µs per entry) are not carried over.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use lb_common::{
    Capacities, DsKey, DsValue, Flow, FlowKey, FlowKey6, MAGLEV_TABLE_SIZE, Persist, PersistKey,
    PersistKey6, ReplyKey, ReplyKey6, ReplySources, ReplySources6, Service, TrafficCounters,
    backend_state, maglev_base, map_names,
};

use super::{
    DataplaneError,
    family::Family,
    maps::{FamilyMaps, Maps},
    mirror::RawHash,
    plan::{Key, Slot},
};

/// Subdirectory of the versioned pin directory holding the pins of maps being migrated.
pub(crate) const MIGRATE_DIR: &str = "migrate";

/// Entries copied and dropped, per map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Migration {
    /// (map, entries copied, entries that did not fit).
    pub maps: Vec<(&'static str, u64, u64)>,
}

/// Moves the pins of `resized` maps into `<vdir>/migrate/`. A pin already there (from an
/// interrupted migration) is the source of truth: the map of the same name under `vdir` is a
/// partial copy and is removed instead. Returns whether there is anything to copy back.
pub(crate) fn set_aside(
    vdir: &Path,
    resized: &[(&'static str, u32, u32)],
) -> Result<bool, DataplaneError> {
    let mdir = vdir.join(MIGRATE_DIR);
    if !resized.is_empty() {
        std::fs::create_dir_all(&mdir).map_err(|e| DataplaneError::io("creating", &mdir, e))?;
    }
    for (name, from, to) in resized {
        let pin = vdir.join(name);
        let aside = mdir.join(name);
        if aside.exists() {
            std::fs::remove_file(&pin).map_err(|e| DataplaneError::io("removing", &pin, e))?;
        } else {
            tracing::warn!(
                map = name,
                from,
                to,
                "capacity changed: migrating the pinned map's entries into a new map"
            );
            std::fs::rename(&pin, &aside).map_err(|e| DataplaneError::io("moving", &pin, e))?;
        }
    }
    Ok(mdir.exists())
}

fn open_old(path: &Path, name: &'static str) -> Result<Map, DataplaneError> {
    let data = MapData::from_pin(path).map_err(|e| DataplaneError::map(name, "open pinned", e))?;
    Map::from_map_data(data).map_err(|e| DataplaneError::map(name, "open", e))
}

fn read_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |e| DataplaneError::map(name, "read", e)
}

/// Copies every map set aside under `<vdir>/migrate/` into the new maps, then removes the old
/// pins. SERVICES goes first: the maglev tables copied are the live ones of the services.
pub(crate) fn copy_back(
    vdir: &Path,
    maps: &mut Maps,
    caps: &Capacities,
) -> Result<Migration, DataplaneError> {
    let mdir = vdir.join(MIGRATE_DIR);
    let mut out = Migration::default();
    let order = [
        map_names::STATS,
        map_names::SERVICES,
        map_names::SERVICES6,
        map_names::BACKENDS,
        map_names::BACKENDS6,
        map_names::MAGLEV,
        map_names::SERVICE_STATS,
        map_names::BACKEND_STATS,
        map_names::CONNTRACK,
        map_names::CONNTRACK6,
        map_names::PERSIST,
        map_names::PERSIST6,
        map_names::DS_TABLE,
        map_names::NAT_REPLY,
        map_names::NAT_REPLY6,
    ];
    let mut done: Vec<PathBuf> = Vec::new();
    for name in order {
        let path = mdir.join(name);
        if !path.exists() {
            continue;
        }
        let (copied, dropped) = copy_one(name, &path, maps, caps)?;
        if dropped > 0 {
            tracing::warn!(
                map = name,
                copied,
                dropped,
                "entries did not fit the new capacity and are gone"
            );
        } else {
            tracing::info!(map = name, copied, "map migrated to its new capacity");
        }
        out.maps.push((name, copied, dropped));
        done.push(path);
    }
    for p in done {
        std::fs::remove_file(&p).map_err(|e| DataplaneError::io("removing", &p, e))?;
    }
    if mdir.exists() {
        std::fs::remove_dir(&mdir).map_err(|e| DataplaneError::io("removing", &mdir, e))?;
    }
    Ok(out)
}

fn copy_one(
    name: &'static str,
    path: &Path,
    maps: &mut Maps,
    caps: &Capacities,
) -> Result<(u64, u64), DataplaneError> {
    let old = open_old(path, name)?;
    let mut t = Tally {
        name,
        copied: 0,
        dropped: 0,
    };
    match name {
        map_names::SERVICES => copy_services(old, &mut maps.v4, caps, &mut t)?,
        map_names::SERVICES6 => copy_services(old, &mut maps.v6, caps, &mut t)?,
        map_names::BACKENDS => copy_backends(old, &mut maps.v4, &mut t)?,
        map_names::BACKENDS6 => copy_backends(old, &mut maps.v6, &mut t)?,
        map_names::MAGLEV => {
            let old: Array<MapData, u32> = Array::try_from(old).map_err(read_err(name))?;
            let live: Vec<(u32, u32)> = maps
                .v4
                .services
                .iter()
                .filter_map(Result::ok)
                .map(|(_, s)| (s.id, s.maglev_slot))
                .chain(
                    maps.v6
                        .services
                        .iter()
                        .filter_map(Result::ok)
                        .map(|(_, s)| (s.id, s.maglev_slot)),
                )
                .collect();
            for (id, slot) in live {
                let base = maglev_base(id, slot);
                for i in base..base + MAGLEV_TABLE_SIZE {
                    let Ok(b) = old.get(&i, 0) else { break };
                    t.add(maps.maglev.set(i, b, 0));
                }
            }
        }
        map_names::STATS => {
            let old: PerCpuArray<MapData, u64> =
                PerCpuArray::try_from(old).map_err(read_err(name))?;
            for i in 0..old.len().min(maps.stats.len()) {
                let v = old.get(&i, 0).map_err(read_err(name))?;
                let vals: Vec<u64> = v.iter().copied().collect();
                let vals = PerCpuValues::try_from(vals).map_err(|e| read_err(name)(e.into()))?;
                t.add(maps.stats.set(i, vals, 0));
            }
        }
        map_names::SERVICE_STATS | map_names::BACKEND_STATS => {
            let old: PerCpuArray<MapData, TrafficCounters> =
                PerCpuArray::try_from(old).map_err(read_err(name))?;
            let new = if name == map_names::SERVICE_STATS {
                &mut maps.service_stats
            } else {
                &mut maps.backend_stats
            };
            for i in 0..old.len() {
                let v = old.get(&i, 0).map_err(read_err(name))?;
                if v.iter().all(|c| *c == TrafficCounters::default()) {
                    continue;
                }
                let vals: Vec<TrafficCounters> = v.iter().copied().collect();
                let vals = PerCpuValues::try_from(vals).map_err(|e| read_err(name)(e.into()))?;
                t.add(new.set(i, vals, 0));
            }
        }
        map_names::CONNTRACK => {
            copy_hash::<FlowKey, Flow>(old, &mut maps.v4.conntrack.lock(), &mut t)?
        }
        map_names::PERSIST => {
            copy_hash::<PersistKey, Persist>(old, &mut maps.v4.persist.lock(), &mut t)?;
        }
        map_names::CONNTRACK6 => {
            copy_hash::<FlowKey6, Flow>(old, &mut maps.v6.conntrack.lock(), &mut t)?
        }
        map_names::PERSIST6 => {
            copy_hash::<PersistKey6, Persist>(old, &mut maps.v6.persist.lock(), &mut t)?;
        }
        map_names::NAT_REPLY6 => {
            copy_hash::<ReplyKey6, ReplySources6>(old, &mut maps.v6.nat_reply, &mut t)?;
        }
        // The agent rewrites it from its services at the first apply; copied so that replies
        // are translated in the meantime.
        map_names::NAT_REPLY => {
            copy_hash::<ReplyKey, ReplySources>(old, &mut maps.v4.nat_reply, &mut t)?;
        }
        map_names::DS_TABLE => {
            let old: HashMap<MapData, DsKey, DsValue> =
                HashMap::try_from(old).map_err(read_err(name))?;
            let old = RawHash::new(name, old);
            for (k, v) in old.entries()? {
                t.add(maps.ds_table.update(&k, &v));
            }
        }
        _ => {}
    }
    Ok((t.copied, t.dropped))
}

/// Copies a family's services; one whose id is beyond the new capacity is programmed afresh
/// by the next apply, under a new id.
fn copy_services<F: Family>(
    old: Map,
    new: &mut FamilyMaps<F>,
    caps: &Capacities,
    t: &mut Tally,
) -> Result<(), DataplaneError> {
    let name = t.name;
    let old: HashMap<MapData, Key<F>, Service> = HashMap::try_from(old).map_err(read_err(name))?;
    for kv in old.iter() {
        let (k, v) = match kv {
            Ok(kv) => kv,
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(read_err(name)(e)),
        };
        if v.id >= caps.services {
            t.add(Err(MapError::OutOfBounds {
                index: v.id,
                max_entries: caps.services,
            }));
            continue;
        }
        t.add(new.services.insert(k, v, 0));
    }
    Ok(())
}

/// Copies a family's assigned backend slots.
fn copy_backends<F: Family>(
    old: Map,
    new: &mut FamilyMaps<F>,
    t: &mut Tally,
) -> Result<(), DataplaneError> {
    let name = t.name;
    let old: Array<MapData, Slot<F>> = Array::try_from(old).map_err(read_err(name))?;
    for i in 0..old.len() {
        let b = old.get(&i, 0).map_err(read_err(name))?;
        if b.state == backend_state::UNUSED {
            continue;
        }
        t.add(new.backends.set(i, b, 0));
    }
    Ok(())
}

/// Inserts every entry of hash map `old` into `new`.
fn copy_hash<K: aya::Pod, V: aya::Pod>(
    old: Map,
    new: &mut HashMap<MapData, K, V>,
    t: &mut Tally,
) -> Result<(), DataplaneError> {
    let old: HashMap<MapData, K, V> = HashMap::try_from(old).map_err(read_err(t.name))?;
    for kv in old.iter() {
        match kv {
            Ok((k, v)) => t.add(new.insert(k, v, 0)),
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(read_err(t.name)(e)),
        }
    }
    Ok(())
}

struct Tally {
    name: &'static str,
    copied: u64,
    dropped: u64,
}

impl Tally {
    fn add<E: std::fmt::Display>(&mut self, r: Result<(), E>) {
        match r {
            Ok(()) => self.copied += 1,
            Err(e) => {
                tracing::debug!(map = self.name, error = %e, "entry not migrated");
                self.dropped += 1;
            }
        }
    }
}
