//! Client-IP persistence: {group, client address} -> backend, with an expiry.

use lb_common::{Backend, Persist, PersistKey};

use crate::{maps::PERSIST, service::usable_backend};

pub enum Lookup {
    Miss,
    /// An entry exists but is expired or its backend is stale / not UP.
    Stale,
    Live(u32, Backend),
}

#[inline(always)]
pub fn lookup(group: u32, client_addr: u32, now: u64) -> Lookup {
    let key = PersistKey { group, client_addr };
    // SAFETY: `get` is unsafe because the reference it returns could see the entry updated
    // or deleted by the agent; it is copied at once and every field is a plain integer, so a
    // torn copy is at worst a stale pin, which the generation check below rejects.
    let Some(p) = (unsafe { PERSIST.get(key) }).copied() else {
        return Lookup::Miss;
    };
    if now >= p.expires_ns {
        return Lookup::Stale;
    }
    match usable_backend(p.backend_id, Some(p.generation)) {
        Some(be) => Lookup::Live(p.backend_id, be),
        None => Lookup::Stale,
    }
}

/// Pins (or re-pins) a client to a backend until `now + ttl_ns`.
#[inline(always)]
pub fn pin(group: u32, client_addr: u32, backend_id: u32, be: &Backend, now: u64, ttl_ns: u64) {
    let key = PersistKey { group, client_addr };
    let value = Persist {
        backend_id,
        generation: be.generation,
        expires_ns: now.saturating_add(ttl_ns),
    };
    // A full map only loses stickiness for this client; the flow itself still proceeds. It
    // is counted, so the agent can tell the map is full.
    if PERSIST.insert(key, value, 0).is_err() {
        crate::stats::count(lb_common::stat::PERSIST_FULL);
    }
}
