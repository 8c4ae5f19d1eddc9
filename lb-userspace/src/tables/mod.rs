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
//! --nocapture`): with 32-byte keys and 16-byte values, which fit in the map's 96-byte slots
//! (see `text.rs`), about 120 bytes per entry at 100,000 entries and 210 at 1,000,000 (the
//! hash table's slack: it had just doubled; `cargo xtask bench scale`), whatever table it
//! is in: all tables of a virtual service share one map keyed by (table, key). Each entry is charged
//! [`ENTRY_OVERHEAD_BYTES`] plus its table name, key and value against the virtual service's
//! memory limit ([`TableLimits::max_bytes`]); an insert beyond it is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

#[cfg(test)]
mod tests;
mod text;

use text::Text;

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
    /// Bytes the tables may hold (see [`ENTRY_OVERHEAD_BYTES`]); the agent sets it per
    /// virtual service from `[agent.datascript] table_memory_limit`.
    pub max_bytes: usize,
}

impl Default for TableLimits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_key_bytes: 256,
            max_value_bytes: 1024,
            max_lifetime_s: 86_400,
            max_bytes: 64 << 20,
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
    /// Bytes charged for the entries stored.
    pub bytes: u64,
    /// The memory limit in bytes.
    pub memory_limit: u64,
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
    /// The tables hold as many bytes as the memory limit allows.
    #[error("table memory full ({limit} bytes)")]
    MemoryFull {
        /// The configured limit.
        limit: usize,
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

/// Values up to this many bytes are kept in the entry itself (`ip:port` of any IPv4 server
/// fits); see `text.rs`.
const INLINE_VALUE: usize = 22;
/// Table name and key together up to this many bytes are kept in the slot (a 32-character
/// session id in a table named with up to 14).
const INLINE_KEY: usize = 46;

#[derive(Debug)]
struct Entry {
    value: Text<INLINE_VALUE>,
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
    fn new(value: &str, expires_ns: u64) -> Self {
        Self {
            value: Text::new(value),
            expires_ns,
            notified_ns: expires_ns,
        }
    }

    fn live(&self, now_ns: u64) -> bool {
        self.expires_ns > now_ns
    }
}

/// A key with the name of its table, in the slot when short (see `text.rs`): all tables of a
/// virtual service share one map, so a named table costs nothing of its own (a map per table
/// cost 8 KB of shards).
struct TableKey {
    /// The table name followed by the key.
    text: Text<INLINE_KEY>,
    /// Length of the table name in `text`.
    split: u32,
}

impl TableKey {
    fn new(table: &str, key: &str) -> Self {
        Self {
            text: Text::concat(table, key),
            // Keys and table names are at most a few hundred bytes (see `TableLimits`).
            split: u32::try_from(table.len()).unwrap_or(u32::MAX),
        }
    }
}

/// A (table, key) pair, stored ([`TableKey`]) or looked up ([`Lookup`]) alike, so a lookup
/// allocates nothing.
trait Qualified {
    fn table(&self) -> &str;
    fn key(&self) -> &str;
}

impl Qualified for TableKey {
    fn table(&self) -> &str {
        &self.text[..self.split as usize]
    }
    fn key(&self) -> &str {
        &self.text[self.split as usize..]
    }
}

/// The (table, key) of a lookup.
struct Lookup<'a>(&'a str, &'a str);

impl Qualified for Lookup<'_> {
    fn table(&self) -> &str {
        self.0
    }
    fn key(&self) -> &str {
        self.1
    }
}

impl std::hash::Hash for dyn Qualified + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // `str` hashes with a terminator, so ("ab", "c") and ("a", "bc") differ.
        self.table().hash(h);
        self.key().hash(h);
    }
}

impl PartialEq for dyn Qualified + '_ {
    fn eq(&self, other: &Self) -> bool {
        same_bytes(self.table(), other.table()) && same_bytes(self.key(), other.key())
    }
}

/// `a == b` without a call into libc's `bcmp`: table names and keys are short (the default
/// table's name is empty), and glibc's vector `bcmp` cost about 40 ns a call here, which
/// made it most of a lookup.
fn same_bytes(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

impl Eq for dyn Qualified + '_ {}

impl std::hash::Hash for TableKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self as &dyn Qualified).hash(h);
    }
}

impl PartialEq for TableKey {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn Qualified) == (other as &dyn Qualified)
    }
}

impl Eq for TableKey {}

impl<'a> std::borrow::Borrow<dyn Qualified + 'a> for TableKey {
    fn borrow(&self) -> &(dyn Qualified + 'a) {
        self
    }
}

type Map = DashMap<TableKey, Entry>;

/// Bytes an entry is charged beyond its table name, key and value: the map slot, the entry,
/// allocator overhead and hash table slack (measured by `memory_per_entry`; since short keys
/// and values live in the slot, an upper bound for them: a 96-byte slot takes at most about
/// 220 bytes with the hash table's slack).
pub const ENTRY_OVERHEAD_BYTES: usize = 208;

/// What an entry is charged against the memory limit.
fn entry_cost(table: &str, key: &str, value: &str) -> usize {
    ENTRY_OVERHEAD_BYTES + table.len() + key.len() + value.len()
}

/// All persistence tables of one virtual service.
pub struct VsTables {
    vs: Arc<str>,
    map: Map,
    entries: AtomicUsize,
    /// Bytes charged for the entries stored (see [`entry_cost`]).
    bytes: AtomicUsize,
    /// Limit of `bytes`; changed by a reload.
    memory_limit: AtomicUsize,
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
            .field("bytes", &self.bytes)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl VsTables {
    /// Empty tables for virtual service `vs`.
    pub fn new(vs: &str, limits: TableLimits, mirror: Arc<dyn Mirror>) -> Self {
        Self {
            vs: Arc::from(vs),
            map: DashMap::with_capacity_and_shard_amount(0, SHARDS),
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            memory_limit: AtomicUsize::new(limits.max_bytes),
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

    /// Bytes charged for the entries stored now.
    pub fn memory_used(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The memory limit in force.
    pub fn memory_limit(&self) -> usize {
        self.memory_limit.load(Ordering::Relaxed)
    }

    /// Change the memory limit (a reload). Entries already stored stay; inserts are refused
    /// while the tables hold more.
    pub fn set_memory_limit(&self, bytes: usize) {
        self.memory_limit.store(bytes, Ordering::Relaxed);
    }

    /// Reserve room for a new entry: one more entry and `cost` more bytes, or why not.
    fn reserve(&self, cost: usize) -> Result<(), InsertError> {
        let max = self.limits.max_entries;
        if self.entries.fetch_add(1, Ordering::Relaxed) >= max {
            self.entries.fetch_sub(1, Ordering::Relaxed);
            return Err(InsertError::Full { max });
        }
        let limit = self.memory_limit();
        if self.bytes.fetch_add(cost, Ordering::Relaxed) + cost > limit {
            self.bytes.fetch_sub(cost, Ordering::Relaxed);
            self.entries.fetch_sub(1, Ordering::Relaxed);
            return Err(InsertError::MemoryFull { limit });
        }
        Ok(())
    }

    /// An entry left: give back its room.
    fn release(&self, table: &str, key: &str, value: &str) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes
            .fetch_sub(entry_cost(table, key, value), Ordering::Relaxed);
    }

    /// An entry's value changed from `old` to `new` (its key stays): charge the difference.
    fn recharge(&self, old: &str, new: &str) {
        self.bytes.fetch_add(new.len(), Ordering::Relaxed);
        self.bytes.fetch_sub(old.len(), Ordering::Relaxed);
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
            bytes: self.memory_used() as u64,
            memory_limit: self.memory_limit() as u64,
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

    fn clamp_expiry(&self, now_ns: u64, lifetime_s: u64) -> u64 {
        let lifetime = lifetime_s.min(self.limits.max_lifetime_s);
        now_ns.saturating_add(lifetime.saturating_mul(NS_PER_S))
    }

    fn expired(&self, table: &str, key: &str, value: &str) {
        self.release(table, key, value);
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
        l.check_key(table)?;
        let expires_ns = self.clamp_expiry(now_ns, lifetime_s);
        // Fast path without allocating the key: a live key only has its expiry reset.
        if let Some(mut e) = self.map.get_mut(&Lookup(table, key) as &dyn Qualified)
            && e.live(now_ns)
        {
            e.expires_ns = expires_ns;
            self.notify_extension(table, key, &mut e);
            return Ok(InsertOutcome::Updated);
        }
        l.check_value(value)?;
        match self.map.entry(TableKey::new(table, key)) {
            MapEntry::Occupied(mut o) => {
                let e = o.get_mut();
                if e.live(now_ns) {
                    e.expires_ns = expires_ns;
                    self.notify_extension(table, key, e);
                    Ok(InsertOutcome::Updated)
                } else {
                    // The expired entry is replaced in place; report its expiry first so a
                    // mirror sees the same sequence as for a swept entry.
                    let grows = value.len().saturating_sub(e.value.len());
                    let limit = self.memory_limit();
                    if self.memory_used() + grows > limit {
                        return Err(InsertError::MemoryFull { limit });
                    }
                    bump(&self.counters.expirations);
                    self.notify_remove(table, key, RemoveReason::Expired);
                    self.recharge(&e.value, value);
                    *e = Entry::new(value, expires_ns);
                    self.notify_upsert(table, key, value, expires_ns);
                    Ok(InsertOutcome::Inserted)
                }
            }
            MapEntry::Vacant(v) => {
                self.reserve(entry_cost(table, key, value))?;
                v.insert(Entry::new(value, expires_ns));
                self.notify_upsert(table, key, value, expires_ns);
                Ok(InsertOutcome::Inserted)
            }
        }
    }

    /// Extend a live entry by `exten_s` (never beyond the maximum lifetime from now) and return
    /// its value and expiry; `None` (and the expired entry removed) otherwise.
    fn touch(&self, table: &str, key: &str, exten_s: u64, now_ns: u64) -> Option<(String, u64)> {
        let found = {
            let mut e = self.map.get_mut(&Lookup(table, key) as &dyn Qualified)?;
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
                Some((String::from(&*e.value), e.expires_ns))
            } else {
                None
            }
        };
        if found.is_none() {
            self.remove_expired(table, key, now_ns);
        }
        found
    }

    fn remove_expired(&self, table: &str, key: &str, now_ns: u64) {
        if let Some((_, e)) = self
            .map
            .remove_if(&Lookup(table, key) as &dyn Qualified, |_, e| {
                !e.live(now_ns)
            })
        {
            self.expired(table, key, &e.value);
        }
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
        match self.map.remove(&Lookup(table, key) as &dyn Qualified) {
            Some((_, e)) if e.live(now_ns) => {
                self.release(table, key, &e.value);
                bump(&self.counters.removals);
                self.notify_remove(table, key, RemoveReason::Removed);
                true
            }
            Some((_, e)) => {
                self.expired(table, key, &e.value);
                false
            }
            None => false,
        }
    }

    /// Remove every entry of `table` (all tables when `None`); returns how many were removed.
    pub fn flush(&self, table: Option<&str>) -> usize {
        let mut n = 0;
        self.map.retain(|k, e| {
            if table.is_some_and(|t| t != k.table()) {
                return true;
            }
            self.release(k.table(), k.key(), &e.value);
            bump(&self.counters.removals);
            self.notify_remove(k.table(), k.key(), RemoveReason::Removed);
            n += 1;
            false
        });
        n
    }

    /// Names of the tables that hold entries (the default table always exists).
    pub fn table_names(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
        names.insert(DEFAULT_TABLE);
        let tables: Vec<String> = self
            .map
            .iter()
            .map(|r| r.key().table().to_string())
            .collect();
        names.extend(tables.iter().map(String::as_str));
        names.into_iter().map(str::to_string).collect()
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
        let mut out: Vec<EntryView> = self
            .map
            .iter()
            .filter(|r| {
                let k = r.key();
                r.value().live(now_ns)
                    && table.is_none_or(|t| t == k.table())
                    && prefix.is_none_or(|p| k.key().starts_with(p))
            })
            .map(|r| EntryView {
                table: r.key().table().to_string(),
                key: r.key().key().to_string(),
                value: r.value().value.to_string(),
                expires_at_mono_ns: r.value().expires_ns,
            })
            .collect();
        out.sort_by(|a, b| (&a.table, &a.key).cmp(&(&b.table, &b.key)));
        out.truncate(limit);
        out
    }

    /// Remove every entry expired at `now_ns`, tell the mirror, and return them.
    pub fn sweep(&self, now_ns: u64) -> Vec<EntryView> {
        let mut out = Vec::new();
        self.map.retain(|k, e| {
            if e.live(now_ns) {
                return true;
            }
            self.expired(k.table(), k.key(), &e.value);
            out.push(EntryView {
                table: k.table().to_string(),
                key: k.key().to_string(),
                value: e.value.to_string(),
                expires_at_mono_ns: e.expires_ns,
            });
            false
        });
        out
    }

    /// Apply a change another host made: `key` holds `value` until `expires_ns` (capped at the
    /// maximum lifetime from now), whatever it held before. The mirror is told (a changed
    /// value as a removal then an upsert, so fast-path pins of the old value go), the
    /// replicator is not. Size limits, `max_entries` and the memory limit hold as for a local
    /// insert.
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
        l.check_key(table)?;
        l.check_value(value)?;
        if expires_ns <= now_ns {
            return Ok(RemoteOutcome::Unchanged);
        }
        let expires_ns = expires_ns.min(self.clamp_expiry(now_ns, l.max_lifetime_s));
        match self.map.entry(TableKey::new(table, key)) {
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
                let grows = value.len().saturating_sub(e.value.len());
                let limit = self.memory_limit();
                if self.memory_used() + grows > limit {
                    return Err(InsertError::MemoryFull { limit });
                }
                let outcome = if e.live(now_ns) {
                    m.remove(&self.vs, table, key, RemoveReason::Removed);
                    RemoteOutcome::Replaced
                } else {
                    bump(&self.counters.expirations);
                    m.remove(&self.vs, table, key, RemoveReason::Expired);
                    RemoteOutcome::Inserted
                };
                self.recharge(&e.value, value);
                *e = Entry::new(value, expires_ns);
                m.upsert(&self.vs, table, key, value, expires_ns);
                Ok(outcome)
            }
            MapEntry::Vacant(v) => {
                self.reserve(entry_cost(table, key, value))?;
                v.insert(Entry::new(value, expires_ns));
                self.mirror
                    .load()
                    .upsert(&self.vs, table, key, value, expires_ns);
                Ok(RemoteOutcome::Inserted)
            }
        }
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
            .map
            .remove_if(&Lookup(table, key) as &dyn Qualified, |_, e| {
                e.expires_ns <= unless_expires_after_ns
            });
        let Some((_, e)) = removed else {
            return false;
        };
        self.release(table, key, &e.value);
        bump(match reason {
            RemoveReason::Removed => &self.counters.removals,
            RemoveReason::Expired => &self.counters.expirations,
        });
        self.mirror.load().remove(&self.vs, table, key, reason);
        true
    }

    /// Bulk-load entries (agent restart, replication) without notifying the mirror. Entries
    /// already expired at `now_ns`, over the size limits or beyond `max_entries` or the memory
    /// limit are skipped; an existing key takes the restored value and expiry. Returns how
    /// many were loaded.
    pub fn restore(&self, entries: impl IntoIterator<Item = EntryView>, now_ns: u64) -> usize {
        let l = &self.limits;
        let mut n = 0;
        for e in entries {
            if e.expires_at_mono_ns <= now_ns
                || e.key.len() > l.max_key_bytes
                || e.table.len() > l.max_key_bytes
                || e.value.len() > l.max_value_bytes
            {
                continue;
            }
            let cap = self.clamp_expiry(now_ns, l.max_lifetime_s);
            let cost = entry_cost(&e.table, &e.key, &e.value);
            let entry = Entry::new(&e.value, e.expires_at_mono_ns.min(cap));
            let stored = match self.map.entry(TableKey::new(&e.table, &e.key)) {
                MapEntry::Occupied(mut o) => {
                    self.recharge(&o.get().value, &entry.value);
                    o.insert(entry);
                    true
                }
                MapEntry::Vacant(v) => {
                    if self.reserve(cost).is_err() {
                        false
                    } else {
                        v.insert(entry);
                        true
                    }
                }
            };
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
