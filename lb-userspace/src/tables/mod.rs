//! Persistence tables with lifetimes (the store behind avi.vs.table_*).
//!
//! One [`VsTables`] per virtual service; inside it, the default table (named
//! [`DEFAULT_TABLE`]) and any named tables, each a separate namespace. Time is always passed in
//! as CLOCK_MONOTONIC nanoseconds (the clock the XDP program reads, at tick resolution) so
//! that expiries can be mirrored into kernel maps unchanged and tests are deterministic.
//!
//! Every operation on a key runs under that key's shard lock (dashmap), so operations on one
//! key are atomic and linearizable, and [`Mirror`] observers see the changes of one key in the
//! order they happened. Expired entries are removed lazily when touched and by [`VsTables::sweep`],
//! which the agent calls periodically.
//!
//! Memory (measured by `memory_per_entry`, `cargo test -p lb-userspace --lib tables -- --ignored
//! --nocapture`): about 215 bytes per entry (glibc heap, hash table slack included) with
//! 32-byte keys and 16-byte values in user space.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

#[cfg(test)]
mod tests;

/// Name of the table used when a script omits the table name.
pub const DEFAULT_TABLE: &str = "";

const NS_PER_S: u64 = 1_000_000_000;

/// Shards per table: more shards than cores keeps the periodic sweep from holding a lock over
/// a large share of the entries at once.
const SHARDS: usize = 64;

/// Monotonic time source in nanoseconds, on the clock the XDP program reads
/// (`bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC at tick resolution).
pub trait Clock: Send + Sync {
    /// Current CLOCK_MONOTONIC time in nanoseconds.
    fn now_ns(&self) -> u64;
}

/// CLOCK_MONOTONIC, as the kernel's BPF helpers see it.
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec we own; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64)
            .saturating_mul(NS_PER_S)
            .saturating_add(ts.tv_nsec as u64)
    }
}

/// A clock the test moves by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `start_ns`.
    pub fn new(start_ns: u64) -> Self {
        Self(AtomicU64::new(start_ns))
    }
    /// Move the clock forward.
    pub fn advance_ns(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
    /// Move the clock forward by whole seconds.
    pub fn advance_s(&self, s: u64) {
        self.advance_ns(s * NS_PER_S);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Size and time limits of one virtual service's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableLimits {
    /// Entries across all tables of the virtual service.
    pub max_entries: usize,
    /// Longest key in bytes.
    pub max_key_bytes: usize,
    /// Longest value in bytes.
    pub max_value_bytes: usize,
    /// No entry lives longer than this from now, whatever the script asks.
    pub max_lifetime_s: u64,
}

impl Default for TableLimits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_key_bytes: 256,
            max_value_bytes: 1024,
            max_lifetime_s: 86_400,
        }
    }
}

impl TableLimits {
    fn check_key(&self, key: &str) -> Result<(), InsertError> {
        if key.len() > self.max_key_bytes {
            return Err(InsertError::KeyTooLong {
                len: key.len(),
                max: self.max_key_bytes,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &str) -> Result<(), InsertError> {
        if value.len() > self.max_value_bytes {
            return Err(InsertError::ValueTooLong {
                len: value.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }
}

/// Why an entry left a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// Removed by a script, the admin API or a flush.
    Removed,
    /// Its lifetime ran out.
    Expired,
}

/// Observer of every change, used to mirror tables into kernel maps and Redis.
///
/// Called under the key's shard lock, so calls for one key arrive in order; implementations
/// must be quick and must not call back into the tables (queue the work instead).
pub trait Mirror: Send + Sync {
    /// A key was stored, or its value changed.
    fn upsert(&self, vs: &str, table: &str, key: &str, value: &str, expires_at_mono_ns: u64);
    /// Only a live key's expiry changed (value unchanged). A mirror may apply this later, or
    /// merge it with the next one, as long as a later `upsert` or `remove` of the key wins.
    fn extend(&self, vs: &str, table: &str, key: &str, value: &str, expires_at_mono_ns: u64) {
        self.upsert(vs, table, key, value, expires_at_mono_ns);
    }
    /// A key left the table.
    fn remove(&self, vs: &str, table: &str, key: &str, reason: RemoveReason);
}

/// A mirror that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMirror;

impl Mirror for NoMirror {
    fn upsert(&self, _: &str, _: &str, _: &str, _: &str, _: u64) {}
    fn remove(&self, _: &str, _: &str, _: &str, _: RemoveReason) {}
}

/// Fans every change out to several mirrors in order.
pub struct Mirrors(pub Vec<Arc<dyn Mirror>>);

impl Mirror for Mirrors {
    fn upsert(&self, vs: &str, table: &str, key: &str, value: &str, expires: u64) {
        for m in &self.0 {
            m.upsert(vs, table, key, value, expires);
        }
    }
    fn extend(&self, vs: &str, table: &str, key: &str, value: &str, expires: u64) {
        for m in &self.0 {
            m.extend(vs, table, key, value, expires);
        }
    }
    fn remove(&self, vs: &str, table: &str, key: &str, reason: RemoveReason) {
        for m in &self.0 {
            m.remove(vs, table, key, reason);
        }
    }
}

/// Operation counters of one virtual service's tables (monotonic, for metrics).
#[derive(Debug, Default)]
pub struct Counters {
    inserts: AtomicU64,
    updates: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    expirations: AtomicU64,
    removals: AtomicU64,
    failures: AtomicU64,
}

/// A point-in-time copy of [`Counters`] plus the current entry count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// New keys stored.
    pub inserts: u64,
    /// Inserts of an existing live key (lifetime reset, value kept).
    pub updates: u64,
    /// Lookups and refreshes that found a live key.
    pub hits: u64,
    /// Lookups and refreshes that found nothing live.
    pub misses: u64,
    /// Entries that expired (lazily or by the sweep).
    pub expirations: u64,
    /// Entries removed by scripts, the admin API or flushes.
    pub removals: u64,
    /// Inserts refused (table full, key or value too long).
    pub failures: u64,
    /// Entries currently stored (live or expired but not yet swept).
    pub entries: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why an insert was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The virtual service already holds `max` entries.
    #[error("table full ({max} entries)")]
    Full {
        /// The configured limit.
        max: usize,
    },
    /// The key is longer than the limit.
    #[error("key of {len} bytes exceeds the limit of {max}")]
    KeyTooLong {
        /// Key length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The value is longer than the limit.
    #[error("value of {len} bytes exceeds the limit of {max}")]
    ValueTooLong {
        /// Value length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
}

/// What an insert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The key was new (or expired) and now holds the given value.
    Inserted,
    /// The key was live: its value was kept and its lifetime reset.
    Updated,
}

/// What applying another host's upsert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// The key was absent (or expired) and now holds the value.
    Inserted,
    /// The key held another value, now replaced.
    Replaced,
    /// Same value; the expiry moved.
    Extended,
    /// Nothing changed (same value and expiry, or the change had already expired).
    Unchanged,
}

/// An entry as the admin API and the sweep report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    /// Table name ([`DEFAULT_TABLE`] for the default table).
    pub table: String,
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// Expiry, CLOCK_MONOTONIC nanoseconds.
    pub expires_at_mono_ns: u64,
}

impl EntryView {
    /// Whole seconds left at `now_ns` (0 once expired).
    pub fn remaining_s(&self, now_ns: u64) -> u64 {
        self.expires_at_mono_ns.saturating_sub(now_ns) / NS_PER_S
    }
}

#[derive(Debug)]
struct Entry {
    value: Box<str>,
    expires_ns: u64,
    /// Expiry the mirrors last heard of (see [`VsTables::notify_extension`]).
    notified_ns: u64,
}

/// Lifetime-only changes reach the mirrors once the expiry moved this far past the one they
/// last heard of (or moved earlier). A busy key is extended on every request and each mirror
/// write is a syscall (kernel map) or a message (Redis); this bounds them to about one per
/// second per key, and a mirror's copy can only expire up to this much *early*, never late.
const MIRROR_COALESCE_NS: u64 = NS_PER_S;

impl Entry {
    fn new(value: Box<str>, expires_ns: u64) -> Self {
        Self {
            value,
            expires_ns,
            notified_ns: expires_ns,
        }
    }

    fn live(&self, now_ns: u64) -> bool {
        self.expires_ns > now_ns
    }
}

type Map = DashMap<Box<str>, Entry>;

fn new_map() -> Map {
    DashMap::with_capacity_and_shard_amount(0, SHARDS)
}

/// All persistence tables of one virtual service.
pub struct VsTables {
    vs: Arc<str>,
    default: Map,
    named: DashMap<Box<str>, Arc<Map>>,
    entries: AtomicUsize,
    limits: TableLimits,
    counters: Counters,
    mirror: ArcSwap<Box<dyn Mirror>>,
    /// Told only of changes made on this host (see [`VsTables::set_replicator`]).
    replicator: ArcSwap<Box<dyn Mirror>>,
}

impl std::fmt::Debug for VsTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsTables")
            .field("vs", &self.vs)
            .field("entries", &self.entries)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl VsTables {
    /// Empty tables for virtual service `vs`.
    pub fn new(vs: &str, limits: TableLimits, mirror: Arc<dyn Mirror>) -> Self {
        Self {
            vs: Arc::from(vs),
            default: new_map(),
            named: DashMap::new(),
            entries: AtomicUsize::new(0),
            limits,
            counters: Counters::default(),
            mirror: ArcSwap::from_pointee(Box::new(ArcMirror(mirror)) as Box<dyn Mirror>),
            replicator: ArcSwap::from_pointee(Box::new(NoMirror) as Box<dyn Mirror>),
        }
    }

    /// Virtual service name.
    pub fn vs(&self) -> &str {
        &self.vs
    }

    /// The limits in force.
    pub fn limits(&self) -> &TableLimits {
        &self.limits
    }

    /// Replace the mirror (e.g. once the dataplane or replication is up).
    pub fn set_mirror(&self, mirror: Arc<dyn Mirror>) {
        self.mirror
            .store(Arc::new(Box::new(ArcMirror(mirror)) as Box<dyn Mirror>));
    }

    /// Set the observer of local changes only: every change made through the script/admin
    /// operations reaches it after the mirror, while the `apply_remote_*` methods (changes that
    /// came from another host) skip it, so replication never echoes what it applied.
    pub fn set_replicator(&self, replicator: Arc<dyn Mirror>) {
        self.replicator
            .store(Arc::new(Box::new(ArcMirror(replicator)) as Box<dyn Mirror>));
    }

    /// Tells the kernel mirror, then the replicator.
    fn notify(&self, tell: impl Fn(&dyn Mirror)) {
        tell(&***self.mirror.load());
        tell(&***self.replicator.load());
    }

    fn notify_upsert(&self, table: &str, key: &str, value: &str, expires_ns: u64) {
        self.notify(|m| m.upsert(&self.vs, table, key, value, expires_ns));
    }

    /// An entry's lifetime changed (value unchanged): tell the mirrors, coalesced per
    /// [`MIRROR_COALESCE_NS`].
    fn notify_extension(&self, table: &str, key: &str, e: &mut Entry) {
        if e.expires_ns < e.notified_ns
            || e.expires_ns >= e.notified_ns.saturating_add(MIRROR_COALESCE_NS)
        {
            e.notified_ns = e.expires_ns;
            let (value, expires) = (&e.value, e.expires_ns);
            self.notify(|m| m.extend(&self.vs, table, key, value, expires));
        }
    }

    fn notify_remove(&self, table: &str, key: &str, reason: RemoveReason) {
        self.notify(|m| m.remove(&self.vs, table, key, reason));
    }

    /// Counters and the current entry count.
    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.counters;
        CounterSnapshot {
            inserts: c.inserts.load(Ordering::Relaxed),
            updates: c.updates.load(Ordering::Relaxed),
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            expirations: c.expirations.load(Ordering::Relaxed),
            removals: c.removals.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed) as u64,
        }
    }

    /// Entries currently stored (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    /// True when no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_map<R>(&self, table: &str, f: impl FnOnce(&Map) -> R) -> Option<R> {
        if table == DEFAULT_TABLE {
            return Some(f(&self.default));
        }
        let map = self.named.get(table).map(|m| Arc::clone(m.value()))?;
        Some(f(&map))
    }

    fn with_map_or_create<R>(&self, table: &str, f: impl FnOnce(&Map) -> R) -> R {
        if table == DEFAULT_TABLE {
            return f(&self.default);
        }
        let map = match self.named.get(table) {
            Some(m) => Arc::clone(m.value()),
            None => Arc::clone(
                self.named
                    .entry(Box::from(table))
                    .or_insert_with(|| Arc::new(new_map()))
                    .value(),
            ),
        };
        f(&map)
    }

    fn clamp_expiry(&self, now_ns: u64, lifetime_s: u64) -> u64 {
        let lifetime = lifetime_s.min(self.limits.max_lifetime_s);
        now_ns.saturating_add(lifetime.saturating_mul(NS_PER_S))
    }

    fn expired(&self, table: &str, key: &str) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        bump(&self.counters.expirations);
        self.notify_remove(table, key, RemoveReason::Expired);
    }

    /// `table_insert`: a new (or expired) key stores `value`; a live key keeps its value and
    /// its lifetime is reset to `lifetime_s` from now (capped at the maximum lifetime).
    pub fn insert(
        &self,
        table: &str,
        key: &str,
        value: &str,
        lifetime_s: u64,
        now_ns: u64,
    ) -> Result<InsertOutcome, InsertError> {
        let r = self.insert_inner(table, key, value, lifetime_s, now_ns);
        match r {
            Ok(InsertOutcome::Inserted) => bump(&self.counters.inserts),
            Ok(InsertOutcome::Updated) => bump(&self.counters.updates),
            Err(_) => bump(&self.counters.failures),
        }
        r
    }

    fn insert_inner(
        &self,
        table: &str,
        key: &str,
        value: &str,
        lifetime_s: u64,
        now_ns: u64,
    ) -> Result<InsertOutcome, InsertError> {
        let l = &self.limits;
        l.check_key(key)?;
        let expires_ns = self.clamp_expiry(now_ns, lifetime_s);
        self.with_map_or_create(table, |map| {
            // Fast path without allocating the key: a live key only has its expiry reset.
            if let Some(mut e) = map.get_mut(key)
                && e.live(now_ns)
            {
                e.expires_ns = expires_ns;
                self.notify_extension(table, key, &mut e);
                return Ok(InsertOutcome::Updated);
            }
            l.check_value(value)?;
            match map.entry(Box::from(key)) {
                MapEntry::Occupied(mut o) => {
                    let e = o.get_mut();
                    if e.live(now_ns) {
                        e.expires_ns = expires_ns;
                        self.notify_extension(table, key, e);
                        Ok(InsertOutcome::Updated)
                    } else {
                        // The expired entry is replaced in place; report its expiry first so a
                        // mirror sees the same sequence as for a swept entry.
                        bump(&self.counters.expirations);
                        self.notify_remove(table, key, RemoveReason::Expired);
                        *e = Entry::new(Box::from(value), expires_ns);
                        self.notify_upsert(table, key, value, expires_ns);
                        Ok(InsertOutcome::Inserted)
                    }
                }
                MapEntry::Vacant(v) => {
                    let before = self.entries.fetch_add(1, Ordering::Relaxed);
                    if before >= l.max_entries {
                        self.entries.fetch_sub(1, Ordering::Relaxed);
                        return Err(InsertError::Full { max: l.max_entries });
                    }
                    v.insert(Entry::new(Box::from(value), expires_ns));
                    self.notify_upsert(table, key, value, expires_ns);
                    Ok(InsertOutcome::Inserted)
                }
            }
        })
    }

    /// Extend a live entry by `exten_s` (never beyond the maximum lifetime from now) and return
    /// its value and expiry; `None` (and the expired entry removed) otherwise.
    fn touch(&self, table: &str, key: &str, exten_s: u64, now_ns: u64) -> Option<(String, u64)> {
        let found = self.with_map(table, |map| {
            let mut e = map.get_mut(key)?;
            if e.live(now_ns) {
                if exten_s > 0 {
                    let cap = self.clamp_expiry(now_ns, self.limits.max_lifetime_s);
                    let new = e
                        .expires_ns
                        .saturating_add(exten_s.saturating_mul(NS_PER_S))
                        .min(cap)
                        .max(e.expires_ns);
                    if new != e.expires_ns {
                        e.expires_ns = new;
                        self.notify_extension(table, key, &mut e);
                    }
                }
                return Some(Ok((e.value.to_string(), e.expires_ns)));
            }
            drop(e);
            Some(Err(()))
        })??;
        match found {
            Ok(v) => Some(v),
            Err(()) => {
                self.remove_expired(table, key, now_ns);
                None
            }
        }
    }

    fn remove_expired(&self, table: &str, key: &str, now_ns: u64) {
        self.with_map(table, |map| {
            if map.remove_if(key, |_, e| !e.live(now_ns)).is_some() {
                self.expired(table, key);
            }
        });
    }

    /// `table_lookup`: the value and remaining whole seconds after extending by `exten_s`
    /// (0 leaves the lifetime untouched), or `None` on a miss or an expired key.
    pub fn lookup(
        &self,
        table: &str,
        key: &str,
        exten_s: u64,
        now_ns: u64,
    ) -> Option<(String, u64)> {
        let r = self.touch(table, key, exten_s, now_ns);
        match &r {
            Some(_) => bump(&self.counters.hits),
            None => bump(&self.counters.misses),
        }
        r.map(|(v, exp)| (v, exp.saturating_sub(now_ns) / NS_PER_S))
    }

    /// `table_refresh`: extends like [`Self::lookup`]; true if the key was live.
    pub fn refresh(&self, table: &str, key: &str, exten_s: u64, now_ns: u64) -> bool {
        let live = self.touch(table, key, exten_s, now_ns).is_some();
        bump(if live {
            &self.counters.hits
        } else {
            &self.counters.misses
        });
        live
    }

    /// Value and expiry of a live key, without extending it (admin API).
    pub fn get(&self, table: &str, key: &str, now_ns: u64) -> Option<EntryView> {
        self.touch(table, key, 0, now_ns)
            .map(|(value, expires_at_mono_ns)| EntryView {
                table: table.to_string(),
                key: key.to_string(),
                value,
                expires_at_mono_ns,
            })
    }

    /// `table_remove` / admin delete: true if a live key was removed.
    pub fn remove(&self, table: &str, key: &str, now_ns: u64) -> bool {
        let removed = self
            .with_map(table, |map| map.remove(key))
            .flatten()
            .map(|(_, e)| e);
        match removed {
            Some(e) if e.live(now_ns) => {
                self.entries.fetch_sub(1, Ordering::Relaxed);
                bump(&self.counters.removals);
                self.notify_remove(table, key, RemoveReason::Removed);
                true
            }
            Some(_) => {
                self.expired(table, key);
                false
            }
            None => false,
        }
    }

    /// Remove every entry of `table` (all tables when `None`); returns how many were removed.
    pub fn flush(&self, table: Option<&str>) -> usize {
        let mut n = 0;
        let mut flush_map = |name: &str, map: &Map| {
            map.retain(|k, _| {
                self.entries.fetch_sub(1, Ordering::Relaxed);
                bump(&self.counters.removals);
                self.notify_remove(name, k, RemoveReason::Removed);
                n += 1;
                false
            });
        };
        match table {
            Some(t) => {
                self.with_map(t, |m| flush_map(t, m));
            }
            None => {
                flush_map(DEFAULT_TABLE, &self.default);
                for m in self.named_maps() {
                    flush_map(&m.0, &m.1);
                }
            }
        }
        n
    }

    fn named_maps(&self) -> Vec<(Box<str>, Arc<Map>)> {
        self.named
            .iter()
            .map(|r| (r.key().clone(), Arc::clone(r.value())))
            .collect()
    }

    /// Names of the tables that exist (the default table always does).
    pub fn table_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::iter::once(DEFAULT_TABLE.to_string())
            .chain(self.named.iter().map(|r| r.key().to_string()))
            .collect();
        v.sort();
        v
    }

    /// Live entries of `table` (all tables when `None`) whose key starts with `prefix`, at most
    /// `limit`, sorted by table then key.
    pub fn list(
        &self,
        table: Option<&str>,
        prefix: Option<&str>,
        limit: usize,
        now_ns: u64,
    ) -> Vec<EntryView> {
        let mut out = Vec::new();
        let collect = |name: &str, map: &Map, out: &mut Vec<EntryView>| {
            for r in map.iter() {
                if r.value().live(now_ns) && prefix.is_none_or(|p| r.key().starts_with(p)) {
                    out.push(EntryView {
                        table: name.to_string(),
                        key: r.key().to_string(),
                        value: r.value().value.to_string(),
                        expires_at_mono_ns: r.value().expires_ns,
                    });
                }
            }
        };
        match table {
            Some(t) => {
                self.with_map(t, |m| collect(t, m, &mut out));
            }
            None => {
                collect(DEFAULT_TABLE, &self.default, &mut out);
                for (name, m) in self.named_maps() {
                    collect(&name, &m, &mut out);
                }
            }
        }
        out.sort_by(|a, b| (&a.table, &a.key).cmp(&(&b.table, &b.key)));
        out.truncate(limit);
        out
    }

    /// Remove every entry expired at `now_ns`, tell the mirror, and return them.
    pub fn sweep(&self, now_ns: u64) -> Vec<EntryView> {
        let mut out = Vec::new();
        let mut sweep_map = |name: &str, map: &Map| {
            map.retain(|k, e| {
                if e.live(now_ns) {
                    return true;
                }
                self.expired(name, k);
                out.push(EntryView {
                    table: name.to_string(),
                    key: k.to_string(),
                    value: e.value.to_string(),
                    expires_at_mono_ns: e.expires_ns,
                });
                false
            });
        };
        sweep_map(DEFAULT_TABLE, &self.default);
        for (name, m) in self.named_maps() {
            sweep_map(&name, &m);
        }
        out
    }

    /// Apply a change another host made: `key` holds `value` until `expires_ns` (capped at the
    /// maximum lifetime from now), whatever it held before. The mirror is told (a changed
    /// value as a removal then an upsert, so fast-path pins of the old value go), the
    /// replicator is not. Size limits and `max_entries` hold as for a local insert.
    pub fn apply_remote_upsert(
        &self,
        table: &str,
        key: &str,
        value: &str,
        expires_ns: u64,
        now_ns: u64,
    ) -> Result<RemoteOutcome, InsertError> {
        let l = &self.limits;
        l.check_key(key)?;
        l.check_value(value)?;
        if expires_ns <= now_ns {
            return Ok(RemoteOutcome::Unchanged);
        }
        let expires_ns = expires_ns.min(self.clamp_expiry(now_ns, l.max_lifetime_s));
        self.with_map_or_create(table, |map| match map.entry(Box::from(key)) {
            MapEntry::Occupied(mut o) => {
                let e = o.get_mut();
                let m = self.mirror.load();
                if e.live(now_ns) && *e.value == *value {
                    if e.expires_ns == expires_ns {
                        return Ok(RemoteOutcome::Unchanged);
                    }
                    e.expires_ns = expires_ns;
                    e.notified_ns = expires_ns;
                    m.upsert(&self.vs, table, key, value, expires_ns);
                    return Ok(RemoteOutcome::Extended);
                }
                let outcome = if e.live(now_ns) {
                    m.remove(&self.vs, table, key, RemoveReason::Removed);
                    RemoteOutcome::Replaced
                } else {
                    bump(&self.counters.expirations);
                    m.remove(&self.vs, table, key, RemoveReason::Expired);
                    RemoteOutcome::Inserted
                };
                *e = Entry::new(Box::from(value), expires_ns);
                m.upsert(&self.vs, table, key, value, expires_ns);
                Ok(outcome)
            }
            MapEntry::Vacant(v) => {
                if self.entries.fetch_add(1, Ordering::Relaxed) >= l.max_entries {
                    self.entries.fetch_sub(1, Ordering::Relaxed);
                    return Err(InsertError::Full { max: l.max_entries });
                }
                v.insert(Entry::new(Box::from(value), expires_ns));
                self.mirror
                    .load()
                    .upsert(&self.vs, table, key, value, expires_ns);
                Ok(RemoteOutcome::Inserted)
            }
        })
    }

    /// Apply a removal or expiry another host made: `key` goes unless it expires after
    /// `unless_expires_after_ns` (pass `u64::MAX` to remove whatever its expiry; an expiry
    /// report passes a bound so an entry this host extended meanwhile stays). The mirror is
    /// told, the replicator is not. True if an entry was removed.
    pub fn apply_remote_remove(
        &self,
        table: &str,
        key: &str,
        reason: RemoveReason,
        unless_expires_after_ns: u64,
    ) -> bool {
        let removed = self
            .with_map(table, |map| {
                map.remove_if(key, |_, e| e.expires_ns <= unless_expires_after_ns)
            })
            .flatten()
            .is_some();
        if removed {
            self.entries.fetch_sub(1, Ordering::Relaxed);
            bump(match reason {
                RemoveReason::Removed => &self.counters.removals,
                RemoveReason::Expired => &self.counters.expirations,
            });
            self.mirror.load().remove(&self.vs, table, key, reason);
        }
        removed
    }

    /// Bulk-load entries (agent restart, replication) without notifying the mirror. Entries
    /// already expired at `now_ns`, over the size limits or beyond `max_entries` are skipped;
    /// an existing key takes the restored value and expiry. Returns how many were loaded.
    pub fn restore(&self, entries: impl IntoIterator<Item = EntryView>, now_ns: u64) -> usize {
        let l = &self.limits;
        let mut n = 0;
        for e in entries {
            if e.expires_at_mono_ns <= now_ns
                || e.key.len() > l.max_key_bytes
                || e.value.len() > l.max_value_bytes
            {
                continue;
            }
            let cap = self.clamp_expiry(now_ns, l.max_lifetime_s);
            let entry = Entry::new(e.value.into_boxed_str(), e.expires_at_mono_ns.min(cap));
            let stored =
                self.with_map_or_create(&e.table, |map| match map.entry(e.key.into_boxed_str()) {
                    MapEntry::Occupied(mut o) => {
                        o.insert(entry);
                        true
                    }
                    MapEntry::Vacant(v) => {
                        if self.entries.fetch_add(1, Ordering::Relaxed) >= l.max_entries {
                            self.entries.fetch_sub(1, Ordering::Relaxed);
                            return false;
                        }
                        v.insert(entry);
                        true
                    }
                });
            n += usize::from(stored);
        }
        n
    }
}

/// Adapter so the mirror can live in an `ArcSwap` (which needs a sized type).
struct ArcMirror(Arc<dyn Mirror>);

impl Mirror for ArcMirror {
    fn upsert(&self, vs: &str, table: &str, key: &str, value: &str, expires: u64) {
        self.0.upsert(vs, table, key, value, expires);
    }
    fn extend(&self, vs: &str, table: &str, key: &str, value: &str, expires: u64) {
        self.0.extend(vs, table, key, value, expires);
    }
    fn remove(&self, vs: &str, table: &str, key: &str, reason: RemoveReason) {
        self.0.remove(vs, table, key, reason);
    }
}

/// The tables of every virtual service, kept across config reloads.
pub struct TableStore {
    vss: DashMap<String, Arc<VsTables>>,
    limits: TableLimits,
    mirror: ArcSwap<Box<dyn Mirror>>,
    replicator: ArcSwap<Option<Arc<dyn Mirror>>>,
}

impl std::fmt::Debug for TableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableStore")
            .field("vss", &self.vss.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl TableStore {
    /// An empty store; new virtual services get `limits` and `mirror`.
    pub fn new(limits: TableLimits, mirror: Arc<dyn Mirror>) -> Self {
        Self {
            vss: DashMap::new(),
            limits,
            mirror: ArcSwap::from_pointee(Box::new(ArcMirror(mirror)) as Box<dyn Mirror>),
            replicator: ArcSwap::from_pointee(None),
        }
    }

    /// The tables of `vs`, created on first use.
    pub fn vs(&self, vs: &str) -> Arc<VsTables> {
        if let Some(t) = self.vss.get(vs) {
            return Arc::clone(t.value());
        }
        let mirror: Arc<dyn Mirror> = Arc::new(SharedMirror(self.mirror.load_full()));
        Arc::clone(
            self.vss
                .entry(vs.to_string())
                .or_insert_with(|| {
                    let t = VsTables::new(vs, self.limits.clone(), mirror);
                    if let Some(r) = self.replicator.load().as_ref() {
                        t.set_replicator(Arc::clone(r));
                    }
                    Arc::new(t)
                })
                .value(),
        )
    }

    /// The tables of `vs` if they exist.
    pub fn get_vs(&self, vs: &str) -> Option<Arc<VsTables>> {
        self.vss.get(vs).map(|t| Arc::clone(t.value()))
    }

    /// Names of the virtual services that have tables.
    pub fn vs_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.vss.iter().map(|r| r.key().clone()).collect();
        v.sort();
        v
    }

    /// Replace the mirror of every virtual service, present and future.
    pub fn set_mirror(&self, mirror: Arc<dyn Mirror>) {
        self.mirror.store(Arc::new(
            Box::new(ArcMirror(Arc::clone(&mirror))) as Box<dyn Mirror>
        ));
        for r in self.vss.iter() {
            r.value().set_mirror(Arc::clone(&mirror));
        }
    }

    /// Set the replicator (see [`VsTables::set_replicator`]) of every virtual service,
    /// present and future.
    pub fn set_replicator(&self, replicator: Arc<dyn Mirror>) {
        self.replicator
            .store(Arc::new(Some(Arc::clone(&replicator))));
        for r in self.vss.iter() {
            r.value().set_replicator(Arc::clone(&replicator));
        }
    }

    /// Drop the tables of virtual services no longer configured (without mirror calls: the
    /// caller removes their kernel entries wholesale).
    pub fn retain_vs(&self, keep: impl Fn(&str) -> bool) {
        self.vss.retain(|k, _| keep(k));
    }

    /// Sweep every virtual service; returns (vs, expired entry) pairs.
    pub fn sweep(&self, now_ns: u64) -> Vec<(String, EntryView)> {
        let all: Vec<Arc<VsTables>> = self.vss.iter().map(|r| Arc::clone(r.value())).collect();
        let mut out = Vec::new();
        for t in all {
            let vs = t.vs().to_string();
            out.extend(t.sweep(now_ns).into_iter().map(|e| (vs.clone(), e)));
        }
        out
    }
}

/// Holds the store's mirror as it was when a virtual service was created.
struct SharedMirror(Arc<Box<dyn Mirror>>);

impl Mirror for SharedMirror {
    fn upsert(&self, vs: &str, table: &str, key: &str, value: &str, expires: u64) {
        self.0.upsert(vs, table, key, value, expires);
    }
    fn extend(&self, vs: &str, table: &str, key: &str, value: &str, expires: u64) {
        self.0.extend(vs, table, key, value, expires);
    }
    fn remove(&self, vs: &str, table: &str, key: &str, reason: RemoveReason) {
        self.0.remove(vs, table, key, reason);
    }
}
