//! Connection tracking: one entry per flow, keyed by the client's 5-tuple as it reaches the
//! VIP. A NAT flow's replies find the same entry: the backend's source address, port and
//! protocol name the virtual services it serves (`NAT_REPLY`, written by the agent), which with
//! the reply's destination give the forward key back (see [`lookup_reply`]).
//!
//! Why so, rather than a second entry per NAT flow keyed by the reply's tuple (as before): a
//! new flow pays one connection-table insert instead of two (an LRU insert is the dearest step
//! of a new flow), a flow's entry is kept in use by the packets of both directions (a download
//! keeps it as well as an upload), and no reply entry can be evicted apart from its flow. The
//! price is a bounded fan-out: a server address, port and protocol may serve at most
//! `lb_common::REPLY_VIPS` NAT services (the agent refuses more). SNAT port allocation would
//! make the reply resolvable from its own tuple, but latch keeps the client's address, so
//! there is no source port of ours in the reply to resolve it by.

use lb_common::{
    BackendOf, Flow, FlowKeyOf, REPLY_VIPS, ReplyKeyOf, Service, flow_flags, nat_server_bit, stat,
};

use crate::{family::Family, maps::NAT_SERVERS, service::usable_backend, stats};

/// A flow key of family `F`.
type Key<F> = FlowKeyOf<<F as Family>::Addr>;

/// last_seen is refreshed at most once per second per flow, sparing a cache-line write on
/// every packet of busy flows. The same period bounds how long an established flow is
/// forwarded without consulting SERVICES (see [`early`]).
const REFRESH_NS: u64 = 1_000_000_000;

/// What a non-SYN packet's own conntrack entry says, looked up before SERVICES.
pub enum Early<A> {
    /// No forward entry for the tuple (a backend's reply never has one).
    Miss,
    /// A forward entry with a usable backend, refreshed (and so checked against SERVICES by
    /// the full path) within the last [`REFRESH_NS`].
    Forward {
        id: u32,
        be: BackendOf<A>,
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
/// entry's service id and DSR and TUNNEL bits from the service it found. So a deleted
/// service, or one switched between NAT, DSR and tunnel, affects its established flows at most one second late.
#[inline(always)]
pub fn early<F: Family>(key: &Key<F>) -> Early<F::Addr> {
    let Some(flow) = F::conntrack().get_ptr(key) else {
        return Early::Miss;
    };
    // SAFETY: `get_ptr` returned a non-null, aligned pointer to a `Flow` value of CONNTRACK,
    // whose preallocated memory stays valid while the program runs. Another CPU may rewrite
    // it meanwhile (a refresh, or LRU eviction recycling it for another flow): the copy may
    // then mix fields, but they are plain integers (any bit pattern is a valid `Flow`), so it
    // is at worst a stale answer for this one packet. Plain racy access to map values is the
    // BPF memory model, as in C programs.
    let f = unsafe { *flow };
    // Reply entries of agents before one entry per flow are never forwarded: they age out.
    if f.flags & flow_flags::REPLY != 0 {
        return Early::Miss;
    }
    let now = crate::clock::now_ns();
    if now.wrapping_sub(f.last_seen_ns) > REFRESH_NS {
        return Early::Full;
    }
    match usable_backend::<F>(f.backend_id, Some(f.generation)) {
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
pub fn lookup_forward<F: Family>(
    key: &Key<F>,
    svc: &Service,
    now: u64,
) -> Option<(u32, BackendOf<F::Addr>)> {
    let flow = F::conntrack().get_ptr_mut(key)?;
    // SAFETY: as in `early`: valid, aligned map memory; a racing rewrite only mixes integer
    // fields.
    let f = unsafe { *flow };
    if f.flags & flow_flags::REPLY != 0 {
        return None;
    }
    let be = usable_backend::<F>(f.backend_id, Some(f.generation))?;
    if now.wrapping_sub(f.last_seen_ns) > REFRESH_NS {
        let flags = flow_flags::of_service(svc.flags);
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

/// Whether the packet's source may be a NAT server: its bit in NAT_SERVERS is set. False
/// means certainly not one, at the cost of an array read.
#[inline(always)]
pub fn maybe_reply<F: Family>(key: &Key<F>) -> bool {
    let (word, bit) = nat_server_bit(F::fold(&key.src_addr), key.src_port, key.proto);
    NAT_SERVERS.get(word).is_some_and(|w| *w & bit != 0)
}

/// The virtual service (VIP, port) a packet from a NAT backend answers for, found through
/// the flow's forward entry: `key` is the reply's 5-tuple (backend -> client). Each (VIP,
/// port) the agent lists for the backend's source gives a candidate forward key (client ->
/// VIP); the one whose entry is a live NAT flow to this very backend is the answer. A backend
/// cannot carry two such flows at once (it would see the same client tuple twice), so at most
/// one candidate matches. The lookup also marks the entry used, so a flow whose client is
/// silent (a download) is kept by its replies under table pressure.
#[inline(always)]
pub fn lookup_reply<F: Family>(key: &Key<F>) -> Option<(F::Addr, u16)> {
    let src = ReplyKeyOf {
        addr: key.src_addr,
        port: key.src_port,
        proto: key.proto,
        _pad: 0,
    };
    let sources = F::nat_reply().get_ptr(src)?;
    // SAFETY: a non-null, aligned pointer to a value of NAT_REPLY, valid while the program
    // runs; the agent replaces values whole, and a torn read only yields candidates that the
    // forward-entry check below rejects.
    let count = unsafe { (*sources).count } as usize;
    for i in 0..REPLY_VIPS {
        if i >= count {
            break;
        }
        // SAFETY: as above; `i` is within the array.
        let vp = unsafe { (*sources).vips[i] };
        let forward = FlowKeyOf {
            src_addr: key.dst_addr,
            dst_addr: vp.vip,
            src_port: key.dst_port,
            dst_port: vp.port,
            proto: key.proto,
            _pad: [0, 0, 0],
        };
        let Some(flow) = F::conntrack().get_ptr(forward) else {
            continue;
        };
        // SAFETY: as in `early`.
        let f = unsafe { *flow };
        if f.flags & (flow_flags::REPLY | flow_flags::DSR) != 0 {
            continue;
        }
        // A reply from a removed or reassigned backend, or from another backend than the
        // flow's (it moved since), is left to the stack.
        let Some(be) = F::backends().get(f.backend_id) else {
            continue;
        };
        if be.generation == f.generation
            && F::same(&be.addr, &key.src_addr)
            && be.port == key.src_port
        {
            return Some((vp.vip, vp.port));
        }
    }
    None
}

/// The backend of the live NAT flow whose forward tuple is `key`, if any (an ICMP error about
/// one of its replies goes to it).
#[inline(always)]
pub fn nat_flow_backend<F: Family>(key: &Key<F>) -> Option<BackendOf<F::Addr>> {
    // SAFETY: as in `early`: valid, aligned map memory; a racing rewrite only mixes integer
    // fields.
    let f = unsafe { *F::conntrack().get_ptr(key)? };
    if f.flags & (flow_flags::REPLY | flow_flags::DSR) != 0 {
        return None;
    }
    let be = *F::backends().get(f.backend_id)?;
    (be.generation == f.generation).then_some(be)
}

/// Records a new flow of a service with `svc_flags`: one connection-table entry, whatever
/// the forwarding mode.
#[inline(always)]
pub fn record<F: Family>(
    key: &Key<F>,
    backend_id: u32,
    be: &BackendOf<F::Addr>,
    service_id: u32,
    svc_flags: u32,
    now: u64,
) {
    let flow = Flow {
        backend_id,
        generation: be.generation,
        service_id,
        flags: flow_flags::of_service(svc_flags),
        vip: 0,
        vport: 0,
        _pad: 0,
        last_seen_ns: now,
    };
    // An LRU map makes room by itself; a failed insert only costs a re-hash later.
    if F::conntrack().insert(key, flow, 0).is_ok() {
        stats::count(stat::CONNTRACK_INSERT);
    }
}

/// Forgets a tuple (an HTTP SYN going to the proxy must not follow an old fast-path entry).
#[inline(always)]
pub fn forget<F: Family>(key: &Key<F>) {
    let _ = F::conntrack().remove(key);
}
