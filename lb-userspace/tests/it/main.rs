//! The integration tests of lb-userspace, in one binary so the agent is linked once: one
//! module per area. Tests that need root (network namespaces, BPF) are `#[ignore]`d with the
//! reason; `cargo xtask test` runs them as root with `--include-ignored`, and
//! `cargo test -p lb-userspace --test it -- --include-ignored` does the same by hand.

mod api_cli;
mod api_packaging;
mod api_server;
mod api_support;
mod avi_utils_netns;
mod cli_check;
mod dataplane_loader;
mod ecmp_netns;
mod fastpath_netns;
mod fuzz_xdp;
mod groups_netns;
mod h2_netns;
mod http_netns;
mod ipv6_netns;
mod l4_netns;
mod levers_netns;
mod netns_config;
mod ops_netns;
mod pmtu_netns;
mod replication_netns;
mod restart_netns;
mod sandbox_netns;
mod script_runner;
mod tls_netns;
mod tunnel_netns;
mod upgrade_netns;
mod xdp_fixtures;

/// The path of the `latch` binary cargo built for these tests.
pub(crate) const LATCH: &str = env!("CARGO_BIN_EXE_latch");
