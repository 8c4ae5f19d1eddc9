//! The client subcommands of `latch` (status, stats, reload, table ...): resolve where the agent
//! is, call the API, print aligned tables for people or the API's JSON for scripts.
//!
//! [`execute`] returns the text instead of printing it so the formatting is tested against a
//! fake agent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::client::{AdminClient, ClientError};
use super::model::{
    PoolView, ReloadView, ServerChangeRequest, ServerChangeView, ServerLeversView, StatusView,
    TableEntryView, VirtualServiceView,
};
use crate::config::DEFAULT_ADMIN_LISTEN;

/// Why a client command could not run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `-c FILE` cannot be read for the admin settings.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The token file cannot be read.
    #[error(transparent)]
    Token(#[from] super::ApiError),
    /// No runtime.
    #[error("starting the client runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The default admin address does not parse (a bug).
    #[error("bad default admin address {0}")]
    DefaultAddr(String),
    /// JSON output failed.
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Where the agent is and how to print.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Admin API address.
    pub admin: SocketAddr,
    /// Bearer token.
    pub token: Option<String>,
    /// Print JSON instead of tables.
    pub json: bool,
}

impl ClientOptions {
    /// `--admin`, else `admin_listen` of `-c FILE`, else 127.0.0.1:9180; `--token-file`, else
    /// the config's `admin_token_file`.
    pub fn resolve(
        admin: Option<SocketAddr>,
        config_path: Option<&Path>,
        token_file: Option<&Path>,
        json: bool,
    ) -> Result<Self, CliError> {
        let from_config = match config_path {
            Some(path) => Some(admin_settings(path)?),
            None => None,
        };
        let admin = match (admin, &from_config) {
            (Some(a), _) => a,
            (None, Some((Some(a), _))) => *a,
            _ => DEFAULT_ADMIN_LISTEN
                .parse()
                .map_err(|_| CliError::DefaultAddr(DEFAULT_ADMIN_LISTEN.to_owned()))?,
        };
        let token_file = token_file
            .map(Path::to_owned)
            .or_else(|| from_config.and_then(|(_, t)| t));
        let token = token_file
            .as_deref()
            .map(super::read_token_file)
            .transpose()?;
        Ok(Self { admin, token, json })
    }
}

/// `admin_listen` and `admin_token_file` (resolved against the file's directory, as the agent
/// does) of a config file. Only these two keys are read, so a config being edited (say, with a
/// script that does not compile yet) still tells the CLI where its agent is.
pub fn admin_settings(path: &Path) -> Result<(Option<SocketAddr>, Option<PathBuf>), CliError> {
    let err = |message: String| CliError::Config {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| err(e.to_string()))?;
    let agent = doc.get("agent").and_then(toml::Value::as_table);
    let listen = match agent.and_then(|a| a.get("admin_listen")) {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| s.parse::<SocketAddr>().ok())
                .ok_or_else(|| err(format!("agent.admin_listen {v} is not an address:port")))?,
        ),
    };
    let token = match agent.and_then(|a| a.get("admin_token_file")) {
        None => None,
        Some(v) => {
            let f = v
                .as_str()
                .ok_or_else(|| err(format!("agent.admin_token_file {v} is not a path")))?;
            let f = Path::new(f);
            Some(if f.is_absolute() {
                f.to_owned()
            } else {
                path.parent().unwrap_or(Path::new("")).join(f)
            })
        }
    };
    Ok((listen, token))
}

/// A client subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    /// Agent status and server health.
    Status,
    /// Counters per virtual service and server.
    Stats,
    /// Reload the agent's config file.
    Reload,
    /// List table entries.
    TableList {
        /// Virtual service.
        vs: String,
        /// One table; `None`: all.
        table: Option<String>,
        /// Key prefix.
        prefix: Option<String>,
        /// Most entries.
        limit: Option<usize>,
    },
    /// Show one entry.
    TableGet {
        /// Virtual service.
        vs: String,
        /// Key.
        key: String,
        /// Table; `None`: the default table.
        table: Option<String>,
    },
    /// Remove one entry.
    TableDelete {
        /// Virtual service.
        vs: String,
        /// Key.
        key: String,
        /// Table; `None`: the default table.
        table: Option<String>,
    },
    /// Set a server's state (`drain`, `maint`, `ready`) or weight.
    Server {
        /// Pool.
        pool: String,
        /// `ip:port`, or an IP only one server of the pool has.
        server: String,
        /// The change.
        change: ServerChangeRequest,
    },
    /// Remove every entry.
    TableFlush {
        /// Virtual service.
        vs: String,
        /// Table; `None`: all tables of the service.
        table: Option<String>,
    },
}

/// What a command prints and whether it succeeded (a refused reload does not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Text for stdout (ends with a newline).
    pub text: String,
    /// Exit status 0.
    pub success: bool,
}

impl Outcome {
    fn ok(text: String) -> Self {
        Self {
            text,
            success: true,
        }
    }
}

/// Runs `cmd` on a fresh runtime and prints its output; what `main` calls.
pub fn run(opts: &ClientOptions, cmd: &ClientCommand) -> Result<ExitCode, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let outcome = runtime.block_on(execute(opts, cmd))?;
    print!("{}", outcome.text);
    Ok(if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn to_json<T: Serialize>(v: &T) -> Result<String, CliError> {
    Ok(serde_json::to_string_pretty(v)? + "\n")
}

/// Runs `cmd` against the agent and returns what to print.
pub async fn execute(opts: &ClientOptions, cmd: &ClientCommand) -> Result<Outcome, CliError> {
    let c = AdminClient::new(opts.admin, opts.token.clone());
    let now = unix_now();
    match cmd {
        ClientCommand::Status => {
            let status = c.status().await?;
            let pools = c.pools().await?;
            if opts.json {
                #[derive(Serialize)]
                struct Doc<'a> {
                    status: &'a StatusView,
                    pools: &'a [PoolView],
                }
                return Ok(Outcome::ok(to_json(&Doc {
                    status: &status,
                    pools: &pools,
                })?));
            }
            Ok(Outcome::ok(format_status(&status, &pools, now)))
        }
        ClientCommand::Stats => {
            let vs = c.virtual_services().await?;
            let pools = c.pools().await?;
            if opts.json {
                #[derive(Serialize)]
                struct Doc<'a> {
                    virtual_services: &'a [VirtualServiceView],
                    pools: &'a [PoolView],
                }
                return Ok(Outcome::ok(to_json(&Doc {
                    virtual_services: &vs,
                    pools: &pools,
                })?));
            }
            Ok(Outcome::ok(format_stats(&vs, &pools)))
        }
        ClientCommand::Reload => {
            let r = c.reload().await?;
            let text = if opts.json {
                to_json(&r)?
            } else {
                format_reload(&r)
            };
            Ok(Outcome {
                text,
                success: r.applied,
            })
        }
        ClientCommand::Server {
            pool,
            server,
            change,
        } => {
            let v = c.set_server(pool, server, change).await?;
            Ok(Outcome::ok(if opts.json {
                to_json(&v)?
            } else {
                format_server_change(&v)
            }))
        }
        ClientCommand::TableList {
            vs,
            table,
            prefix,
            limit,
        } => {
            let l = c
                .table_list(vs, table.as_deref(), prefix.as_deref(), *limit)
                .await?;
            if opts.json {
                return Ok(Outcome::ok(to_json(&l)?));
            }
            let mut text = format_entries(&l.entries);
            let n = l.entries.len();
            text.push_str(&format!(
                "{n} entr{}{}\n",
                if n == 1 { "y" } else { "ies" },
                if l.truncated {
                    " shown; more match (raise --limit or narrow with --prefix)"
                } else {
                    ""
                }
            ));
            Ok(Outcome::ok(text))
        }
        ClientCommand::TableGet { vs, key, table } => {
            let e = c.table_get(vs, key, table.as_deref()).await?;
            if opts.json {
                return Ok(Outcome::ok(to_json(&e)?));
            }
            Ok(Outcome::ok(format_entries(std::slice::from_ref(&e))))
        }
        ClientCommand::TableDelete { vs, key, table } => {
            let d = c.table_delete(vs, key, table.as_deref()).await?;
            if opts.json {
                return Ok(Outcome::ok(to_json(&d)?));
            }
            Ok(Outcome::ok(format!(
                "deleted {:?} from {} of {}\n",
                d.key,
                table_label(&d.table),
                d.vs
            )))
        }
        ClientCommand::TableFlush { vs, table } => {
            let f = c.table_flush(vs, table.as_deref()).await?;
            if opts.json {
                return Ok(Outcome::ok(to_json(&f)?));
            }
            let which = match &f.table {
                Some(t) => table_label(t),
                None => "all tables".to_owned(),
            };
            Ok(Outcome::ok(format!(
                "removed {} entr{} from {which} of {}\n",
                f.removed,
                if f.removed == 1 { "y" } else { "ies" },
                f.vs
            )))
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn table_label(t: &str) -> String {
    if t.is_empty() {
        "the default table".to_owned()
    } else {
        format!("table {t}")
    }
}

/// "3d4h", "2h03m", "5m07s", "42s".
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// "1.5 KiB" style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn numeric(cell: &str) -> bool {
    let c = cell.trim_end_matches(|ch: char| ch.is_ascii_alphabetic() || ch == ' ');
    !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit() || ch == '.')
}

/// Columns separated by two spaces; numeric columns right-aligned.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    let mut right = vec![true; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
            if cell != "-" && !numeric(cell) {
                right[i] = false;
            }
        }
    }
    if rows.is_empty() {
        right = vec![false; cols];
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = width[i].saturating_sub(cell.chars().count());
            let last = i + 1 == cols;
            if right[i] {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if !last {
                    out.push_str(&" ".repeat(pad));
                }
            }
            if !last {
                out.push_str("  ");
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// `latch status` for people.
pub fn format_status(s: &StatusView, pools: &[PoolView], now: u64) -> String {
    let mut out = format!(
        "latch {}  pid {}  up {}  config {}\n",
        s.version,
        s.pid,
        human_duration(s.uptime_seconds),
        s.config_path
    );
    out.push_str(&format!(
        "interfaces: {}\n",
        if s.interfaces.is_empty() {
            "-".to_owned()
        } else {
            s.interfaces.join(", ")
        }
    ));
    out.push_str(&format!(
        "virtual services: {}  pools: {}  servers up: {}/{}\n",
        s.virtual_services, s.pools, s.servers_up, s.servers_total
    ));
    out.push_str(&format!(
        "reloads: {} applied, {} refused{}\n",
        s.reloads_applied,
        s.reloads_refused,
        s.last_reload_unix_seconds
            .map(|t| format!(" (last {} ago)", human_duration(now.saturating_sub(t))))
            .unwrap_or_default()
    ));
    if s.tables_unmirrored.is_empty() {
        out.push_str("kernel table mirror: every table entry mirrored (all survive a kill -9)\n");
    } else {
        out.push_str("table entries NOT in the kernel mirror (lost on kill -9):\n");
        for (vs, c) in &s.tables_unmirrored {
            out.push_str(&format!(
                "  {vs}: {} (mirror full {}, too large {}, refused {})\n",
                c.unmirrored(),
                c.unmirrored_full,
                c.unmirrored_too_large,
                c.unmirrored_failed
            ));
        }
    }
    if pools.is_empty() {
        return out;
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = pools
        .iter()
        .flat_map(|p| {
            p.servers.iter().map(move |srv| {
                vec![
                    p.name.clone(),
                    srv.addr.to_string(),
                    if srv.up { "up" } else { "DOWN" }.to_owned(),
                    levers_cell(&srv.levers),
                    weight_cell(&srv.levers),
                    opt(srv
                        .since_unix_seconds
                        .map(|t| human_duration(now.saturating_sub(t)))),
                    srv.transitions.to_string(),
                    match &p.monitor {
                        Some(m) => m.kind.clone(),
                        None => "-".to_owned(),
                    },
                    opt(srv.last_error.clone()),
                ]
            })
        })
        .collect();
    out.push_str(&render_table(
        &[
            "POOL",
            "SERVER",
            "HEALTH",
            "STATE",
            "WEIGHT",
            "SINCE",
            "TRANSITIONS",
            "MONITOR",
            "LAST ERROR",
        ],
        &rows,
    ));
    out
}

/// A server's levers in one cell: `ready`, `drain`, `maint`, with ` backup` for a backup.
fn levers_cell(l: &ServerLeversView) -> String {
    if l.backup {
        format!("{} backup", l.state)
    } else {
        l.state.clone()
    }
}

/// A weight and, while it differs, the share of it in force: `3`, `3 (40%)`.
fn weight_cell(l: &ServerLeversView) -> String {
    if l.state == "ready" && l.effective_weight_percent < 100 {
        format!("{} ({}%)", l.weight, l.effective_weight_percent)
    } else {
        l.weight.to_string()
    }
}

/// `latch server ...` for people.
pub fn format_server_change(v: &ServerChangeView) -> String {
    let mut out = format!(
        "pool {} server {}: {}, weight {}, health {}",
        v.pool,
        v.server,
        levers_cell(&v.levers),
        weight_cell(&v.levers),
        if v.up { "up" } else { "DOWN" }
    );
    if v.levers.state != "ready" {
        out.push_str(&format!(", {} requests in flight", v.active_requests));
    }
    out.push('\n');
    out
}

/// `latch stats` for people.
pub fn format_stats(vs: &[VirtualServiceView], pools: &[PoolView]) -> String {
    let rows: Vec<Vec<String>> = vs
        .iter()
        .map(|v| {
            let h = v.http.as_ref();
            vec![
                v.name.clone(),
                v.kind.clone(),
                v.listen.clone(),
                opt(h.map(|h| h.requests)),
                opt(h.map(|h| h.responses.c2xx)),
                opt(h.map(|h| h.responses.c3xx)),
                opt(h.map(|h| h.responses.c4xx)),
                opt(h.map(|h| h.responses.c5xx)),
                opt(h.map(|h| h.active_connections)),
                opt(h.map(|h| human_bytes(h.request_bytes))),
                opt(h.map(|h| human_bytes(h.response_bytes))),
                opt(v.l4.map(|l| l.packets)),
                opt(v.l4.map(|l| l.new_flows)),
                opt(v.tables.map(|t| t.entries)),
            ]
        })
        .collect();
    let mut out = render_table(
        &[
            "VIRTUAL SERVICE",
            "TYPE",
            "LISTEN",
            "REQUESTS",
            "2XX",
            "3XX",
            "4XX",
            "5XX",
            "ACTIVE",
            "BYTES IN",
            "BYTES OUT",
            "PACKETS",
            "NEW FLOWS",
            "ENTRIES",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = pools
        .iter()
        .flat_map(|p| {
            p.servers.iter().map(move |s| {
                let h = s.http.as_ref();
                vec![
                    p.name.clone(),
                    s.addr.to_string(),
                    if s.up { "up" } else { "DOWN" }.to_owned(),
                    opt(h.map(|h| h.requests)),
                    opt(h.map(|h| h.active_requests)),
                    opt(h.map(|h| h.responses.c5xx)),
                    opt(h.map(|h| h.connect_failures)),
                    opt(s.l4.map(|l| l.packets)),
                    opt(s.l4.map(|l| l.new_flows)),
                ]
            })
        })
        .collect();
    out.push('\n');
    out.push_str(&render_table(
        &[
            "POOL",
            "SERVER",
            "STATE",
            "REQUESTS",
            "ACTIVE",
            "5XX",
            "CONNECT FAILS",
            "PACKETS",
            "NEW FLOWS",
        ],
        &rows,
    ));
    out
}

/// `latch reload` for people.
pub fn format_reload(r: &ReloadView) -> String {
    let mut out = String::new();
    if r.applied {
        out.push_str("reload applied\n");
    } else {
        out.push_str("reload refused; the running configuration is unchanged:\n");
        for d in &r.diagnostics {
            out.push_str(&format!("  {d}\n"));
        }
    }
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

/// Table entries for people.
pub fn format_entries(entries: &[TableEntryView]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                if e.table.is_empty() {
                    "(default)".to_owned()
                } else {
                    e.table.clone()
                },
                e.key.clone(),
                e.value.clone(),
                format!("{}s", e.expires_in_seconds),
            ]
        })
        .collect();
    render_table(&["TABLE", "KEY", "VALUE", "EXPIRES IN"], &rows)
}
