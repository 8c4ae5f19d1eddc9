//! Pure parts of the API: metrics encoding (parsed back), exposure rule, tokens, formatting.

use std::collections::BTreeMap;

use super::cli::{format_entries, human_bytes, human_duration, render_table};
use super::client::{connect_addr, encode_component};
use super::metrics::*;
use super::model::*;
use super::*;

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A small OpenMetrics text parser: families with their type and unit, and samples with
/// unescaped label values. Panics on anything malformed, which fails the test.
fn parse(
    text: &str,
) -> (
    BTreeMap<String, String>,
    BTreeMap<String, String>,
    Vec<Sample>,
) {
    let mut types = BTreeMap::new();
    let mut units = BTreeMap::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE name type");
            assert!(
                types.insert(name.to_owned(), ty.to_owned()).is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').expect("UNIT name unit");
            units.insert(name.to_owned(), unit.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line}");
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("sample without value: {line}"),
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let mut end = None;
            loop {
                // label name
                let start = chars.peek().map(|&(i, _)| i).expect("label");
                let mut eq = None;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        eq = Some(i);
                        break;
                    }
                }
                let eq = eq.expect("label =");
                let key = r[start..eq].to_owned();
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "quoted value");
                let mut value = String::new();
                loop {
                    match chars.next().expect("unterminated value") {
                        (_, '\\') => match chars.next().expect("escape").1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        (_, '"') => break,
                        (_, c) => value.push(c),
                    }
                }
                assert!(labels.insert(key, value).is_none(), "duplicate label");
                match chars.next().expect("after value") {
                    (_, ',') => {}
                    (i, '}') => {
                        end = Some(i);
                        break;
                    }
                    (_, c) => panic!("unexpected {c} in {line}"),
                }
                if end.is_some() {
                    break;
                }
            }
            rest = &r[end.expect("closing brace") + 1..];
        }
        let value: f64 = rest.trim().parse().expect("numeric value");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    (types, units, samples)
}

fn sample_snapshot() -> MetricsSnapshot {
    MetricsSnapshot {
        start_time_seconds: 1_700_000_000,
        reloads_applied: 3,
        reloads_refused: 1,
        http_services: vec![VsHttpMetrics {
            vs: "shop".into(),
            counters: HttpCounters {
                requests: 10,
                responses: ResponseClasses::from_array([0, 5, 1, 0, 4]),
                request_bytes: 100,
                response_bytes: 2000,
                active_connections: 2,
                tls_handshakes: 7,
                tls_handshake_failures: 1,
                upgrades: 3,
                active_tunnels: 2,
            },
        }],
        http_servers: vec![ServerHttpMetrics {
            server: "192.0.2.11:8080".into(),
            counters: ServerHttpCounters {
                requests: 9,
                responses: ResponseClasses::from_array([0, 5, 0, 0, 4]),
                active_requests: 1,
                connections: 3,
                connect_failures: 2,
            },
            request_bytes: 90,
            response_bytes: 1900,
        }],
        xdp_paths: vec![
            XdpPathMetric {
                path: "conntrack_hit".into(),
                packets: 77,
            },
            XdpPathMetric {
                path: "drop_no_backend".into(),
                packets: 5,
            },
        ],
        l4_services: vec![L4ServiceMetrics {
            vs: "dns".into(),
            counters: L4Counters {
                packets: 50,
                bytes: 5000,
                new_flows: 7,
            },
        }],
        l4_backends: vec![L4BackendMetrics {
            server: "192.0.2.21:53".into(),
            counters: L4Counters {
                packets: 50,
                bytes: 5000,
                new_flows: 7,
            },
        }],
        tables: vec![TableMetrics {
            // A name with characters the exposition format must escape.
            vs: "we\"b\\1".into(),
            counters: TableCounters {
                entries: 12,
                inserts: 20,
                updates: 1,
                hits: 30,
                misses: 4,
                expirations: 6,
                removals: 2,
                failures: 1,
                bytes: 4096,
                memory_limit: 65536,
                unmirrored_full: 5,
                unmirrored_too_large: 3,
                unmirrored_failed: 0,
            },
        }],
        datascripts: vec![DataScriptMetrics {
            vs: "shop".into(),
            event: "HTTP_REQ".into(),
            runs: 10,
            errors: 2,
            budget_stops: 1,
        }],
        health: vec![
            ServerHealthMetrics {
                pool: "web".into(),
                server: "192.0.2.11:8080".into(),
                up: true,
                transitions: 0,
                state: "drain".into(),
                weight: 3,
                effective_weight_percent: 0,
                drain_connections_left: Some(2),
            },
            ServerHealthMetrics {
                pool: "web".into(),
                server: "192.0.2.12:8080".into(),
                up: false,
                transitions: 3,
                ..ServerHealthMetrics::default()
            },
        ],
        replication: Some(crate::api::metrics::ReplicationMetrics {
            queued: 10,
            sent: 9,
            dropped: 1,
            connected: true,
            ..Default::default()
        }),
        maps: vec![crate::api::metrics::MapMetrics {
            map: "connections".into(),
            entries: 1900,
            capacity: 2048,
            evictions: 77,
            full: 0,
        }],
        fast_path: vec![crate::api::metrics::FastPathMetrics {
            vs: "shop".into(),
            pinned: 4,
            shared_unpins: 2,
        }],
    }
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && s.labels.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels)
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
        .value
}

#[test]
fn metrics_follow_prometheus_naming_and_carry_the_snapshot() {
    let text = encode(sample_snapshot()).expect("encode");
    assert!(
        text.contains("latch_replication_changes_total{outcome=\"dropped\"} 1"),
        "replication counters exported:\n{text}"
    );
    assert!(text.contains("latch_replication_connected 1"), "{text}");
    assert!(
        text.contains("latch_fast_path_pinned_addresses{vs=\"shop\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("latch_fast_path_shared_unpins_total{vs=\"shop\"} 2"),
        "{text}"
    );
    let (types, units, samples) = parse(&text);

    for (family, ty) in &types {
        assert!(family.starts_with("latch_"), "{family} lacks the prefix");
        assert!(
            !family.ends_with("_total"),
            "{family}: the family name excludes _total"
        );
        assert!(ty == "counter" || ty == "gauge", "{family}: {ty}");
    }
    for (family, unit) in &units {
        assert!(family.ends_with(&format!("_{unit}")), "{family} {unit}");
        assert!(unit == "bytes" || unit == "seconds", "base units only");
    }
    for s in &samples {
        let family = s.name.strip_suffix("_total").unwrap_or(&s.name);
        let ty = types
            .get(family)
            .unwrap_or_else(|| panic!("sample {} has no TYPE", s.name));
        assert_eq!(
            s.name.ends_with("_total"),
            ty == "counter",
            "{}: counters and only counters end in _total",
            s.name
        );
    }

    assert_eq!(
        types
            .get("latch_http_request_body_bytes")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        types.get("latch_server_up").map(String::as_str),
        Some("gauge")
    );
    assert_eq!(
        value(&samples, "latch_http_requests_total", &[("vs", "shop")]),
        10.0
    );
    assert_eq!(
        value(
            &samples,
            "latch_http_responses_total",
            &[("vs", "shop"), ("code", "5xx")]
        ),
        4.0
    );
    assert_eq!(
        value(
            &samples,
            "latch_http_response_body_bytes_total",
            &[("vs", "shop")]
        ),
        2000.0
    );
    assert_eq!(
        value(&samples, "latch_http_active_connections", &[("vs", "shop")]),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "latch_http_tls_handshakes_total",
            &[("vs", "shop")]
        ),
        7.0
    );
    assert_eq!(
        value(
            &samples,
            "latch_http_tls_handshake_failures_total",
            &[("vs", "shop")]
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "latch_http_upgrades_total", &[("vs", "shop")]),
        3.0
    );
    assert_eq!(
        value(&samples, "latch_http_active_tunnels", &[("vs", "shop")]),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "latch_http_server_connect_failures_total",
            &[("server", "192.0.2.11:8080")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "latch_xdp_packets_total",
            &[("path", "drop_no_backend")]
        ),
        5.0
    );
    assert_eq!(
        value(&samples, "latch_l4_bytes_total", &[("vs", "dns")]),
        5000.0
    );
    assert_eq!(
        value(
            &samples,
            "latch_l4_backend_new_flows_total",
            &[("server", "192.0.2.21:53")]
        ),
        7.0
    );
    assert_eq!(
        value(&samples, "latch_table_entries", &[("vs", "we\"b\\1")]),
        12.0,
        "label values are escaped and parse back"
    );
    assert_eq!(
        value(&samples, "latch_table_memory_bytes", &[("vs", "we\"b\\1")]),
        4096.0
    );
    let conn = [("map", "connections")];
    assert_eq!(value(&samples, "latch_map_entries", &conn), 1900.0);
    assert_eq!(value(&samples, "latch_map_capacity", &conn), 2048.0);
    assert_eq!(value(&samples, "latch_map_evictions_total", &conn), 77.0);
    assert_eq!(value(&samples, "latch_map_full_total", &conn), 0.0);
    for (reason, n) in [("full", 5.0), ("too_large", 3.0), ("failed", 0.0)] {
        assert_eq!(
            value(
                &samples,
                "latch_table_unmirrored_total",
                &[("vs", "we\"b\\1"), ("reason", reason)]
            ),
            n
        );
    }
    assert_eq!(
        value(
            &samples,
            "latch_table_memory_limit_bytes",
            &[("vs", "we\"b\\1")]
        ),
        65536.0
    );
    assert_eq!(
        value(
            &samples,
            "latch_table_expirations_total",
            &[("vs", "we\"b\\1")]
        ),
        6.0
    );
    assert_eq!(
        value(
            &samples,
            "latch_datascript_budget_stops_total",
            &[("vs", "shop"), ("event", "HTTP_REQ")]
        ),
        1.0
    );
    let down = [("pool", "web"), ("server", "192.0.2.12:8080")];
    assert_eq!(value(&samples, "latch_server_up", &down), 0.0);
    assert_eq!(
        value(&samples, "latch_health_transitions_total", &down),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "latch_server_up",
            &[("pool", "web"), ("server", "192.0.2.11:8080")]
        ),
        1.0
    );
    let drained = [("pool", "web"), ("server", "192.0.2.11:8080")];
    let drained_in = |state| [drained[0], drained[1], ("state", state)];
    assert_eq!(
        value(&samples, "latch_server_state", &drained_in("drain")),
        1.0
    );
    assert_eq!(
        value(&samples, "latch_server_state", &drained_in("ready")),
        0.0
    );
    assert_eq!(value(&samples, "latch_server_weight", &drained), 3.0);
    assert_eq!(
        value(&samples, "latch_server_effective_weight_percent", &drained),
        0.0
    );
    assert_eq!(
        value(&samples, "latch_server_drain_connections", &drained),
        2.0
    );
    assert_eq!(
        value(&samples, "latch_reloads_total", &[("result", "refused")]),
        1.0
    );
    assert_eq!(
        value(&samples, "latch_start_time_seconds", &[]),
        1_700_000_000.0
    );
}

#[test]
fn empty_snapshot_still_declares_every_family() {
    let (types, _, samples) = parse(&encode(MetricsSnapshot::default()).expect("encode"));
    assert!(types.contains_key("latch_xdp_packets"));
    assert!(types.contains_key("latch_table_hits"));
    // Only the unlabelled process metrics have samples.
    let names: Vec<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "latch_start_time_seconds",
            "latch_reloads_total",
            "latch_reloads_total"
        ]
    );
}

#[test]
fn exposure_rule() {
    let lo: SocketAddr = "127.0.0.1:9180".parse().expect("addr");
    let lo6: SocketAddr = "[::1]:9180".parse().expect("addr");
    let any: SocketAddr = "0.0.0.0:9180".parse().expect("addr");
    assert!(check_exposure(lo, None).is_ok());
    assert!(check_exposure(lo6, None).is_ok());
    assert!(check_exposure(any, Some("t")).is_ok());
    let err = check_exposure(any, None).expect_err("refused");
    assert!(err.to_string().contains("admin_token_file"), "{err}");
}

#[test]
fn token_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("token");
    std::fs::write(&f, "  s3cret\n").expect("write");
    assert_eq!(read_token_file(&f).expect("token"), "s3cret");
    std::fs::write(&f, "\n").expect("write");
    assert!(matches!(
        read_token_file(&f),
        Err(ApiError::EmptyToken { .. })
    ));
    assert!(matches!(
        read_token_file(&dir.path().join("absent")),
        Err(ApiError::TokenFile { .. })
    ));
    assert!(token_matches(b"abc", b"abc"));
    assert!(!token_matches(b"abd", b"abc"));
    assert!(!token_matches(b"ab", b"abc"));
}

#[test]
fn component_encoding_keeps_one_segment() {
    assert_eq!(encode_component("a-b_c.d~9"), "a-b_c.d~9");
    assert_eq!(encode_component("a/b?c=d e+f%"), "a%2Fb%3Fc%3Dd%20e%2Bf%25");
    assert_eq!(encode_component("é"), "%C3%A9");
}

#[test]
fn unspecified_admin_address_is_reached_on_loopback() {
    let any: SocketAddr = "0.0.0.0:9180".parse().expect("addr");
    assert_eq!(connect_addr(any).to_string(), "127.0.0.1:9180");
    let any6: SocketAddr = "[::]:9180".parse().expect("addr");
    assert_eq!(connect_addr(any6).to_string(), "[::1]:9180");
    let other: SocketAddr = "192.0.2.1:9180".parse().expect("addr");
    assert_eq!(connect_addr(other), other);
}

#[test]
fn tables_align_columns() {
    let out = render_table(
        &["NAME", "COUNT"],
        &[
            vec!["a".into(), "5".into()],
            vec!["longer".into(), "1234".into()],
        ],
    );
    assert_eq!(out, "NAME    COUNT\na           5\nlonger   1234\n");
    let e = format_entries(&[TableEntryView {
        table: DEFAULT_TABLE.into(),
        key: "k".into(),
        value: "192.0.2.11:8080".into(),
        expires_in_seconds: 30,
    }]);
    assert_eq!(
        e,
        "TABLE      KEY  VALUE            EXPIRES IN\n(default)  k    192.0.2.11:8080         30s\n"
    );
}

#[test]
fn human_units() {
    assert_eq!(human_duration(42), "42s");
    assert_eq!(human_duration(307), "5m07s");
    assert_eq!(human_duration(7_380), "2h03m");
    assert_eq!(human_duration(273_600), "3d4h");
    assert_eq!(human_bytes(512), "512 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
}

#[test]
fn the_bearer_scheme_is_case_insensitive_and_takes_several_spaces() {
    assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
    assert_eq!(bearer_token(b"bearer abc"), Some(&b"abc"[..]));
    assert_eq!(bearer_token(b"BEARER   abc"), Some(&b"abc"[..]));
    assert_eq!(bearer_token(b"Bearer"), None);
    assert_eq!(bearer_token(b"Bearer "), None);
    assert_eq!(bearer_token(b"Basic abc"), None);
    assert_eq!(bearer_token(b"Bearerabc"), None);
}
