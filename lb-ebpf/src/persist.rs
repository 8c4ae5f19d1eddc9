//! Client-IP persistence: {group, client address} -> backend, with an expiry. IPv6 clients
//! are keyed by the service's persistence prefix (`lb_common::service_flags::persist_prefix`).

use lb_common::{BackendOf, Persist, PersistKeyOf, Service};

use crate::{family::Family, service::usable_backend};

pub enum Lookup<A> {
    Miss,
    /// An entry exists but is expired or its backend is stale / not UP.
    Stale,
    Live(u32, BackendOf<A>),
}

/// The persistence key of `client` for `svc`: its group and the client address (IPv6:
/// masked to the service's prefix).
#[inline(always)]
pub fn key<F: Family>(svc: &Service, client: &F::Addr) -> PersistKeyOf<F::Addr> {
    PersistKeyOf {
        group: svc.persist_group,
        client_addr: F::persist_addr(client, svc.flags),
    }
}

#[inline(always)]
pub fn lookup<F: Family>(key: &PersistKeyOf<F::Addr>, now: u64) -> Lookup<F::Addr> {
    // SAFETY: `get` is unsafe because the reference it returns could see the entry updated
    // or deleted by the agent; it is copied at once and every field is a plain integer, so a
    // torn copy is at worst a stale pin, which the generation check below rejects.
    let Some(p) = (unsafe { F::persist().get(key) }).copied() else {
        return Lookup::Miss;
    };
    if now >= p.expires_ns {
        return Lookup::Stale;
    }
    match usable_backend::<F>(p.backend_id, Some(p.generation)) {
        Some(be) => Lookup::Live(p.backend_id, be),
        None => Lookup::Stale,
    }
}

/// Pins (or re-pins) a client to a backend until `now + ttl_ns`.
#[inline(always)]
pub fn pin<F: Family>(
    key: &PersistKeyOf<F::Addr>,
    backend_id: u32,
    be: &BackendOf<F::Addr>,
    now: u64,
    ttl_ns: u64,
) {
    let value = Persist {
        backend_id,
        generation: be.generation,
        expires_ns: now.saturating_add(ttl_ns),
    };
    // A full map only loses stickiness for this client; the flow itself still proceeds. It
    // is counted, so the agent can tell the map is full.
    if F::persist().insert(key, value, 0).is_err() {
        crate::stats::count(lb_common::stat::PERSIST_FULL);
    }
}
