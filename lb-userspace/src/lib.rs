//! latch: an XDP layer-4 load balancer with an HTTP proxy that runs Avi-compatible DataScripts.
//!
//! Pure logic (`config`, `balancer`, `tables`, `datascript`) has no I/O and is unit-tested
//! without root; `dataplane` is the only module that talks to the kernel.

pub mod agent;
pub mod api;
pub mod balancer;
pub mod config;
pub mod dataplane;
pub mod datascript;
// Bounded-time fuzz targets, test-only (`cargo xtask fuzz`).
#[cfg(test)]
mod fuzz;
pub mod monitor;
pub mod proxy;
pub mod replication;
pub mod scripttest;
pub mod tables;
