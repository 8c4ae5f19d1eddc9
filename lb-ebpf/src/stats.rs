//! Per-CPU counters: one global counter per path/verdict, traffic per service and backend.

use lb_common::TrafficCounters;

use crate::maps::{BACKEND_STATS, SERVICE_STATS, STATS};

#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: a non-null pointer to this CPU's slot of a per-CPU array: valid, aligned,
        // and written by no one else while the program runs on this CPU.
        unsafe { *p += 1 }
    }
}

#[inline(always)]
fn add(p: Option<*mut TrafficCounters>, bytes: u16, new_flow: bool) {
    if let Some(p) = p {
        // SAFETY: `p` is this CPU's slot of a per-CPU array (see `traffic`): valid, aligned,
        // and written by no one else while the program runs on this CPU.
        unsafe {
            (*p).packets += 1;
            (*p).bytes += bytes as u64;
            if new_flow {
                (*p).new_flows += 1;
            }
        }
    }
}

/// Counts one forwarded packet of `bytes` (L3 length) for a service and a backend.
#[inline(always)]
pub fn traffic(service_id: u32, backend_id: u32, bytes: u16, new_flow: bool) {
    add(SERVICE_STATS.get_ptr_mut(service_id), bytes, new_flow);
    add(BACKEND_STATS.get_ptr_mut(backend_id), bytes, new_flow);
}
