//! Consistent hashing of new flows through the service's live maglev table (the arithmetic is
//! `lb_common::maglev`, shared with the agent's table builder).

use lb_common::{BackendOf, Service, maglev::entry_index};

use crate::{family::Family, maps::MAGLEV, service::usable_backend};

/// The backend the service's live maglev table assigns to `hash`, if it is usable.
#[inline(always)]
pub fn pick<F: Family>(svc: &Service, hash: u32) -> Option<(u32, BackendOf<F::Addr>)> {
    let index = entry_index(svc.id, svc.maglev_slot, hash)?;
    let id = *MAGLEV.get(index)?;
    let be = usable_backend::<F>(id, None)?;
    Some((id, be))
}
