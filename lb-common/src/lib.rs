//! Map keys, values and constants shared by the XDP program (`lb-ebpf`) and the agent
//! (`lb-userspace`), and the arithmetic both sides must agree on: checksums ([`csum`]),
//! hashes ([`jhash`], [`fnv`]) and Maglev placement ([`maglev`]). Everything is `no_std` and
//! free of map access, so the host unit tests cover what the data plane computes.
//!
//! Every type is `#[repr(C)]` with explicit padding so that both sides agree byte for byte;
//! the size assertions at the bottom make a layout change a compile error on both sides.
//! Addresses and ports are stored in network byte order, exactly as they appear in packets,
//! so the fast path never swaps bytes. Times are CLOCK_MONOTONIC nanoseconds
//! (`bpf_ktime_get_coarse_ns` in the kernel, `clock_gettime(CLOCK_MONOTONIC)` in the agent).
// The unit tests use std (proptest, formatting); the library never does.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod csum;
pub mod fnv;
pub mod jhash;
pub mod maglev;

/// Version of the pinned map layout. Pinned state lives under `<bpffs_dir>/v<LAYOUT_VERSION>/`;
/// bump this whenever any type below changes size or meaning.
pub const LAYOUT_VERSION: u32 = 2;

/// Maglev lookup table size per service (prime).
pub const MAGLEV_TABLE_SIZE: u32 = 16381;
/// Sizes of the maps whose capacity the agent chooses at load time (`[agent.capacity]`). The
/// XDP object declares them with [`Capacities::DEFAULT`]; the agent overrides every one when
/// it loads the object, so a capacity is configuration, not a constant of the build. The
/// memory each takes is [`Capacities::kernel_bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Capacities {
    /// Virtual services in the kernel (tcp/udp and fast-path http): SERVICES, SERVICE_STATS
    /// and the maglev tables. Ids run from 1 to `services - 1`.
    pub services: u32,
    /// Servers in the kernel (BACKENDS, BACKEND_STATS). Ids run from 1 to `backends - 1`.
    pub backends: u32,
    /// Entries of the connection table (CONNTRACK): one per L4 flow (NAT or DSR).
    pub connections: u32,
    /// Client pins (PERSIST): client-IP persistence and fast-path pins.
    pub client_pins: u32,
    /// Entries of the IPv6 connection table (CONNTRACK6). Its own capacity because an LRU
    /// map is preallocated: IPv6 keys are 40 bytes, and most hosts carry fewer IPv6 flows.
    pub connections_v6: u32,
    /// IPv6 client pins (PERSIST6).
    pub client_pins_v6: u32,
    /// Entries of the DataScript table mirror (DS_TABLE), shared by every virtual service,
    /// with its name and pin records.
    pub table_mirror_entries: u32,
}

impl Capacities {
    /// The defaults, sized for a production host (see [`Capacities::kernel_bytes`]).
    pub const DEFAULT: Capacities = Capacities {
        services: 256,
        backends: 16_384,
        connections: 2_097_152,
        client_pins: 1_048_576,
        connections_v6: 262_144,
        client_pins_v6: 131_072,
        table_mirror_entries: 2_097_152,
    };

    /// Entries of the flat maglev array.
    pub const fn maglev_entries(&self) -> u32 {
        self.services * MAGLEV_SLOTS_PER_SERVICE * MAGLEV_TABLE_SIZE
    }

    /// Entries of NAT_REPLY: one per server address, port and protocol of a NAT service, so
    /// at most two (TCP and UDP) per server slot.
    pub const fn nat_reply_entries(&self) -> u32 {
        self.backends.saturating_mul(2)
    }
}

impl Default for Capacities {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Highest service capacity: keeps every maglev index within `u32`.
pub const SERVICE_ID_LIMIT: u32 = 65_536;
/// Longest DataScript table key the kernel mirror holds; longer keys stay in userspace only.
pub const DS_KEY_BYTES: usize = 64;
/// Longest DataScript table value the kernel mirror holds; longer values stay in userspace only.
pub const DS_VALUE_BYTES: usize = 64;
/// `BPF_F_NO_PREALLOC`: the flag DS_TABLE is created with.
pub const DS_TABLE_FLAGS: u32 = 1;
/// `BPF_F_NO_PREALLOC` for NAT_REPLY too: it holds one entry per NAT server, far below its
/// capacity, and only the agent writes it.
pub const NAT_REPLY_FLAGS: u32 = 1;
/// `BPF_F_NO_COMMON_LRU`: CONNTRACK keeps one LRU list per CPU. With the common list, taking
/// a free entry for a new flow (`bpf_lru_pop_free`) cost a third of all CPU time at 1 Mpps of
/// new flows (perf, bench dataplane). Each CPU then evicts among the flows it created, and
/// the capacity is shared out between CPUs.
pub const CONNTRACK_FLAGS: u32 = 2;
/// Every service owns two maglev tables; `Service::maglev_slot` says which one is live, so the
/// agent can fill the other and switch with a single map update.
pub const MAGLEV_SLOTS_PER_SERVICE: u32 = 2;

/// Index of the first entry of a service's maglev table in the flat maglev array.
pub const fn maglev_base(service_id: u32, slot: u32) -> u32 {
    (service_id * MAGLEV_SLOTS_PER_SERVICE + slot) * MAGLEV_TABLE_SIZE
}

/// IP protocol numbers used in keys.
pub mod proto {
    /// ICMP (errors about NAT flows are translated).
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Bits of [`Service::flags`].
pub mod service_flags {
    /// Forward by MAC rewrite (direct server return) instead of NAT.
    pub const DSR: u32 = 1 << 0;
    /// Native client-IP persistence: new flows consult and fill the persistence map.
    pub const PERSIST_CLIENT_IP: u32 = 1 << 1;
    /// HTTP service: packets go to the local stack (the agent's proxy) unless the client is
    /// pinned in the persistence map, in which case new connections are forwarded directly.
    pub const HTTP: u32 = 1 << 2;
    /// HTTP service with the client-IP fast path enabled.
    pub const FAST_PATH: u32 = 1 << 3;
    /// New flows are placed by a hash of the client's address (the persistence key's, so
    /// with the IPv6 prefix applied), VIP, port and protocol, without the source port:
    /// `flow_hash = "client_ip"` (Katran's `F_HASH_NO_SRC_PORT`). Every host with the same
    /// table places a client alike, which keeps client-IP persistence across an ECMP move.
    pub const HASH_CLIENT_IP: u32 = 1 << 8;
    /// Tunnel forwarding: set together with [`DSR`] (a tunnel flow is a DSR flow whose frames
    /// are encapsulated, IPIP for IPv4 or IP6IP6 for IPv6, to the server's address).
    pub const TUNNEL: u32 = 1 << 4;
    /// Bits 24..32: the prefix length IPv6 client-IP persistence keys on (a client's /64,
    /// say, as one client: privacy addresses change within it). 0 means the whole address.
    /// Kept in the flags word so that [`super::Service`] keeps its layout.
    pub const PERSIST_PREFIX_SHIFT: u32 = 24;

    /// The IPv6 persistence prefix length of a service's `flags` (128 when unset).
    #[inline(always)]
    pub const fn persist_prefix(flags: u32) -> u32 {
        match flags >> PERSIST_PREFIX_SHIFT {
            0 => 128,
            p => p,
        }
    }
}

/// Values of [`Backend::state`].
pub mod backend_state {
    /// Slot unused.
    pub const UNUSED: u32 = 0;
    /// Eligible for new and established flows.
    pub const UP: u32 = 1;
    /// Health monitor says down: established flows are dropped, new flows go elsewhere.
    pub const DOWN: u32 = 2;
}

/// An IPv6 address in a map key or value: its 16 wire bytes as four words, each word's bytes
/// in wire order (`from_ne_bytes` of four bytes), so keys stay 4-byte aligned and the program
/// moves an address with four loads.
pub type Addr6 = [u32; 4];

/// The address types the `...Of<A>` keys and values are made with: `u32` (IPv4) and
/// [`Addr6`]. Sealed: the layouts (no implicit padding) are asserted for these two only.
pub trait Address: Copy + Default + sealed::Sealed + 'static {}
impl Address for u32 {}
impl Address for Addr6 {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for super::Addr6 {}
}

/// Key of the SERVICES (IPv4, `A = u32`) and SERVICES6 (`A = Addr6`) hash maps.
///
/// Why per-family maps over one key with a 16-byte address for both (Katran's way): an IPv4
/// key stays 16 bytes (connection table) or 8 (services), so IPv4 packets hash and compare
/// what they did before IPv6 existed; a unified key would make every IPv4 lookup hash 40
/// bytes. The program is generic over the family (`lb-ebpf/src/family.rs`), so the logic is
/// written once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKeyOf<A> {
    /// Virtual IP, network byte order.
    pub vip: A,
    /// Virtual port, network byte order.
    pub port: u16,
    /// IP protocol ([`proto`]).
    pub proto: u8,
    /// Always zero.
    pub _pad: u8,
}

/// Key of the SERVICES hash map (IPv4).
pub type ServiceKey = ServiceKeyOf<u32>;
/// Key of the SERVICES6 hash map (IPv6).
pub type ServiceKey6 = ServiceKeyOf<Addr6>;

/// Value of the SERVICES hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Service {
    /// Service id, 1..[`Capacities::services`]; indexes the maglev array and per-service counters.
    pub id: u32,
    /// [`service_flags`] bits.
    pub flags: u32,
    /// Which of the service's two maglev tables is live (0 or 1).
    pub maglev_slot: u32,
    /// Persistence group: the first key field of [`PersistKey`]. Usually equal to `id`.
    pub persist_group: u32,
    /// Client-IP persistence timeout in nanoseconds (0 when persistence is off).
    pub persist_ttl_ns: u64,
}

/// Value of the BACKENDS (IPv4) and BACKENDS6 (IPv6) arrays, indexed by backend id (0 =
/// none). Both families share one id space (and BACKEND_STATS): an id's slot is used in the
/// array of its address family and UNUSED in the other.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendOf<A> {
    /// Backend address, network byte order.
    pub addr: A,
    /// Backend port, network byte order (NAT rewrites the destination port to it).
    pub port: u16,
    /// Always zero.
    pub _pad: u16,
    /// [`backend_state`] value.
    pub state: u32,
    /// Bumped whenever the slot is reassigned or the backend is removed; conntrack and
    /// persistence entries carrying an older generation are stale.
    pub generation: u32,
}

/// Value of the BACKENDS array (IPv4).
pub type Backend = BackendOf<u32>;
/// Value of the BACKENDS6 array (IPv6).
pub type Backend6 = BackendOf<Addr6>;

/// Key of the CONNTRACK (IPv4) and CONNTRACK6 (IPv6) LRU maps: a flow's 5-tuple as seen on
/// the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKeyOf<A> {
    /// Source address, network byte order.
    pub src_addr: A,
    /// Destination address, network byte order.
    pub dst_addr: A,
    /// Source port, network byte order.
    pub src_port: u16,
    /// Destination port, network byte order.
    pub dst_port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}

/// Key of the CONNTRACK map (IPv4).
pub type FlowKey = FlowKeyOf<u32>;
/// Key of the CONNTRACK6 map (IPv6).
pub type FlowKey6 = FlowKeyOf<Addr6>;

/// Bits of [`Flow::flags`].
pub mod flow_flags {
    /// A reply entry of agents that wrote two entries per NAT flow (keyed by the backend's
    /// reply tuple). Never written now; XDP ignores such entries and they age out.
    pub const REPLY: u32 = 1 << 0;
    /// The flow was forwarded with DSR (tunnel flows too).
    pub const DSR: u32 = 1 << 1;
    /// The flow is forwarded encapsulated (tunnel mode; set together with [`DSR`]).
    pub const TUNNEL: u32 = 1 << 2;

    /// The flow flags of a new or refreshed flow of a service with `service_flags`.
    #[inline(always)]
    pub const fn of_service(service_flags: u32) -> u32 {
        let mut f = 0;
        if service_flags & super::service_flags::DSR != 0 {
            f |= DSR;
        }
        if service_flags & super::service_flags::TUNNEL != 0 {
            f |= TUNNEL;
        }
        f
    }
}

/// Value of the CONNTRACK map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    /// Backend the flow is bound to.
    pub backend_id: u32,
    /// Backend generation at the time the flow was created.
    pub generation: u32,
    /// Service id the flow belongs to.
    pub service_id: u32,
    /// [`flow_flags`] bits.
    pub flags: u32,
    /// Unused (zero); the VIP of the reply entries older agents wrote.
    pub vip: u32,
    /// Unused (zero); the virtual port of the reply entries older agents wrote.
    pub vport: u16,
    /// Always zero.
    pub _pad: u16,
    /// Last time a packet of the flow was seen (monotonic ns).
    pub last_seen_ns: u64,
}

/// Most virtual services (VIP and port) one server address, port and protocol may serve in
/// NAT mode: its replies carry only its own address, so XDP tries each of them
/// ([`ReplySources`]).
pub const REPLY_VIPS: usize = 8;

/// 64-bit words of the NAT_SERVERS bitmap (65536 bits, 8 KiB).
pub const NAT_SERVER_WORDS: u32 = 1024;

/// The NAT_SERVERS word and bit of a server address, port and protocol (address and port in
/// network byte order, as packets and [`ReplyKey`] carry them). XDP tests this bit before it
/// looks a packet's source up in NAT_REPLY: an array read costs a few nanoseconds where a hash
/// lookup costs tens, so packets that are not replies (the forward direction, above all) pay
/// almost nothing for the reply path; a collision only costs that NAT_REPLY lookup.
pub const fn nat_server_bit(addr: u32, port: u16, proto: u8) -> (u32, u64) {
    let h = (addr.wrapping_mul(0x9e37_79b1) ^ (port as u32) ^ ((proto as u32) << 16))
        .wrapping_mul(0x85eb_ca6b)
        >> 16;
    (h >> 6, 1u64 << (h & 63))
}

/// An IPv6 address folded to 32 bits (the XOR of its words) for [`nat_server_bit`] and the
/// flow hash: cheap, and addresses that differ anywhere still differ in most foldings.
#[inline(always)]
pub const fn fold6(a: &Addr6) -> u32 {
    a[0] ^ a[1] ^ a[2] ^ a[3]
}

/// Key of the NAT_REPLY (IPv4) and NAT_REPLY6 (IPv6) hash maps: a NAT server's address, port
/// and protocol, which its replies carry as their source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ReplyKeyOf<A> {
    /// Server address, network byte order.
    pub addr: A,
    /// Server port, network byte order.
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Always zero.
    pub _pad: u8,
}

/// Key of the NAT_REPLY map (IPv4).
pub type ReplyKey = ReplyKeyOf<u32>;
/// Key of the NAT_REPLY6 map (IPv6).
pub type ReplyKey6 = ReplyKeyOf<Addr6>;

/// A virtual service's VIP and port, as clients address it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipPortOf<A> {
    /// Virtual IP, network byte order.
    pub vip: A,
    /// Virtual port, network byte order.
    pub port: u16,
    /// Always zero.
    pub _pad: u16,
}

/// An IPv4 VIP and port.
pub type VipPort = VipPortOf<u32>;
/// An IPv6 VIP and port.
pub type VipPort6 = VipPortOf<Addr6>;

/// Value of the NAT_REPLY hash map: the NAT services a server answers for. A reply
/// (server -> client) becomes the forward key (client -> VIP:port) of its flow with one of
/// these; XDP takes the one whose connection-table entry is a live flow to this server. So a
/// NAT flow needs one connection-table entry for both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ReplySourcesOf<A> {
    /// Entries of `vips` in use.
    pub count: u32,
    /// Always zero.
    pub _pad: u32,
    /// The services, in the agent's order (sorted); unused entries are zero.
    pub vips: [VipPortOf<A>; REPLY_VIPS],
}

/// Value of the NAT_REPLY map (IPv4).
pub type ReplySources = ReplySourcesOf<u32>;
/// Value of the NAT_REPLY6 map (IPv6).
pub type ReplySources6 = ReplySourcesOf<Addr6>;

/// Key of the PERSIST (IPv4) and PERSIST6 (IPv6) hash maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PersistKeyOf<A> {
    /// Persistence group (normally the service id).
    pub group: u32,
    /// Client address, network byte order; for IPv6, masked to the service's persistence
    /// prefix ([`service_flags::persist_prefix`]).
    pub client_addr: A,
}

/// Key of the PERSIST map (IPv4).
pub type PersistKey = PersistKeyOf<u32>;
/// Key of the PERSIST6 map (IPv6).
pub type PersistKey6 = PersistKeyOf<Addr6>;

/// `addr` with all but its first `prefix` bits zero (`prefix` >= 128: the address itself).
/// The words are in wire order, so the mask is built in network order.
#[inline(always)]
pub fn mask6(addr: &Addr6, prefix: u32) -> Addr6 {
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        let first = 32 * i as u32;
        let mask = if prefix >= first + 32 {
            u32::MAX
        } else if prefix <= first {
            0
        } else {
            (u32::MAX << (32 - (prefix - first))).to_be()
        };
        out[i] = addr[i] & mask;
        i += 1;
    }
    out
}

/// Value of the PERSIST hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Persist {
    /// Backend the client is pinned to.
    pub backend_id: u32,
    /// Backend generation when the pin was made.
    pub generation: u32,
    /// Expiry, monotonic ns. XDP treats `now >= expires_ns` as a miss.
    pub expires_ns: u64,
}

/// Reserved ids in [`DsKey`]. Real virtual service and table ids are [`ds_name_id`] hashes,
/// which never take these values.
pub mod ds_ids {
    /// `vs_id` of name records: `table_id` 0, key = the id (4 bytes, little endian), value =
    /// the name. They let a restarted agent map ids back to names.
    pub const NAMES: u32 = 0;
    /// `table_id` of fast-path records of a virtual service, one per (client address, table
    /// entry the address carries): key = client address (4 bytes, network order), table id
    /// (4 bytes LE) and a 64-bit FNV-1a hash of the table key (8 bytes LE), value empty and
    /// never expiring, so a restarted agent rebuilds per-address session counts and pins.
    /// (Agents before that wrote one record per pinned client: key = the address, value =
    /// table id and key hash; a restart converts them.)
    pub const PINS: u32 = u32::MAX;
}

/// Stable 32-bit id of a virtual service or table name (FNV-1a), as used in [`DsKey`]. Ids
/// survive restarts without any state; the reserved values of [`ds_ids`] are never returned.
pub const fn ds_name_id(name: &[u8]) -> u32 {
    match fnv::fnv1a_32(name) {
        ds_ids::NAMES => 1,
        ds_ids::PINS => u32::MAX - 1,
        h => h,
    }
}

/// Key of the DS_TABLE hash map: one DataScript table entry (or a reserved record, see
/// [`ds_ids`]). Unused key bytes are zero, so equal keys are equal byte for byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DsKey {
    /// [`ds_name_id`] of the virtual service name.
    pub vs_id: u32,
    /// [`ds_name_id`] of the table name (the default table's name is empty).
    pub table_id: u32,
    /// Bytes of `key` in use.
    pub key_len: u32,
    /// The key, zero padded.
    pub key: [u8; DS_KEY_BYTES],
}

impl Default for DsKey {
    fn default() -> Self {
        Self {
            vs_id: 0,
            table_id: 0,
            key_len: 0,
            key: [0; DS_KEY_BYTES],
        }
    }
}

/// Value of the DS_TABLE hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsValue {
    /// Expiry, monotonic ns (`u64::MAX` for name records).
    pub expires_ns: u64,
    /// Bytes of `value` in use.
    pub value_len: u32,
    /// Always zero.
    pub _pad: u32,
    /// The value, zero padded.
    pub value: [u8; DS_VALUE_BYTES],
}

impl Default for DsValue {
    fn default() -> Self {
        Self {
            expires_ns: 0,
            value_len: 0,
            _pad: 0,
            value: [0; DS_VALUE_BYTES],
        }
    }
}

/// Per-service and per-backend traffic counters (values of per-CPU arrays).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficCounters {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (L3 length).
    pub bytes: u64,
    /// New flows (connections) started.
    pub new_flows: u64,
}

/// Indexes of the global per-CPU STATS array, one counter per packet path and verdict.
pub mod stat {
    /// Not for a VIP (or not TCP/UDP over IPv4 or IPv6): passed untouched.
    pub const PASS_NOT_VIP: u32 = 0;
    /// Malformed or truncated frame: passed untouched for the stack to judge.
    pub const PASS_MALFORMED: u32 = 1;
    /// IP fragment, IPv4 options or IPv6 extension headers to a VIP: passed untouched.
    pub const PASS_FRAGMENT_OR_OPTIONS: u32 = 2;
    /// HTTP service packet handed to the local proxy.
    pub const PASS_TO_PROXY: u32 = 3;
    /// Forwarded on an existing conntrack entry.
    pub const CONNTRACK_HIT: u32 = 4;
    /// New flow chosen by maglev.
    pub const NEW_FLOW_MAGLEV: u32 = 5;
    /// New flow chosen by the persistence map.
    pub const PERSIST_HIT: u32 = 6;
    /// Persistence entry found but expired or stale.
    pub const PERSIST_EXPIRED: u32 = 7;
    /// Backend reply translated back to the VIP (NAT).
    pub const REPLY_NAT: u32 = 8;
    /// New flow dropped: no usable backend.
    pub const DROP_NO_BACKEND: u32 = 9;
    /// Forward failed (fib lookup or redirect) and the frame was passed to the stack.
    pub const PASS_FIB_MISS: u32 = 10;
    /// Transmitted with XDP_TX.
    pub const VERDICT_TX: u32 = 11;
    /// Transmitted with XDP_REDIRECT.
    pub const VERDICT_REDIRECT: u32 = 12;
    /// Non-SYN TCP packet without a flow: passed to the stack.
    pub const PASS_NO_FLOW: u32 = 13;
    /// Fast-path (pinned HTTP client) connection forwarded directly.
    pub const FAST_PATH: u32 = 14;
    // 15 was `reply_restored` (reply entries rewritten after eviction), gone with them.
    /// Entries XDP wrote into the connection table (one per new flow).
    pub const CONNTRACK_INSERT: u32 = 16;
    /// Client pins XDP could not write: the persistence map is full.
    pub const PERSIST_FULL: u32 = 17;
    /// An ICMP error about a packet sent to a NAT backend (fragmentation needed, port
    /// unreachable, ...) translated back to the client: its quoted packet and source made
    /// the VIP's again.
    pub const ICMP_TO_CLIENT: u32 = 18;
    /// An ICMP error about a NAT flow's reply (sent to the VIP) translated to the flow's
    /// backend, so that path-MTU discovery works in that direction too.
    pub const ICMP_TO_BACKEND: u32 = 19;
    /// A tunnel-mode packet dropped because, encapsulated, it exceeds the MTU of the
    /// interface toward its server (the path to servers must carry 20 or 40 bytes more than
    /// clients send; see the README's tunnel section).
    pub const DROP_TUNNEL_TOO_BIG: u32 = 20;
    /// A tunnel-mode packet dropped because it could not be encapsulated: no tunnel source
    /// address for its family in LATCH_TUNNEL_SOURCE yet, or no room to grow the frame.
    pub const DROP_TUNNEL_ERROR: u32 = 21;
    /// Number of counters.
    pub const COUNT: u32 = 22;
}

/// Names of the pinned maps, shared so the agent finds what the program declares.
pub mod map_names {
    /// SERVICES hash map.
    pub const SERVICES: &str = "LATCH_SERVICES";
    /// BACKENDS array.
    pub const BACKENDS: &str = "LATCH_BACKENDS";
    /// Flat maglev array.
    pub const MAGLEV: &str = "LATCH_MAGLEV";
    /// Connection tracking LRU hash.
    pub const CONNTRACK: &str = "LATCH_CONNTRACK";
    /// Client persistence hash.
    pub const PERSIST: &str = "LATCH_PERSIST";
    /// Global per-CPU counters.
    pub const STATS: &str = "LATCH_STATS";
    /// Per-service per-CPU counters.
    pub const SERVICE_STATS: &str = "LATCH_SVC_STATS";
    /// Per-backend per-CPU counters.
    pub const BACKEND_STATS: &str = "LATCH_BE_STATS";
    /// Kernel mirror of the DataScript tables (XDP does not read it).
    pub const DS_TABLE: &str = "LATCH_DS_TABLE";
    /// NAT servers' address, port and protocol -> the services they answer for.
    pub const NAT_REPLY: &str = "LATCH_NAT_REPLY";
    /// Bitmap of the NAT_REPLY and NAT_REPLY6 keys ([`super::nat_server_bit`]).
    pub const NAT_SERVERS: &str = "LATCH_NAT_SERVERS";
    /// IPv6 services (VIP, port, protocol).
    pub const SERVICES6: &str = "LATCH_SERVICES6";
    /// IPv6 backends, indexed by the shared backend id.
    pub const BACKENDS6: &str = "LATCH_BACKENDS6";
    /// IPv6 connection tracking LRU hash.
    pub const CONNTRACK6: &str = "LATCH_CONNTRACK6";
    /// IPv6 client persistence hash.
    pub const PERSIST6: &str = "LATCH_PERSIST6";
    /// IPv6 NAT servers -> the services they answer for.
    pub const NAT_REPLY6: &str = "LATCH_NAT_REPLY6";
    /// The outer source addresses of tunnel mode ([`super::tunnel_source`]); not pinned, the
    /// agent writes it with every configuration.
    pub const TUNNEL_SOURCE: &str = "LATCH_TUNNEL_SOURCE";
}

/// Slots of the TUNNEL_SOURCE array: the host's outer source address per family, as
/// [`Addr6`] (an IPv4 address in its first word, the rest zero). An all-zero slot means none
/// is configured, and tunnel packets of that family are dropped and counted
/// ([`stat::DROP_TUNNEL_ERROR`]).
pub mod tunnel_source {
    /// The IPv4 outer source (IPIP).
    pub const V4: u32 = 0;
    /// The IPv6 outer source (IP6IP6).
    pub const V6: u32 = 1;
    /// Entries of the array.
    pub const SLOTS: u32 = 2;
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);
const _: () = assert!(core::mem::size_of::<Service>() == 24);
const _: () = assert!(core::mem::size_of::<Backend>() == 16);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);
const _: () = assert!(core::mem::size_of::<Flow>() == 32);
const _: () = assert!(core::mem::size_of::<ReplyKey>() == 8);
const _: () = assert!(core::mem::size_of::<VipPort>() == 8);
const _: () = assert!(core::mem::size_of::<ReplySources>() == 8 + 8 * REPLY_VIPS);
const _: () = assert!(core::mem::size_of::<PersistKey>() == 8);
const _: () = assert!(core::mem::size_of::<Persist>() == 16);
const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 24);
const _: () = assert!(core::mem::size_of::<ServiceKey6>() == 20);
const _: () = assert!(core::mem::size_of::<Backend6>() == 28);
const _: () = assert!(core::mem::size_of::<FlowKey6>() == 40);
const _: () = assert!(core::mem::size_of::<ReplyKey6>() == 20);
const _: () = assert!(core::mem::size_of::<VipPort6>() == 20);
const _: () = assert!(core::mem::size_of::<ReplySources6>() == 8 + 20 * REPLY_VIPS);
const _: () = assert!(core::mem::size_of::<PersistKey6>() == 20);
const _: () = assert!(core::mem::size_of::<DsKey>() == 76);
const _: () = assert!(core::mem::size_of::<DsValue>() == 80);

#[cfg(feature = "user")]
mod pod {
    use super::*;

    /// `aya::Pod` for map keys and values: aya copies them to and from the kernel as raw
    /// bytes, which is sound for a type that is `repr(C)`, holds only integers (every bit
    /// pattern valid) and has no implicit padding (no uninitialised bytes reach the kernel),
    /// which the size assertions (above, and in bench.rs) check for each one.
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: `$t` is repr(C), all integer fields, no implicit padding (see above).
            unsafe impl aya::Pod for $t {}
        )*};
    }

    pod!(
        Service,
        Flow,
        Persist,
        TrafficCounters,
        DsKey,
        DsValue,
        bench::GenConfig,
        bench::ReflectConfig,
    );

    /// The same for the keys and values generic over the address: [`Address`] is sealed to
    /// `u32` and [`Addr6`], the two instantiations the size assertions above check.
    macro_rules! pod_of {
        ($($t:ident),* $(,)?) => {$(
            // SAFETY: `$t<A>` is repr(C) and all integers for both `A`s `Address` allows,
            // without implicit padding (see above).
            unsafe impl<A: Address> aya::Pod for $t<A> {}
        )*};
    }

    pod_of!(
        ServiceKeyOf,
        BackendOf,
        FlowKeyOf,
        ReplyKeyOf,
        ReplySourcesOf,
        PersistKeyOf,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask6_keeps_the_prefix_in_network_order() {
        let a: std::net::Ipv6Addr = "2001:db8:1:2:3:4:5:6".parse().expect("addr");
        let o = a.octets();
        let words: Addr6 = core::array::from_fn(|i| {
            u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
        });
        let back = |w: Addr6| {
            let mut b = [0u8; 16];
            for (i, x) in w.iter().enumerate() {
                b[4 * i..4 * i + 4].copy_from_slice(&x.to_ne_bytes());
            }
            std::net::Ipv6Addr::from(b).to_string()
        };
        assert_eq!(back(mask6(&words, 64)), "2001:db8:1:2::");
        assert_eq!(back(mask6(&words, 56)), "2001:db8:1::");
        assert_eq!(back(mask6(&words, 24)), "2001:d00::");
        assert_eq!(back(mask6(&words, 20)), "2001::");
        assert_eq!(back(mask6(&words, 128)), a.to_string());
        assert_eq!(back(mask6(&words, 0)), "::");
        assert_eq!(service_flags::persist_prefix(0), 128);
        assert_eq!(
            service_flags::persist_prefix(64 << service_flags::PERSIST_PREFIX_SHIFT | 3),
            64
        );
    }

    #[test]
    fn nat_server_bits_stay_in_the_bitmap_and_spread() {
        let mut words = std::collections::HashSet::new();
        for host in 0..=255u8 {
            for port in [80u16, 443, 8080] {
                let addr = u32::from_ne_bytes([192, 0, 2, host]);
                let (word, bit) = nat_server_bit(addr, port.to_be(), proto::TCP);
                assert!(word < NAT_SERVER_WORDS);
                assert_eq!(bit.count_ones(), 1);
                words.insert(word);
            }
        }
        // 768 servers of one /24 land on many words, not a handful.
        assert!(words.len() > 400, "{} words", words.len());
        let a = u32::from_ne_bytes([192, 0, 2, 1]);
        assert_ne!(
            nat_server_bit(a, 80u16.to_be(), proto::TCP),
            nat_server_bit(a, 80u16.to_be(), proto::UDP),
            "the protocol is part of the key"
        );
    }
}
