//! The shipped Grafana dashboard queries only metrics latch exports, and the systemd unit keeps
//! its contract (drain on SIGTERM, reload on SIGHUP, the capability set).

use std::collections::BTreeSet;
use std::path::PathBuf;

use latch::api::metrics::{MetricsSnapshot, encode};

fn packaging(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every sample name a scrape can contain: `latch_x` for gauges, `latch_x_total` for counters.
fn exported_names() -> BTreeSet<String> {
    let text = encode(MetricsSnapshot::default()).expect("encode");
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, ty) = l.split_once(' ').expect("TYPE line");
            if ty == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            }
        })
        .collect()
}

#[test]
fn dashboard_uses_only_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&packaging("grafana/latch.json")).expect("dashboard is JSON");
    let exported = exported_names();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if let (true, Some(s)) = (k == "expr" || k == "query", v.as_str()) {
                        out.push(s.to_owned());
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "the dashboard has queries");
    let mut used = BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("latch_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            used.insert(name);
        }
    }
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "dashboard queries unknown metrics: {unknown:?}"
    );
    assert!(
        used.len() >= 20,
        "most metrics are on the dashboard: {used:?}"
    );
}

#[test]
fn systemd_unit_contract() {
    let unit = packaging("systemd/latch.service");
    let setting = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        setting("ExecStart"),
        ["/usr/local/bin/latch run -c /etc/latch/latch.toml"]
    );
    assert_eq!(setting("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(setting("KillSignal"), ["SIGTERM"]);
    // The default state_file's directory must be writable under ProtectSystem=strict.
    assert_eq!(setting("StateDirectory"), ["latch"]);
    let caps: BTreeSet<&str> = [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_NET_BIND_SERVICE",
    ]
    .into_iter()
    .collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let v = setting(key);
        assert_eq!(v.len(), 1, "{key}");
        assert_eq!(v[0].split(' ').collect::<BTreeSet<_>>(), caps, "{key}");
    }
}
