//! Fuzz targets run for a bounded time (test-only): proptest strategies that mostly mutate
//! valid inputs, and the properties every input must keep. The runner, its time budget
//! (`LATCH_FUZZ_SECONDS`, a few seconds per target in `cargo xtask test`) and the byte
//! mutations are `latch_tests::fuzz`; `cargo xtask fuzz --seconds N` runs each target for N
//! seconds. The XDP program's target needs root and lives with the integration tests
//! (`lb-userspace/tests/it/fuzz_xdp.rs`).
//!
//! Every finding becomes a named regression test in the target's file (`regressions` at its
//! end) besides the fix.
//!
//! - `config`: TOML text to a validated config; never a panic, every error located.
//! - `framing`: the HTTP/1.1 framing guard, alone and in front of hyper.
//! - `avi_http`: the cookie, query, header and URI functions of `avi.http` on hostile requests.
//! - `vs_tables`: the argument roles of `avi.vs.table_*` against a model of the contract.

mod avi_http;
mod config;
mod framing;
mod vs_tables;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::datascript::{DataScriptHooks, DsLimits, Event, ScriptEnv, ScriptSet, ScriptSource};
use crate::proxy::hooks::{PoolView, RequestId, ServerView, TxnInfo};
use crate::tables::{ManualClock, NoMirror, TableLimits, VsTables};

/// No pools: the targets call no avi.pool function.
struct NoPools;

impl PoolView for NoPools {
    fn servers(&self, _pool: &str) -> Option<Vec<ServerView>> {
        None
    }
}

/// One virtual service running `scripts` (event, text) in one VM, with its tables on a
/// manual clock that stands still.
struct Service {
    hooks: DataScriptHooks,
    tables: Arc<VsTables>,
    now_ns: u64,
}

impl Service {
    fn new(scripts: &[(Event, String)]) -> Result<Self, String> {
        let sources = scripts
            .iter()
            .map(|(event, text)| ScriptSource {
                event: *event,
                name: format!("fuzz-{event}"),
                text: text.clone(),
                origin_file: PathBuf::from("fuzz.toml"),
                first_line: 1,
            })
            .collect();
        let set = ScriptSet::compile("fuzz", sources).map_err(|e| format!("{e:?}"))?;
        let tables = Arc::new(VsTables::new(
            "fuzz",
            TableLimits::default(),
            Arc::new(NoMirror),
        ));
        let now_ns = 1_000_000_000_000;
        let env = ScriptEnv {
            tables: Arc::clone(&tables),
            pools: Arc::new(NoPools),
            clock: Arc::new(ManualClock::new(now_ns)),
            limits: DsLimits {
                vms: 1,
                // A busy machine must not turn a slow case into a script timeout.
                max_event_time: Duration::from_secs(10),
                ..DsLimits::default()
            },
            observer: None,
            geo: None,
            groups: Arc::default(),
            rate_limits: Arc::default(),
        };
        let hooks = DataScriptHooks::new(Arc::new(set), env).map_err(|e| e.to_string())?;
        Ok(Self {
            hooks,
            tables,
            now_ns,
        })
    }
}

fn info() -> TxnInfo {
    TxnInfo {
        vs_name: "fuzz".into(),
        vs_addr: "198.51.100.10:80".parse().expect("address"),
        client: "203.0.113.7:40000".parse().expect("address"),
        request_id: RequestId(1),
        tls: None,
    }
}

/// `s` as a Lua string literal (any bytes).
fn lua_literal(s: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in s {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}
