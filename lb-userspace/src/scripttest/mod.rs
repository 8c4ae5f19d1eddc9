//! `latch script test CASES.toml`: a virtual service's DataScripts run offline on described
//! requests, exactly as the proxy runs them, with what happened printed and checked.
//!
//! The service is built by the agent's own [`crate::agent::http::build`] (the real
//! `DataScriptHooks`, `ConfiguredPool`s and their `StaticPoolView`), with tables that mirror
//! nowhere, a manual clock and one VM. Each case is one transaction: HTTP_REQ, the server
//! choice `proxy/handler.rs` makes, the server's described answer through HTTP_RESP. No
//! socket is opened and nothing needs root. Cases of one file run in order against the same
//! tables and clock, as consecutive requests do (`advance` moves the clock).
//!
//! - `cases`: the CASES.toml schema, read with `file:line:col` errors.
//! - `run`: building the service and running a case into a [`run::Happened`].
//! - `check`: comparing it with the case's expectations, field by field.

pub mod cases;
pub mod check;
pub mod run;

#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use crate::config::ConfigErrors;
use crate::datascript::ScriptError;

/// The config of a cases file that names none: pool `web` (three servers, round robin) as
/// the default pool of http service `test`, and pool `alt` (one server) for scripts to
/// select.
pub const BUILTIN_CONFIG: &str = r#"
[[pool]]
name = "web"
algorithm = "round_robin"
servers = ["192.0.2.11:8080", "192.0.2.12:8080", "192.0.2.13:8080"]

[[pool]]
name = "alt"
servers = ["192.0.2.21:80"]

[[virtual_service]]
name = "test"
listen = "198.51.100.10:80"
type = "http"
pool = "web"
"#;

/// Why a cases file could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum ScriptTestError {
    /// The cases file or the config it names is not valid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The scripts do not compile or name what does not exist.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Scripts(Vec<ScriptError>),
    /// The virtual service is not in the config or is ambiguous.
    #[error("{0}")]
    Service(String),
    /// The service could not be built (a Lua VM).
    #[error("{0}")]
    Build(String),
}

/// The outcome of one cases file.
#[derive(Debug, Default)]
pub struct FileReport {
    /// The printed report.
    pub text: String,
    /// Cases run.
    pub cases: usize,
    /// Cases with a mismatch or that could not run.
    pub failed: usize,
}

/// Runs every case of the file at `path`.
pub fn run_file(path: &Path) -> Result<FileReport, ScriptTestError> {
    let file = cases::load(path)?;
    let service = run::Service::build(&file)?;
    let mut report = FileReport::default();
    let out = &mut report.text;
    let _ = writeln!(
        out,
        "{}: virtual service {}, {} case(s)",
        path.display(),
        service.name,
        file.cases.len()
    );
    for case in &file.cases {
        report.cases += 1;
        let got = match service.run(case) {
            Ok(got) => got,
            Err(e) => {
                report.failed += 1;
                let _ = writeln!(out, "FAIL {}: cannot run: {e}", case.name);
                continue;
            }
        };
        let mismatches = check::compare(&case.expect, &got);
        let verdict = if mismatches.is_empty() {
            "ok  "
        } else {
            "FAIL"
        };
        let _ = writeln!(out, "{verdict} {}", case.name);
        describe(out, case, &got);
        if !mismatches.is_empty() {
            report.failed += 1;
            let width = mismatches.iter().map(|m| m.field.len()).max().unwrap_or(0);
            for m in &mismatches {
                let _ = writeln!(out, "     - {:width$}  expected {}", m.field, m.expected);
                let _ = writeln!(out, "     + {:width$}  got      {}", "", m.got);
            }
        }
    }
    let _ = writeln!(
        out,
        "{}: {} passed, {} failed",
        path.display(),
        report.cases - report.failed,
        report.failed
    );
    Ok(report)
}

/// Characters of a local answer's body the report shows.
const BODY_SHOWN: usize = 60;

/// What happened to a case, a few indented lines.
fn describe(out: &mut String, case: &cases::Case, got: &run::Happened) {
    let req = &case.request;
    let target = match (&got.pool, got.server) {
        (Some(pool), Some(server)) => format!("pool {pool}, server {server}"),
        _ => "not forwarded".to_string(),
    };
    let _ = writeln!(out, "       {} {} -> {target}", req.method, req.uri);
    if let Some(r) = &got.request
        && (r.uri.to_string() != req.uri || r.method.as_str() != req.method)
    {
        let _ = writeln!(out, "       rewritten to {} {}", r.method, r.uri);
    }
    let by = match (got.local, got.proxy_reason) {
        (false, _) => "server".to_string(),
        (true, Some(reason)) => format!("proxy: {reason}"),
        (true, None) => "script".to_string(),
    };
    for change in &got.request_changes {
        let _ = writeln!(out, "       request  {change}");
    }
    let _ = writeln!(out, "       answer {} ({by})", got.status);
    for change in &got.response_changes {
        let _ = writeln!(out, "       response {change}");
    }
    if got.local && got.proxy_reason.is_none() {
        for (name, value) in &got.response_headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            let _ = writeln!(out, "       answer   {name}: {value}");
        }
        if let Some(body) = got.body.as_deref().filter(|b| !b.is_empty()) {
            let shown: String = body.chars().take(BODY_SHOWN).collect();
            let more = if shown.len() < body.len() { "..." } else { "" };
            let _ = writeln!(out, "       answer   body {shown:?}{more}");
        }
    }
    if got.close_connection {
        let _ = writeln!(out, "       connection closed after the answer");
    }
    if let Some(user) = &got.user_id {
        let _ = writeln!(out, "       user id {user}");
    }
    if let Some(ms) = got.server_timeout_ms {
        let _ = writeln!(out, "       server timeout {ms} ms");
    }
    for line in &got.log {
        let _ = writeln!(out, "       log: {line}");
    }
    if let Some(e) = &got.error {
        let _ = writeln!(out, "       error: {e}");
    }
    for op in &got.table_ops {
        let _ = writeln!(out, "       table: {op}");
    }
}

/// `latch script test FILE...`: prints each file's report; a failure exits non-zero.
pub fn script_test_command(paths: &[impl AsRef<Path>]) -> ExitCode {
    let mut failed = false;
    for path in paths {
        let path = path.as_ref();
        match run_file(path) {
            Ok(report) => {
                print!("{}", report.text);
                failed |= report.failed > 0;
            }
            Err(e) => {
                println!("{e}");
                println!("{}: not run", path.display());
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
