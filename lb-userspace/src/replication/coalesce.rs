//! At most one Redis write per key per window for an entry that only moves its expiry.
//!
//! `table_lookup` extends an entry on every request, so a hot key would otherwise cost a
//! Redis round trip per request. A change of value (or a shortened lifetime, which `table_insert`
//! of a live key can do) is always sent; an extension inside the window is deferred, and the
//! worker sends the entry as it then is once the window has passed ([`Coalescer::due`]), so
//! the last extension of a burst is never lost. Pure: time is passed in.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use dashmap::DashMap;
use parking_lot::Mutex;

/// What to do with an upsert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it now.
    Send,
    /// Leave it to the deferred flush.
    Defer,
}

#[derive(Debug)]
struct Sent {
    value_hash: u64,
    at_ns: u64,
    expires_ns: u64,
}

fn hash(value: &str) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// See the module docs. Keys are Redis keys.
#[derive(Debug)]
pub struct Coalescer {
    window_ns: u64,
    sent: DashMap<String, Sent>,
    deferred: Mutex<HashSet<String>>,
}

impl Coalescer {
    /// Coalesce extensions within `window_ns`.
    pub fn new(window_ns: u64) -> Self {
        Self {
            window_ns,
            sent: DashMap::new(),
            deferred: Mutex::new(HashSet::new()),
        }
    }

    /// An entry now holds `value` until `expires_ns`: send it or defer it.
    pub fn upsert(&self, rkey: &str, value: &str, expires_ns: u64, now_ns: u64) -> Decision {
        let value_hash = hash(value);
        let fresh = Sent {
            value_hash,
            at_ns: now_ns,
            expires_ns,
        };
        match self.sent.get_mut(rkey) {
            Some(mut s) => {
                let send = s.value_hash != value_hash
                    || expires_ns < s.expires_ns
                    || now_ns.saturating_sub(s.at_ns) >= self.window_ns;
                if send {
                    *s = fresh;
                    Decision::Send
                } else {
                    if expires_ns != s.expires_ns {
                        drop(s);
                        self.deferred.lock().insert(rkey.to_string());
                    }
                    Decision::Defer
                }
            }
            None => {
                self.sent.insert(rkey.to_string(), fresh);
                Decision::Send
            }
        }
    }

    /// The entry left its table.
    pub fn removed(&self, rkey: &str) {
        self.sent.remove(rkey);
        self.deferred.lock().remove(rkey);
    }

    /// Deferred keys whose window has passed; the caller sends their current state through
    /// [`Self::upsert`] (which then says [`Decision::Send`]).
    pub fn due(&self, now_ns: u64) -> Vec<String> {
        let mut deferred = self.deferred.lock();
        let due: Vec<String> = deferred
            .iter()
            .filter(|k| {
                self.sent
                    .get(k.as_str())
                    .is_none_or(|s| now_ns.saturating_sub(s.at_ns) >= self.window_ns)
            })
            .cloned()
            .collect();
        for k in &due {
            deferred.remove(k);
        }
        due
    }

    /// Forgets keys whose last sent expiry passed more than a window ago (their entries
    /// expired or left without a removal, e.g. a virtual service dropped by a reload).
    pub fn prune(&self, now_ns: u64) {
        let deferred = self.deferred.lock();
        self.sent.retain(|k, s| {
            s.expires_ns.saturating_add(self.window_ns) > now_ns || deferred.contains(k)
        });
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 100 * S;

    #[test]
    fn extensions_inside_the_window_are_deferred_then_due() {
        let c = Coalescer::new(S);
        assert_eq!(c.upsert("k", "v", T0 + 300 * S, T0), Decision::Send);
        assert_eq!(
            c.upsert("k", "v", T0 + 600 * S, T0 + S / 2),
            Decision::Defer
        );
        assert_eq!(
            c.upsert("k", "v", T0 + 900 * S, T0 + S / 2),
            Decision::Defer
        );
        assert!(c.due(T0 + S / 2).is_empty());
        assert_eq!(c.due(T0 + S), vec!["k".to_string()]);
        // Taken once.
        assert!(c.due(T0 + 2 * S).is_empty());
        assert_eq!(c.upsert("k", "v", T0 + 900 * S, T0 + S), Decision::Send);
    }

    #[test]
    fn value_changes_and_shortening_are_sent_at_once() {
        let c = Coalescer::new(S);
        assert_eq!(c.upsert("k", "v", T0 + 300 * S, T0), Decision::Send);
        assert_eq!(c.upsert("k", "w", T0 + 300 * S, T0), Decision::Send);
        assert_eq!(c.upsert("k", "w", T0 + 10 * S, T0), Decision::Send);
        // Same value and expiry: nothing to send, nothing deferred.
        assert_eq!(c.upsert("k", "w", T0 + 10 * S, T0), Decision::Defer);
        assert!(c.due(T0 + 5 * S).is_empty());
        // Another key is independent.
        assert_eq!(c.upsert("j", "w", T0 + 10 * S, T0), Decision::Send);
    }

    #[test]
    fn removal_forgets_and_prune_drops_stale_keys() {
        let c = Coalescer::new(S);
        c.upsert("k", "v", T0 + 10 * S, T0);
        c.upsert("k", "v", T0 + 20 * S, T0);
        c.removed("k");
        assert!(c.due(T0 + 5 * S).is_empty());
        assert_eq!(c.upsert("k", "v", T0 + 10 * S, T0), Decision::Send);
        c.upsert("j", "v", T0 + 100 * S, T0);
        c.prune(T0 + 20 * S);
        assert_eq!(c.len(), 1);
        c.prune(T0 + 200 * S);
        assert!(c.is_empty());
    }
}
