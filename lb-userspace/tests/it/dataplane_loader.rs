//! Loader tests against the real kernel: load, pin, adopt, layout check, lock, apply/read back,
//! attach through pinned links, teardown. They need root, so they are `#[ignore]`d; run them
//! as root with `--include-ignored`.
//!
//! Every test pins under its own `/sys/fs/bpf/latch-loader-test-<pid>-<n>` (apart from the
//! agents' `latch-test-<pid>-<n>`, which share this binary's pid) and attaches only to veths
//! inside its own network namespace; both are removed on drop, even when the test fails.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData};
use latch::dataplane::{
    AttachMode, BackendSpec, Dataplane, DataplaneError, DataplaneSpec, Forwarding, Hook, Proto,
    ServiceKind, ServiceSpec, monotonic_now_ns, teardown, versioned_dir,
};
use lb_common::{
    Backend, Capacities, Flow, FlowKey, MAGLEV_TABLE_SIZE, Persist, PersistKey, PersistKey6,
    Service, ServiceKey, backend_state, maglev_base, map_names, service_flags,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Runs `f` again while it finds the pin directory locked, for up to a second. The lock is an
/// flock on a descriptor this test already dropped, but another test of this binary that
/// spawns a process at that instant holds a copy of every descriptor between its fork and
/// exec (close-on-exec is not close-on-fork), so a re-open right after a drop can find the
/// lock still held for that moment.
fn once_unlocked<T>(mut f: impl FnMut() -> Result<T, DataplaneError>) -> Result<T, DataplaneError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match f() {
            Err(DataplaneError::AlreadyRunning { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            outcome => return outcome,
        }
    }
}

/// `probe()` once it answers None, or its last answer after a second. A link goes away when
/// its last descriptor closes, and for the same fork-to-exec moment as in [`once_unlocked`]
/// another test's child may still hold one right after this test detached.
fn settled_to_none<T>(mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match probe() {
            Some(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            outcome => return outcome,
        }
    }
}

fn ensure_bpffs() {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
            && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .expect("run mount");
        assert!(st.success(), "mount bpffs");
    }
}

/// A unique pin directory, torn down on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        let p = PathBuf::from(format!(
            "/sys/fs/bpf/latch-loader-test-{}-{}",
            std::process::id(),
            unique()
        ));
        Self(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = teardown(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A throwaway network namespace holding a veth pair `a`/`b`, deleted on drop.
struct NetNs {
    name: String,
    a: String,
    b: String,
}

impl NetNs {
    fn new() -> Self {
        let n = unique();
        let pid = std::process::id() % 100_000;
        let ns = Self {
            name: format!("latch-dpt-{pid}-{n}"),
            a: format!("lda{pid}x{n}"),
            b: format!("ldb{pid}x{n}"),
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "-n", &ns.name, "link", "add", &ns.a, "type", "veth", "peer", "name", &ns.b,
        ]);
        ip(&["-n", &ns.name, "link", "set", &ns.a, "up"]);
        ip(&["-n", &ns.name, "link", "set", &ns.b, "up"]);
        ns
    }

    /// XDP program id attached to `dev`, if any.
    fn xdp_prog(&self, dev: &str) -> Option<u64> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j", "-d", "link", "show", "dev", dev])
            .output()
            .expect("run ip");
        assert!(out.status.success(), "ip link show {dev}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip json");
        let xdp = &v[0]["xdp"];
        xdp["prog"]["id"]
            .as_u64()
            .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
    }

    /// Runs `f` on a thread that has entered the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let f_ns = std::fs::File::open(&path).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?}");
}

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().expect("test address")
}

fn l4(vip: &str, port: u16, backends: &[(&str, bool)]) -> ServiceSpec {
    ServiceSpec {
        vip: vip.parse().expect("vip"),
        port,
        proto: Proto::Tcp,
        forwarding: Forwarding::Nat,
        kind: ServiceKind::L4,
        persistence_ttl: None,
        persistence_prefix_v6: None,
        flow_hash: Default::default(),
        backends: backends
            .iter()
            .map(|(a, up)| BackendSpec {
                addr: addr(a).into(),
                up: *up,
                weight: 1,
                backup: false,
            })
            .collect(),
    }
}

fn pinned<T: TryFrom<Map, Error = aya::maps::MapError>>(dir: &Path, name: &str) -> T {
    let data = MapData::from_pin(versioned_dir(dir).join(name)).expect("open pinned map");
    let map = Map::from_map_data(data).expect("map");
    T::try_from(map).expect("typed map")
}

fn services_map(dir: &Path) -> HashMap<MapData, ServiceKey, Service> {
    pinned(dir, map_names::SERVICES)
}

fn backends_map(dir: &Path) -> Array<MapData, Backend> {
    pinned(dir, map_names::BACKENDS)
}

fn service_in_map(dir: &Path, vip: &str, port: u16) -> Option<Service> {
    let key = ServiceKey {
        vip: u32::from_ne_bytes(vip.parse::<Ipv4Addr>().expect("vip").octets()),
        port: port.to_be(),
        proto: lb_common::proto::TCP,
        _pad: 0,
    };
    services_map(dir).get(&key, 0).ok()
}

fn maglev_live(dir: &Path, svc: &Service) -> Vec<u32> {
    let m: Array<MapData, u32> = pinned(dir, map_names::MAGLEV);
    let base = maglev_base(svc.id, svc.maglev_slot);
    (0..MAGLEV_TABLE_SIZE)
        .map(|i| m.get(&(base + i), 0).expect("maglev entry"))
        .collect()
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn load_pins_everything_and_adopts_after_drop() {
    let dir = PinDir::new();
    let spec = DataplaneSpec {
        services: vec![
            l4(
                "198.51.100.10",
                80,
                &[("192.0.2.11:8080", true), ("192.0.2.12:8080", true)],
            ),
            l4(
                "198.51.100.11",
                80,
                &[("192.0.2.12:8080", true), ("192.0.2.13:8080", true)],
            ),
        ],
    };
    let (ids_before, svc_before) = {
        let mut dp = Dataplane::open(dir.path()).expect("open");
        assert!(!dp.adopted());
        dp.apply(&spec).expect("apply");
        let ids: Vec<_> = ["192.0.2.11:8080", "192.0.2.12:8080", "192.0.2.13:8080"]
            .iter()
            .map(|a| dp.backend_id(addr(a)).expect("backend id"))
            .collect();
        let svc = dp
            .service_id("198.51.100.11".parse().expect("ip"), 80, Proto::Tcp)
            .expect("service id");
        (ids, svc)
    };
    let v = versioned_dir(dir.path());
    for name in [
        map_names::SERVICES,
        map_names::BACKENDS,
        map_names::MAGLEV,
        map_names::CONNTRACK,
        map_names::PERSIST,
        map_names::STATS,
        map_names::SERVICE_STATS,
        map_names::BACKEND_STATS,
        "LATCH_LAYOUT",
    ] {
        assert!(v.join(name).exists(), "{name} pinned");
    }
    // The maps outlive the agent.
    let s = service_in_map(dir.path(), "198.51.100.11", 80).expect("service survives drop");
    assert_eq!(s.id, svc_before);

    let mut dp = once_unlocked(|| Dataplane::open(dir.path())).expect("reopen");
    assert!(dp.adopted());
    let ids_after: Vec<_> = ["192.0.2.11:8080", "192.0.2.12:8080", "192.0.2.13:8080"]
        .iter()
        .map(|a| dp.backend_id(addr(a)).expect("adopted backend id"))
        .collect();
    assert_eq!(ids_before, ids_after);
    // Re-applying after adoption keeps ids and leaves a table over the same backends live.
    dp.apply(&spec).expect("apply after adopt");
    let s2 = service_in_map(dir.path(), "198.51.100.11", 80).expect("service");
    assert_eq!(s2.id, s.id);
    assert_ne!(
        s2.maglev_slot, s.maglev_slot,
        "rewritten into the other slot"
    );
    assert_eq!(maglev_live(dir.path(), &s2), maglev_live(dir.path(), &s));
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn second_open_is_refused_by_the_lock() {
    let dir = PinDir::new();
    let _first = Dataplane::open(dir.path()).expect("open");
    let err = Dataplane::open(dir.path()).expect_err("second open must fail");
    assert!(
        matches!(err, DataplaneError::AlreadyRunning { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!(
            "another latch agent (pid {}) is running on {}",
            std::process::id(),
            dir.path().display()
        )),
        "{err}"
    );
    let err = teardown(dir.path()).expect_err("teardown while running");
    assert!(
        matches!(err, DataplaneError::AlreadyRunning { .. }),
        "{err}"
    );
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn layout_mismatch_is_refused() {
    ensure_bpffs();
    let dir = PinDir::new();
    let v = versioned_dir(dir.path());
    std::fs::create_dir_all(&v).expect("mkdir");
    // A BACKENDS array whose values are 8 bytes instead of 16: what an older layout would
    // have left behind.
    let wrong: Array<MapData, [u8; 8]> =
        Array::create(Capacities::DEFAULT.backends, 0).expect("create");
    wrong.pin(v.join(map_names::BACKENDS)).expect("pin");
    let err = Dataplane::open(dir.path()).expect_err("must refuse");
    match &err {
        DataplaneError::LayoutMismatch {
            expected, found, ..
        } => {
            assert!(expected.contains("value 16B"), "{expected}");
            assert!(found.contains("value 8B"), "{found}");
        }
        other => panic!("expected LayoutMismatch, got {other}"),
    }
    assert!(err.to_string().contains("latch down"), "{err}");
    // Nothing else was created next to the bad pin.
    assert!(!v.join(map_names::SERVICES).exists());
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn apply_then_read_maps_back() {
    let dir = PinDir::new();
    let mut dp = Dataplane::open(dir.path()).expect("open");
    let mut dsr = l4(
        "198.51.100.20",
        53,
        &[("192.0.2.21:53", true), ("192.0.2.22:53", true)],
    );
    dsr.proto = Proto::Udp;
    dsr.forwarding = Forwarding::Dsr;
    dsr.persistence_ttl = Some(Duration::from_secs(60));
    let web = l4(
        "198.51.100.10",
        80,
        &[
            ("192.0.2.11:8080", true),
            ("192.0.2.12:8080", true),
            ("192.0.2.13:8080", false),
        ],
    );
    let mut http = l4("198.51.100.30", 80, &[("192.0.2.11:8080", true)]);
    http.kind = ServiceKind::Http { fast_path: true };
    dp.apply(&DataplaneSpec {
        services: vec![web.clone(), dsr.clone(), http.clone()],
    })
    .expect("apply");

    // SERVICES.
    let web_svc = service_in_map(dir.path(), "198.51.100.10", 80).expect("web");
    assert_eq!(web_svc.flags, 0);
    assert_eq!(web_svc.persist_group, web_svc.id);
    let http_svc = service_in_map(dir.path(), "198.51.100.30", 80).expect("http");
    assert_eq!(
        http_svc.flags,
        service_flags::HTTP | service_flags::FAST_PATH
    );
    let dsr_key = ServiceKey {
        vip: u32::from_ne_bytes([198, 51, 100, 20]),
        port: 53u16.to_be(),
        proto: lb_common::proto::UDP,
        _pad: 0,
    };
    let dsr_svc = services_map(dir.path()).get(&dsr_key, 0).expect("dsr");
    assert_eq!(
        dsr_svc.flags,
        service_flags::DSR | service_flags::PERSIST_CLIENT_IP
    );
    assert_eq!(dsr_svc.persist_ttl_ns, 60_000_000_000);

    // BACKENDS, network order, UP/DOWN.
    let backends = backends_map(dir.path());
    let id11 = dp.backend_id(addr("192.0.2.11:8080")).expect("id");
    let id13 = dp.backend_id(addr("192.0.2.13:8080")).expect("id");
    let b11 = backends.get(&id11, 0).expect("backend");
    assert_eq!(b11.addr.to_ne_bytes(), [192, 0, 2, 11]);
    assert_eq!(u16::from_be(b11.port), 8080);
    assert_eq!(b11.state, backend_state::UP);
    assert_eq!(
        backends.get(&id13, 0).expect("backend").state,
        backend_state::DOWN
    );

    // MAGLEV: the live table of web holds exactly its two UP backends, about half each.
    let table = maglev_live(dir.path(), &web_svc);
    let id12 = dp.backend_id(addr("192.0.2.12:8080")).expect("id");
    let n11 = table.iter().filter(|&&x| x == id11).count();
    let n12 = table.iter().filter(|&&x| x == id12).count();
    assert_eq!(n11 + n12, MAGLEV_TABLE_SIZE as usize);
    assert!(n11.abs_diff(n12) <= 1, "{n11} vs {n12}");

    // Remove a backend and a service.
    let old_gen = backends.get(&id12, 0).expect("backend").generation;
    let web2 = l4(
        "198.51.100.10",
        80,
        &[("192.0.2.11:8080", true), ("192.0.2.13:8080", true)],
    );
    dp.apply(&DataplaneSpec {
        services: vec![web2, http.clone()],
    })
    .expect("apply 2");
    let b12 = backends.get(&id12, 0).expect("backend");
    assert_eq!(b12.state, backend_state::UNUSED);
    assert_eq!(b12.generation, old_gen + 1);
    assert!(
        services_map(dir.path()).get(&dsr_key, 0).is_err(),
        "dsr deleted"
    );
    let web_svc2 = service_in_map(dir.path(), "198.51.100.10", 80).expect("web");
    assert_eq!(web_svc2.id, web_svc.id);
    assert_ne!(web_svc2.maglev_slot, web_svc.maglev_slot);
    let table2 = maglev_live(dir.path(), &web_svc2);
    assert!(table2.iter().all(|&x| x == id11 || x == id13));
    assert!(table2.contains(&id13));

    // Persistence pins.
    let persist: HashMap<MapData, PersistKey, Persist> = pinned(dir.path(), map_names::PERSIST);
    let client: Ipv4Addr = "203.0.113.7".parse().expect("ip");
    let pkey = PersistKey {
        group: http_svc.persist_group,
        client_addr: u32::from_ne_bytes(client.octets()),
    };
    let svc = ("198.51.100.30".parse().expect("ip"), 80, Proto::Tcp);
    let now = monotonic_now_ns();
    let pins = dp.persist_pins();
    let (c, server11, until): (IpAddr, SocketAddr, u64) = (
        client.into(),
        addr("192.0.2.11:8080").into(),
        now + 60_000_000_000,
    );
    pins.pin(svc, c, server11, until).expect("pin");
    let p = persist.get(&pkey, 0).expect("pinned");
    assert_eq!(p.backend_id, id11);
    assert_eq!(p.generation, b11.generation);
    assert!(matches!(
        pins.pin(svc, c, addr("192.0.2.99:1").into(), now),
        Err(DataplaneError::UnknownBackend { .. })
    ));
    assert_eq!(dp.sweep(now).expect("sweep"), 0, "unexpired pin kept");
    assert!(persist.get(&pkey, 0).is_ok());
    assert_eq!(dp.sweep(now + 61_000_000_000).expect("sweep"), 1);
    assert!(persist.get(&pkey, 0).is_err(), "expired pin swept");
    pins.pin(svc, c, server11, until).expect("pin");
    assert!(pins.unpin(svc, c).expect("unpin"));
    assert!(persist.get(&pkey, 0).is_err());
    assert!(!pins.unpin(svc, c).expect("unpin twice"));

    // Stats: every programmed service and backend is reported, counters zero (no traffic).
    let stats = dp.stats().expect("stats");
    assert_eq!(stats.services.len(), 2);
    assert_eq!(stats.backends.len(), 2);
    assert!(stats.services.iter().all(|s| s.counters.packets == 0));
    assert_eq!(stats.global.len(), latch::dataplane::GLOBAL_COUNTERS.len());
}

/// Fast-path pins of an IPv6 service go to PERSIST6, keyed on the service's persistence
/// prefix as XDP looks them up: any address of the client's /64 finds the pin and removes it.
#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn persist_pins_key_ipv6_clients_on_the_service_prefix() {
    let dir = PinDir::new();
    let mut dp = Dataplane::open(dir.path()).expect("open");
    let server6: SocketAddr = "[2001:db8:b1::2]:8080".parse().expect("addr");
    let mut http6 = l4("2001:db8:f::30", 80, &[]);
    http6.backends = vec![BackendSpec {
        addr: server6,
        up: true,
        weight: 1,
        backup: false,
    }];
    http6.kind = ServiceKind::Http { fast_path: true };
    http6.persistence_prefix_v6 = Some(64);
    let mut http4 = l4("198.51.100.30", 80, &[("192.0.2.11:8080", true)]);
    http4.kind = ServiceKind::Http { fast_path: true };
    dp.apply(&DataplaneSpec {
        services: vec![http4, http6],
    })
    .expect("apply");

    let pins = dp.persist_pins();
    let svc6 = ("2001:db8:f::30".parse().expect("ip"), 80, Proto::Tcp);
    let client: IpAddr = "2001:db8:c:0:1:2:3:4".parse().expect("ip");
    let now = monotonic_now_ns();
    pins.pin(svc6, client, server6, now + 60_000_000_000)
        .expect("pin");
    let persist6: HashMap<MapData, PersistKey6, Persist> = pinned(dir.path(), map_names::PERSIST6);
    let keys: Vec<PersistKey6> = persist6.keys().map(|k| k.expect("key")).collect();
    assert_eq!(keys.len(), 1, "one PERSIST6 entry");
    let prefix: Ipv6Addr = "2001:db8:c::".parse().expect("ip");
    let words: Vec<u32> = prefix
        .octets()
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        keys[0].client_addr.to_vec(),
        words,
        "keyed on the client's /64"
    );
    let p = persist6.get(&keys[0], 0).expect("pinned");
    assert_eq!(Some(p.backend_id), dp.backend_id(server6));
    let persist: HashMap<MapData, PersistKey, Persist> = pinned(dir.path(), map_names::PERSIST);
    assert_eq!(persist.keys().count(), 0, "nothing in the IPv4 map");
    // Another address of the /64 sees the pin; one of another /64 does not.
    let neighbour: IpAddr = "2001:db8:c::9".parse().expect("ip");
    assert_eq!(
        pins.pinned(svc6, neighbour).expect("lookup"),
        Some((server6, now + 60_000_000_000))
    );
    let other: IpAddr = "2001:db8:d::1".parse().expect("ip");
    assert_eq!(pins.pinned(svc6, other).expect("lookup"), None);
    // A client of the other family is refused, not written anywhere.
    assert!(matches!(
        pins.pin(svc6, "203.0.113.7".parse().expect("ip"), server6, now),
        Err(DataplaneError::PinFamily { .. })
    ));
    assert!(pins.unpin(svc6, neighbour).expect("unpin"));
    assert_eq!(persist6.keys().count(), 0, "unpinned");
    // Expired IPv6 pins are swept like IPv4 ones.
    pins.pin(svc6, client, server6, now + 1).expect("pin");
    assert_eq!(dp.sweep(now + 2).expect("sweep"), 1);
    assert_eq!(persist6.keys().count(), 0, "expired pin swept");
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn teardown_leaves_nothing() {
    let dir = PinDir::new();
    {
        let mut dp = Dataplane::open(dir.path()).expect("open");
        dp.apply(&DataplaneSpec {
            services: vec![l4("198.51.100.10", 80, &[("192.0.2.11:80", true)])],
        })
        .expect("apply");
    }
    let report = once_unlocked(|| teardown(dir.path())).expect("teardown");
    assert!(report.removed_dir);
    assert_eq!(
        report.pins_removed, 17,
        "16 maps (incl. DS_TABLE, NAT_REPLY, NAT_SERVERS and the five IPv6 maps) + manifest: {report:?}"
    );
    assert!(!dir.path().exists());
    // And a fresh open starts empty.
    let dp = Dataplane::open(dir.path()).expect("open after teardown");
    assert!(!dp.adopted());
    assert!(dp.backend_id(addr("192.0.2.11:80")).is_none());
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn unknown_interface_is_an_error() {
    let dir = PinDir::new();
    let mut dp = Dataplane::open(dir.path()).expect("open");
    let err = dp
        .attach(&["latch-nope0".to_owned()])
        .expect_err("unknown interface");
    assert!(
        matches!(&err, DataplaneError::UnknownInterface { name } if name == "latch-nope0"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn attach_survives_restart_replaces_program_and_detaches() {
    let ns = NetNs::new();
    let dir = PinDir::new();
    let (d, a) = (dir.path().to_owned(), ns.a.clone());

    let (d1, a1) = (d.clone(), a.clone());
    let modes = ns.run(move || {
        let mut dp = Dataplane::open(&d1).expect("open");
        dp.attach(&[a1]).expect("attach")
    });
    assert_eq!(modes.len(), 1);
    assert_eq!(
        modes[0].mode,
        AttachMode::Driver,
        "veth supports native XDP"
    );
    ns.xdp_prog(&ns.a)
        .expect("attached, and still after the agent dropped");
    assert!(versioned_dir(&d).join("links").join(&ns.a).exists());
    assert_eq!(ns.xdp_prog(&ns.b), None, "peer untouched");

    // A new agent swaps its program into the pinned link.
    let (d2, a2) = (d.clone(), a.clone());
    let modes = ns.run(move || {
        let mut dp = once_unlocked(|| Dataplane::open(&d2)).expect("reopen");
        let m = dp.attach(&[a2]).expect("re-attach");
        // Removing the interface from the list detaches it.
        dp.attach(&[]).expect("detach");
        m
    });
    assert_eq!(modes[0].mode, AttachMode::Replaced);
    assert_eq!(
        settled_to_none(|| ns.xdp_prog(&ns.a)),
        None,
        "detached when no longer listed"
    );

    // Attach again and check the program id changes across agents without a gap.
    let (d3, a3) = (d.clone(), a.clone());
    ns.run(move || {
        let mut dp = once_unlocked(|| Dataplane::open(&d3)).expect("open");
        dp.attach(&[a3]).expect("attach");
    });
    let p1 = ns.xdp_prog(&ns.a).expect("attached");
    let (d4, a4) = (d.clone(), a.clone());
    ns.run(move || {
        let mut dp = once_unlocked(|| Dataplane::open(&d4)).expect("open");
        assert_eq!(
            dp.attach(&[a4]).expect("attach")[0].mode,
            AttachMode::Replaced
        );
    });
    let p2 = ns.xdp_prog(&ns.a).expect("still attached");
    assert_ne!(p1, p2, "the new agent's program runs");

    // `latch down` detaches.
    let report = once_unlocked(|| teardown(&d)).expect("teardown");
    assert_eq!(report.links_detached, vec![ns.a.clone()]);
    // The kernel releases an unpinned link's attachment asynchronously (RCU), so allow it
    // a moment to disappear from the interface.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while ns.xdp_prog(&ns.a).is_some() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        settled_to_none(|| ns.xdp_prog(&ns.a)),
        None,
        "teardown detached"
    );
}

/// `iface` at TC ingress.
fn at_tc(iface: &str) -> Vec<(String, Hook)> {
    vec![(iface.to_owned(), Hook::Tc)]
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn tc_attach_pins_its_link_is_replaced_and_moves_to_xdp() {
    let ns = NetNs::new();
    let dir = PinDir::new();
    let (d, a) = (dir.path().to_owned(), ns.a.clone());
    let links = versioned_dir(&d).join("links");
    let tc_pin = links.join(format!("{a}:tc"));

    let (d1, a1) = (d.clone(), a.clone());
    let modes = ns.run(move || {
        let mut dp = Dataplane::open(&d1).expect("open");
        dp.attach_hooks(&at_tc(&a1)).expect("attach at TC")
    });
    assert_eq!(modes[0].mode, AttachMode::Tc);
    assert!(tc_pin.exists(), "TCX link pinned");
    assert_eq!(ns.xdp_prog(&ns.a), None, "not at XDP");

    // A new agent swaps its program into the pinned TC link; then the interface moves to XDP,
    // leaving TC first.
    let (d2, a2) = (d.clone(), a.clone());
    let (again, moved) = ns.run(move || {
        let mut dp = once_unlocked(|| Dataplane::open(&d2)).expect("reopen");
        let again = dp.attach_hooks(&at_tc(&a2)).expect("re-attach");
        let moved = dp.attach(std::slice::from_ref(&a2)).expect("to XDP");
        (again, moved)
    });
    assert_eq!(again[0].mode, AttachMode::Replaced);
    assert_eq!(moved[0].mode, AttachMode::Driver);
    assert!(!tc_pin.exists(), "TC link removed");
    assert!(links.join(&a).exists(), "XDP link pinned");
    ns.xdp_prog(&ns.a).expect("now at XDP");
    let report = once_unlocked(|| teardown(&d)).expect("teardown");
    assert_eq!(report.links_detached, vec![a]);
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn kernel_mirror_writes_entries_at_once_and_lifetimes_on_flush() {
    use latch::tables::{Mirror, RemoveReason};
    let dir = PinDir::new();
    let dp = Dataplane::open(dir.path()).expect("open");
    let mirror = dp.kernel_mirror();
    let vs = vec!["shop".to_string()];
    let restored_expiry = |key: &str| -> Option<u64> {
        let restored = mirror.restore(&vs, 0).expect("restore");
        restored
            .entries
            .get("shop")
            .and_then(|list| list.iter().find(|e| e.key == key))
            .map(|e| e.expires_at_mono_ns)
    };
    let sec = 1_000_000_000u64;
    let t0 = monotonic_now_ns() + 100 * sec;

    // A new entry is in the kernel before upsert returns (a kill -9 right after keeps it).
    mirror.upsert("shop", "", "s1", "192.0.2.11", t0);
    assert_eq!(restored_expiry("s1"), Some(t0));
    // A lifetime-only change waits for the flush; the latest of several wins.
    mirror.extend("shop", "", "s1", "192.0.2.11", t0 + sec);
    mirror.extend("shop", "", "s1", "192.0.2.11", t0 + 2 * sec);
    assert_eq!(restored_expiry("s1"), Some(t0));
    mirror.flush();
    assert_eq!(restored_expiry("s1"), Some(t0 + 2 * sec));

    // A queued extension never brings back a removed entry, nor overwrites a newer write.
    mirror.extend("shop", "", "s1", "192.0.2.11", t0 + 3 * sec);
    mirror.remove("shop", "", "s1", RemoveReason::Removed);
    mirror.flush();
    assert_eq!(restored_expiry("s1"), None);
    mirror.upsert("shop", "", "s2", "192.0.2.12", t0);
    mirror.extend("shop", "", "s2", "192.0.2.12", t0 + 5 * sec);
    mirror.upsert("shop", "", "s2", "192.0.2.13", t0 + sec);
    mirror.flush();
    let restored = mirror.restore(&vs, 0).expect("restore");
    let s2 = restored
        .entries
        .get("shop")
        .and_then(|list| list.iter().find(|e| e.key == "s2"))
        .expect("s2 restored");
    assert_eq!(
        (s2.value.as_str(), s2.expires_at_mono_ns),
        ("192.0.2.13", t0 + sec)
    );
}

// ---- capacities (issue 17) -------------------------------------------------------------------

fn max_entries(dir: &Path, name: &str) -> u32 {
    aya::maps::MapInfo::from_pin(versioned_dir(dir).join(name))
        .expect("map info")
        .max_entries()
}

fn flow_key(i: u32) -> FlowKey {
    FlowKey {
        src_addr: u32::from_ne_bytes([203, 0, 113, (i % 250) as u8 + 1]),
        dst_addr: u32::from_ne_bytes([198, 51, 100, 10]),
        src_port: (10_000 + i as u16).to_be(),
        dst_port: 80u16.to_be(),
        proto: lb_common::proto::TCP,
        _pad: [0; 3],
    }
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn capacity_change_migrates_pinned_entries_into_the_new_maps() {
    use latch::tables::Mirror;
    let dir = PinDir::new();
    let small = Capacities {
        services: 8,
        backends: 16,
        connections: 1024,
        client_pins: 64,
        connections_v6: 1024,
        client_pins_v6: 64,
        table_mirror_entries: 64,
    };
    let spec = DataplaneSpec {
        services: vec![
            l4(
                "198.51.100.10",
                80,
                &[("192.0.2.11:8080", true), ("192.0.2.12:8080", true)],
            ),
            l4("198.51.100.11", 80, &[("192.0.2.13:8080", true)]),
        ],
    };
    let far = monotonic_now_ns() + 3_600_000_000_000;
    let (ids, svc, table) = {
        let mut dp = Dataplane::open_with(dir.path(), &small).expect("open small");
        dp.apply(&spec).expect("apply");
        let mirror = dp.kernel_mirror();
        for i in 0..20 {
            mirror.upsert("shop", "", &format!("s{i}"), "192.0.2.11", far);
        }
        let ids: Vec<_> = ["192.0.2.11:8080", "192.0.2.12:8080", "192.0.2.13:8080"]
            .iter()
            .map(|a| dp.backend_id(addr(a)).expect("id"))
            .collect();
        let svc = service_in_map(dir.path(), "198.51.100.10", 80).expect("service");
        (ids, svc, maglev_live(dir.path(), &svc))
    };
    // Flows and pins XDP made (written here as XDP would).
    {
        let mut ct: HashMap<MapData, FlowKey, Flow> = pinned(dir.path(), map_names::CONNTRACK);
        for i in 0..30 {
            let flow = Flow {
                backend_id: ids[0],
                service_id: svc.id,
                ..Flow::default()
            };
            ct.insert(flow_key(i), flow, 0).expect("flow");
        }
        let mut pins: HashMap<MapData, PersistKey, Persist> =
            pinned(dir.path(), map_names::PERSIST);
        for i in 0..10u8 {
            let key = PersistKey {
                group: svc.id,
                client_addr: u32::from_ne_bytes([203, 0, 113, i + 1]),
            };
            let pin = Persist {
                backend_id: ids[1],
                generation: 1,
                expires_ns: far,
            };
            pins.insert(key, pin, 0).expect("pin");
        }
    }
    assert_eq!(max_entries(dir.path(), map_names::CONNTRACK), 1024);

    // The next agent has larger capacities: every entry is carried over.
    let big = Capacities {
        services: 16,
        backends: 64,
        connections: 4096,
        client_pins: 256,
        connections_v6: 4096,
        client_pins_v6: 256,
        table_mirror_entries: 128,
    };
    let d = dir.path().to_owned();
    let mut dp = once_unlocked(|| Dataplane::open_with(&d, &big)).expect("open big");
    assert!(dp.adopted());
    assert_eq!(dp.capacities(), big);
    for (name, cap) in [
        (map_names::SERVICES, 16),
        (map_names::BACKENDS, 64),
        (map_names::MAGLEV, big.maglev_entries()),
        (map_names::CONNTRACK, 4096),
        (map_names::PERSIST, 256),
        (map_names::SERVICE_STATS, 16),
        (map_names::BACKEND_STATS, 64),
        (map_names::DS_TABLE, 128),
        (map_names::NAT_REPLY, 128),
    ] {
        assert_eq!(max_entries(dir.path(), name), cap, "{name} resized");
    }
    assert!(!versioned_dir(dir.path()).join("migrate").exists());
    let report: std::collections::HashMap<_, _> = dp
        .migration()
        .maps
        .iter()
        .map(|(n, c, d)| (*n, (*c, *d)))
        .collect();
    assert_eq!(report[map_names::CONNTRACK], (30, 0));
    assert_eq!(report[map_names::PERSIST], (10, 0));
    // 20 entries and the two name records ("shop" and the default table's "").
    assert_eq!(report[map_names::DS_TABLE], (22, 0));
    // The three NAT servers' reply sources, so replies are translated before the next apply.
    assert_eq!(report[map_names::NAT_REPLY], (3, 0));
    let ct: HashMap<MapData, FlowKey, Flow> = pinned(dir.path(), map_names::CONNTRACK);
    for i in 0..30 {
        assert_eq!(
            ct.get(&flow_key(i), 0).expect("flow kept").backend_id,
            ids[0]
        );
    }
    let pins: HashMap<MapData, PersistKey, Persist> = pinned(dir.path(), map_names::PERSIST);
    assert_eq!(pins.keys().count(), 10);
    let restored = dp
        .kernel_mirror()
        .restore(&["shop".to_owned()], monotonic_now_ns())
        .expect("restore");
    assert_eq!(restored.entries.get("shop").map_or(0, Vec::len), 20);
    // Services, backends and the live maglev table are as they were: flows keep their server.
    let ids_after: Vec<_> = ["192.0.2.11:8080", "192.0.2.12:8080", "192.0.2.13:8080"]
        .iter()
        .map(|a| dp.backend_id(addr(a)).expect("id after"))
        .collect();
    assert_eq!(ids_after, ids);
    let svc_after = service_in_map(dir.path(), "198.51.100.10", 80).expect("service after");
    assert_eq!(svc_after, svc);
    assert_eq!(maglev_live(dir.path(), &svc_after), table);
    dp.apply(&spec).expect("apply after migration");
    drop(dp);

    // Smaller again: what does not fit is counted, the rest kept.
    let tiny = Capacities {
        table_mirror_entries: 8,
        ..big
    };
    let mut dp = once_unlocked(|| Dataplane::open_with(&d, &tiny)).expect("open tiny");
    let ds = dp
        .migration()
        .maps
        .iter()
        .find(|(n, _, _)| *n == map_names::DS_TABLE)
        .map(|(_, c, d)| (*c, *d));
    assert_eq!(ds, Some((8, 14)), "8 fit, 14 counted as dropped");
    assert_eq!(max_entries(dir.path(), map_names::DS_TABLE), 8);
    dp.apply(&spec).expect("apply after shrinking");
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn kernel_mirror_counts_every_entry_it_cannot_hold() {
    use latch::tables::Mirror;
    let dir = PinDir::new();
    let caps = Capacities {
        table_mirror_entries: 16,
        ..Capacities::DEFAULT
    };
    let dp = Dataplane::open_with(dir.path(), &caps).expect("open");
    let mirror = dp.kernel_mirror();
    let far = monotonic_now_ns() + 3_600_000_000_000;
    for i in 0..30 {
        mirror.upsert("shop", "", &format!("s{i}"), "192.0.2.11", far);
    }
    mirror.upsert("shop", "", "long", &"v".repeat(65), far);
    mirror.upsert("other", "", "k", "192.0.2.12", far);
    // Two name records ("shop", "") and 14 entries fill the 16 slots; "other" cannot even
    // record its name.
    let u = mirror.unmirrored("shop");
    assert_eq!((u.full, u.too_large, u.failed), (16, 1, 0));
    assert_eq!(mirror.unmirrored("other").total(), 1);
    let restored = mirror
        .restore(&["shop".to_owned(), "other".to_owned()], monotonic_now_ns())
        .expect("restore");
    let back = restored.entries.get("shop").map_or(0, Vec::len) as u64;
    assert_eq!(
        back,
        31 - u.total(),
        "exactly the counted entries are missing"
    );
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn kernel_memory_estimate_matches_what_the_kernel_charges() {
    let dir = PinDir::new();
    let caps = Capacities {
        services: 16,
        backends: 256,
        connections: 65_536,
        client_pins: 16_384,
        connections_v6: 65_536,
        client_pins_v6: 16_384,
        table_mirror_entries: 8192,
    };
    let _dp = Dataplane::open_with(dir.path(), &caps).expect("open");
    let cpus = latch::dataplane::possible_cpus();
    for m in latch::dataplane::kernel_memory(&caps, cpus) {
        let f = std::fs::File::open(versioned_dir(dir.path()).join(m.name)).ok();
        // A pinned map opened as a file is no map descriptor: read the memlock the kernel
        // charges through a descriptor of the map instead.
        drop(f);
        let data = MapData::from_pin(versioned_dir(dir.path()).join(m.name)).expect("pin");
        use std::os::fd::{AsFd, AsRawFd};
        let fd = data.fd().as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).expect("fdinfo");
        let memlock: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("memlock line");
        let est = m.fixed_bytes;
        // The kernel also counts its map header and, for maps without preallocation, the
        // entries present (none here); within 10% or 64 KiB.
        let slack = (memlock / 10).max(64 * 1024);
        assert!(
            est.abs_diff(memlock) <= slack,
            "{}: estimated {est} B, kernel charges {memlock} B",
            m.name
        );
    }
}

#[test]
#[ignore = "needs root: loads and pins BPF programs (CAP_BPF, CAP_NET_ADMIN)"]
fn map_fill_counts_the_entries_of_each_map() {
    use latch::tables::Mirror;
    let dir = PinDir::new();
    let caps = Capacities {
        connections: 16_384,
        client_pins: 1024,
        connections_v6: 4096,
        client_pins_v6: 512,
        table_mirror_entries: 2048,
        ..Capacities::DEFAULT
    };
    let dp = Dataplane::open_with(dir.path(), &caps).expect("open");
    let fill = |dp: &Dataplane| -> std::collections::HashMap<&str, (u64, u32)> {
        dp.map_fill()
            .expect("map fill")
            .iter()
            .map(|m| (m.map, (m.entries, m.capacity)))
            .collect()
    };
    assert_eq!(fill(&dp)["connections"], (0, 16_384));
    {
        let mut ct: HashMap<MapData, FlowKey, Flow> = pinned(dir.path(), map_names::CONNTRACK);
        // More than one batch of 4096.
        for i in 0..5000 {
            let mut k = flow_key(i);
            k.dst_port = (1000 + i / 250) as u16;
            ct.insert(k, Flow::default(), 0).expect("flow");
        }
        let mut pins: HashMap<MapData, PersistKey, Persist> =
            pinned(dir.path(), map_names::PERSIST);
        for i in 0..7u8 {
            let key = PersistKey {
                group: 1,
                client_addr: u32::from(i),
            };
            pins.insert(key, Persist::default(), 0).expect("pin");
        }
        // The IPv6 tables are counted on their own rows.
        let doc = |last: u32| [0x2001_0db8u32.to_be(), 0, 0, last.to_be()];
        let mut ct6: HashMap<MapData, lb_common::FlowKey6, Flow> =
            pinned(dir.path(), map_names::CONNTRACK6);
        for i in 0..300u32 {
            let k = lb_common::FlowKey6 {
                src_addr: doc(i + 1),
                dst_addr: doc(0x10),
                src_port: (10_000 + i as u16).to_be(),
                dst_port: 80u16.to_be(),
                proto: lb_common::proto::TCP,
                _pad: [0; 3],
            };
            ct6.insert(k, Flow::default(), 0).expect("flow6");
        }
        let mut pins6: HashMap<MapData, lb_common::PersistKey6, Persist> =
            pinned(dir.path(), map_names::PERSIST6);
        for i in 0..3u32 {
            let key = lb_common::PersistKey6 {
                group: 1,
                client_addr: doc(i + 1),
            };
            pins6.insert(key, Persist::default(), 0).expect("pin6");
        }
    }
    let far = monotonic_now_ns() + 3_600_000_000_000;
    for i in 0..40 {
        dp.kernel_mirror()
            .upsert("shop", "", &format!("k{i}"), "v", far);
    }
    let f = fill(&dp);
    assert_eq!(f["connections"], (5000, 16_384));
    assert_eq!(f["client_pins"], (7, 1024));
    assert_eq!(f["connections_v6"], (300, 4096));
    assert_eq!(f["client_pins_v6"], (3, 512));
    // 40 entries and two name records.
    assert_eq!(f["table_mirror"], (42, 2048));
}
