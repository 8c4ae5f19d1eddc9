//! Connection tracking: forward entries keyed by the client 5-tuple and, for NAT, reply
//! entries keyed by the backend's reply 5-tuple.

use lb_common::{Backend, Flow, FlowKey, Service, flow_flags, service_flags, stat};

use crate::{maps::CONNTRACK, service::usable_backend, stats};

/// last_seen is refreshed at most once per second per flow, sparing a cache-line write on
/// every packet of busy flows. The same period bounds how long an established flow is
/// forwarded without consulting SERVICES (see [`early`]).
const REFRESH_NS: u64 = 1_000_000_000;

/// What a non-SYN packet's own conntrack entry says, looked up before SERVICES.
pub enum Early {
    /// No entry for the tuple.
    Miss,
    /// A reply entry whose backend is unchanged: a backend's reply to translate.
    Reply(Flow),
    /// A forward entry with a usable backend, refreshed (and so checked against SERVICES by
    /// the full path) within the last [`REFRESH_NS`].
    Forward {
        id: u32,
        be: Backend,
        flow: Flow,
        now: u64,
    },
    /// Stale, or due for its periodic check: take the full path.
    Full,
}

/// The established-flow fast path: one conntrack lookup instead of SERVICES + conntrack.
///
/// A forward entry is trusted without the SERVICES lookup only while its last_seen is under
/// [`REFRESH_NS`] old; the full path's [`lookup_forward`] refreshes it and rewrites the
/// entry's service id and DSR bit from the service it found. So a deleted service, or one
/// switched between NAT and DSR, affects its established flows at most one second late
/// (before: at once). A reply entry is taken as a reply even if its destination is also a
/// VIP:port, which only a client using a VIP and service port as its own source could cause.
#[inline(always)]
pub fn early(key: &FlowKey) -> Early {
    let Some(flow) = CONNTRACK.get_ptr(key) else {
        return Early::Miss;
    };
    // SAFETY: `get_ptr` returned a non-null, aligned pointer to a `Flow` value of CONNTRACK,
    // whose preallocated memory stays valid while the program runs. Another CPU may rewrite
    // it meanwhile (a refresh, or LRU eviction recycling it for another flow): the copy may
    // then mix fields, but they are plain integers (any bit pattern is a valid `Flow`), so it
    // is at worst a stale answer for this one packet. Plain racy access to map values is the
    // BPF memory model, as in C programs.
    let f = unsafe { *flow };
    if f.flags & flow_flags::REPLY != 0 {
        return match crate::maps::BACKENDS.get(f.backend_id) {
            Some(be) if be.generation == f.generation => Early::Reply(f),
            _ => Early::Full,
        };
    }
    let now = crate::clock::now_ns();
    if now.wrapping_sub(f.last_seen_ns) > REFRESH_NS {
        return Early::Full;
    }
    match usable_backend(f.backend_id, Some(f.generation)) {
        Some(be) => Early::Forward {
            id: f.backend_id,
            be,
            flow: f,
            now,
        },
        None => Early::Full,
    }
}

/// A live forward entry for `key`: its backend id and backend. Stale entries (backend gone,
/// reassigned or not UP) are a miss. A refresh also records `svc`'s id and forwarding mode,
/// which [`early`] trusts until the next refresh.
#[inline(always)]
pub fn lookup_forward(key: &FlowKey, svc: &Service, now: u64) -> Option<(u32, Backend)> {
    let flow = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: as in `early`: valid, aligned map memory; a racing rewrite only mixes integer
    // fields.
    let f = unsafe { *flow };
    if f.flags & flow_flags::REPLY != 0 {
        return None;
    }
    let be = usable_backend(f.backend_id, Some(f.generation))?;
    if now.wrapping_sub(f.last_seen_ns) > REFRESH_NS {
        let dsr = svc.flags & service_flags::DSR != 0;
        let flags = if dsr { flow_flags::DSR } else { 0 };
        if !dsr {
            keep_reply(key, f.backend_id, &be, svc.id, now);
        }
        // SAFETY: `flow` is the same valid, aligned map memory, written with plain aligned
        // stores. Should LRU eviction on another CPU recycle the entry for another tuple since
        // the lookup (a window of a few instructions), these fields land on that entry: a
        // rare, known race of the refresh, not a memory error.
        unsafe {
            (*flow).last_seen_ns = now;
            (*flow).service_id = svc.id;
            (*flow).flags = flags;
        }
    }
    Some((f.backend_id, be))
}

/// A reply entry for `key` (a packet from a backend), if its backend is still the same.
#[inline(always)]
pub fn lookup_reply(key: &FlowKey) -> Option<Flow> {
    // SAFETY: as in `early`: `get_ptr` gives a non-null, aligned pointer to valid map memory;
    // a racing rewrite only mixes integer fields.
    let f = unsafe { *CONNTRACK.get_ptr(key)? };
    if f.flags & flow_flags::REPLY == 0 {
        return None;
    }
    // A reply from a removed/reassigned backend is left to the stack.
    let be = *crate::maps::BACKENDS.get(f.backend_id)?;
    if be.generation != f.generation {
        return None;
    }
    Some(f)
}

/// Records a new flow (and its reply translation for NAT).
#[inline(always)]
pub fn record(key: &FlowKey, backend_id: u32, be: &Backend, service_id: u32, dsr: bool, now: u64) {
    let flow = Flow {
        backend_id,
        generation: be.generation,
        service_id,
        flags: if dsr { flow_flags::DSR } else { 0 },
        vip: 0,
        vport: 0,
        _pad: 0,
        last_seen_ns: now,
    };
    // An LRU map makes room by itself; a failed insert only costs a re-hash later.
    insert(key, &flow);
    if dsr {
        return;
    }
    let (reply_key, reply) = reply_entry(key, backend_id, be, service_id, now);
    insert(&reply_key, &reply);
}

#[inline(always)]
fn insert(key: &FlowKey, flow: &Flow) {
    if CONNTRACK.insert(key, flow, 0).is_ok() {
        stats::count(stat::CONNTRACK_INSERT);
    }
}

/// The reply entry of a NAT flow: keyed by the backend's reply 5-tuple, translating the
/// source back to the VIP and port the client used.
#[inline(always)]
fn reply_entry(
    key: &FlowKey,
    backend_id: u32,
    be: &Backend,
    service_id: u32,
    now: u64,
) -> (FlowKey, Flow) {
    let reply_key = FlowKey {
        src_addr: be.addr,
        dst_addr: key.src_addr,
        src_port: be.port,
        dst_port: key.src_port,
        proto: key.proto,
        _pad: [0, 0, 0],
    };
    let reply = Flow {
        backend_id,
        generation: be.generation,
        service_id,
        flags: flow_flags::REPLY,
        vip: key.dst_addr,
        vport: key.dst_port,
        _pad: 0,
        last_seen_ns: now,
    };
    (reply_key, reply)
}

/// Keeps a live NAT flow's reply translation, at its forward entry's once-a-second refresh:
/// the lookup marks the reply entry used, so the LRU evicts colder entries first (a flow whose
/// backend rarely answers would otherwise lose it), and an entry evicted all the same under
/// connection-table pressure is written again (counted in `REPLY_RESTORED`). Without this, the
/// backend's next replies would leave untranslated and the client would reset.
#[inline(always)]
fn keep_reply(key: &FlowKey, backend_id: u32, be: &Backend, service_id: u32, now: u64) {
    let (reply_key, reply) = reply_entry(key, backend_id, be, service_id, now);
    if CONNTRACK.get_ptr(reply_key).is_none() {
        stats::count(stat::REPLY_RESTORED);
        insert(&reply_key, &reply);
    }
}

/// Forgets a tuple (an HTTP SYN going to the proxy must not follow an old fast-path entry).
#[inline(always)]
pub fn forget(key: &FlowKey) {
    let _ = CONNTRACK.remove(key);
}
