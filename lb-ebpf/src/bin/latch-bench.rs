//! XDP programs for `cargo xtask bench dataplane`; never loaded by the agent.
//!
//! - `bench_gen` runs through BPF_PROG_TEST_RUN in live-frames mode and returns XDP_TX, so each
//!   run puts one frame on the wire of the generator's veth. Live frames are recycled
//!   page_pool pages that the kernel initialises once: a receiver that rewrites a frame (NAT)
//!   would otherwise feed its rewrite into the next run, so the whole header is written from
//!   the template on every run.
//! - `bench_count_drop` counts IPv4 UDP frames and drops them (the XDP_DROP ceiling, and the
//!   backend-side counter); anything else passes so that the namespace keeps working.
//! - `bench_pass` only gives a veth NAPI so that frames redirected into it are received by the
//!   stack (the nftables measurement).
//! - `bench_redirect` forwards UDP frames (IPv4 or IPv6) to one fixed port with fixed MACs and
//!   nothing else (no lookup, no rewrite of the IP header): the best any XDP forwarder can do
//!   on the same topology, against which latch's own cost shows. Out of the port it came in by
//!   it returns XDP_TX, as latch does.
//! - `bench_tx` returns every UDP frame out of the port it came in by (XDP_TX) untouched: the
//!   ceiling of the circulating loop below, where an XDP_DROP would end the population.
//! - `bench_reflect` is the far end of the circulating loop, for kernels that refuse
//!   live-frames test runs: on the client's veth it turns every UDP frame that comes back
//!   (whatever the LB did to it) into a fresh request from a template (`ReflectConfig`) and
//!   returns it with XDP_TX, so a fixed population of frames injected once circulates between
//!   it and the program under test at the rate the two XDP paths allow. It counts what it
//!   returns, and drops everything once the configured deadline has passed, so a loop always
//!   ends by itself.
#![no_std]
#![no_main]
#![warn(clippy::undocumented_unsafe_blocks)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, bpf_redirect},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    bench::{GenConfig, MODE_FIXED_FLOWS, ReflectConfig},
    csum,
};

/// Length of the Ethernet + IPv4 + UDP header the generator writes.
const HDR_LEN: usize = 42;
const IP_CSUM_OFF: usize = 24;
const IP_SRC_OFF: usize = 26;
const SPORT_OFF: usize = 34;

#[map(name = "BENCH_GEN")]
static GEN: Array<GenConfig> = Array::with_max_entries(1, 0);

/// Packets generated so far. Not per-CPU: a generator thread that migrates to another CPU
/// would continue from that CPU's count and repeat tuples (each generator thread loads its
/// own copy of this object, so there is one writer).
#[map(name = "BENCH_SEQ")]
static SEQ: Array<u64> = Array::with_max_entries(1, 0);

/// `bench_redirect`'s next hop (index 0), written by the bench: destination then source MAC
/// in the first 12 bytes, the egress ifindex in the last 4 (native order).
#[map(name = "BENCH_HOP")]
static HOP: Array<[u8; 16]> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_COUNT")]
static COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Longest header `bench_reflect` writes (Ethernet + IPv6 + UDP); every frame of the loop is
/// at least this long.
const REFLECT_LEN: usize = 62;

#[map(name = "BENCH_REFLECT")]
static REFLECT: Array<ReflectConfig> = Array::with_max_entries(1, 0);

/// Per-CPU count of requests `bench_reflect` has built; it makes the flows.
#[map(name = "BENCH_RSEQ")]
static RSEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Frames `bench_reflect` dropped after the deadline: what was still circulating.
#[map(name = "BENCH_ENDED")]
static ENDED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    generate(&ctx).unwrap_or(xdp_action::XDP_ABORTED)
}

#[inline(always)]
fn generate(ctx: &XdpContext) -> Option<u32> {
    let start = ctx.data();
    if start + HDR_LEN > ctx.data_end() {
        return None;
    }
    let cfg = GEN.get(0)?;
    let seq = SEQ.get_ptr_mut(0)?;
    // SAFETY: a non-null pointer to SEQ's only value, valid and aligned while the program
    // runs; each generator thread loads its own copy of this object, so nothing else writes
    // it concurrently.
    let n = unsafe {
        let n = *seq;
        *seq = n + 1;
        n
    };
    let (src_addr, sport) = if cfg.mode == MODE_FIXED_FLOWS {
        let flows = if cfg.flows == 0 { 1 } else { cfg.flows as u64 };
        (cfg.src_addr, cfg.base_sport as u64 + n % flows)
    } else {
        let span = if cfg.octet_span == 0 {
            1
        } else {
            cfg.octet_span as u64
        };
        let octet = (cfg.octet_base as u64 + (n >> 16) % span) as u32;
        let mut bytes = cfg.src_addr.to_ne_bytes();
        bytes[3] = octet as u8;
        (u32::from_ne_bytes(bytes), n & 0xffff)
    };
    // SAFETY: the frame was checked to hold HDR_LEN (42) bytes from `start`; every write
    // below stays inside them (40 bytes as five u64, bytes 40 and 41, then fields at offsets
    // 26, 34 and 24) and is unaligned-tolerant; nothing else references the frame.
    unsafe {
        let dst = start as *mut u64;
        for i in 0..5 {
            core::ptr::write_unaligned(dst.add(i), cfg.header[i]);
        }
        let tail = cfg.header[5].to_ne_bytes();
        let p = start as *mut u8;
        *p.add(40) = tail[0];
        *p.add(41) = tail[1];

        core::ptr::write_unaligned(p.add(IP_SRC_OFF) as *mut u32, src_addr);
        core::ptr::write_unaligned(
            p.add(SPORT_OFF) as *mut [u8; 2],
            (sport as u16).to_be_bytes(),
        );
        let check = !csum::fold(csum::add_u32(cfg.csum_base, src_addr));
        core::ptr::write_unaligned(p.add(IP_CSUM_OFF) as *mut u16, check);
    }
    Some(xdp_action::XDP_TX)
}

/// Adds one to this CPU's slot of `map`.
#[inline(always)]
fn bump(map: &PerCpuArray<u64>) {
    if let Some(c) = map.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array: valid, aligned, and written by no one
        // else while the program runs on this CPU.
        unsafe { *c += 1 }
    }
}

/// The frame, if it is a UDP frame over IPv4 or IPv6 at least an IPv4 header long (what the
/// bench sends); anything else passes so that the namespace keeps working.
#[inline(always)]
fn udp_frame(ctx: &XdpContext) -> Option<*mut u8> {
    let start = ctx.data();
    if start + HDR_LEN > ctx.data_end() {
        return None;
    }
    let p = start as *mut u8;
    // EtherType 0x0800 with protocol 17 (byte 23), or 0x86dd with next header 17 (byte 20).
    // SAFETY: bytes 12, 13, 20 and 23 lie inside the HDR_LEN bytes checked against data_end.
    let udp = unsafe {
        match (*p.add(12), *p.add(13)) {
            (0x08, 0x00) => *p.add(23) == 17,
            (0x86, 0xdd) => *p.add(20) == 17,
            _ => false,
        }
    };
    udp.then_some(p)
}

#[xdp]
pub fn bench_count_drop(ctx: XdpContext) -> u32 {
    if udp_frame(&ctx).is_none() {
        return xdp_action::XDP_PASS;
    }
    bump(&COUNT);
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_redirect(ctx: XdpContext) -> u32 {
    let (Some(p), Some(hop)) = (udp_frame(&ctx), HOP.get(0)) else {
        return xdp_action::XDP_PASS;
    };
    let hop = *hop;
    let ifindex = u32::from_ne_bytes([hop[12], hop[13], hop[14], hop[15]]);
    for (i, byte) in hop[..12].iter().enumerate() {
        // SAFETY: `p` starts a frame of at least HDR_LEN (42) bytes (`udp4_frame`), so the
        // twelve MAC bytes are inside it.
        unsafe { *p.add(i) = *byte };
    }
    // The same choice as latch's own forwarding: XDP_TX out of the port the frame came in
    // by (the circulating loop), else the redirect helper.
    // SAFETY: reading the context's ingress ifindex, a field every XDP context has.
    if ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        return xdp_action::XDP_TX;
    }
    // SAFETY: the helper takes an ifindex and flags by value and touches no memory of ours.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

#[xdp]
pub fn bench_tx(ctx: XdpContext) -> u32 {
    match udp_frame(&ctx) {
        Some(_) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub fn bench_reflect(ctx: XdpContext) -> u32 {
    reflect(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn reflect(ctx: &XdpContext) -> Option<u32> {
    let p = udp_frame(ctx)?;
    if ctx.data() + REFLECT_LEN > ctx.data_end() {
        return None;
    }
    let cfg = REFLECT.get(0)?;
    // The coarse clock (a jiffy's resolution) is enough for a deadline and costs no clock
    // read; the bench gives the loop seconds beyond its window.
    // SAFETY: the helper takes no arguments.
    if unsafe { bpf_ktime_get_coarse_ns() } > cfg.deadline_ns {
        bump(&ENDED);
        return Some(xdp_action::XDP_DROP);
    }
    let seq = RSEQ.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array, written by no one else meanwhile.
    let n = unsafe {
        let n = *seq;
        *seq = n + 1;
        n
    };
    let (word, sport) = if cfg.mode == MODE_FIXED_FLOWS {
        let flows = if cfg.flows == 0 { 1 } else { cfg.flows as u64 };
        (cfg.word_fixed, (cfg.base_sport as u64 + n % flows) as u32)
    } else {
        let span = if cfg.word_span == 0 {
            1
        } else {
            cfg.word_span as u64
        };
        let cpus = if cfg.cpus == 0 { 1 } else { cfg.cpus };
        // SAFETY: the helper takes no arguments.
        let cpu = unsafe { bpf_get_smp_processor_id() } % cpus;
        let word = cfg.word_base as u64 + cpu as u64 * span + (n >> 16) % span;
        (word as u32, (n & 0xffff) as u32)
    };
    let word_be = (word as u16).to_be_bytes();
    let sport_be = (sport as u16).to_be_bytes();
    let mut sum = cfg.csum_base + u16::from_ne_bytes(word_be) as u32;
    if cfg.sport_in_csum != 0 {
        sum += u16::from_ne_bytes(sport_be) as u32;
    }
    let mut check = !csum::fold(sum);
    if cfg.sport_in_csum != 0 && check == 0 {
        // UDP sends a computed zero as all ones (zero means "no checksum").
        check = 0xffff;
    }
    // The offsets come from the map: each written field is checked against the frame's end
    // again, which is how the verifier accepts a write at a variable offset.
    let field = |off: u32| -> Option<*mut u8> {
        let at = ctx.data() + (off & 0x3f) as usize;
        (at + 2 <= ctx.data_end()).then_some(at as *mut u8)
    };
    let (sport_at, word_at, csum_at) = (
        field(cfg.sport_off)?,
        field(cfg.word_off)?,
        field(cfg.csum_off)?,
    );
    // SAFETY: the frame holds REFLECT_LEN (62) bytes from `p` (checked above), which the
    // header copy writes (56 + 6); each two-byte field was checked against the frame's end
    // just above; nothing else references the frame.
    unsafe {
        let dst = p as *mut u64;
        for i in 0..7 {
            core::ptr::write_unaligned(dst.add(i), cfg.header[i]);
        }
        let tail = cfg.header[7].to_ne_bytes();
        for (i, b) in tail.iter().take(REFLECT_LEN - 56).enumerate() {
            *p.add(56 + i) = *b;
        }
        core::ptr::write_unaligned(sport_at as *mut [u8; 2], sport_be);
        core::ptr::write_unaligned(word_at as *mut [u8; 2], word_be);
        core::ptr::write_unaligned(csum_at as *mut u16, check);
    }
    bump(&COUNT);
    Some(xdp_action::XDP_TX)
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// SAFETY: the loader reads the license from a section of this name; `LICENSE` is the only
// symbol of that name in the object, so keeping it unmangled clashes with nothing.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
