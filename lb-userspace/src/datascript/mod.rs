//! DataScript engine: Lua VMs, the avi.* API, sandbox and limits.
//!
//! - [`ScriptSet::compile`] checks the scripts of one virtual service when the config loads
//!   (syntax errors come back as `file:line: message`); [`lint()`] flags string literals standing
//!   where a lifetime could be meant.
//! - [`DataScriptHooks`] is the [`crate::proxy::hooks::HookFactory`] of one virtual service. It
//!   owns a small pool of LuaJIT VMs (one per proxy worker by default) so concurrent requests
//!   do not serialize on one VM; a transaction sticks to the VM of its first event and keeps its
//!   own global environment there, so globals set in HTTP_REQ are seen in HTTP_RESP of the same
//!   request and by no other request.
//! - The JIT compiler is switched off in script VMs: LuaJIT does not run count hooks inside
//!   compiled traces, so a `while true do end` under the JIT would escape the instruction
//!   budget. DataScripts spend their time in avi.* calls (C functions, which end traces
//!   anyway), so the interpreter costs little; `bench_event` measures both.

mod api;
mod compile;
mod limiter;
mod lint;
mod names;
mod pattern;
mod refs;
mod strlib;
mod txn;
mod vm;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use compile::ScriptSet;
pub use limiter::RateLimits;
pub use lint::lint;
pub use refs::check_references;
pub use txn::{DataScriptHooks, DsCounters, EventCounters, ScriptEnv, ScriptTableObserver};

// The event names and script sources are what the config describes; the engine takes them as
// they are.
pub use crate::config::{ScriptEvent as Event, ScriptSource};

/// A problem in a script, located in the file it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}{}: {message}", file.display(), column.map(|c| format!(":{c}")).unwrap_or_default())]
pub struct ScriptError {
    /// File of the script.
    pub file: PathBuf,
    /// Line in that file (1-based).
    pub line: usize,
    /// Column in that line (1-based, in bytes), when known: Lua's own compiler reports lines
    /// only; latch's checks know the column.
    pub column: Option<usize>,
    /// Script name.
    pub script: String,
    /// What is wrong.
    pub message: String,
}

/// A warning from [`lint()`]; same shape as an error.
pub type LintWarning = ScriptError;

/// Resource limits of one virtual service's scripts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DsLimits {
    /// Lua VM instructions per event (all scripts of the event together).
    pub instruction_budget: u64,
    /// Hook period in instructions: a runaway script stops within budget + this.
    pub hook_every: u32,
    /// Wall-clock time one event may run (all scripts of the event together), whatever
    /// library function it calls: checked at every hook period and every pattern-matching
    /// step batch.
    pub max_event_time: Duration,
    /// Memory limit per VM in bytes.
    pub memory_bytes: usize,
    /// Headers the scripts of one transaction may add or replace (all events together).
    pub max_added_headers: usize,
    /// Bytes (names and values) of those headers.
    pub max_added_header_bytes: usize,
    /// VMs per virtual service (concurrent events); 0 = number of CPUs.
    pub vms: usize,
    /// The most of a body buffered for HTTP_REQ_DATA / HTTP_RESP_DATA scripts.
    pub max_body_buffer: usize,
    /// Leave LuaJIT's compiler on. Only for measurements: a loop compiled into a trace does not
    /// run the count hook, so the instruction budget no longer holds.
    pub jit: bool,
}

impl Default for DsLimits {
    fn default() -> Self {
        Self {
            instruction_budget: 1_000_000,
            hook_every: 1000,
            max_event_time: Duration::from_millis(50),
            memory_bytes: 32 << 20,
            max_added_headers: 100,
            max_added_header_bytes: 64 << 10,
            vms: 0,
            max_body_buffer: crate::config::DEFAULT_MAX_BODY_BUFFER,
            jit: false,
        }
    }
}

/// Failure to build the VMs of a virtual service (compile errors are [`ScriptError`]s).
#[derive(Debug, thiserror::Error)]
pub enum DsError {
    /// Lua refused to set up a VM.
    #[error("DataScript VM setup for {vs}: {source}")]
    Vm {
        /// Virtual service.
        vs: String,
        /// The Lua error.
        #[source]
        source: mlua::Error,
    },
    /// A script that compiled in [`ScriptSet::compile`] did not compile in a VM.
    #[error(transparent)]
    Script(#[from] ScriptError),
}
