//! Configurations of the benchmark programs (`lb-ebpf/src/bin/latch-bench.rs`), written into
//! their maps by `cargo xtask bench dataplane` (`xtask/bench/src/frames.rs` builds them): one
//! layout for both sides.

/// Generator and reflector modes: every packet repeats one of `flows` 5-tuples.
pub const MODE_FIXED_FLOWS: u32 = 0;
/// Every packet is a new 5-tuple (any value but [`MODE_FIXED_FLOWS`]).
pub const MODE_NEW_FLOWS: u32 = 1;

/// `bench_gen`'s configuration (`BENCH_GEN`, index 0), written by the bench before it runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GenConfig {
    /// Ethernet + IPv4 + UDP header with the IP checksum and the source address zeroed
    /// (48 bytes, 42 used).
    pub header: [u64; 6],
    /// One's complement sum (native 16-bit words, unfolded) of the template header with the
    /// source address and checksum zeroed.
    pub csum_base: u32,
    /// `MODE_FIXED_FLOWS` or new-flow mode (any other value).
    pub mode: u32,
    /// Fixed-flow mode: number of distinct flows (source ports `base_sport..`).
    pub flows: u32,
    /// Source address (network order) of fixed-flow mode; in new-flow mode its last octet is
    /// replaced.
    pub src_addr: u32,
    /// First source port (host order).
    pub base_sport: u32,
    /// New-flow mode: first value of the last source octet; each generator instance gets its
    /// own range so instances never repeat each other's tuples.
    pub octet_base: u32,
    /// New-flow mode: number of last-octet values this instance may use.
    pub octet_span: u32,
    /// Keeps the size a multiple of 8 with no implicit padding.
    pub _pad: u32,
}

/// `bench_reflect`'s configuration (`BENCH_REFLECT`, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReflectConfig {
    /// The request's Ethernet + IP + UDP header (62 bytes written, for IPv4 the IP payload
    /// continues with zeros), with the varying fields (source port, the varying 16-bit word of
    /// the source address) and the checksum zeroed.
    pub header: [u64; 8],
    /// Unfolded one's complement sum of what the checksum covers, varying fields zeroed.
    pub csum_base: u32,
    /// Offset of the checksum to finish (IPv4 header, or UDP for IPv6).
    pub csum_off: u32,
    /// 1 if the source port is under that checksum (UDP over IPv6), else 0.
    pub sport_in_csum: u32,
    /// Offset of the varying 16-bit word of the source address.
    pub word_off: u32,
    /// That word (host order) in fixed-flow mode.
    pub word_fixed: u32,
    /// New-flow mode: first value of the word; each CPU gets `word_span` values of its own.
    pub word_base: u32,
    /// New-flow mode: values of the word each CPU may use.
    pub word_span: u32,
    /// `MODE_FIXED_FLOWS` or new-flow mode (any other value).
    pub mode: u32,
    /// Fixed-flow mode: distinct flows (source ports `base_sport..`).
    pub flows: u32,
    /// First source port (host order).
    pub base_sport: u32,
    /// CPUs whose word ranges are disjoint (CPU ids are taken modulo this).
    pub cpus: u32,
    /// Offset of the UDP source port (34 over IPv4, 54 over IPv6).
    pub sport_off: u32,
    /// CLOCK_MONOTONIC ns after which every frame is dropped (0: drop everything).
    pub deadline_ns: u64,
}

const _: () = assert!(core::mem::size_of::<GenConfig>() == 80);
const _: () = assert!(core::mem::size_of::<ReflectConfig>() == 120);
