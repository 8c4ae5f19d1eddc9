//! Test harness for latch: network namespaces that clean up after themselves, the standard
//! client — LB — backends topology, a test backend server, and bounded traffic helpers.
//!
//! Every namespace is created under a unique `lt-<pid>-<n>-<role>` name and deleted on drop;
//! every address lives in the RFC 5737 ranges and only inside those namespaces; nothing here
//! touches the host's interfaces, routes or sysctls.

pub mod agent;
pub mod body;
pub mod client;
pub mod error;
pub mod netns;
pub mod server;
pub mod topology;

pub use agent::{LatchAgent, READY_LINE, agent_section};
pub use client::{
    DEFAULT_TIMEOUT, HttpConn, RequestBody, Response, UdpReply, http_download, http_get,
    http_get_from, http_request, http_request_async, http_upload, udp_roundtrip, udp_roundtrip_on,
};
pub use error::{Error, Result};
pub use netns::{ChildGuard, Netns, list_namespaces};
pub use server::{ServeConfig, ServerHandle, ServerInfo, TestServer};
pub use topology::{Backend, Topology, TopologyBuilder};

/// Namespace tests need root (and `ip`); without them they print why and skip.
pub fn can_run_netns_tests() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::process::Command::new("ip")
        .arg("-V")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Returns early from a test (printing why) when namespace tests cannot run here.
#[macro_export]
macro_rules! require_netns {
    () => {
        if !$crate::can_run_netns_tests() {
            eprintln!("skipped: needs root and iproute2 (network namespaces)");
            return;
        }
    };
    ($ret:expr) => {
        if !$crate::can_run_netns_tests() {
            eprintln!("skipped: needs root and iproute2 (network namespaces)");
            return $ret;
        }
    };
}
