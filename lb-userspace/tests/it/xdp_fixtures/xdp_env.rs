//! Environment for BPF_PROG_TEST_RUN fixtures: a private network namespace (so that
//! `bpf_fib_lookup` sees a known topology with static neighbours), a private pin directory,
//! and the loaded latch XDP program with handles on its maps.
//!
//! Topology inside the namespace (both veth ends stay in it; no frame ever leaves):
//!   lbc (02:00:00:00:0c:01, 192.0.2.1/24)    client side; neighbours: client .100, backend .50
//!   lbb (02:00:00:00:0b:01, 198.51.100.1/24) backend side; neighbours: .10 and .11
//!   198.51.100.99 is routable but has no neighbour entry (fib NO_NEIGH).
//!   IPv6 (addresses without duplicate address detection, so usable at once):
//!   lbc 2001:db8:c::1/64, neighbour client 2001:db8:c::100;
//!   lbb 2001:db8:b::1/64, neighbours 2001:db8:b::10 and ::11.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    Backend, Backend6, Flow, FlowKey, FlowKey6, Persist, PersistKey, PersistKey6, ReplyKey,
    ReplyKey6, ReplySources, ReplySources6, Service, ServiceKey, ServiceKey6, TrafficCounters,
    map_names,
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/latch-xdp"));
static COUNTER: AtomicU32 = AtomicU32::new(0);

pub const LBC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x01];
pub const LBB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x64];
pub const NEAR_BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x32];
pub const BACKEND1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x0a];
pub const BACKEND2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x0b];

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace that the current thread has entered; leaving and deleting it
/// happens on drop, also when the test panics.
pub struct Netns {
    name: String,
    original: Option<File>,
}

impl Netns {
    fn create() -> Self {
        let name = unique("latch-xdpt");
        run(&["ip", "netns", "add", &name]);
        let mut ns = Self {
            name,
            original: None,
        };
        ns.configure();
        ns.enter();
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["ip", "-n", self.name.as_str()];
        all.extend_from_slice(args);
        run(&all);
    }

    fn configure(&self) {
        self.ip(&["link", "set", "lo", "up"]);
        for (dev, peer, mac, addr) in [
            ("lbc", "lbcp", "02:00:00:00:0c:01", "192.0.2.1/24"),
            ("lbb", "lbbp", "02:00:00:00:0b:01", "198.51.100.1/24"),
        ] {
            self.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer]);
            self.ip(&["link", "set", dev, "address", mac]);
            self.ip(&["addr", "add", addr, "dev", dev]);
            self.ip(&["link", "set", dev, "up"]);
            self.ip(&["link", "set", peer, "up"]);
        }
        for (addr, dev) in [("2001:db8:c::1/64", "lbc"), ("2001:db8:b::1/64", "lbb")] {
            self.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
        }
        for (addr, mac, dev) in [
            ("192.0.2.100", "02:00:00:00:0c:64", "lbc"),
            ("192.0.2.50", "02:00:00:00:0c:32", "lbc"),
            ("198.51.100.10", "02:00:00:00:0b:0a", "lbb"),
            ("198.51.100.11", "02:00:00:00:0b:0b", "lbb"),
            ("2001:db8:c::100", "02:00:00:00:0c:64", "lbc"),
            ("2001:db8:b::10", "02:00:00:00:0b:0a", "lbb"),
            ("2001:db8:b::11", "02:00:00:00:0b:0b", "lbb"),
        ] {
            self.ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        // The namespace's own sysctl: bpf_fib_lookup refuses with FWD_DISABLED without it.
        run(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]);
    }

    fn enter(&mut self) {
        let original = File::open("/proc/thread-self/ns/net").expect("own netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("test netns");
        // SAFETY: both are valid namespace fds; setns only affects this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        self.original = Some(original);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(original) = self.original.take() {
            // SAFETY: valid namespace fd.
            unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) };
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A unique pin directory on the host's bpffs, removed with its pins on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn create() -> Self {
        let dir = PathBuf::from("/sys/fs/bpf").join(unique("latch-xdpt"));
        std::fs::create_dir(&dir).expect("create pin dir");
        Self(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The loaded program in its namespace. Field order matters for drop: program and maps
/// first, then pins, then the namespace.
pub struct Fixture {
    ebpf: Ebpf,
    _pins: PinDir,
    _netns: Netns,
    pub lbc: u32,
    pub lbb: u32,
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid C string; the lookup runs in this thread's (test) namespace.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(idx, 0, "no interface {name}");
    idx
}

impl Fixture {
    /// Needs root (network namespaces, BPF).
    pub fn new() -> Self {
        Self::with_object(OBJECT)
    }

    /// [`Fixture::new`] with another build of the program (cost comparisons between builds).
    pub fn with_object(object: &[u8]) -> Self {
        let netns = Netns::create();
        let pins = PinDir::create();
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.0)
            // Small tracking maps keep parallel fixtures cheap; the program is the same.
            .map_max_entries(map_names::CONNTRACK, 4096)
            .map_max_entries(map_names::PERSIST, 4096)
            .map_max_entries(map_names::CONNTRACK6, 4096)
            .map_max_entries(map_names::PERSIST6, 4096)
            .load(object)
            .expect("load latch-xdp object");
        let prog: &mut Xdp = ebpf
            .program_mut("latch_xdp")
            .expect("latch_xdp program")
            .try_into()
            .expect("xdp program");
        // The verifier gives up with EAGAIN when a signal is pending (another test's child
        // exiting): loaded again, as the agent does.
        latch::dataplane::load_retrying(|| prog.load()).expect("verifier accepts latch_xdp");
        let lbc = ifindex("lbc");
        let lbb = ifindex("lbb");
        Self {
            ebpf,
            _pins: pins,
            _netns: netns,
            lbc,
            lbb,
        }
    }

    /// Runs the program once on `frame` as if received on `ingress`; returns the verdict and
    /// the frame as the program left it.
    pub fn run(&self, ingress: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        self.try_run(ingress, frame).expect("test run")
    }

    pub fn try_run(&self, ingress: u32, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
        let prog: &Xdp = self
            .ebpf
            .program("latch_xdp")
            .expect("program")
            .try_into()
            .expect("xdp");
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ingress, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len() + 256];
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .map_err(|e| format!("{e:?}"))?;
        out.truncate(res.data_size_out as usize);
        Ok((res.return_value, out))
    }

    /// Inserts into the hash map `name`.
    fn insert<K: aya::Pod, V: aya::Pod>(&mut self, name: &str, key: K, value: V) {
        let mut m: HashMap<_, K, V> =
            HashMap::try_from(self.ebpf.map_mut(name).expect("map")).expect(name);
        m.insert(key, value, 0).expect(name);
    }

    /// Sets entry `index` of the array `name`.
    fn set<V: aya::Pod>(&mut self, name: &str, index: u32, value: V) {
        let mut m: Array<_, V> =
            Array::try_from(self.ebpf.map_mut(name).expect("map")).expect(name);
        m.set(index, value, 0).expect(name);
    }

    /// The tunnel source of `slot` (`lb_common::tunnel_source`), as the agent writes it.
    pub fn set_tunnel_source(&mut self, slot: u32, value: lb_common::Addr6) {
        self.set(map_names::TUNNEL_SOURCE, slot, value);
    }

    pub fn add_service(&mut self, key: ServiceKey, svc: Service) {
        self.insert(map_names::SERVICES, key, svc);
    }

    pub fn set_backend(&mut self, id: u32, be: Backend) {
        self.set(map_names::BACKENDS, id, be);
    }

    /// The NAT services a server answers for, and its NAT_SERVERS bit, as the agent writes
    /// them.
    pub fn set_reply_sources(&mut self, key: ReplyKey, value: ReplySources) {
        self.insert(map_names::NAT_REPLY, key, value);
        // And the key's bit, which XDP tests first.
        self.set_server_bit(lb_common::nat_server_bit(key.addr, key.port, key.proto));
    }

    fn set_server_bit(&mut self, (word, bit): (u32, u64)) {
        let mut bits: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut(map_names::NAT_SERVERS).expect("map"))
                .expect("nat servers");
        let old = bits.get(&word, 0).expect("read bitmap word");
        bits.set(word, old | bit, 0).expect("set bitmap word");
    }

    /// Fills one maglev table with `ids` repeated in order.
    pub fn fill_maglev(&mut self, service_id: u32, slot: u32, ids: &[u32]) {
        let mut m: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(map_names::MAGLEV).expect("map")).expect("maglev");
        let base = lb_common::maglev_base(service_id, slot);
        for i in 0..lb_common::MAGLEV_TABLE_SIZE {
            let id = ids[i as usize % ids.len()];
            m.set(base + i, id, 0).expect("set maglev");
        }
    }

    fn conntrack(&mut self) -> HashMap<&mut aya::maps::MapData, FlowKey, Flow> {
        HashMap::try_from(self.ebpf.map_mut(map_names::CONNTRACK).expect("map")).expect("conntrack")
    }

    pub fn insert_flow(&mut self, key: FlowKey, flow: Flow) {
        self.conntrack().insert(key, flow, 0).expect("insert flow");
    }

    pub fn flow(&mut self, key: &FlowKey) -> Option<Flow> {
        self.conntrack().get(key, 0).ok()
    }

    fn persist(&mut self) -> HashMap<&mut aya::maps::MapData, PersistKey, Persist> {
        HashMap::try_from(self.ebpf.map_mut(map_names::PERSIST).expect("map")).expect("persist")
    }

    pub fn insert_persist(&mut self, key: PersistKey, value: Persist) {
        self.persist()
            .insert(key, value, 0)
            .expect("insert persist");
    }

    pub fn persist_entry(&mut self, key: &PersistKey) -> Option<Persist> {
        self.persist().get(key, 0).ok()
    }

    pub fn add_service6(&mut self, key: ServiceKey6, svc: Service) {
        self.insert(map_names::SERVICES6, key, svc);
    }

    pub fn set_backend6(&mut self, id: u32, be: Backend6) {
        self.set(map_names::BACKENDS6, id, be);
    }

    /// As [`Fixture::set_reply_sources`], for IPv6 (the bitmap is shared, the address folded).
    pub fn set_reply_sources6(&mut self, key: ReplyKey6, value: ReplySources6) {
        self.insert(map_names::NAT_REPLY6, key, value);
        self.set_server_bit(lb_common::nat_server_bit(
            lb_common::fold6(&key.addr),
            key.port,
            key.proto,
        ));
    }

    pub fn flow6(&mut self, key: &FlowKey6) -> Option<Flow> {
        let m: HashMap<_, FlowKey6, Flow> =
            HashMap::try_from(self.ebpf.map_mut(map_names::CONNTRACK6).expect("map"))
                .expect("conntrack6");
        m.get(key, 0).ok()
    }

    pub fn persist6_entry(&mut self, key: &PersistKey6) -> Option<Persist> {
        let m: HashMap<_, PersistKey6, Persist> =
            HashMap::try_from(self.ebpf.map_mut(map_names::PERSIST6).expect("map"))
                .expect("persist6");
        m.get(key, 0).ok()
    }

    /// A global counter summed over CPUs.
    pub fn stat(&self, index: u32) -> u64 {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(map_names::STATS).expect("map")).expect("stats");
        m.get(&index, 0).expect("stat").iter().sum()
    }

    /// All global counters, summed over CPUs.
    pub fn stats(&self) -> Vec<u64> {
        (0..lb_common::stat::COUNT).map(|i| self.stat(i)).collect()
    }

    fn traffic(&self, map: &str, id: u32) -> TrafficCounters {
        let m: PerCpuArray<_, TrafficCounters> =
            PerCpuArray::try_from(self.ebpf.map(map).expect("map")).expect("traffic");
        m.get(&id, 0)
            .expect("counter")
            .iter()
            .fold(TrafficCounters::default(), |a, c| TrafficCounters {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
                new_flows: a.new_flows + c.new_flows,
            })
    }

    pub fn service_traffic(&self, id: u32) -> TrafficCounters {
        self.traffic(map_names::SERVICE_STATS, id)
    }

    pub fn backend_traffic(&self, id: u32) -> TrafficCounters {
        self.traffic(map_names::BACKEND_STATS, id)
    }
}

/// CLOCK_MONOTONIC now, the clock the program reads (at tick resolution).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
