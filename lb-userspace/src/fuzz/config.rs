//! Config parser and validator: mutated configs (the examples and a seed that sets every
//! section) must never panic; a refused one carries at least one diagnostic, each with a
//! line and column that exist in its file; an accepted one parses to the same config twice
//! and differs from itself in nothing. Bytes that are not UTF-8 are located too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use latch_tests::fuzz::{self, Edit};

use crate::config::{self, ConfigErrors};

/// Sets (nearly) every key of every section, so mutations reach every validator.
const RICH: &str = r#"
[agent]
interfaces = ["lb-c", "lb-b"]
admin_listen = "127.0.0.1:9180"
bpffs_dir = "/sys/fs/bpf/latch-fuzz"
state_file = "/tmp/latch-fuzz-state.json"
ephemeral_pins = false
workers = 2
log_format = "json"

[agent.http]
header_read_timeout = "10s"
idle_timeout = "60s"
upstream_connect_timeout = "3s"
upstream_response_timeout = "30s"
max_header_bytes = "64KiB"
max_headers = 100

[agent.datascript]
instruction_budget = 1000000
memory_limit = "8MiB"
max_event_time = "50ms"
table_memory_limit = "64MiB"
table_max_entries = 100000
max_added_headers = 16
max_added_header_bytes = "8KiB"
max_body_buffer = "1MiB"

[agent.capacity]
connections = 65536
client_pins = 65536
connections_v6 = 65536
client_pins_v6 = 65536
table_mirror_entries = 262144
virtual_services = 64
servers = 1024

[replication]
redis_url = "redis://127.0.0.1:6379/"
node_id = "lb-1"
connect_timeout = "2s"
command_timeout = "1s"

[[pool]]
name = "web"
algorithm = "consistent_hash"
hash = { type = "cookie", name = "JSESSIONID" }
servers = ["192.0.2.11:8080", { addr = "192.0.2.12:8080", weight = 3 }, { addr = "192.0.2.13:8080", backup = true }]
health_monitor = { type = "http", path = "/health", expect_status = [200, "300-399"], interval = "2s", timeout = "1s", fall = 3, rise = 2 }
slow_start = "30s"

[[pool]]
name = "tls"
algorithm = "least_connections"
servers = ["[2001:db8::11]:8443"]
tls = { server_name = "app.example", verify = false }

[[string_group]]
name = "routes"
entries = { "/api/" = "web", "/v1/" = "web" }

[[ip_group]]
name = "denied"
entries = ["198.51.100.0/24", "203.0.113.64-203.0.113.127", "2001:db8:bad::/48"]

[[rate_limiter]]
name = "per-client"
count = 100
period = "1m"
burst = 200
max_keys = 10000

[[virtual_service]]
name = "shop"
listen = "198.51.100.10:80"
type = "http"
pool = "web"
fast_path = "client_ip"
fast_path_max_sessions = 4
fast_path_exclude = ["denied"]
rate_limit = { limiter = "per-client", action = "close_connection" }

[[virtual_service.datascript]]
event = "HTTP_REQ"
script = '''
avi.vs.table_insert("k", avi.http.get_cookie("JSESSIONID") or "none", 60)
'''

[[virtual_service]]
name = "l4"
listen = "198.51.100.10:53"
type = "udp"
pool = "web"
forwarding = "dsr"
persistence = { type = "client_ip", timeout = "300s" }
"#;

/// Keys of the schema (`config/raw.rs`) and a few it does not know.
const KEYS: &[&str] = &[
    "interfaces",
    "admin_listen",
    "bpffs_dir",
    "state_file",
    "ephemeral_pins",
    "workers",
    "admin_token_file",
    "log_format",
    "header_read_timeout",
    "idle_timeout",
    "upstream_connect_timeout",
    "upstream_response_timeout",
    "max_header_bytes",
    "max_headers",
    "geo_database",
    "instruction_budget",
    "memory_limit",
    "max_event_time",
    "table_memory_limit",
    "table_max_entries",
    "max_added_headers",
    "max_added_header_bytes",
    "max_body_buffer",
    "connections",
    "client_pins",
    "connections_v6",
    "client_pins_v6",
    "ipv6_prefix",
    "flow_hash",
    "client_ip",
    "table_mirror_entries",
    "virtual_services",
    "servers",
    "name",
    "algorithm",
    "hash",
    "health_monitor",
    "slow_start",
    "tls",
    "ca",
    "server_name",
    "verify",
    "addr",
    "weight",
    "backup",
    "type",
    "path",
    "expect_status",
    "interval",
    "timeout",
    "fall",
    "rise",
    "listen",
    "pool",
    "forwarding",
    "persistence",
    "fast_path",
    "fast_path_max_sessions",
    "fast_path_exclude",
    "fast_path_ipv6_prefix",
    "datascript",
    "rate_limit",
    "certificates",
    "min_version",
    "alpn",
    "client_ca",
    "client_cert",
    "cert",
    "key",
    "limiter",
    "action",
    "entries",
    "file",
    "count",
    "period",
    "burst",
    "max_keys",
    "event",
    "script",
    "redis_url",
    "node_id",
    "connect_timeout",
    "command_timeout",
    "bogus",
    "Name",
    "",
];

/// Values at the edges: of types, of ranges, of addresses, of durations and sizes.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "4294967295",
    "4294967296",
    "65535",
    "65536",
    "18446744073709551615",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999",
    "1e309",
    "nan",
    "-inf",
    "0.5",
    "true",
    "\"\"",
    "\"0s\"",
    "\"1ns\"",
    "\"25h\"",
    "\"99999999999h\"",
    "\"1.5s\"",
    "\"-1s\"",
    "\"s\"",
    "\"0B\"",
    "\"18446744073709551615B\"",
    "\"1TiB\"",
    "\"9999999999GiB\"",
    "\"0.0.0.0:80\"",
    "\"255.255.255.255:80\"",
    "\"224.0.0.1:80\"",
    "\"198.51.100.10:80\"",
    "\"192.0.2.11:0\"",
    "\"[::]:80\"",
    "\"[2001:db8::1]:65535\"",
    "\"[ff02::1]:80\"",
    "\"192.0.2.11:65536\"",
    "\"192.0.2.11\"",
    "\"web\"",
    "\"shop\"",
    "\"HTTP_REQ\"",
    "\"HTTP_RESP_DATA\"",
    "\"tcp\"",
    "\"http\"",
    "\"client_ip\"",
    "\"cookie\"",
    "\"header\"",
    "\"nat\"",
    "\"dsr\"",
    "\"round_robin\"",
    "\"consistent_hash\"",
    "\"1.3\"",
    "\"h2\"",
    "\"required\"",
    "[]",
    "{}",
    "[\"lb-c\", \"lb-c\"]",
    "[1, \"a\", true]",
    "{ type = \"tcp\" }",
    "{ addr = \"192.0.2.11:8080\", weight = 0 }",
    "{ addr = \"192.0.2.11:8080\", weight = -5 }",
    "[{ addr = \"192.0.2.11:8080\", weight = 65536 }]",
    "1979-05-27T07:32:00Z",
    "'''\nx\n'''",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "\"é\"",
    "\"/nonexistent/file\"",
    "\"../examples\"",
    "\"redis://\"",
    "[\"198.51.100.0/33\"]",
    "[\"203.0.113.127-203.0.113.64\"]",
];

/// Section headers to insert.
const HEADERS: &[&str] = &[
    "[agent]",
    "[agent.http]",
    "[agent.datascript]",
    "[agent.capacity]",
    "[replication]",
    "[[pool]]",
    "[[virtual_service]]",
    "[[virtual_service.datascript]]",
    "[[string_group]]",
    "[[ip_group]]",
    "[[rate_limiter]]",
    "[virtual_service.tls]",
    "[[virtual_service.tls.certificates]]",
    "[pool.tls]",
    "[bogus]",
    "[[agent]]",
    "[pool]",
];

/// Bytes that matter to TOML, and bytes that are not UTF-8.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"'",
    b"'''",
    b"\"\"\"",
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"=",
    b"\n",
    b"\r\n",
    b"\r",
    b"{",
    b"}",
    b",",
    b"#",
    b".",
    b"\\",
    b"\\u",
    b" ",
    b"\t",
    b"\0",
    b"0x",
    b"-",
    b"+",
    b":",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
];

#[derive(Clone, Debug)]
enum LineEdit {
    /// Replace the value of the `line`th `key = value` line.
    Value {
        line: usize,
        value: &'static str,
    },
    /// Replace its key.
    Key {
        line: usize,
        key: &'static str,
    },
    Insert {
        line: usize,
        key: &'static str,
        value: &'static str,
    },
    Header {
        line: usize,
        header: &'static str,
    },
    Delete {
        line: usize,
    },
    Duplicate {
        line: usize,
    },
    Move {
        from: usize,
        to: usize,
    },
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    let key = proptest::sample::select(KEYS);
    let value = proptest::sample::select(VALUES);
    prop_oneof![
        4 => (any::<usize>(), value.clone()).prop_map(|(line, value)| LineEdit::Value { line, value }),
        1 => (any::<usize>(), key.clone()).prop_map(|(line, key)| LineEdit::Key { line, key }),
        3 => (any::<usize>(), key, value)
            .prop_map(|(line, key, value)| LineEdit::Insert { line, key, value }),
        1 => (any::<usize>(), proptest::sample::select(HEADERS))
            .prop_map(|(line, header)| LineEdit::Header { line, header }),
        2 => any::<usize>().prop_map(|line| LineEdit::Delete { line }),
        1 => any::<usize>().prop_map(|line| LineEdit::Duplicate { line }),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(from, to)| LineEdit::Move { from, to }),
    ]
}

impl LineEdit {
    fn apply(&self, lines: &mut Vec<String>) {
        let at = |i: usize, n: usize| if n == 0 { 0 } else { i % n };
        let assignments: Vec<usize> = (0..lines.len())
            .filter(|i| split_assignment(&lines[*i]).is_some())
            .collect();
        match self {
            Self::Value { line, value } => {
                if let Some(&i) = assignments.get(at(*line, assignments.len()))
                    && let Some((key, _)) = split_assignment(&lines[i])
                {
                    lines[i] = format!("{key} = {value}");
                }
            }
            Self::Key { line, key } => {
                if let Some(&i) = assignments.get(at(*line, assignments.len()))
                    && let Some((_, value)) = split_assignment(&lines[i])
                {
                    lines[i] = format!("{key} = {value}");
                }
            }
            Self::Insert { line, key, value } => {
                let i = at(*line, lines.len() + 1);
                lines.insert(i, format!("{key} = {value}"));
            }
            Self::Header { line, header } => {
                let i = at(*line, lines.len() + 1);
                lines.insert(i, header.to_string());
            }
            Self::Delete { line } => {
                if !lines.is_empty() {
                    lines.remove(at(*line, lines.len()));
                }
            }
            Self::Duplicate { line } => {
                if !lines.is_empty() {
                    let i = at(*line, lines.len());
                    lines.insert(i, lines[i].clone());
                }
            }
            Self::Move { from, to } => {
                if !lines.is_empty() {
                    let l = lines.remove(at(*from, lines.len()));
                    lines.insert(at(*to, lines.len() + 1), l);
                }
            }
        }
    }
}

/// `key = value` of a line that assigns (not a header, comment or string continuation).
fn split_assignment(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once('=')?;
    let k = k.trim();
    let simple = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    simple.then_some((k, v.trim()))
}

struct Seed {
    path: PathBuf,
    text: String,
}

/// The example configs (read from the repository, so new examples join the corpus) and
/// [`RICH`], which is placed in the examples directory so relative paths resolve alike.
fn seeds() -> Vec<Seed> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out = vec![Seed {
        path: dir.join("fuzz-rich.toml"),
        text: RICH.to_string(),
    }];
    for sub in [dir.clone(), dir.join("scripts/configs")] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.push(Seed { path, text });
            }
        }
    }
    out
}

#[derive(Clone, Debug)]
struct Case {
    seed: usize,
    lines: Vec<LineEdit>,
    bytes: Vec<Edit>,
}

fn case(seeds: usize) -> impl Strategy<Value = Case> {
    (
        0..seeds,
        proptest::collection::vec(line_edit(), 0..6),
        proptest::collection::vec(fuzz::edit(TOKENS), 0..3),
    )
        .prop_map(|(seed, lines, bytes)| Case { seed, lines, bytes })
}

fn mutate(seed: &Seed, case: &Case) -> Vec<u8> {
    let mut lines: Vec<String> = seed.text.lines().map(str::to_string).collect();
    for e in &case.lines {
        e.apply(&mut lines);
    }
    let mut text = lines.join("\n");
    text.push('\n');
    fuzz::apply_all(text.as_bytes(), &case.bytes)
}

/// Every diagnostic names a line and column; those about `path` name ones that exist in
/// `text` (a column may point just past a line's last character).
fn check_located(errs: &ConfigErrors, path: &Path, text: &str) -> Result<(), TestCaseError> {
    prop_assert!(!errs.diagnostics.is_empty(), "an error without diagnostics");
    let lines: Vec<&str> = text.split('\n').collect();
    for d in &errs.diagnostics {
        prop_assert!(d.line >= 1 && d.col >= 1, "unlocated: {d}");
        prop_assert!(!d.message.trim().is_empty(), "no message: {d}");
        if d.file == path {
            prop_assert!(d.line <= lines.len(), "line beyond the file: {d}");
            let chars = lines[d.line - 1].chars().count();
            prop_assert!(d.col <= chars + 1, "column beyond line {}: {d}", d.line);
        }
        let shown = d.to_string();
        let prefix = format!("{}:{}:{}: ", d.file.display(), d.line, d.col);
        prop_assert!(shown.starts_with(&prefix), "{shown}");
    }
    Ok(())
}

/// Checks one mutated config; true when it was accepted.
fn check(seed: &Seed, bytes: &[u8]) -> Result<bool, TestCaseError> {
    let path = seed.path.as_path();
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let errs = config::not_utf8(path, bytes, e);
            let lossy = String::from_utf8_lossy(bytes);
            return check_located(&errs, path, &lossy).map(|()| false);
        }
    };
    match config::parse(text, path) {
        Ok(cfg) => {
            let again = config::parse(text, path);
            prop_assert!(again.as_ref() == Ok(&cfg), "parsing is not deterministic");
            let d = config::diff(&cfg, &cfg);
            prop_assert!(d.is_empty(), "a config differs from itself: {d:?}");
            Ok(true)
        }
        Err(errs) => check_located(&errs, path, text).map(|()| false),
    }
}

#[test]
fn parse_and_validate() {
    let seeds = seeds();
    assert!(seeds.len() > 5, "the examples are the corpus");
    // Every seed is valid as it is: mutations start from configs that get deep.
    for s in &seeds {
        if let Err(e) = config::parse(&s.text, &s.path) {
            panic!("seed {} does not validate:\n{e}", s.path.display());
        }
    }
    let accepted = AtomicU64::new(0);
    let report = fuzz::run("config", case(seeds.len()), |c| {
        let seed = &seeds[c.seed];
        let ok = check(seed, &mutate(seed, &c))?;
        if ok {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    println!(
        "fuzz config: {} of {} mutated configs accepted",
        accepted.load(Ordering::Relaxed),
        report.cases
    );
}
