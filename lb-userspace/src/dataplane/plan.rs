//! What `apply` must write, decided without touching the kernel: id allocation, generations,
//! flags, maglev inputs, and the order that keeps every intermediate map state consistent.
//!
//! The state is rebuilt from the maps themselves on adopt (SERVICES gives service ids, BACKENDS
//! gives backend ids and generations), so ids survive agent restarts without a side file.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
};

use lb_common::{
    Backend, BackendOf, Capacities, Flow, MAGLEV_TABLE_SIZE, NAT_SERVER_WORDS, Persist, REPLY_VIPS,
    ReplyKeyOf, ReplySourcesOf, Service, ServiceKey, ServiceKeyOf, VipPortOf, backend_state,
    nat_server_bit, service_flags,
};

pub use super::family::{Family, V4, V6};
use super::{BackendSpec, DataplaneSpec, FlowHash, Forwarding, Proto, ServiceKind, ServiceSpec};
use crate::balancer::maglev::{MaglevBackend, build_table};

/// A spec that cannot be programmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Two services share VIP, port and protocol.
    #[error(
        "service {vip}:{port}/{proto} is listed twice: each VIP, port and protocol may be used once"
    )]
    DuplicateService {
        /// Virtual IP.
        vip: IpAddr,
        /// Virtual port.
        port: u16,
        /// Protocol.
        proto: Proto,
    },
    /// More services than the kernel maps hold.
    #[error("{wanted} services configured but the data plane holds at most {limit}: remove some")]
    TooManyServices {
        /// Services in the spec.
        wanted: usize,
        /// Capacity.
        limit: u32,
    },
    /// A server address, port and protocol behind more NAT services than its replies can be
    /// told apart for.
    #[error(
        "server {server}/{proto} is a NAT server of {count} virtual services (VIP and port), \
         at most {limit}: XDP finds a reply's flow by trying each; use another port or DSR for \
         some"
    )]
    TooManyNatServices {
        /// The server.
        server: SocketAddr,
        /// Protocol.
        proto: Proto,
        /// NAT services it serves.
        count: usize,
        /// [`REPLY_VIPS`].
        limit: usize,
    },
    /// More distinct backends than the kernel maps hold.
    #[error(
        "{wanted} distinct backends configured but the data plane holds at most {limit}: remove some"
    )]
    TooManyBackends {
        /// Distinct backend addresses in the spec.
        wanted: usize,
        /// Capacity.
        limit: u32,
    },
}

/// One Maglev table participant: backend id, address, weight.
pub type MaglevInput<F = V4> = (u32, <F as Family>::Sock, u32);
/// A SERVICES or SERVICES6 key.
pub type Key<F> = ServiceKeyOf<<F as Family>::Raw>;
/// A BACKENDS or BACKENDS6 value.
pub type Slot<F> = BackendOf<<F as Family>::Raw>;

/// Network-order key of an IPv4 service.
pub fn service_key(vip: Ipv4Addr, port: u16, proto: Proto) -> ServiceKey {
    key_of::<V4>(vip, port, proto)
}

/// Network-order key of a service of family `F`.
pub fn key_of<F: Family>(vip: F::Ip, port: u16, proto: Proto) -> Key<F> {
    ServiceKeyOf {
        vip: F::raw(vip),
        port: port.to_be(),
        proto: proto.number(),
        _pad: 0,
    }
}

/// Host view of a service key; `None` for a protocol latch does not program.
pub fn service_key_parts<F: Family>(key: &Key<F>) -> Option<(F::Ip, u16, Proto)> {
    Some((
        F::ip(key.vip),
        u16::from_be(key.port),
        Proto::from_number(key.proto)?,
    ))
}

/// Host view of a backend slot's address.
pub fn backend_addr<F: Family>(b: &Slot<F>) -> F::Sock {
    F::sock(F::ip(b.addr), u16::from_be(b.port))
}

/// Host view of an IPv4 backend slot's address.
pub fn backend_addr4(b: &Backend) -> SocketAddrV4 {
    backend_addr::<V4>(b)
}

fn backend_value<F: Family>(addr: F::Sock, state: u32, generation: u32) -> Slot<F> {
    let addr: SocketAddr = addr.into();
    BackendOf {
        addr: F::of_ip(addr.ip()).map_or_else(Default::default, F::raw),
        port: addr.port().to_be(),
        _pad: 0,
        state,
        generation,
    }
}

/// Ids the other family holds: a plan allocates none of them.
#[derive(Clone, Debug, Default)]
pub struct Reserved {
    /// Service ids.
    pub services: BTreeSet<u32>,
    /// Backend ids.
    pub backends: BTreeSet<u32>,
}

impl Reserved {
    /// The ids `state` holds.
    pub fn of<F: Family>(state: &State<F>) -> Self {
        Self {
            services: state.services.values().map(|s| s.id).collect(),
            backends: state.assigned_ids().map(|(id, _)| id).collect(),
        }
    }

    /// Both sets of ids.
    pub fn union(mut self, other: Reserved) -> Self {
        self.services.extend(other.services);
        self.backends.extend(other.backends);
        self
    }
}

/// The agent's knowledge of the maps: exactly what SERVICES and BACKENDS hold, plus which
/// maglev inputs are known to be live (lost on restart, which only costs one rewrite).
#[derive(Clone, Debug)]
pub struct State<F: Family = V4> {
    /// SERVICES contents.
    pub services: HashMap<Key<F>, Service>,
    /// The capacities the maps were made with.
    pub caps: Capacities,
    /// BACKENDS contents, indexed by id ([`Capacities::backends`] entries).
    pub backends: Vec<Slot<F>>,
    /// Backend ids by address, for slots not UNUSED.
    pub backend_ids: BTreeMap<F::Sock, u32>,
    /// Per service id, the ordered backend ids whose maglev table is in the live slot.
    pub live_maglev: BTreeMap<u32, Vec<MaglevInput<F>>>,
}

impl<F: Family> Default for State<F> {
    fn default() -> Self {
        Self::from_maps(HashMap::new(), Vec::new(), Capacities::DEFAULT)
    }
}

impl<F: Family> State<F> {
    /// Rebuilds the state from map contents (adopt after restart). When two slots claim one
    /// address (only possible after a crash mid-write by some other tool), the lowest id wins
    /// and the next apply releases the other.
    pub fn from_maps(
        services: HashMap<Key<F>, Service>,
        mut backends: Vec<Slot<F>>,
        caps: Capacities,
    ) -> Self {
        backends.resize(caps.backends as usize, BackendOf::default());
        let mut backend_ids = BTreeMap::new();
        for (id, b) in backends.iter().enumerate().skip(1) {
            if b.state != backend_state::UNUSED {
                backend_ids.entry(backend_addr::<F>(b)).or_insert(id as u32);
            }
        }
        Self {
            caps,
            services,
            backends,
            backend_ids,
            live_maglev: BTreeMap::new(),
        }
    }

    /// Backend slot by id.
    pub fn backend(&self, id: u32) -> Option<&Slot<F>> {
        self.backends.get(id as usize)
    }

    fn assigned_ids(&self) -> impl Iterator<Item = (u32, &Slot<F>)> {
        self.backends
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, b)| b.state != backend_state::UNUSED)
            .map(|(i, b)| (i as u32, b))
    }

    /// True when a persistence entry can no longer be honoured: expired, or its backend slot
    /// was released or reassigned since the pin was made.
    pub fn persist_is_stale(&self, p: &Persist, now_ns: u64) -> bool {
        now_ns >= p.expires_ns || !self.generation_matches(p.backend_id, p.generation)
    }

    /// True when a conntrack entry points at a released or reassigned backend slot.
    pub fn flow_is_stale(&self, f: &Flow) -> bool {
        !self.generation_matches(f.backend_id, f.generation)
    }

    fn generation_matches(&self, id: u32, generation: u32) -> bool {
        match self.backend(id) {
            Some(b) if id != 0 => b.state != backend_state::UNUSED && b.generation == generation,
            _ => false,
        }
    }
}

/// One service to write: fill `table` into its maglev slot (if any), then update SERVICES.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceWrite<F: Family = V4> {
    /// SERVICES key.
    pub key: Key<F>,
    /// New SERVICES value; `maglev_slot` is the slot `table` goes into.
    pub value: Service,
    /// Maglev table to write before the SERVICES update; `None` when the live one is current.
    pub table: Option<Vec<u32>>,
    /// Maglev input the table was built from (recorded as live once written).
    pub maglev_input: Vec<MaglevInput<F>>,
    /// The id was newly assigned: its counters are zeroed first.
    pub fresh: bool,
    /// SERVICES needs the update (value or table changed).
    pub changed: bool,
}

/// Map writes for one apply, in execution order.
#[derive(Clone, Debug)]
pub struct Plan<F: Family = V4> {
    /// 1. Backend slots to create or change (before any maglev table refers to them).
    pub backend_writes: Vec<(u32, Slot<F>)>,
    /// Backend ids newly assigned: their counters are zeroed before the slot is written.
    pub fresh_backends: Vec<u32>,
    /// 2. Services to remove from SERVICES (before new ones may take over their ids).
    pub service_deletes: Vec<(Key<F>, Service)>,
    /// 3. Services to insert or update.
    pub service_writes: Vec<ServiceWrite<F>>,
    /// 4. Backend slots to release (state UNUSED, generation bumped), once nothing maps to them.
    pub backend_releases: Vec<(u32, Slot<F>)>,
}

impl<F: Family> Default for Plan<F> {
    fn default() -> Self {
        Self {
            backend_writes: Vec::new(),
            fresh_backends: Vec::new(),
            service_deletes: Vec::new(),
            service_writes: Vec::new(),
            backend_releases: Vec::new(),
        }
    }
}

impl<F: Family> Plan<F> {
    /// True when applying changes nothing.
    pub fn is_noop(&self) -> bool {
        self.backend_writes.is_empty()
            && self.service_deletes.is_empty()
            && self.backend_releases.is_empty()
            && self.service_writes.iter().all(|w| !w.changed)
    }
}

fn service_value(spec: &ServiceSpec, id: u32, maglev_slot: u32) -> Service {
    let mut flags = 0;
    match spec.forwarding {
        Forwarding::Nat => {}
        Forwarding::Dsr => flags |= service_flags::DSR,
        // A tunnel flow is a DSR flow whose frames are encapsulated (lb_common's flags).
        Forwarding::Tunnel => flags |= service_flags::DSR | service_flags::TUNNEL,
    }
    match spec.kind {
        ServiceKind::L4 => {
            if spec.persistence_ttl.is_some() {
                flags |= service_flags::PERSIST_CLIENT_IP;
            }
            if spec.flow_hash == FlowHash::ClientIp {
                flags |= service_flags::HASH_CLIENT_IP;
            }
        }
        ServiceKind::Http { fast_path } => {
            flags |= service_flags::HTTP;
            if fast_path {
                flags |= service_flags::FAST_PATH;
            }
        }
    }
    let persist_ttl_ns = spec
        .persistence_ttl
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    if let Some(prefix) = spec.persistence_prefix_v6 {
        flags |= u32::from(prefix) << service_flags::PERSIST_PREFIX_SHIFT;
    }
    Service {
        id,
        flags,
        maglev_slot,
        persist_group: id,
        persist_ttl_ns,
    }
}

/// Lowest free id in `1..limit`, preferring ids not released by this very apply (so that
/// anything still cached about the old owner cannot be mistaken for the new one).
fn allocate(
    limit: u32,
    taken: &BTreeSet<u32>,
    just_released: &BTreeSet<u32>,
    free: impl Fn(u32) -> bool,
) -> Option<u32> {
    let candidates = || (1..limit).filter(|id| !taken.contains(id) && free(*id));
    candidates()
        .find(|id| !just_released.contains(id))
        .or_else(|| candidates().next())
}

/// Decides the writes that take the IPv4 maps from `state` to `spec` (its IPv4 services).
pub fn plan(state: &State, spec: &DataplaneSpec) -> Result<Plan, PlanError> {
    plan_family::<V4>(state, spec, &Reserved::default())
}

/// Decides the writes that take family `F`'s maps from `state` to the services of `spec`
/// whose VIP is of that family, allocating no id of `reserved` (the other family's).
pub fn plan_family<F: Family>(
    state: &State<F>,
    spec: &DataplaneSpec,
    reserved: &Reserved,
) -> Result<Plan<F>, PlanError> {
    // Validate services.
    // Ordered by (vip, port, proto) so that id allocation does not depend on spec order.
    let mut by_addr: BTreeMap<(F::Ip, u16, Proto), &ServiceSpec> = BTreeMap::new();
    for s in &spec.services {
        let Some(vip) = F::of_ip(s.vip) else {
            continue;
        };
        if by_addr.insert((vip, s.port, s.proto), s).is_some() {
            return Err(PlanError::DuplicateService {
                vip: s.vip,
                port: s.port,
                proto: s.proto,
            });
        }
    }
    let wanted: Vec<(Key<F>, &ServiceSpec)> = by_addr
        .iter()
        .map(|((vip, port, proto), s)| (key_of::<F>(*vip, *port, *proto), *s))
        .collect();
    let wanted_keys: HashSet<Key<F>> = wanted.iter().map(|(k, _)| *k).collect();
    let caps = state.caps;
    if wanted.len() >= caps.services as usize {
        return Err(PlanError::TooManyServices {
            wanted: wanted.len(),
            limit: caps.services - 1,
        });
    }

    // Backends: a backend is UP if any service lists it up (health is per address).
    let mut wanted_backends: BTreeMap<F::Sock, bool> = BTreeMap::new();
    for s in by_addr.values() {
        for b in &s.backends {
            if let Some(addr) = F::of_sock(b.addr) {
                *wanted_backends.entry(addr).or_insert(false) |= b.up;
            }
        }
    }
    if wanted_backends.len() >= caps.backends as usize {
        return Err(PlanError::TooManyBackends {
            wanted: wanted_backends.len(),
            limit: caps.backends - 1,
        });
    }

    let mut out = Plan::default();

    // Release slots of backends no longer wanted, and duplicate slots of one address.
    let mut released = BTreeSet::new();
    for (id, b) in state.assigned_ids() {
        let addr = backend_addr::<F>(b);
        let keep = wanted_backends.contains_key(&addr) && state.backend_ids.get(&addr) == Some(&id);
        if !keep {
            released.insert(id);
            out.backend_releases.push((
                id,
                BackendOf {
                    state: backend_state::UNUSED,
                    generation: b.generation.wrapping_add(1),
                    ..BackendOf::default()
                },
            ));
        }
    }

    // Keep or assign ids for wanted backends.
    let mut backend_ids: BTreeMap<F::Sock, u32> = BTreeMap::new();
    let mut taken: BTreeSet<u32> = state
        .assigned_ids()
        .map(|(id, _)| id)
        .filter(|id| !released.contains(id))
        .chain(reserved.backends.iter().copied())
        .collect();
    for (&addr, &up) in &wanted_backends {
        let st = if up {
            backend_state::UP
        } else {
            backend_state::DOWN
        };
        match state.backend_ids.get(&addr) {
            Some(&id) => {
                let cur = state.backends[id as usize];
                if cur.state != st {
                    out.backend_writes
                        .push((id, backend_value::<F>(addr, st, cur.generation)));
                }
                backend_ids.insert(addr, id);
            }
            None => {
                let id = allocate(caps.backends, &taken, &released, |id| {
                    state.backends[id as usize].state == backend_state::UNUSED
                        || released.contains(&id)
                })
                .ok_or(PlanError::TooManyBackends {
                    wanted: wanted_backends.len(),
                    limit: caps.backends - 1,
                })?;
                taken.insert(id);
                // Bump past both the current generation and the one a release in this apply
                // would write, so entries of either previous owner are stale.
                let generation = state.backends[id as usize].generation.wrapping_add(2);
                out.backend_writes
                    .push((id, backend_value::<F>(addr, st, generation)));
                out.fresh_backends.push(id);
                backend_ids.insert(addr, id);
            }
        }
    }
    // A slot both released and reassigned in this apply is written once, as its new owner.
    let reassigned: BTreeSet<u32> = out.fresh_backends.iter().copied().collect();
    out.backend_releases
        .retain(|(id, _)| !reassigned.contains(id));

    // Services.
    for (key, cur) in &state.services {
        if !wanted_keys.contains(key) {
            out.service_deletes.push((*key, *cur));
        }
    }
    out.service_deletes.sort_by_key(|(_, s)| s.id);
    let deleted_ids: BTreeSet<u32> = out.service_deletes.iter().map(|(_, s)| s.id).collect();
    let mut service_ids_taken: BTreeSet<u32> = state
        .services
        .iter()
        .filter(|(k, _)| wanted_keys.contains(k))
        .map(|(_, s)| s.id)
        .chain(reserved.services.iter().copied())
        .collect();
    for (key, s) in &wanted {
        let s = *s;
        // Only L4 services choose backends by Maglev. An http service's packets go to the
        // proxy or, on the fast path, to the pinned server: it never reads a table, and
        // writing one costs MAGLEV_TABLE_SIZE map updates (16 s of start-up for 1,000 http
        // services).
        let maglev = matches!(s.kind, ServiceKind::L4);
        let input = if maglev {
            maglev_input::<F>(s, &backend_ids)
        } else {
            Vec::new()
        };

        let (id, fresh, current) = match state.services.get(key) {
            Some(cur) => (cur.id, false, Some(*cur)),
            None => {
                let id = allocate(caps.services, &service_ids_taken, &deleted_ids, |_| true)
                    .ok_or(PlanError::TooManyServices {
                        wanted: wanted.len(),
                        limit: caps.services - 1,
                    })?;
                service_ids_taken.insert(id);
                (id, true, None)
            }
        };
        let table_current = current.is_some()
            && state
                .live_maglev
                .get(&id)
                .is_some_and(|live| *live == input);
        let (slot, table) = match current {
            _ if !maglev => (current.map_or(0, |c| c.maglev_slot), None),
            Some(cur) if table_current => (cur.maglev_slot, None),
            Some(cur) => (1 - (cur.maglev_slot & 1), Some(maglev_for::<F>(&input))),
            None => (0, Some(maglev_for::<F>(&input))),
        };
        let value = service_value(s, id, slot);
        let changed = table.is_some() || current != Some(value);
        out.service_writes.push(ServiceWrite {
            key: *key,
            value,
            table,
            maglev_input: input,
            fresh,
            changed,
        });
    }
    Ok(out)
}

/// The (id, address, weight) triples a service's Maglev table is built from: its up backends
/// of non-zero weight, the primaries, or the backups when no primary qualifies.
fn maglev_input<F: Family>(
    s: &ServiceSpec,
    backend_ids: &BTreeMap<F::Sock, u32>,
) -> Vec<MaglevInput<F>> {
    let takes_new = |b: &&BackendSpec| b.up && b.weight > 0;
    let backups = !s.backends.iter().filter(takes_new).any(|b| !b.backup);
    let mut input: Vec<MaglevInput<F>> = Vec::new();
    let mut seen = BTreeSet::new();
    for b in s
        .backends
        .iter()
        .filter(takes_new)
        .filter(|b| b.backup == backups)
    {
        let Some(addr) = F::of_sock(b.addr) else {
            continue;
        };
        if seen.insert(addr)
            && let Some(&id) = backend_ids.get(&addr)
        {
            input.push((id, addr, b.weight));
        }
    }
    input.sort();
    input
}

fn maglev_for<F: Family>(input: &[MaglevInput<F>]) -> Vec<u32> {
    let backends: Vec<MaglevBackend> = input
        .iter()
        .map(|(id, addr, weight)| MaglevBackend::new(*id, addr.to_string()).with_weight(*weight))
        .collect();
    build_table(&backends, MAGLEV_TABLE_SIZE)
}

/// NAT_REPLY contents for `spec`: for every server address, port and protocol of a NAT
/// service that XDP forwards (tcp/udp, and http with the fast path), the services' VIPs and
/// ports, sorted. Every server is listed whatever its health or weight: established flows to
/// a down or drained server still need their replies translated.
pub fn nat_replies<F: Family>(spec: &DataplaneSpec) -> Result<Replies<F>, PlanError> {
    type ByServer<F> = BTreeMap<(<F as Family>::Sock, Proto), BTreeSet<(<F as Family>::Ip, u16)>>;
    let mut by_server: ByServer<F> = BTreeMap::new();
    for s in &spec.services {
        let Some(vip) = F::of_ip(s.vip) else {
            continue;
        };
        let forwarded = match s.kind {
            ServiceKind::L4 => true,
            ServiceKind::Http { fast_path } => fast_path,
        };
        if s.forwarding != Forwarding::Nat || !forwarded {
            continue;
        }
        for b in &s.backends {
            if let Some(addr) = F::of_sock(b.addr) {
                by_server
                    .entry((addr, s.proto))
                    .or_default()
                    .insert((vip, s.port));
            }
        }
    }
    let mut out = HashMap::new();
    for ((server, proto), vips) in by_server {
        if vips.len() > REPLY_VIPS {
            return Err(PlanError::TooManyNatServices {
                server: server.into(),
                proto,
                count: vips.len(),
                limit: REPLY_VIPS,
            });
        }
        let mut value = ReplySourcesOf {
            count: vips.len() as u32,
            ..ReplySourcesOf::default()
        };
        for (slot, (vip, port)) in value.vips.iter_mut().zip(vips) {
            *slot = VipPortOf {
                vip: F::raw(vip),
                port: port.to_be(),
                _pad: 0,
            };
        }
        let server: SocketAddr = server.into();
        let key = ReplyKeyOf {
            addr: F::of_ip(server.ip()).map_or_else(Default::default, F::raw),
            port: server.port().to_be(),
            proto: proto.number(),
            _pad: 0,
        };
        out.insert(key, value);
    }
    Ok(out)
}

/// NAT_REPLY or NAT_REPLY6 contents.
pub type Replies<F> = HashMap<ReplyKeyOf<<F as Family>::Raw>, ReplySourcesOf<<F as Family>::Raw>>;

/// The NAT_SERVERS bits of `keys` (the bitmap is shared by both families).
pub fn nat_server_bits<'a, F: Family>(
    keys: impl IntoIterator<Item = &'a ReplyKeyOf<F::Raw>>,
) -> impl Iterator<Item = (u32, u64)> {
    keys.into_iter()
        .map(|k| nat_server_bit(F::fold(&k.addr), k.port, k.proto))
}

/// NAT_SERVERS words with every bit of `bits` set.
pub fn nat_server_words(bits: impl IntoIterator<Item = (u32, u64)>) -> Vec<u64> {
    let mut words = vec![0u64; NAT_SERVER_WORDS as usize];
    for (word, bit) in bits {
        words[word as usize] |= bit;
    }
    words
}

/// NAT_REPLY writes taking `current` to `wanted`: entries to write (new or changed) and keys
/// to delete.
#[allow(clippy::type_complexity)]
pub fn reply_changes<F: Family>(
    current: &Replies<F>,
    wanted: &Replies<F>,
) -> (
    Vec<(ReplyKeyOf<F::Raw>, ReplySourcesOf<F::Raw>)>,
    Vec<ReplyKeyOf<F::Raw>>,
) {
    let writes = wanted
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let deletes = current
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .copied()
        .collect();
    (writes, deletes)
}

/// The state after `plan` has been executed completely.
pub fn apply_to_state<F: Family>(state: &State<F>, plan: &Plan<F>) -> State<F> {
    let mut backends = state.backends.clone();
    for (id, b) in plan.backend_writes.iter().chain(&plan.backend_releases) {
        if let Some(slot) = backends.get_mut(*id as usize) {
            *slot = *b;
        }
    }
    let mut services = state.services.clone();
    let mut live_maglev = state.live_maglev.clone();
    for (key, s) in &plan.service_deletes {
        services.remove(key);
        live_maglev.remove(&s.id);
    }
    for w in &plan.service_writes {
        services.insert(w.key, w.value);
        live_maglev.insert(w.value.id, w.maglev_input.clone());
    }
    let mut next = State::from_maps(services, backends, state.caps);
    next.live_maglev = live_maglev;
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::BackendSpec;
    use std::time::Duration;

    fn be(s: &str, up: bool) -> BackendSpec {
        BackendSpec {
            addr: s.parse().expect("test address"),
            up,
            weight: 1,
            backup: false,
        }
    }

    fn svc(vip: &str, port: u16, backends: Vec<BackendSpec>) -> ServiceSpec {
        ServiceSpec {
            vip: vip.parse().expect("test vip"),
            port,
            proto: Proto::Tcp,
            forwarding: Forwarding::Nat,
            kind: ServiceKind::L4,
            persistence_ttl: None,
            persistence_prefix_v6: None,
            flow_hash: Default::default(),
            backends,
        }
    }

    fn run(state: &State, spec: &DataplaneSpec) -> (Plan, State) {
        let p = plan(state, spec).expect("plan");
        let next = apply_to_state(state, &p);
        (p, next)
    }

    /// Simulates an agent restart: only what the maps hold survives.
    fn restart(state: &State) -> State {
        State::from_maps(state.services.clone(), state.backends.clone(), state.caps)
    }

    fn spec(services: Vec<ServiceSpec>) -> DataplaneSpec {
        DataplaneSpec { services }
    }

    #[test]
    fn maglev_takes_weights_and_backups_only_without_primaries() {
        let with = |b: BackendSpec, weight: u32, backup: bool| BackendSpec {
            weight,
            backup,
            ..b
        };
        let service = |primary_up: bool, drained_weight: u32| {
            spec(vec![svc(
                "198.51.100.10",
                80,
                vec![
                    with(be("192.0.2.11:8080", primary_up), 3, false),
                    with(be("192.0.2.12:8080", true), drained_weight, false),
                    with(be("192.0.2.13:8080", true), 1, true),
                ],
            )])
        };
        let owners = |p: &Plan| -> BTreeMap<u32, usize> {
            let mut c = BTreeMap::new();
            for &id in p.service_writes[0].table.as_deref().unwrap_or_default() {
                *c.entry(id).or_default() += 1;
            }
            c
        };
        let (p, state) = run(&State::default(), &service(true, 1));
        let c = owners(&p);
        assert_eq!(c.len(), 2, "primaries only: {c:?}");
        let share = c[&1] as f64 / MAGLEV_TABLE_SIZE as f64;
        assert!((share - 0.75).abs() < 0.01, "weight 3 of 4: {share}");
        // Drained (weight 0): out of the table but still UP, so its flows and pins go on.
        let (p, state) = run(&state, &service(true, 0));
        assert_eq!(owners(&p).keys().copied().collect::<Vec<_>>(), [1]);
        assert!(
            state
                .backends
                .iter()
                .all(|b| b.state != backend_state::DOWN)
        );
        // No primary left: the backup takes the whole table; then hands it back.
        let (p, state) = run(&state, &service(false, 0));
        assert_eq!(owners(&p).keys().copied().collect::<Vec<_>>(), [3]);
        let (p, _) = run(&state, &service(true, 1));
        assert_eq!(owners(&p).keys().copied().collect::<Vec<_>>(), [1, 2]);
    }

    /// Both families from one spec, as `Dataplane::apply` plans them: IPv4 first with the
    /// IPv6 ids reserved, then IPv6 with the IPv4 ones (before and after) reserved.
    fn run_both(
        s4: &State,
        s6: &State<V6>,
        spec: &DataplaneSpec,
    ) -> (Plan, Plan<V6>, State, State<V6>) {
        let p4 = plan_family::<V4>(s4, spec, &Reserved::of(s6)).expect("plan v4");
        let n4 = apply_to_state(s4, &p4);
        let reserved = Reserved::of(s4).union(Reserved::of(&n4));
        let p6 = plan_family::<V6>(s6, spec, &reserved).expect("plan v6");
        let n6 = apply_to_state(s6, &p6);
        (p4, p6, n4, n6)
    }

    #[test]
    fn families_share_one_id_space_and_each_plans_its_own_services() {
        let mut v6 = svc(
            "2001:db8:f::10",
            80,
            vec![
                be("[2001:db8:b::10]:8080", true),
                be("[2001:db8:b::11]:8080", true),
            ],
        );
        v6.persistence_ttl = Some(Duration::from_secs(60));
        v6.persistence_prefix_v6 = Some(64);
        let v4 = svc(
            "198.51.100.10",
            80,
            vec![be("192.0.2.11:8080", true), be("192.0.2.12:8080", true)],
        );
        let both = spec(vec![v6.clone(), v4.clone()]);
        let (p4, p6, s4, s6) = run_both(&State::default(), &State::default(), &both);
        assert_eq!(
            p4.service_writes.len(),
            1,
            "only the IPv4 service in the IPv4 plan"
        );
        assert_eq!(
            p6.service_writes.len(),
            1,
            "only the IPv6 service in the IPv6 plan"
        );
        let (id4, id6) = (p4.service_writes[0].value.id, p6.service_writes[0].value.id);
        assert_ne!(id4, id6, "one service id space");
        let b4: BTreeSet<u32> = s4.backend_ids.values().copied().collect();
        let b6: BTreeSet<u32> = s6.backend_ids.values().copied().collect();
        assert_eq!((b4.len(), b6.len()), (2, 2));
        assert!(b4.is_disjoint(&b6), "one backend id space: {b4:?} {b6:?}");
        // The IPv6 table holds IPv6 backend ids only.
        let table = p6.service_writes[0].table.as_deref().unwrap_or_default();
        assert!(table.iter().all(|id| b6.contains(id)));
        // The prefix rides in the flags.
        let flags = p6.service_writes[0].value.flags;
        assert_eq!(service_flags::persist_prefix(flags), 64);
        assert_ne!(flags & service_flags::PERSIST_CLIENT_IP, 0);
        assert_eq!(
            service_flags::persist_prefix(p4.service_writes[0].value.flags),
            128
        );
        // A restart rebuilds both from their maps: nothing to write, same ids.
        let r6 = State::<V6>::from_maps(s6.services.clone(), s6.backends.clone(), s6.caps);
        let (p4, p6, _, _) = run_both(&restart(&s4), &r6, &both);
        assert_eq!(
            (p4.service_writes[0].value.id, p6.service_writes[0].value.id),
            (id4, id6)
        );
        assert!(p4.backend_writes.is_empty() && p6.backend_writes.is_empty());
        // Removing the IPv4 service frees its ids; the IPv6 one keeps its own.
        let (p4, p6, _, s6b) = run_both(&s4, &s6, &spec(vec![v6]));
        assert_eq!(p4.service_deletes.len(), 1);
        assert!(p6.service_deletes.is_empty() && p6.backend_releases.is_empty());
        assert_eq!(s6b.backend_ids, s6.backend_ids);
        // NAT reply sources per family, and one shared bitmap.
        let r4 = nat_replies::<V4>(&both).expect("v4 replies");
        let r6 = nat_replies::<V6>(&both).expect("v6 replies");
        assert_eq!((r4.len(), r6.len()), (2, 2));
        let words = nat_server_words(
            nat_server_bits::<V4>(r4.keys()).chain(nat_server_bits::<V6>(r6.keys())),
        );
        for k in r6.keys() {
            let (w, bit) = nat_server_bit(lb_common::fold6(&k.addr), k.port, k.proto);
            assert_ne!(words[w as usize] & bit, 0);
        }
    }

    /// Scale-out behind ECMP (docs/ARCHITECTURE.md, "Several latch hosts behind ECMP"): two
    /// hosts given the same services build tables that send every flow hash to the same server
    /// address, even when their histories gave the servers other ids and the config lists
    /// them in another order.
    #[test]
    fn tunnel_services_are_dsr_with_the_tunnel_bit_and_list_no_reply_sources() {
        let mut s = svc("198.51.100.10", 80, vec![be("192.0.2.11:80", true)]);
        s.forwarding = Forwarding::Tunnel;
        let flags = service_value(&s, 1, 0).flags;
        assert_eq!(flags, service_flags::DSR | service_flags::TUNNEL);
        // The servers answer the client directly: no NAT reply path to program.
        let replies = nat_replies::<V4>(&spec(vec![s])).expect("replies");
        assert!(replies.is_empty(), "{replies:?}");
    }

    #[test]
    fn two_hosts_with_the_same_config_build_the_same_tables() {
        let servers = [
            "192.0.2.11:80",
            "192.0.2.12:80",
            "192.0.2.13:80",
            "192.0.2.14:80",
        ];
        let service = |order: &[usize]| {
            let mut s = svc(
                "198.51.100.10",
                80,
                order.iter().map(|&i| be(servers[i], true)).collect(),
            );
            s.forwarding = Forwarding::Dsr;
            s
        };
        // Host A: a fresh agent.
        let (pa, a) = run(&State::default(), &spec(vec![service(&[0, 1, 2, 3])]));
        // Host B: served other backends first (so its ids differ), and lists them reversed.
        let (_, b) = run(
            &State::default(),
            &spec(vec![
                svc("198.51.100.20", 80, vec![be("192.0.2.99:80", true)]),
                service(&[3, 1]),
            ]),
        );
        let (pb, b) = run(&b, &spec(vec![service(&[3, 2, 1, 0])]));
        let by_address = |p: &Plan, st: &State| -> Vec<SocketAddrV4> {
            let addr_of: BTreeMap<u32, SocketAddrV4> =
                st.backend_ids.iter().map(|(a, id)| (*id, *a)).collect();
            let key = service_key("198.51.100.10".parse().expect("ip"), 80, Proto::Tcp);
            let w = p
                .service_writes
                .iter()
                .find(|w| w.key == key)
                .expect("written");
            w.table
                .as_ref()
                .expect("a table")
                .iter()
                .map(|id| addr_of[id])
                .collect()
        };
        let (ta, tb) = (by_address(&pa, &a), by_address(&pb, &b));
        assert_eq!(ta.len(), MAGLEV_TABLE_SIZE as usize);
        assert!(ta == tb, "the hosts' tables differ");
        let ids = |p: &Plan| p.service_writes.last().and_then(|w| w.table.clone());
        assert_ne!(
            ids(&pa),
            ids(&pb),
            "the hosts were meant to number backends apart"
        );
    }

    #[test]
    fn first_apply_assigns_ids_and_tables() {
        let s = spec(vec![svc(
            "198.51.100.10",
            80,
            vec![be("192.0.2.11:8080", true), be("192.0.2.12:8080", true)],
        )]);
        let (p, next) = run(&State::default(), &s);
        assert_eq!(p.backend_writes.len(), 2);
        assert_eq!(p.fresh_backends, vec![1, 2]);
        assert!(p.service_deletes.is_empty() && p.backend_releases.is_empty());
        let w = &p.service_writes[0];
        assert_eq!(w.value.id, 1);
        assert_eq!(w.value.persist_group, 1);
        assert!(w.fresh && w.changed);
        let table = w.table.as_ref().expect("table");
        assert_eq!(table.len(), MAGLEV_TABLE_SIZE as usize);
        assert!(table.iter().all(|&id| id == 1 || id == 2));
        for (_, b) in &p.backend_writes {
            assert_eq!(b.state, backend_state::UP);
            assert!(b.generation > 0);
        }
        let key = service_key("198.51.100.10".parse().expect("ip"), 80, Proto::Tcp);
        assert_eq!(next.services[&key].id, 1);
        assert_eq!(next.backend_ids.len(), 2);
    }

    #[test]
    fn reapply_is_noop_and_restart_keeps_ids() {
        let s = spec(vec![
            svc("198.51.100.10", 80, vec![be("192.0.2.11:8080", true)]),
            svc("198.51.100.11", 443, vec![be("192.0.2.12:8080", true)]),
        ]);
        let (_, st) = run(&State::default(), &s);
        let (p2, st2) = run(&st, &s);
        assert!(p2.is_noop(), "{p2:?}");
        assert_eq!(st2.services, st.services);

        // After a restart the live maglev input is unknown: the table is rewritten (into the
        // other slot), but no id changes.
        let adopted = restart(&st);
        let (p3, st3) = run(&adopted, &s);
        assert!(p3.backend_writes.is_empty());
        assert!(p3.fresh_backends.is_empty());
        for w in &p3.service_writes {
            assert!(!w.fresh);
            let before = st.services[&w.key];
            assert_eq!(w.value.id, before.id);
            assert_eq!(w.value.maglev_slot, 1 - before.maglev_slot);
        }
        assert_eq!(st3.backend_ids, st.backend_ids);
    }

    #[test]
    fn ids_do_not_depend_on_spec_order_after_first_assignment() {
        let a = svc("198.51.100.10", 80, vec![be("192.0.2.11:80", true)]);
        let b = svc("198.51.100.11", 80, vec![be("192.0.2.12:80", true)]);
        let (_, st) = run(&State::default(), &spec(vec![a.clone(), b.clone()]));
        let (_, st2) = run(&st, &spec(vec![b, a]));
        assert_eq!(st.services, st2.services);
        assert_eq!(st.backend_ids, st2.backend_ids);
    }

    #[test]
    fn backend_change_switches_maglev_slot() {
        let s1 = spec(vec![svc(
            "198.51.100.10",
            80,
            vec![be("192.0.2.11:80", true), be("192.0.2.12:80", true)],
        )]);
        let (_, st) = run(&State::default(), &s1);
        let s2 = spec(vec![svc(
            "198.51.100.10",
            80,
            vec![
                be("192.0.2.11:80", true),
                be("192.0.2.12:80", true),
                be("192.0.2.13:80", true),
            ],
        )]);
        let (p, st2) = run(&st, &s2);
        let w = &p.service_writes[0];
        let old = st.services[&w.key];
        assert_eq!(w.value.maglev_slot, 1 - old.maglev_slot);
        assert_eq!(w.value.id, old.id);
        let t = w.table.as_ref().expect("table rewritten");
        assert!(t.contains(&3));
        assert_eq!(st2.services[&w.key].maglev_slot, w.value.maglev_slot);
        // And switching back flips again.
        let (p3, _) = run(&st2, &s1);
        assert_eq!(p3.service_writes[0].value.maglev_slot, old.maglev_slot);
    }

    #[test]
    fn down_backend_leaves_table_but_keeps_id() {
        let s1 = spec(vec![svc(
            "198.51.100.10",
            80,
            vec![be("192.0.2.11:80", true), be("192.0.2.12:80", true)],
        )]);
        let (_, st) = run(&State::default(), &s1);
        let down_addr: SocketAddrV4 = "192.0.2.12:80".parse().expect("addr");
        let down_id = st.backend_ids[&down_addr];
        let s2 = spec(vec![svc(
            "198.51.100.10",
            80,
            vec![be("192.0.2.11:80", true), be("192.0.2.12:80", false)],
        )]);
        let (p, st2) = run(&st, &s2);
        assert_eq!(p.backend_writes.len(), 1);
        let (id, b) = p.backend_writes[0];
        assert_eq!(id, down_id);
        assert_eq!(b.state, backend_state::DOWN);
        assert_eq!(b.generation, st.backends[id as usize].generation);
        assert!(p.backend_releases.is_empty());
        let t = p.service_writes[0].table.as_ref().expect("table");
        assert!(!t.contains(&down_id));
        assert_eq!(st2.backend_ids[&down_addr], down_id);
    }

    #[test]
    fn removed_backend_is_released_with_new_generation() {
        let s1 = spec(vec![svc(
            "198.51.100.10",
            80,
            vec![be("192.0.2.11:80", true), be("192.0.2.12:80", true)],
        )]);
        let (_, st) = run(&State::default(), &s1);
        let gone: SocketAddrV4 = "192.0.2.12:80".parse().expect("addr");
        let gone_id = st.backend_ids[&gone];
        let old_gen = st.backends[gone_id as usize].generation;
        let s2 = spec(vec![svc(
            "198.51.100.10",
            80,
            vec![be("192.0.2.11:80", true)],
        )]);
        let (p, st2) = run(&st, &s2);
        assert_eq!(p.backend_releases.len(), 1);
        let (id, b) = p.backend_releases[0];
        assert_eq!(id, gone_id);
        assert_eq!(b.state, backend_state::UNUSED);
        assert_eq!(b.generation, old_gen + 1);
        assert!(!st2.backend_ids.contains_key(&gone));

        // Stale conntrack/persist entries for the released slot are recognised.
        let flow = Flow {
            backend_id: gone_id,
            generation: old_gen,
            ..Flow::default()
        };
        assert!(!st.flow_is_stale(&flow));
        assert!(st2.flow_is_stale(&flow));

        // A new backend reusing the slot gets yet another generation.
        let s3 = spec(vec![svc(
            "198.51.100.10",
            80,
            vec![be("192.0.2.11:80", true), be("192.0.2.99:80", true)],
        )]);
        let (p3, st3) = run(&st2, &s3);
        let (nid, nb) = p3.backend_writes[0];
        assert_eq!(nid, gone_id, "lowest free id is reused");
        assert!(nb.generation > old_gen + 1);
        assert!(st3.flow_is_stale(&flow));
    }

    #[test]
    fn swap_in_one_apply_does_not_reuse_released_slot_if_another_is_free() {
        let s1 = spec(vec![svc(
            "198.51.100.10",
            80,
            vec![be("192.0.2.11:80", true)],
        )]);
        let (_, st) = run(&State::default(), &s1);
        let s2 = spec(vec![svc(
            "198.51.100.10",
            80,
            vec![be("192.0.2.12:80", true)],
        )]);
        let (p, _) = run(&st, &s2);
        assert_eq!(
            p.backend_releases,
            vec![(
                1,
                Backend {
                    state: backend_state::UNUSED,
                    generation: st.backends[1].generation + 1,
                    ..Backend::default()
                }
            )]
        );
        assert_eq!(p.fresh_backends, vec![2]);
    }

    #[test]
    fn removed_service_is_deleted_and_its_id_not_reused_at_once() {
        let a = svc("198.51.100.10", 80, vec![be("192.0.2.11:80", true)]);
        let b = svc("198.51.100.11", 80, vec![be("192.0.2.11:80", true)]);
        let (_, st) = run(&State::default(), &spec(vec![a.clone(), b]));
        let c = svc("198.51.100.12", 80, vec![be("192.0.2.11:80", true)]);
        let (p, st2) = run(&st, &spec(vec![a, c]));
        assert_eq!(p.service_deletes.len(), 1);
        let deleted_id = p.service_deletes[0].1.id;
        let new = p
            .service_writes
            .iter()
            .find(|w| w.fresh)
            .expect("new service");
        assert_ne!(new.value.id, deleted_id);
        assert_eq!(st2.services.len(), 2);
        assert!(p.backend_releases.is_empty(), "shared backend stays");
    }

    #[test]
    fn only_l4_services_get_a_maglev_table() {
        let backends = || vec![be("192.0.2.11:80", true), be("192.0.2.12:80", true)];
        let l4 = svc("198.51.100.10", 53, backends());
        let mut fast = svc("198.51.100.10", 80, backends());
        fast.kind = ServiceKind::Http { fast_path: true };
        let mut plain = svc("198.51.100.10", 81, backends());
        plain.kind = ServiceKind::Http { fast_path: false };
        let (p, st) = run(
            &State::default(),
            &spec(vec![l4, fast.clone(), plain.clone()]),
        );
        let write = |p: &Plan, port: u16| {
            p.service_writes
                .iter()
                .find(|w| u16::from_be(w.key.port) == port)
                .map(|w| (w.table.is_some(), w.changed))
                .expect("service")
        };
        assert_eq!(write(&p, 53), (true, true));
        assert_eq!(
            write(&p, 80),
            (false, true),
            "the service entry is still written"
        );
        assert_eq!(write(&p, 81), (false, true));
        // Their backends are still programmed (fast-path pins name them).
        assert_eq!(st.backend_ids.len(), 2);
        // A server change never writes a table for them either.
        fast.backends.pop();
        plain.backends.pop();
        let l4 = svc("198.51.100.10", 53, backends());
        let (p, _) = run(&st, &spec(vec![l4, fast, plain]));
        assert_eq!(write(&p, 53), (false, false));
        assert!(!write(&p, 80).0 && !write(&p, 81).0);
    }

    #[test]
    fn flags_follow_spec() {
        let mut l4 = svc("198.51.100.10", 53, vec![]);
        l4.proto = Proto::Udp;
        l4.forwarding = Forwarding::Dsr;
        l4.persistence_ttl = Some(Duration::from_secs(300));
        let mut by_client = svc("198.51.100.10", 443, vec![]);
        by_client.flow_hash = FlowHash::ClientIp;
        let mut http = svc("198.51.100.10", 80, vec![]);
        http.kind = ServiceKind::Http { fast_path: true };
        let mut http_plain = svc("198.51.100.10", 81, vec![]);
        http_plain.kind = ServiceKind::Http { fast_path: false };
        let (p, _) = run(
            &State::default(),
            &spec(vec![l4, http, http_plain, by_client]),
        );
        let by_port = |port: u16| {
            p.service_writes
                .iter()
                .find(|w| u16::from_be(w.key.port) == port)
                .expect("service")
                .value
        };
        let v = by_port(53);
        assert_eq!(
            v.flags,
            service_flags::DSR | service_flags::PERSIST_CLIENT_IP
        );
        assert_eq!(v.persist_ttl_ns, 300_000_000_000);
        assert_eq!(
            by_port(80).flags,
            service_flags::HTTP | service_flags::FAST_PATH
        );
        assert_eq!(by_port(81).flags, service_flags::HTTP);
        assert_eq!(by_port(443).flags, service_flags::HASH_CLIENT_IP);
        // Empty pool: a table of zeros, which XDP treats as "no backend".
        assert!(
            p.service_writes[0]
                .table
                .as_ref()
                .expect("table")
                .iter()
                .all(|&x| x == 0)
        );
    }

    #[test]
    fn keys_are_network_order() {
        let k = service_key("198.51.100.10".parse().expect("ip"), 0x1234, Proto::Tcp);
        assert_eq!(k.vip.to_ne_bytes(), [198, 51, 100, 10]);
        assert_eq!(k.port.to_ne_bytes(), [0x12, 0x34]);
        assert_eq!(k.proto, lb_common::proto::TCP);
        assert_eq!(
            service_key_parts::<V4>(&k),
            Some(("198.51.100.10".parse().expect("ip"), 0x1234, Proto::Tcp))
        );
        let b = backend_value::<V4>("192.0.2.1:8080".parse().expect("addr"), 1, 1);
        assert_eq!(b.addr.to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!(backend_addr4(&b).to_string(), "192.0.2.1:8080");
    }

    #[test]
    fn rejects_duplicates_and_overflow() {
        let a = svc("198.51.100.10", 80, vec![]);
        assert!(matches!(
            plan(&State::default(), &spec(vec![a.clone(), a])),
            Err(PlanError::DuplicateService { port: 80, .. })
        ));
        let small = State::from_maps(
            HashMap::new(),
            Vec::new(),
            Capacities {
                services: 16,
                backends: 32,
                ..Capacities::DEFAULT
            },
        );
        let many: Vec<_> = (0..small.caps.services)
            .map(|i| svc("198.51.100.10", 1000 + i as u16, vec![]))
            .collect();
        assert!(matches!(
            plan(&small, &spec(many)),
            Err(PlanError::TooManyServices { .. })
        ));
        let backends: Vec<_> = (0..small.caps.backends)
            .map(|i| BackendSpec {
                addr: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 1000 + i as u16).into(),
                up: true,
                weight: 1,
                backup: false,
            })
            .collect();
        assert!(matches!(
            plan(&small, &spec(vec![svc("198.51.100.10", 80, backends)])),
            Err(PlanError::TooManyBackends { .. })
        ));
    }

    #[test]
    fn adopt_ignores_duplicate_slots_and_releases_them() {
        let mut backends = vec![Backend::default(); Capacities::DEFAULT.backends as usize];
        let addr: SocketAddrV4 = "192.0.2.11:80".parse().expect("addr");
        backends[3] = backend_value::<V4>(addr, backend_state::UP, 4);
        backends[5] = backend_value::<V4>(addr, backend_state::UP, 9);
        let st = State::from_maps(HashMap::new(), backends, Capacities::DEFAULT);
        assert_eq!(st.backend_ids[&addr], 3);
        let (p, st2) = run(
            &st,
            &spec(vec![svc(
                "198.51.100.10",
                80,
                vec![be("192.0.2.11:80", true)],
            )]),
        );
        assert_eq!(p.backend_releases.len(), 1);
        assert_eq!(p.backend_releases[0].0, 5);
        assert_eq!(st2.backend_ids[&addr], 3);
    }

    #[test]
    fn persist_staleness() {
        let (_, st) = run(
            &State::default(),
            &spec(vec![svc(
                "198.51.100.10",
                80,
                vec![be("192.0.2.11:80", true)],
            )]),
        );
        let id = st.backend_ids[&"192.0.2.11:80".parse().expect("addr")];
        let generation = st.backends[id as usize].generation;
        let p = Persist {
            backend_id: id,
            generation,
            expires_ns: 1_000,
        };
        assert!(!st.persist_is_stale(&p, 999));
        assert!(st.persist_is_stale(&p, 1_000));
        assert!(st.persist_is_stale(
            &Persist {
                generation: generation + 1,
                ..p
            },
            0
        ));
        assert!(st.persist_is_stale(&Persist { backend_id: 0, ..p }, 0));
        assert!(st.persist_is_stale(
            &Persist {
                backend_id: st.caps.backends + 5,
                ..p
            },
            0
        ));
    }

    #[test]
    fn nat_replies_list_each_servers_nat_services_sorted() {
        let shared = be("192.0.2.11:80", false);
        let mut dsr = svc("198.51.100.3", 80, vec![be("192.0.2.12:80", true)]);
        dsr.forwarding = Forwarding::Dsr;
        let mut http = svc("198.51.100.4", 80, vec![be("192.0.2.13:80", true)]);
        http.kind = ServiceKind::Http { fast_path: false };
        let mut fast = svc("198.51.100.5", 80, vec![be("192.0.2.14:80", true)]);
        fast.kind = ServiceKind::Http { fast_path: true };
        let mut udp = svc("198.51.100.1", 53, vec![shared]);
        udp.proto = Proto::Udp;
        let replies = nat_replies::<V4>(&spec(vec![
            svc("198.51.100.2", 443, vec![shared]),
            svc("198.51.100.1", 80, vec![shared]),
            dsr,
            http,
            fast,
            udp,
        ]))
        .expect("replies");
        let key = |addr: &str, proto: Proto| {
            let a: SocketAddrV4 = addr.parse().expect("addr");
            lb_common::ReplyKey {
                addr: u32::from_ne_bytes(a.ip().octets()),
                port: a.port().to_be(),
                proto: proto.number(),
                _pad: 0,
            }
        };
        let vip = |ip: &str, port: u16| lb_common::VipPort {
            vip: u32::from_ne_bytes(ip.parse::<Ipv4Addr>().expect("ip").octets()),
            port: port.to_be(),
            _pad: 0,
        };
        // Two TCP services share the (down) server: both listed, in address order.
        let tcp = replies[&key("192.0.2.11:80", Proto::Tcp)];
        assert_eq!(tcp.count, 2);
        assert_eq!(
            tcp.vips[..2],
            [vip("198.51.100.1", 80), vip("198.51.100.2", 443)]
        );
        assert_eq!(tcp.vips[2], lb_common::VipPort::default());
        let udp = replies[&key("192.0.2.11:80", Proto::Udp)];
        assert_eq!((udp.count, udp.vips[0]), (1, vip("198.51.100.1", 53)));
        // DSR and proxied http services have no NAT replies in XDP; the fast path has.
        assert!(!replies.contains_key(&key("192.0.2.12:80", Proto::Tcp)));
        assert!(!replies.contains_key(&key("192.0.2.13:80", Proto::Tcp)));
        assert_eq!(replies[&key("192.0.2.14:80", Proto::Tcp)].count, 1);
        assert_eq!(replies.len(), 3);

        let words = nat_server_words(nat_server_bits::<V4>(replies.keys()));
        assert_eq!(words.len(), NAT_SERVER_WORDS as usize);
        for k in replies.keys() {
            let (word, bit) = nat_server_bit(k.addr, k.port, k.proto);
            assert_ne!(words[word as usize] & bit, 0);
        }
        let set: u32 = words.iter().map(|w| w.count_ones()).sum();
        assert!(
            (1..=4).contains(&set),
            "one bit per key (some may share one): {set}"
        );

        let (writes, deletes) = reply_changes::<V4>(&replies, &replies);
        assert!(writes.is_empty() && deletes.is_empty());
        let (writes, deletes) = reply_changes::<V4>(&HashMap::new(), &replies);
        assert_eq!((writes.len(), deletes.len()), (3, 0));
        let (writes, deletes) = reply_changes::<V4>(&replies, &HashMap::new());
        assert_eq!((writes.len(), deletes.len()), (0, 3));
    }

    #[test]
    fn nat_replies_refuse_a_server_behind_too_many_services() {
        let services = (0..=REPLY_VIPS as u16)
            .map(|i| svc("198.51.100.1", 1000 + i, vec![be("192.0.2.11:80", true)]))
            .collect();
        let err = nat_replies::<V4>(&spec(services)).expect_err("one too many");
        assert_eq!(
            err,
            PlanError::TooManyNatServices {
                server: "192.0.2.11:80".parse().expect("addr"),
                proto: Proto::Tcp,
                count: REPLY_VIPS + 1,
                limit: REPLY_VIPS,
            }
        );
        assert!(err.to_string().contains("192.0.2.11:80/tcp"), "{err}");
    }
}
