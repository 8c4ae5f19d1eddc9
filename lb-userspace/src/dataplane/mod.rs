//! The only code that touches aya: load, pin, attach the XDP program and program its maps.
//!
//! Everything the agent wants kept across restarts lives in bpffs under
//! `<bpffs_dir>/v<LAYOUT_VERSION>/`: the maps (pinned by the loader), the XDP links
//! (`links/<ifname>`) and a layout manifest. A restarted agent adopts all of it, so L4 traffic
//! never notices the restart. The decisions (`plan`) are pure; `maps` and `attach` are the thin
//! layer that executes them.

mod attach;
mod error;
pub mod family;
mod lock;
mod maps;
mod migrate;
pub mod mirror;
pub mod neighbor;
pub mod plan;

use std::{
    fmt, io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    EbpfLoader,
    programs::{ProgramError, Xdp},
};
use lb_common::{
    Capacities, Flow, FlowKeyOf, Persist, PersistKeyOf, TrafficCounters, maglev_base, map_names,
    stat,
};

use family::{Family, V4, V6};

pub use attach::{AttachMode, Attached, Hook};
pub use error::DataplaneError;
pub use maps::{MapFill, MapMemory, kernel_memory, versioned_dir};
pub use migrate::Migration;
pub use mirror::{KernelMirror, MirrorStats, PersistPins, PinRecord, PinService, Restored};
pub use plan::PlanError;

/// Name of the XDP entry point in the lb-ebpf object.
pub const PROGRAM_NAME: &str = "latch_xdp";
/// Name of the TC ingress entry point (the same logic, for `attach = "tc"`).
pub const TC_PROGRAM_NAME: &str = "latch_tc";

/// Where `open` mounts bpffs when the pin directory lies under it and it is not mounted.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn xdp_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/latch-xdp"))
}

/// Transport protocol of a virtual service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => lb_common::proto::TCP,
            Proto::Udp => lb_common::proto::UDP,
        }
    }

    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::proto::TCP => Some(Proto::Tcp),
            lb_common::proto::UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// How packets reach the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Destination address/port rewrite; replies come back through the balancer.
    Nat,
    /// MAC rewrite only; backends own the VIP and reply directly.
    Dsr,
    /// Encapsulated (IPIP, IP6IP6) to the backend's address, which decapsulates, owns the VIP
    /// and replies directly; needs [`Dataplane::set_tunnel_source`] of the family.
    Tunnel,
}

/// What places a new flow in a service's Maglev table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FlowHash {
    /// The connection's 5-tuple: a client's connections spread over the servers.
    #[default]
    Connection,
    /// The client's address (IPv6: its persistence prefix), VIP, port and protocol, without
    /// the source port: every connection of a client lands on one server, on every host
    /// with the same table.
    ClientIp,
}

/// What the XDP program does with a service's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// Forwarded in XDP.
    L4,
    /// Passed to the local proxy, except pinned clients when `fast_path` is on.
    Http {
        /// Client-IP fast path enabled.
        fast_path: bool,
    },
}

/// Desired data-plane contents: the agent maps its config into this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneSpec {
    /// Virtual services.
    pub services: Vec<ServiceSpec>,
}

/// One virtual service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Virtual IP (IPv4 or IPv6; its servers are of the same family).
    pub vip: IpAddr,
    /// Virtual port.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
    /// NAT or DSR.
    pub forwarding: Forwarding,
    /// L4 or HTTP.
    pub kind: ServiceKind,
    /// Native client-IP persistence timeout (L4 services only; the proxy handles HTTP).
    pub persistence_ttl: Option<Duration>,
    /// For an IPv6 service, the prefix length client-IP persistence keys on (None: the whole
    /// address).
    pub persistence_prefix_v6: Option<u8>,
    /// What places new flows (L4 services).
    pub flow_hash: FlowHash,
    /// Pool members.
    pub backends: Vec<BackendSpec>,
}

/// One pool member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Address and port packets are sent to.
    pub addr: SocketAddr,
    /// Health: down backends keep their id but get no new flows, and their established
    /// flows are dropped by XDP.
    pub up: bool,
    /// Share of the service's new flows (relative; 0: none, as for a drained server, while
    /// its established flows and pins go on).
    pub weight: u32,
    /// Gets new flows only while no primary backend of the service can.
    pub backup: bool,
}

/// One global counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalCounter {
    /// Index in the STATS map ([`lb_common::stat`]).
    pub index: u32,
    /// Metric-friendly name.
    pub name: &'static str,
    /// Sum over CPUs.
    pub value: u64,
}

/// Counters of one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceCounters {
    /// Virtual IP.
    pub vip: IpAddr,
    /// Virtual port.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
    /// Sums over CPUs.
    pub counters: TrafficCounters,
}

/// Counters of one backend (shared by every service that uses the address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendCounters {
    /// Backend address.
    pub addr: SocketAddr,
    /// Sums over CPUs.
    pub counters: TrafficCounters,
}

/// Snapshot of every counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneStats {
    /// Per-path counters.
    pub global: Vec<GlobalCounter>,
    /// Per programmed service.
    pub services: Vec<ServiceCounters>,
    /// Per programmed backend.
    pub backends: Vec<BackendCounters>,
}

/// Names of the global counters, by [`lb_common::stat`] index.
pub const GLOBAL_COUNTERS: [(u32, &str); 21] = [
    (stat::PASS_NOT_VIP, "pass_not_vip"),
    (stat::PASS_MALFORMED, "pass_malformed"),
    (stat::PASS_FRAGMENT_OR_OPTIONS, "pass_fragment_or_options"),
    (stat::PASS_TO_PROXY, "pass_to_proxy"),
    (stat::CONNTRACK_HIT, "conntrack_hit"),
    (stat::NEW_FLOW_MAGLEV, "new_flow_maglev"),
    (stat::PERSIST_HIT, "persist_hit"),
    (stat::PERSIST_EXPIRED, "persist_expired"),
    (stat::REPLY_NAT, "reply_nat"),
    (stat::DROP_NO_BACKEND, "drop_no_backend"),
    (stat::PASS_FIB_MISS, "pass_fib_miss"),
    (stat::VERDICT_TX, "verdict_tx"),
    (stat::VERDICT_REDIRECT, "verdict_redirect"),
    (stat::PASS_NO_FLOW, "pass_no_flow"),
    (stat::FAST_PATH, "fast_path"),
    (stat::CONNTRACK_INSERT, "conntrack_insert"),
    (stat::PERSIST_FULL, "persist_full"),
    (stat::ICMP_TO_CLIENT, "icmp_to_client"),
    (stat::ICMP_TO_BACKEND, "icmp_to_backend"),
    (stat::DROP_TUNNEL_TOO_BIG, "drop_tunnel_too_big"),
    (stat::DROP_TUNNEL_ERROR, "drop_tunnel_error"),
];

/// What `teardown` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// Interfaces whose pinned XDP link was removed (which detaches the program).
    pub links_detached: Vec<String>,
    /// Other pinned objects removed (maps, manifest).
    pub pins_removed: usize,
    /// The pin directory existed and is gone.
    pub removed_dir: bool,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the XDP program reads (at tick resolution), used
/// for every expiry (the same clock the tables use, so a table entry and its kernel mirror
/// expire together).
pub fn monotonic_now_ns() -> u64 {
    use crate::tables::Clock as _;
    crate::tables::MonotonicClock.now_ns()
}

/// Possible CPUs (what per-CPU maps are sized by); 1 when it cannot be read.
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |n| n as u32)
}

fn is_bpffs(path: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: zeroed statfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn nearest_existing(path: &Path) -> &Path {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    p
}

/// True when this process's mount namespace is not PID 1's (as under `ip netns exec`, or
/// `unshare -m`): what it mounts is seen by no one else and goes with it. Where PID 1's
/// namespace cannot be read (a container without ptrace rights over it), the parent's is the
/// reference: `ip netns exec` execs in place, so the parent is the shell that ran it. Unknown
/// counts as shared.
fn in_private_mount_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    let mount_ns = |pid: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let Some(own) = mount_ns("self") else {
        return false;
    };
    let parent = std::os::unix::process::parent_id().to_string();
    ["1", parent.as_str()]
        .into_iter()
        .find_map(mount_ns)
        .is_some_and(|reference| reference != own)
}

/// Makes sure `dir` is (or will be, once created) on bpffs, mounting bpffs at /sys/fs/bpf
/// when the directory lies under it, as systemd would have done on most distributions.
/// In a private mount namespace that mount would die with the agent, and the pins with it:
/// refused unless `ephemeral_pins`.
fn ensure_bpffs(dir: &Path, ephemeral_pins: bool) -> Result<(), DataplaneError> {
    let probe = nearest_existing(dir);
    if is_bpffs(probe).unwrap_or(false) {
        return Ok(());
    }
    let default = Path::new(DEFAULT_BPFFS);
    if dir.starts_with(default) && !is_bpffs(default).unwrap_or(false) {
        if in_private_mount_namespace() {
            if !ephemeral_pins {
                return Err(DataplaneError::PrivateBpffs {
                    dir: dir.to_owned(),
                });
            }
            tracing::warn!(
                "private mount namespace: the bpffs mounted at {DEFAULT_BPFFS} and every pin in it \
                 die with this agent (ephemeral_pins = true)"
            );
        }
        tracing::warn!(
            "{DEFAULT_BPFFS} is not a BPF filesystem; mounting one (mount -t bpf bpf {DEFAULT_BPFFS})"
        );
        // SAFETY: all arguments are valid NUL-terminated strings; data may be null.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(DataplaneError::MountBpffs {
                source: io::Error::last_os_error(),
            });
        }
        if is_bpffs(nearest_existing(dir)).unwrap_or(false) {
            return Ok(());
        }
    }
    Err(DataplaneError::BpffsNotMounted {
        dir: dir.to_owned(),
    })
}

/// How many times a program load is tried again after the verifier's EAGAIN.
const EAGAIN_RETRIES: u32 = 5;

/// Runs `load` (a program's `load`) again when the verifier gave up with EAGAIN, as libbpf
/// does. The verifier returns EAGAIN when a signal is pending for the loading thread (a child
/// process exiting: SIGCHLD), after all its work, however valid the program; seen under load
/// in the test suite. Any other outcome, or EAGAIN after [`EAGAIN_RETRIES`] retries, is
/// returned as it is.
pub fn load_retrying(
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    let mut retries = 0;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && retries < EAGAIN_RETRIES =>
            {
                retries += 1;
            }
            other => return other,
        }
    }
}

fn program_error(e: ProgramError, action: &str) -> DataplaneError {
    DataplaneError::or_permission(&e, action).unwrap_or_else(|| DataplaneError::Program {
        source: Box::new(e),
    })
}

/// The loaded XDP object, its pinned maps, and what the agent knows they contain.
pub struct Dataplane {
    root: PathBuf,
    vdir: PathBuf,
    adopted: bool,
    migration: Migration,
    caps: Capacities,
    maps: maps::Maps,
    ebpf: aya::Ebpf,
    state: plan::State,
    /// The IPv6 services and backends (ids shared with `state`'s).
    state6: plan::State<V6>,
    /// What [`PersistPins`] handles see of `state` and `state6`, refreshed by every apply.
    pin_index: std::sync::Arc<arc_swap::ArcSwap<mirror::PinIndex>>,
    pins: PersistPins,
    mirror: std::sync::Arc<KernelMirror>,
    /// Connection-table entries at start, XDP's insert count at start, and the entries the
    /// agent removed since: the base of the eviction estimate ([`Dataplane::map_fill`]).
    conntrack_base: std::sync::Mutex<Option<(u64, u64)>>,
    conntrack_removed: std::sync::atomic::AtomicU64,
    /// Set when an apply may have made connection-tracking entries stale (a backend's
    /// generation or state changed); only then does [`Dataplane::sweep`] walk that map.
    conntrack_maybe_stale: std::sync::atomic::AtomicBool,
    /// NAT_REPLY contents (read back at open, kept by every apply).
    replies: plan::Replies<V4>,
    /// NAT_REPLY6 contents, likewise.
    replies6: plan::Replies<V6>,
    /// NAT_SERVERS contents, likewise.
    nat_servers: Vec<u64>,
    // Last: released after every kernel handle is closed.
    lock: lock::AgentLock,
}

impl fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataplane")
            .field("dir", &self.vdir)
            .field("adopted", &self.adopted)
            .field("services", &self.state.services.len())
            .field("backends", &self.state.backend_ids.len())
            .finish()
    }
}

impl Dataplane {
    /// [`Dataplane::open_with`] the default capacities.
    pub fn open(bpffs_dir: &Path) -> Result<Self, DataplaneError> {
        Self::open_with(bpffs_dir, &Capacities::DEFAULT)
    }

    /// [`Dataplane::open`] with maps of capacities `caps`: pinned maps of another capacity are
    /// migrated into new maps of this one (`migrate.rs`).
    pub fn open_with(bpffs_dir: &Path, caps: &Capacities) -> Result<Self, DataplaneError> {
        Self::open_pinned(bpffs_dir, caps, false, Duration::ZERO)
    }

    /// The agent stops serving and drains: a `latch run` started now waits for it to exit
    /// instead of being refused (`lock.rs`).
    pub fn draining(&mut self) {
        self.lock.draining();
    }

    /// Loads the XDP object, creating its maps with `caps` or adopting the ones pinned under
    /// `<bpffs_dir>/v<LAYOUT_VERSION>/` after checking their shapes, and takes the agent lock.
    /// Pinned maps of another capacity are migrated into new maps of this one (`migrate.rs`).
    /// Rebuilds service and backend ids from the adopted maps. Attaches nothing. With
    /// `ephemeral_pins`, it also runs where the pins cannot outlive the process (a bpffs
    /// mounted in a private mount namespace); without, that is refused. An agent still
    /// draining on `bpffs_dir` is waited for, up to `wait_for_drain` (`lock.rs`).
    pub fn open_pinned(
        bpffs_dir: &Path,
        caps: &Capacities,
        ephemeral_pins: bool,
        wait_for_drain: Duration,
    ) -> Result<Self, DataplaneError> {
        ensure_bpffs(bpffs_dir, ephemeral_pins)?;
        std::fs::create_dir_all(bpffs_dir)
            .map_err(|e| DataplaneError::io("creating", bpffs_dir, e))?;
        let lock = lock::AgentLock::acquire(bpffs_dir, wait_for_drain)?;
        let vdir = versioned_dir(bpffs_dir);
        std::fs::create_dir_all(&vdir).map_err(|e| DataplaneError::io("creating", &vdir, e))?;

        let check = maps::check_pins(&vdir, bpffs_dir, caps)?;
        let adopted = check.adopted;
        let migrating = migrate::set_aside(&vdir, &check.resized)?;

        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&vdir);
        for (name, shape) in maps::expected(caps) {
            loader.map_max_entries(name, shape.max_entries);
        }
        let mut ebpf = loader.load(xdp_object()).map_err(|e| {
            DataplaneError::or_permission(&e, "creating BPF maps").unwrap_or_else(|| {
                DataplaneError::Load {
                    source: Box::new(e),
                }
            })
        })?;
        let xdp = xdp_program(&mut ebpf)?;
        load_retrying(|| xdp.load()).map_err(|e| program_error(e, "loading the XDP program"))?;
        let tc = programs(&mut ebpf)?.1;
        load_retrying(|| tc.load()).map_err(|e| program_error(e, "loading the TC program"))?;

        let mut maps = maps::Maps::take(&mut ebpf)?;
        let migration = if migrating {
            migrate::copy_back(&vdir, &mut maps, caps)?
        } else {
            Migration::default()
        };
        maps::write_manifest(&vdir, caps)?;
        let (services, backends) = maps.v4.read_state()?;
        let state = plan::State::from_maps(services, backends, *caps);
        let (services6, backends6) = maps.v6.read_state()?;
        let state6 = plan::State::from_maps(services6, backends6, *caps);
        let replies = maps.v4.read_replies()?;
        let replies6 = maps.v6.read_replies()?;
        let nat_servers = maps.read_nat_servers()?;
        let pin_index = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(
            mirror::PinIndex::from_states(&state, &state6),
        ));
        let pins = mirror::open_pins(&vdir, std::sync::Arc::clone(&pin_index))?;
        let mirror = std::sync::Arc::new(KernelMirror::new(std::sync::Arc::clone(&maps.ds_table)));
        tracing::info!(
            dir = %vdir.display(),
            adopted,
            migrated = migration.maps.len(),
            services = state.services.len() + state6.services.len(),
            backends = state.backend_ids.len() + state6.backend_ids.len(),
            "data plane loaded"
        );
        Ok(Self {
            root: bpffs_dir.to_owned(),
            vdir,
            adopted,
            migration,
            caps: *caps,
            maps,
            ebpf,
            state,
            state6,
            pin_index,
            pins,
            mirror,
            conntrack_maybe_stale: std::sync::atomic::AtomicBool::new(true),
            conntrack_base: std::sync::Mutex::new(None),
            conntrack_removed: std::sync::atomic::AtomicU64::new(0),
            replies,
            replies6,
            nat_servers,
            lock,
        })
    }

    /// What `open` migrated after a capacity change (empty otherwise).
    pub fn migration(&self) -> &Migration {
        &self.migration
    }

    /// The capacities the maps have.
    pub fn capacities(&self) -> Capacities {
        self.caps
    }

    /// A handle that pins fast-path clients from any thread; it follows every apply.
    pub fn persist_pins(&self) -> PersistPins {
        self.pins.clone()
    }

    /// The DS_TABLE mirror of the DataScript tables.
    pub fn kernel_mirror(&self) -> std::sync::Arc<KernelMirror> {
        std::sync::Arc::clone(&self.mirror)
    }

    /// The configured pin directory.
    pub fn bpffs_dir(&self) -> &Path {
        &self.root
    }

    /// True when `open` found pinned maps from a previous agent and adopted them.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Backend id the maps use for `addr`, if programmed (for diagnostics and tests).
    pub fn backend_id(&self, addr: impl Into<SocketAddr>) -> Option<u32> {
        match addr.into() {
            SocketAddr::V4(a) => self.state.backend_ids.get(&a).copied(),
            SocketAddr::V6(a) => self.state6.backend_ids.get(&a).copied(),
        }
    }

    /// Service id of a programmed service.
    pub fn service_id(&self, vip: IpAddr, port: u16, proto: Proto) -> Option<u32> {
        match vip {
            IpAddr::V4(v) => self.state.services.get(&plan::key_of::<V4>(v, port, proto)),
            IpAddr::V6(v) => self
                .state6
                .services
                .get(&plan::key_of::<V6>(v, port, proto)),
        }
        .map(|s| s.id)
    }

    /// Attaches the XDP program to each interface through a pinned link (replacing the
    /// program of an existing pinned link atomically), and detaches interfaces that are no
    /// longer listed.
    pub fn attach(&mut self, interfaces: &[String]) -> Result<Vec<Attached>, DataplaneError> {
        let all: Vec<(String, Hook)> = interfaces.iter().map(|i| (i.clone(), Hook::Xdp)).collect();
        self.attach_hooks(&all)
    }

    /// [`Dataplane::attach`] with a hook per interface: XDP, or TC ingress (for senders of
    /// partial checksums, see `lb-ebpf/src/ctx.rs`). An interface that moves between hooks
    /// leaves the other first.
    pub fn attach_hooks(
        &mut self,
        interfaces: &[(String, Hook)],
    ) -> Result<Vec<Attached>, DataplaneError> {
        let links = self.vdir.join("links");
        let (xdp, tc) = programs(&mut self.ebpf)?;
        attach::attach_all(xdp, tc, &links, interfaces)
    }

    /// Programs services, backends and maglev tables to match `spec`. Each service switches
    /// to its new table with one SERVICES update, after the table is complete. On error the
    /// known state is re-read from the maps, so a retry converges. IPv4 services are
    /// programmed first, then IPv6 ones; neither takes an id the other holds before or after.
    pub fn apply(&mut self, spec: &DataplaneSpec) -> Result<(), DataplaneError> {
        let plan4 = plan::plan_family::<V4>(&self.state, spec, &plan::Reserved::of(&self.state6))?;
        let next4 = plan::apply_to_state(&self.state, &plan4);
        let plan6 = plan::plan_family::<V6>(
            &self.state6,
            spec,
            &plan::Reserved::of(&self.state).union(plan::Reserved::of(&next4)),
        )?;
        let replies = plan::nat_replies::<V4>(spec)?;
        let replies6 = plan::nat_replies::<V6>(spec)?;
        let (w4, d4) = plan::reply_changes::<V4>(&self.replies, &replies);
        let (w6, d6) = plan::reply_changes::<V6>(&self.replies6, &replies6);
        if plan4.is_noop()
            && plan6.is_noop()
            && w4.is_empty()
            && d4.is_empty()
            && w6.is_empty()
            && d6.is_empty()
        {
            return Ok(());
        }
        // Reply sources first (their NAT_SERVERS bits before them), so that the first flow of
        // a new NAT service is answered at once; sources no longer wanted last (until then
        // they are harmless: a reply is translated only for a live flow to that very server).
        let both = plan::nat_server_words(
            plan::nat_server_bits::<V4>(self.replies.keys().chain(replies.keys())).chain(
                plan::nat_server_bits::<V6>(self.replies6.keys().chain(replies6.keys())),
            ),
        );
        let mut result = self
            .write_nat_servers(&both)
            .and_then(|()| {
                write_replies(&mut self.maps.v4, &mut self.replies, &w4, &[])?;
                write_replies(&mut self.maps.v6, &mut self.replies6, &w6, &[])
            })
            .and_then(|()| self.execute_plans(&plan4, &plan6));
        if result.is_ok() {
            let words = plan::nat_server_words(
                plan::nat_server_bits::<V4>(replies.keys())
                    .chain(plan::nat_server_bits::<V6>(replies6.keys())),
            );
            result = write_replies(&mut self.maps.v4, &mut self.replies, &[], &d4)
                .and_then(|()| write_replies(&mut self.maps.v6, &mut self.replies6, &[], &d6))
                .and_then(|()| self.write_nat_servers(&words));
        }
        if result.is_err() {
            match (
                self.maps.v4.read_replies(),
                self.maps.v6.read_replies(),
                self.maps.read_nat_servers(),
            ) {
                (Ok(r), Ok(r6), Ok(w)) => {
                    (self.replies, self.replies6, self.nat_servers) = (r, r6, w)
                }
                (Err(re), _, _) | (_, Err(re), _) | (_, _, Err(re)) => {
                    tracing::error!(error = %re, "re-reading NAT_REPLY after a failed apply")
                }
            }
        }
        self.conntrack_maybe_stale
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.pin_index
            .store(std::sync::Arc::new(mirror::PinIndex::from_states(
                &self.state,
                &self.state6,
            )));
        result
    }

    /// Sets the outer source addresses of tunnel mode (`[agent] tunnel_source_ipv4`,
    /// `tunnel_source_ipv6`); `None` clears a family's, whose tunnel packets are then dropped
    /// and counted (`drop_tunnel_error`). TUNNEL_SOURCE is not pinned: the agent sets it at
    /// every start and reload, before it applies a spec.
    pub fn set_tunnel_source(
        &mut self,
        v4: Option<std::net::Ipv4Addr>,
        v6: Option<std::net::Ipv6Addr>,
    ) -> Result<(), DataplaneError> {
        let slots = [
            (
                lb_common::tunnel_source::V4,
                [v4.map_or(0, V4::raw), 0, 0, 0],
            ),
            (lb_common::tunnel_source::V6, v6.map_or([0; 4], V6::raw)),
        ];
        for (slot, value) in slots {
            self.maps
                .tunnel_source
                .set(slot, value, 0)
                .map_err(|e| DataplaneError::map(map_names::TUNNEL_SOURCE, "write", e))?;
        }
        Ok(())
    }

    /// Writes the NAT_SERVERS words that differ from `words`.
    fn write_nat_servers(&mut self, words: &[u64]) -> Result<(), DataplaneError> {
        for (i, w) in words.iter().enumerate() {
            if self.nat_servers.get(i) == Some(w) {
                continue;
            }
            self.maps
                .nat_servers
                .set(i as u32, w, 0)
                .map_err(|e| DataplaneError::map(map_names::NAT_SERVERS, "write", e))?;
            if let Some(slot) = self.nat_servers.get_mut(i) {
                *slot = *w;
            }
        }
        Ok(())
    }

    /// Executes the IPv4 plan, then the IPv6 one, each state following its maps.
    fn execute_plans(
        &mut self,
        plan4: &plan::Plan<V4>,
        plan6: &plan::Plan<V6>,
    ) -> Result<(), DataplaneError> {
        let caps = self.caps;
        let maps::Maps {
            v4,
            v6,
            maglev,
            service_stats,
            backend_stats,
            ..
        } = &mut self.maps;
        let mut shared = Shared {
            maglev,
            service_stats,
            backend_stats,
        };
        execute_family(v4, &mut shared, &mut self.state, plan4, caps)?;
        execute_family(v6, &mut shared, &mut self.state6, plan6, caps)?;
        tracing::info!(
            services = self.state.services.len() + self.state6.services.len(),
            backends = self.state.backend_ids.len() + self.state6.backend_ids.len(),
            "data plane programmed"
        );
        Ok(())
    }

    /// How often the XDP program has run and its total run time in nanoseconds, from the
    /// kernel's run-time statistics. The kernel counts only while some process holds a
    /// `BPF_ENABLE_STATS` descriptor open (the data-plane benchmark does); otherwise both stay
    /// where they were.
    pub fn program_runs(&self) -> Result<(u64, u64), DataplaneError> {
        let prog =
            self.ebpf
                .program(PROGRAM_NAME)
                .ok_or_else(|| DataplaneError::MissingObject {
                    what: "program",
                    name: PROGRAM_NAME.to_owned(),
                })?;
        let info = prog.info().map_err(|e| DataplaneError::Program {
            source: Box::new(e),
        })?;
        Ok((info.run_count(), info.run_time().as_nanos() as u64))
    }

    fn global_stat(&self, index: u32) -> Result<u64, DataplaneError> {
        let v = self
            .maps
            .stats
            .get(&index, 0)
            .map_err(|e| DataplaneError::map(map_names::STATS, "read", e))?;
        Ok(v.iter().fold(0u64, |a, x| a.wrapping_add(*x)))
    }

    /// How full the connection table, the client pins and the table mirror are, with their
    /// evictions and refused writes. Reads each map whole in batches (about 100 ms for two
    /// million entries): call it every few seconds, not per request.
    pub fn map_fill(&self) -> Result<Vec<MapFill>, DataplaneError> {
        let (connections4, pins4) = family_fill(&self.maps.v4)?;
        let (connections6, pins6) = family_fill(&self.maps.v6)?;
        let connections = connections4 + connections6;
        let mirror = count(
            map_names::DS_TABLE,
            self.maps.ds_table.fd(),
            std::mem::size_of::<lb_common::DsKey>(),
            std::mem::size_of::<lb_common::DsValue>(),
        )?;
        // XDP counts inserts into either family's table in one counter, so the eviction
        // estimate (inserts minus growth minus the agent's removals) is of both tables
        // together; it is reported on the IPv4 row, the IPv6 row carries none.
        let inserts = self.global_stat(stat::CONNTRACK_INSERT)?;
        let (base_entries, base_inserts) = *self
            .conntrack_base
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert((connections, inserts));
        let removed = self
            .conntrack_removed
            .load(std::sync::atomic::Ordering::Relaxed);
        let evictions = inserts
            .saturating_sub(base_inserts)
            .saturating_sub(connections.saturating_sub(base_entries))
            .saturating_sub(removed);
        // Likewise one counter of pins refused for a full table, on the IPv4 row.
        let pins_full = self.global_stat(stat::PERSIST_FULL)?;
        Ok(vec![
            MapFill {
                map: "connections",
                entries: connections4,
                capacity: self.caps.connections,
                evictions,
                full: 0,
            },
            MapFill {
                map: "client_pins",
                entries: pins4,
                capacity: self.caps.client_pins,
                evictions: 0,
                full: pins_full,
            },
            MapFill {
                map: "connections_v6",
                entries: connections6,
                capacity: self.caps.connections_v6,
                evictions: 0,
                full: 0,
            },
            MapFill {
                map: "client_pins_v6",
                entries: pins6,
                capacity: self.caps.client_pins_v6,
                evictions: 0,
                full: 0,
            },
            MapFill {
                map: "table_mirror",
                entries: mirror,
                capacity: self.caps.table_mirror_entries,
                evictions: 0,
                full: self.mirror.full_total(),
            },
        ])
    }

    /// Every counter, summed over CPUs.
    pub fn stats(&self) -> Result<DataplaneStats, DataplaneError> {
        let mut out = DataplaneStats::default();
        for (index, name) in GLOBAL_COUNTERS {
            let v = self
                .maps
                .stats
                .get(&index, 0)
                .map_err(|e| DataplaneError::map(map_names::STATS, "read", e))?;
            out.global.push(GlobalCounter {
                index,
                name,
                value: v.iter().fold(0u64, |a, x| a.wrapping_add(*x)),
            });
        }
        self.family_stats(&self.state, &mut out)?;
        self.family_stats(&self.state6, &mut out)?;
        Ok(out)
    }

    fn family_stats<F: Family>(
        &self,
        state: &plan::State<F>,
        out: &mut DataplaneStats,
    ) -> Result<(), DataplaneError> {
        for (key, svc) in &state.services {
            let Some((vip, port, proto)) = plan::service_key_parts::<F>(key) else {
                continue;
            };
            let counters = maps::Maps::sum_counters(
                &self.maps.service_stats,
                map_names::SERVICE_STATS,
                svc.id,
            )?;
            out.services.push(ServiceCounters {
                vip: vip.into(),
                port,
                proto,
                counters,
            });
        }
        for (addr, id) in &state.backend_ids {
            let counters =
                maps::Maps::sum_counters(&self.maps.backend_stats, map_names::BACKEND_STATS, *id)?;
            out.backends.push(BackendCounters {
                addr: (*addr).into(),
                counters,
            });
        }
        Ok(())
    }

    /// Removes expired or stale persistence entries and conntrack entries of released or
    /// reassigned backends. Returns how many entries were removed. Costs one syscall per
    /// entry scanned, so call it every few seconds, not per packet.
    pub fn sweep(&self, now_ns: u64) -> Result<usize, DataplaneError> {
        // Stale flows are harmless (XDP checks generations itself and the LRU evicts them), so
        // the costly walk of the connection tables (two syscalls per entry, hundreds of
        // thousands of entries under load) runs only after a change that made some stale.
        let flows = self
            .conntrack_maybe_stale
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        let (pins4, flows4) = sweep_family(&self.maps.v4, &self.state, now_ns, flows)?;
        let (pins6, flows6) = sweep_family(&self.maps.v6, &self.state6, now_ns, flows)?;
        // The eviction estimate of `map_fill` is of both families' tables together.
        self.conntrack_removed
            .fetch_add(flows4 + flows6, std::sync::atomic::Ordering::Relaxed);
        Ok(pins4 + pins6 + (flows4 + flows6) as usize)
    }
}

/// NAT reply writes and deletes of one family, `known` following them.
#[allow(clippy::type_complexity)]
fn write_replies<F: Family>(
    m: &mut maps::FamilyMaps<F>,
    known: &mut plan::Replies<F>,
    writes: &[(
        lb_common::ReplyKeyOf<F::Raw>,
        lb_common::ReplySourcesOf<F::Raw>,
    )],
    deletes: &[lb_common::ReplyKeyOf<F::Raw>],
) -> Result<(), DataplaneError> {
    for (k, v) in writes {
        m.nat_reply
            .insert(k, v, 0)
            .map_err(|e| DataplaneError::map(m.names.nat_reply, "write", e))?;
        known.insert(*k, *v);
    }
    for k in deletes {
        remove_ok(m.nat_reply.remove(k))
            .map_err(|e| DataplaneError::map(m.names.nat_reply, "delete", e))?;
        known.remove(k);
    }
    Ok(())
}

/// The maps both families write: the Maglev tables and the counters.
struct Shared<'a> {
    maglev: &'a mut aya::maps::Array<aya::maps::MapData, u32>,
    service_stats: &'a mut aya::maps::PerCpuArray<aya::maps::MapData, TrafficCounters>,
    backend_stats: &'a mut aya::maps::PerCpuArray<aya::maps::MapData, TrafficCounters>,
}

/// Executes one family's plan; `state` follows the maps (re-read from them on error).
fn execute_family<F: Family>(
    m: &mut maps::FamilyMaps<F>,
    shared: &mut Shared<'_>,
    state: &mut plan::State<F>,
    plan: &plan::Plan<F>,
    caps: Capacities,
) -> Result<(), DataplaneError> {
    match execute(m, shared, plan) {
        Ok(()) => {
            *state = plan::apply_to_state(state, plan);
            Ok(())
        }
        Err(e) => {
            match m.read_state() {
                Ok((s, b)) => *state = plan::State::from_maps(s, b, caps),
                Err(re) => tracing::error!(error = %re, "re-reading maps after a failed apply"),
            }
            Err(e)
        }
    }
}

fn execute<F: Family>(
    m: &mut maps::FamilyMaps<F>,
    shared: &mut Shared<'_>,
    plan: &plan::Plan<F>,
) -> Result<(), DataplaneError> {
    let names = m.names;
    for id in &plan.fresh_backends {
        maps::Maps::zero_counters(shared.backend_stats, map_names::BACKEND_STATS, *id)?;
    }
    for (id, b) in &plan.backend_writes {
        m.backends
            .set(*id, b, 0)
            .map_err(|e| DataplaneError::map(names.backends, "write", e))?;
    }
    for (key, svc) in &plan.service_deletes {
        remove_ok(m.services.remove(key))
            .map_err(|e| DataplaneError::map(names.services, "delete", e))?;
        // Pins of a removed service would otherwise outlive it and greet whichever
        // service takes its id next.
        let group = svc.persist_group;
        let mut persist = m.persist.lock();
        let keys = collect_keys(&persist, |k: &PersistKeyOf<F::Raw>, _| k.group == group)
            .map_err(|e| DataplaneError::map(names.persist, "read", e))?;
        for k in keys {
            remove_ok(persist.remove(&k))
                .map_err(|e| DataplaneError::map(names.persist, "delete", e))?;
        }
    }
    for w in plan.service_writes.iter().filter(|w| w.changed) {
        if w.fresh {
            maps::Maps::zero_counters(shared.service_stats, map_names::SERVICE_STATS, w.value.id)?;
        }
        if let Some(table) = &w.table {
            let base = maglev_base(w.value.id, w.value.maglev_slot);
            for (i, backend) in table.iter().enumerate() {
                shared
                    .maglev
                    .set(base + i as u32, backend, 0)
                    .map_err(|e| DataplaneError::map(map_names::MAGLEV, "write", e))?;
            }
        }
        m.services
            .insert(w.key, w.value, 0)
            .map_err(|e| DataplaneError::map(names.services, "write", e))?;
    }
    for (id, b) in &plan.backend_releases {
        m.backends
            .set(*id, b, 0)
            .map_err(|e| DataplaneError::map(names.backends, "write", e))?;
    }
    Ok(())
}

/// Removes expired or stale pins, and (with `flows`) flows of released or reassigned
/// backends, of one family. Returns (pins removed, flows removed).
fn sweep_family<F: Family>(
    m: &maps::FamilyMaps<F>,
    state: &plan::State<F>,
    now_ns: u64,
    flows: bool,
) -> Result<(usize, u64), DataplaneError> {
    let mut pins = 0;
    {
        let mut persist = m.persist.lock();
        let keys = collect_keys(&persist, |_, v: &Persist| state.persist_is_stale(v, now_ns))
            .map_err(|e| DataplaneError::map(m.names.persist, "read", e))?;
        for k in keys {
            remove_ok(persist.remove(&k))
                .map_err(|e| DataplaneError::map(m.names.persist, "delete", e))?;
            pins += 1;
        }
    }
    let mut removed_flows = 0;
    if flows {
        let mut ct = m.conntrack.lock();
        let keys = collect_keys(&ct, |_: &FlowKeyOf<F::Raw>, v: &Flow| {
            state.flow_is_stale(v)
        })
        .map_err(|e| DataplaneError::map(m.names.conntrack, "read", e))?;
        for k in keys {
            remove_ok(ct.remove(&k))
                .map_err(|e| DataplaneError::map(m.names.conntrack, "delete", e))?;
            removed_flows += 1;
        }
    }
    Ok((pins, removed_flows))
}

/// Entries in one family's connection and client-pin tables.
fn family_fill<F: Family>(m: &maps::FamilyMaps<F>) -> Result<(u64, u64), DataplaneError> {
    use aya::maps::IterableMap;
    use std::os::fd::AsFd;
    let connections = {
        let ct = m.conntrack.lock();
        count(
            m.names.conntrack,
            IterableMap::map(&*ct).fd().as_fd(),
            std::mem::size_of::<FlowKeyOf<F::Raw>>(),
            std::mem::size_of::<Flow>(),
        )?
    };
    let pins = {
        let p = m.persist.lock();
        count(
            m.names.persist,
            IterableMap::map(&*p).fd().as_fd(),
            std::mem::size_of::<PersistKeyOf<F::Raw>>(),
            std::mem::size_of::<Persist>(),
        )?
    };
    Ok((connections, pins))
}

fn count(
    name: &'static str,
    fd: std::os::fd::BorrowedFd<'_>,
    key: usize,
    value: usize,
) -> Result<u64, DataplaneError> {
    maps::count_entries(fd, key, value).map_err(|e| {
        DataplaneError::map(
            name,
            "count",
            aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_lookup_batch",
                io_error: e,
            }),
        )
    })
}

fn xdp_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let prog = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or_else(|| DataplaneError::MissingObject {
            what: "program",
            name: PROGRAM_NAME.to_owned(),
        })?;
    prog.try_into()
        .map_err(|e: ProgramError| DataplaneError::Program {
            source: Box::new(e),
        })
}

/// The XDP and the TC program, borrowed together.
fn programs(
    ebpf: &mut aya::Ebpf,
) -> Result<(&mut Xdp, &mut aya::programs::SchedClassifier), DataplaneError> {
    let (mut xdp, mut tc) = (None, None);
    for (name, prog) in ebpf.programs_mut() {
        match name {
            PROGRAM_NAME => xdp = Some(prog),
            TC_PROGRAM_NAME => tc = Some(prog),
            _ => {}
        }
    }
    let missing = |name: &str| DataplaneError::MissingObject {
        what: "program",
        name: name.to_owned(),
    };
    let wrong = |e: ProgramError| DataplaneError::Program {
        source: Box::new(e),
    };
    let xdp: &mut Xdp = xdp
        .ok_or_else(|| missing(PROGRAM_NAME))?
        .try_into()
        .map_err(wrong)?;
    let tc: &mut aya::programs::SchedClassifier = tc
        .ok_or_else(|| missing(TC_PROGRAM_NAME))?
        .try_into()
        .map_err(wrong)?;
    Ok((xdp, tc))
}

/// Keys of entries matching `pred`, collected before any deletion: deleting while walking a
/// hash map with get_next_key restarts the walk.
fn collect_keys<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
    pred: impl Fn(&K, &V) -> bool,
) -> Result<Vec<K>, aya::maps::MapError> {
    let mut out = Vec::new();
    for kv in map.iter() {
        match kv {
            Ok((k, v)) => {
                if pred(&k, &v) {
                    out.push(k);
                }
            }
            // Removed by XDP or LRU eviction between listing and reading: skip.
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Treats "no such entry" as success: deletes are idempotent.
fn remove_ok(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// `latch down`: detaches every pinned link, unpins every map and removes `bpffs_dir`.
/// Refuses while an agent holds the lock (its maps would survive, unpinned, until it exits).
pub fn teardown(bpffs_dir: &Path) -> Result<TeardownReport, DataplaneError> {
    let mut report = TeardownReport::default();
    if !bpffs_dir.exists() {
        return Ok(report);
    }
    let lock = lock::AgentLock::acquire(bpffs_dir, Duration::ZERO)?;
    remove_tree(bpffs_dir, false, &mut report)?;
    std::fs::remove_dir(bpffs_dir).map_err(|e| DataplaneError::io("removing", bpffs_dir, e))?;
    drop(lock);
    report.removed_dir = true;
    tracing::info!(
        dir = %bpffs_dir.display(),
        links = ?report.links_detached,
        pins = report.pins_removed,
        "data plane torn down"
    );
    Ok(report)
}

fn remove_tree(
    dir: &Path,
    in_links: bool,
    report: &mut TeardownReport,
) -> Result<(), DataplaneError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataplaneError::io("listing", dir, e))?;
    let mut entries: Vec<_> = rd
        .collect::<Result<_, _>>()
        .map_err(|e| DataplaneError::io("listing", dir, e))?;
    // Links first, so traffic stops being processed before its maps disappear.
    entries.sort_by_key(|e| e.file_name() != "links");
    for entry in entries {
        let path = entry.path();
        let is_dir = entry
            .file_type()
            .map_err(|e| DataplaneError::io("inspecting", &path, e))?
            .is_dir();
        if is_dir {
            remove_tree(&path, entry.file_name() == "links", report)?;
            std::fs::remove_dir(&path).map_err(|e| DataplaneError::io("removing", &path, e))?;
        } else {
            std::fs::remove_file(&path).map_err(|e| DataplaneError::io("removing", &path, e))?;
            if in_links {
                report
                    .links_detached
                    .push(entry.file_name().to_string_lossy().into_owned());
            } else {
                report.pins_removed += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataplane_is_send_and_sync() {
        // The agent shares it between the reload task and the API (pins, stats).
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Dataplane>();
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_now_ns();
        let b = monotonic_now_ns();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn global_counter_names_cover_distinct_indexes() {
        let mut idx: Vec<u32> = GLOBAL_COUNTERS.iter().map(|(i, _)| *i).collect();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), GLOBAL_COUNTERS.len());
        assert!(idx.iter().all(|&i| i < stat::COUNT));
    }

    #[test]
    fn proto_round_trips() {
        for p in [Proto::Tcp, Proto::Udp] {
            assert_eq!(Proto::from_number(p.number()), Some(p));
        }
        assert_eq!(Proto::from_number(1), None);
    }

    #[test]
    fn teardown_of_missing_dir_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = teardown(&dir.path().join("absent")).expect("teardown");
        assert_eq!(r, TeardownReport::default());
    }

    #[test]
    fn lock_is_exclusive_and_teardown_respects_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = lock::AgentLock::acquire(dir.path(), Duration::ZERO).expect("first lock");
        assert!(matches!(
            lock::AgentLock::acquire(dir.path(), Duration::ZERO),
            Err(DataplaneError::AlreadyRunning { .. })
        ));
        let msg = teardown(dir.path()).expect_err("locked").to_string();
        assert!(msg.contains("another latch agent (pid "), "{msg}");
        drop(l);
        assert!(lock::AgentLock::acquire(dir.path(), Duration::ZERO).is_ok());
    }

    #[test]
    fn teardown_removes_tree_links_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("latch");
        let v = versioned_dir(&root);
        std::fs::create_dir_all(v.join("links")).expect("mkdir");
        std::fs::write(v.join("links/eth0"), b"").expect("write");
        std::fs::write(v.join("LATCH_SERVICES"), b"").expect("write");
        std::fs::write(v.join("LATCH_LAYOUT"), b"").expect("write");
        let r = teardown(&root).expect("teardown");
        assert_eq!(r.links_detached, vec!["eth0".to_owned()]);
        assert_eq!(r.pins_removed, 2);
        assert!(r.removed_dir);
        assert!(!root.exists());
    }
}
