//! The `latch` command: run, check and take down the agent, and talk to a running agent's
//! admin API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use latch::api::cli::{ClientCommand, ClientOptions};
use latch::api::model::ServerChangeRequest;

// The proxy allocates and frees small objects per request (headers, futures, buffers) on
// every worker thread; mimalloc's thread-local free lists cost less per pair than glibc's
// arenas (measured in the HTTP benchmark, see docs/ARCHITECTURE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "latch",
    version,
    about = "XDP load balancer with Avi-compatible DataScripts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground (SIGHUP reloads, SIGTERM drains and exits, leaving
    /// the XDP program attached and the maps pinned).
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate the config and compile its DataScripts; print every error.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Detach and remove everything latch attached or pinned.
    Down {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run and check DataScripts offline (no root, no network).
    Script {
        #[command(subcommand)]
        command: ScriptCommand,
    },
    /// Show a running agent's status and the health of every server.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show a running agent's counters per virtual service and server.
    Stats {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make a running agent reload its config file (all or nothing).
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Inspect and edit a running agent's DataScript persistence tables.
    Table {
        #[command(subcommand)]
        command: TableCommand,
    },
    /// Take a server out or bring it back, or change its weight, at runtime (kept across
    /// reloads and restarts).
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
}

#[derive(Subcommand)]
enum ScriptCommand {
    /// Run the cases of each CASES.toml through a virtual service's scripts as the proxy
    /// would, print what happened and exit non-zero on a failed expectation.
    Test {
        /// Cases files.
        #[arg(required = true, value_name = "CASES.toml")]
        cases: Vec<PathBuf>,
    },
}

/// Which server.
#[derive(Args)]
struct ServerArgs {
    /// Pool.
    pool: String,
    /// Server: ip:port, or an IP only one server of the pool has.
    server: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
enum ServerCommand {
    /// No new sessions or flows; connections in flight and persistence keep working.
    Drain(ServerArgs),
    /// Out at once: its table entries and fast-path pins are removed.
    Maint(ServerArgs),
    /// Back in rotation (after slow start, if the pool has one).
    Ready(ServerArgs),
    /// Set the server's weight (0 to 256), or `config` for the configured one.
    Weight {
        #[command(flatten)]
        which: ServerArgs,
        /// The weight, or `config`.
        weight: String,
    },
}

impl ServerCommand {
    fn into_client(self) -> (AdminArgs, ClientCommand) {
        let (which, change) = match self {
            ServerCommand::Drain(w) => (w, state_change("drain")),
            ServerCommand::Maint(w) => (w, state_change("maint")),
            ServerCommand::Ready(w) => (w, state_change("ready")),
            ServerCommand::Weight { which, weight } => (
                which,
                ServerChangeRequest {
                    state: None,
                    weight: Some(weight),
                },
            ),
        };
        (
            which.admin,
            ClientCommand::Server {
                pool: which.pool,
                server: which.server,
                change,
            },
        )
    }
}

fn state_change(state: &str) -> ServerChangeRequest {
    ServerChangeRequest {
        state: Some(state.to_owned()),
        weight: None,
    }
}

#[derive(Subcommand)]
enum TableCommand {
    /// List live entries of a virtual service's tables.
    List {
        /// Virtual service.
        vs: String,
        /// Only this table (default: every table).
        #[arg(long, value_name = "T")]
        table: Option<String>,
        /// Only keys starting with this.
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// At most this many entries (agent default 100).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one entry.
    Get {
        /// Virtual service.
        vs: String,
        /// Key.
        key: String,
        /// Table (default: the default table).
        #[arg(long, value_name = "T")]
        table: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove one entry.
    Delete {
        /// Virtual service.
        vs: String,
        /// Key.
        key: String,
        /// Table (default: the default table).
        #[arg(long, value_name = "T")]
        table: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove every entry of a table (default: of every table of the service).
    Flush {
        /// Virtual service.
        vs: String,
        /// Only this table.
        #[arg(long, value_name = "T")]
        table: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How to reach the agent.
#[derive(Args)]
struct AdminArgs {
    /// Admin API address [default: admin_listen of -c FILE, else 127.0.0.1:9180].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// The agent's config file, for its admin_listen and admin_token_file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// File holding the bearer token [default: admin_token_file of -c FILE].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    json: bool,
}

fn client(admin: AdminArgs, command: ClientCommand) -> anyhow::Result<ExitCode> {
    let opts = ClientOptions::resolve(
        admin.admin,
        admin.config.as_deref(),
        admin.token_file.as_deref(),
        admin.json,
    )?;
    Ok(latch::api::cli::run(&opts, &command)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => latch::agent::check_command(&config).map_err(Into::into),
        Command::Run { config } => latch::agent::run_command(&config).map_err(Into::into),
        Command::Down { config } => latch::agent::down_command(&config).map_err(Into::into),
        Command::Script {
            command: ScriptCommand::Test { cases },
        } => Ok(latch::scripttest::script_test_command(&cases)),
        Command::Status { admin } => client(admin, ClientCommand::Status),
        Command::Stats { admin } => client(admin, ClientCommand::Stats),
        Command::Reload { admin } => client(admin, ClientCommand::Reload),
        Command::Server { command } => {
            let (admin, command) = command.into_client();
            client(admin, command)
        }
        Command::Table { command } => match command {
            TableCommand::List {
                vs,
                table,
                prefix,
                limit,
                admin,
            } => client(
                admin,
                ClientCommand::TableList {
                    vs,
                    table,
                    prefix,
                    limit,
                },
            ),
            TableCommand::Get {
                vs,
                key,
                table,
                admin,
            } => client(admin, ClientCommand::TableGet { vs, key, table }),
            TableCommand::Delete {
                vs,
                key,
                table,
                admin,
            } => client(admin, ClientCommand::TableDelete { vs, key, table }),
            TableCommand::Flush { vs, table, admin } => {
                client(admin, ClientCommand::TableFlush { vs, table })
            }
        },
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("latch: {err:#}");
            ExitCode::FAILURE
        }
    }
}
