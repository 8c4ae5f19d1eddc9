//! The data plane's clock: CLOCK_MONOTONIC at tick resolution.
//!
//! `bpf_ktime_get_ns` reads the TSC, which on this machine kind (a VM) cost about 30 ns per call,
//! 8% of all CPU time forwarding established flows (perf, bench dataplane). Everything the
//! program times (conntrack refresh and next-hop reuse at 1 s, persistence lifetimes of seconds
//! or more) is content with the coarse clock, which reads the time of the last tick. It is the
//! same clock as the agent's CLOCK_MONOTONIC, only up to one tick (1-10 ms) behind it.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: the helper takes no arguments and only reads the kernel's clock; the verifier
    // allows it in XDP programs.
    unsafe { bpf_ktime_get_coarse_ns() }
}
