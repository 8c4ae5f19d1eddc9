//! Every map the XDP program uses. All are pinned by name (the agent passes a versioned pin
//! directory to the loader) so that the data plane keeps its state across agent restarts.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, Backend6, CONNTRACK_FLAGS, Capacities, DS_TABLE_FLAGS, DsKey, DsValue, Flow, FlowKey,
    FlowKey6, NAT_REPLY_FLAGS, NAT_SERVER_WORDS, Persist, PersistKey, PersistKey6, ReplyKey,
    ReplyKey6, ReplySources, ReplySources6, Service, ServiceKey, ServiceKey6, TrafficCounters,
    stat,
};

use crate::nexthop::NextHopOf;

/// The declared sizes; the agent overrides each with its configured capacity at load time.
const CAP: Capacities = Capacities::DEFAULT;

#[map(name = "LATCH_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(CAP.services, 0);

#[map(name = "LATCH_BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::pinned(CAP.backends, 0);

#[map(name = "LATCH_MAGLEV")]
pub static MAGLEV: Array<u32> = Array::pinned(CAP.maglev_entries(), 0);

#[map(name = "LATCH_CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, Flow> =
    LruHashMap::pinned(CAP.connections, CONNTRACK_FLAGS);

/// Written by the agent from its services: how a NAT backend's reply finds its flow's entry
/// (see conntrack.rs).
#[map(name = "LATCH_NAT_REPLY")]
pub static NAT_REPLY: HashMap<ReplyKey, ReplySources> =
    HashMap::pinned(CAP.nat_reply_entries(), NAT_REPLY_FLAGS);

/// Written by the agent: one bit per NAT_REPLY key (`lb_common::nat_server_bit`), tested before
/// that lookup.
#[map(name = "LATCH_NAT_SERVERS")]
pub static NAT_SERVERS: Array<u64> = Array::pinned(NAT_SERVER_WORDS, 0);

#[map(name = "LATCH_PERSIST")]
pub static PERSIST: HashMap<PersistKey, Persist> = HashMap::pinned(CAP.client_pins, 0);

#[map(name = "LATCH_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);

#[map(name = "LATCH_SVC_STATS")]
pub static SERVICE_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::pinned(CAP.services, 0);

#[map(name = "LATCH_BE_STATS")]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters> = PerCpuArray::pinned(CAP.backends, 0);

/// Kernel mirror of the agent's DataScript tables, pinned so that a restarted agent restores
/// them. XDP never reads it; it is declared here so the loader creates and pins it with the
/// other maps.
#[map(name = "LATCH_DS_TABLE")]
pub static DS_TABLE: HashMap<DsKey, DsValue> =
    HashMap::pinned(CAP.table_mirror_entries, DS_TABLE_FLAGS);

/// Per-CPU next-hop cache (see nexthop.rs). Not pinned: it caches the kernel's own FIB and
/// ifindexes, which a fresh program relearns within one lookup per destination.
#[map(name = "LATCH_NEXT_HOPS")]
pub static NEXT_HOPS: PerCpuArray<NextHopOf<u32>> =
    PerCpuArray::with_max_entries(crate::nexthop::SLOTS, 0);

// IPv6: the same maps with 128-bit addresses (see family.rs for why they are separate).
// MAGLEV, the counters and NAT_SERVERS are shared: ids are one space for both families.

#[map(name = "LATCH_SERVICES6")]
pub static SERVICES6: HashMap<ServiceKey6, Service> = HashMap::pinned(CAP.services, 0);

#[map(name = "LATCH_BACKENDS6")]
pub static BACKENDS6: Array<Backend6> = Array::pinned(CAP.backends, 0);

#[map(name = "LATCH_CONNTRACK6")]
pub static CONNTRACK6: LruHashMap<FlowKey6, Flow> =
    LruHashMap::pinned(CAP.connections_v6, CONNTRACK_FLAGS);

#[map(name = "LATCH_NAT_REPLY6")]
pub static NAT_REPLY6: HashMap<ReplyKey6, ReplySources6> =
    HashMap::pinned(CAP.nat_reply_entries(), NAT_REPLY_FLAGS);

#[map(name = "LATCH_PERSIST6")]
pub static PERSIST6: HashMap<PersistKey6, Persist> = HashMap::pinned(CAP.client_pins_v6, 0);

#[map(name = "LATCH_NEXT_HOPS6")]
pub static NEXT_HOPS6: PerCpuArray<NextHopOf<lb_common::Addr6>> =
    PerCpuArray::with_max_entries(crate::nexthop::SLOTS, 0);

/// Per-CPU working memory for a path whose locals would not fit BPF's 512-byte stack (see
/// `Scratch`). Not pinned: nothing in it outlives one run of the program.
#[map(name = "LATCH_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The slots of [`SCRATCH`]. Each run overwrites what it uses before reading it.
#[repr(C)]
pub struct Scratch {
    /// The IPv6 flow key an ICMPv6 error's quoted packet names (`icmp6::translate`).
    pub flow6: FlowKey6,
}

/// Written by the agent: the host's outer source address per family for tunnel mode
/// (`lb_common::tunnel_source`). Not pinned: the agent writes it with every configuration,
/// so a fresh program has it before its first tunnel service.
#[map(name = "LATCH_TUNNEL_SOURCE")]
pub static TUNNEL_SOURCE: Array<lb_common::Addr6> =
    Array::with_max_entries(lb_common::tunnel_source::SLOTS, 0);
