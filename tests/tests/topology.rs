//! Self-test of the harness: plain kernel forwarding through the LB namespace (no latch yet),
//! the test server's endpoints, and cleanup. Needs root: `#[ignore]`d, run with
//! `--include-ignored`.

use std::net::SocketAddr;
use std::time::Duration;

use latch_tests::topology::{CLIENT_ADDR, VIP, backend_addr};
use latch_tests::{
    ServeConfig, Topology, http_download, http_get, http_upload, list_namespaces, udp_roundtrip,
};

const T: Duration = Duration::from_secs(5);

fn assert_gone(names: &[String]) {
    let live = list_namespaces().expect("ip netns list");
    for n in names {
        assert!(!live.contains(n), "namespace {n} still exists after drop");
    }
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn client_reaches_backends_through_lb_forwarding_and_drop_cleans_up() {
    let topo = Topology::builder()
        .backends(2)
        .build()
        .expect("build topology");
    let names = topo.namespace_names();
    let live = list_namespaces().expect("ip netns list");
    for n in &names {
        assert!(live.contains(n), "namespace {n} missing");
    }
    assert_eq!(topo.lb_interfaces(), vec!["vclient", "vb1", "vb2"]);
    assert_eq!(
        topo.lb().sysctl_get("net.ipv4.ip_forward").expect("sysctl"),
        "1"
    );

    // backend1 runs the real binary through `ip netns exec`.
    let b1 = topo.backend(1).expect("b1");
    let http1 = SocketAddr::from((b1.addr, 8080));
    let udp1 = SocketAddr::from((b1.addr, 9000));
    let mut child = b1
        .ns
        .spawn(&[
            env!("CARGO_BIN_EXE_latch-testd"),
            "serve",
            "--name",
            "b1",
            "--http",
            "0.0.0.0:8080",
            "--udp",
            "0.0.0.0:9000",
        ])
        .expect("spawn latch-testd");
    let ready = child
        .wait_for_line(|l| l.starts_with("READY"), Duration::from_secs(10))
        .expect("readiness line");
    assert!(ready.contains("name=b1"), "{ready}");

    // backend2 runs the same server in-process.
    let b2 = topo.backend(2).expect("b2");
    let b2_info = topo
        .start_server_in(
            &b2.ns,
            ServeConfig {
                name: "b2".into(),
                http: Some(SocketAddr::from((b2.addr, 8080))),
                udp: None,
                tls: None,
            },
        )
        .expect("in-process server on b2");
    let http2 = b2_info.http_addr().expect("b2 http");

    let (r1, r2, udp, cookie, dl, ul, slow) = topo.client().run(|| {
        (
            http_get(http1, "/", &[]).expect("GET b1"),
            http_get(http2, "/", &[]).expect("GET b2"),
            udp_roundtrip(udp1, b"ping", T).expect("UDP b1"),
            http_get(http1, "/login", &[]).expect("GET /login"),
            http_download(http1, 3 * 1024 * 1024 + 7, T).expect("download"),
            http_upload(http2, 2 * 1024 * 1024 + 3, T).expect("upload"),
            http_get(http2, "/slow?ms=50", &[]).expect("slow"),
        )
    });
    assert_eq!(r1.status, 200);
    assert_eq!(r1.backend.as_deref(), Some("b1"));
    let seen = r1.seen_client.expect("X-Seen-Client");
    assert_eq!(
        seen.ip(),
        CLIENT_ADDR,
        "plain forwarding keeps the client address"
    );
    assert_eq!(r1.body_text(), format!("b1 {seen}"));
    assert_eq!(Some(seen), r1.local_addr);
    assert_eq!(r2.backend.as_deref(), Some("b2"));
    assert_eq!(udp.backend(), Some("b1"));
    assert_eq!(udp.seen_client().map(|a| a.ip()), Some(CLIENT_ADDR.into()));
    assert_eq!(udp.from, udp1);
    assert_eq!(cookie.set_cookie("JSESSIONID").as_deref(), Some("b1-1"));
    assert_eq!(dl, 3 * 1024 * 1024 + 7);
    assert_eq!(ul, 2 * 1024 * 1024 + 3);
    assert_eq!(slow.backend.as_deref(), Some("b2"));
    let info2 = topo.server("b2").expect("b2 registered");
    assert_eq!(info2.requests(), 3, "GET, upload and slow on b2");

    // Health switch.
    info2.set_healthy(false);
    let down = topo
        .client()
        .run(|| http_get(http2, "/healthz", &[]).expect("healthz"));
    assert_eq!(down.status, 503);
    assert_eq!(info2.health_checks(), 1);
    assert_eq!(info2.requests(), 3, "/healthz is not counted as a request");

    // The binary exits cleanly on SIGTERM.
    let status = child
        .terminate(Duration::from_secs(5))
        .expect("exit on SIGTERM");
    assert!(status.success(), "latch-testd exit status {status}");

    drop(topo);
    assert_gone(&names);
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn vip_is_routed_from_client_to_lb() {
    let topo = Topology::builder()
        .backends(1)
        .build()
        .expect("build topology");
    let lb_srv = topo
        .start_server_in(
            topo.lb(),
            ServeConfig {
                name: "lb".into(),
                http: Some(SocketAddr::from((VIP, 80))),
                udp: None,
                tls: None,
            },
        )
        .expect("server on VIP in lb");
    let vip = lb_srv.http_addr().expect("addr");
    let mac = topo.lb().mac(topo.lb_client_iface()).expect("mac");
    assert_eq!(mac.split(':').count(), 6, "{mac}");
    assert_ne!(mac, topo.client().mac("eth0").expect("client mac"));
    let r = topo
        .client()
        .run(|| http_get(vip, "/", &[]).expect("GET VIP"));
    assert_eq!(r.backend.as_deref(), Some("lb"));
    assert_eq!(r.seen_client.map(|a| a.ip()), Some(CLIENT_ADDR.into()));
    // Backends route replies through the LB too: the LB reaches the backend and vice versa.
    topo.start_backends(8080, None).expect("backends");
    let back = topo
        .lb()
        .run(|| http_get(SocketAddr::from((backend_addr(1), 8080)), "/", &[]).expect("LB->b1"));
    assert_eq!(
        back.seen_client.map(|a| a.ip()),
        Some(latch_tests::topology::LB_BACKEND_SIDE_ADDR.into())
    );
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn dsr_layout_puts_vip_on_backend_loopback_only() {
    let topo = Topology::builder()
        .backends(2)
        .with_vip_on_backend_loopback()
        .build()
        .expect("build topology");
    assert!(!topo.vip_on_lb());
    for b in &topo.backends {
        assert_eq!(
            b.ns.sysctl_get("net.ipv4.conf.all.arp_ignore")
                .expect("sysctl"),
            "1"
        );
        assert_eq!(
            b.ns.sysctl_get("net.ipv4.conf.all.arp_announce")
                .expect("sysctl"),
            "2"
        );
        let bound =
            b.ns.run(|| std::net::UdpSocket::bind(SocketAddr::from((VIP, 0))).is_ok());
        assert!(bound, "VIP must be local in {}", b.ns.name());
    }
    let on_lb = topo
        .lb()
        .run(|| std::net::UdpSocket::bind(SocketAddr::from((VIP, 0))).is_ok());
    assert!(!on_lb, "VIP must not be local on the LB in the DSR layout");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn namespaces_are_removed_when_a_test_panics() {
    let names = std::sync::Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let topo = Topology::builder()
            .backends(1)
            .build()
            .expect("build topology");
        if let Ok(mut n) = names.lock() {
            *n = topo.namespace_names();
        }
        topo.start_backends(8080, Some(9000)).expect("backends");
        panic!("simulated test failure");
    });
    assert!(outcome.is_err());
    let names = names.into_inner().expect("names");
    assert_eq!(names.len(), 3);
    assert_gone(&names);
}

#[test]
fn invalid_backend_count_is_refused_before_creating_anything() {
    // No root needed: validation happens before any namespace exists.
    assert!(Topology::builder().backends(0).build().is_err());
    assert!(Topology::builder().backends(9).build().is_err());
}
