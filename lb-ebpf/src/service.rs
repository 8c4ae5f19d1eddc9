//! Service and backend lookups.

use lb_common::{BackendOf, Service, ServiceKeyOf, backend_state};

use crate::family::Family;

#[inline(always)]
pub fn lookup<F: Family>(vip: F::Addr, port: u16, proto: u8) -> Option<Service> {
    let key = ServiceKeyOf {
        vip,
        port,
        proto,
        _pad: 0,
    };
    // SAFETY: the reference from `get` may see the agent update or delete the entry; it is
    // copied at once, and `Service` is plain integers, valid for any bit pattern.
    unsafe { F::services().get(key) }.copied()
}

/// The backend with this id if it is UP and, when `generation` is given, still the same
/// incarnation (a removed or reassigned slot has a newer generation).
#[inline(always)]
pub fn usable_backend<F: Family>(id: u32, generation: Option<u32>) -> Option<BackendOf<F::Addr>> {
    if id == 0 {
        return None;
    }
    let be = *F::backends().get(id)?;
    if be.state != backend_state::UP {
        return None;
    }
    match generation {
        Some(g) if g != be.generation => None,
        _ => Some(be),
    }
}
