//! latch's XDP program: L4 load balancing (NAT or DSR) from BPF maps, HTTP services handed
//! to the local proxy unless the client-IP fast path applies. See docs/ARCHITECTURE.md,
//! "The life of a packet in XDP".
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod clock;
mod conntrack;
mod ctx;
mod family;
mod forward;
mod icmp;
mod icmp6;
mod maglev;
mod maps;
mod nexthop;
mod parse;
mod persist;
mod service;
mod stats;
mod tunnel;
mod wire;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use lb_common::{BackendOf, Service, flow_flags, service_flags, stat};

use crate::{
    ctx::Ctx,
    family::{Family, V4, V6},
    parse::{Irregular, L3, Other6, Packet, Parsed},
};

#[xdp]
pub fn latch_xdp(ctx: XdpContext) -> u32 {
    process(&ctx)
}

/// The same logic at TC ingress (`attach = "tc"`), for frames with partial checksums (see
/// ctx.rs). The headers latch reads are made linear first; XDP's verdicts map to TC's.
#[classifier]
pub fn latch_tc(ctx: TcContext) -> i32 {
    let need = ctx.len().min(HEADROOM_PULL);
    if ((ctx.data_end() - ctx.data()) as u32) < need {
        // A failure leaves the frame as it is; the parser then passes it untouched.
        let _ = ctx.pull_data(need);
    }
    match process(&ctx) {
        xdp_action::XDP_PASS => TC_ACT_OK,
        xdp_action::XDP_TX | xdp_action::XDP_REDIRECT => TC_ACT_REDIRECT,
        _ => TC_ACT_SHOT,
    }
}

/// Bytes made linear at TC: every header latch reads (Ethernet, IPv4 without options or IPv6
/// without extension headers, TCP with options, or an ICMP error's quoted headers) lies within
/// them. The extension headers walked for counting may lie beyond: such a packet is counted
/// as irregular without its port.
const HEADROOM_PULL: u32 = 148;

#[inline(always)]
fn pass(stat_index: u32) -> u32 {
    stats::count(stat_index);
    xdp_action::XDP_PASS
}

/// What the service logic decided for a VIP packet.
enum Decision<A> {
    /// Final verdict (counters already done).
    Verdict(u32),
    /// Forward to this backend (`new_flow`: a connection starts).
    Forward {
        id: u32,
        be: BackendOf<A>,
        new_flow: bool,
    },
}

/// Dispatch by address family, each family's path a BPF subprogram of its own.
///
/// Why not one inlined function, as before: the verifier bounds the stack of a call chain at
/// 512 bytes, and one frame holding both paths took 360 of them, leaving no room for another
/// path (ICMPv6 errors, tunnels). Most of a frame is register spills (a helper call clobbers
/// all but four registers, so what lives across a map lookup is spilled), and IPv6 spills
/// four words per address. As siblings, the paths' frames no longer add up: the chain is
/// this dispatcher (4 bytes) plus the largest path. Still one call per packet (the `xdp`
/// section's entry called one function before); the paths re-check the Ethernet bounds;
/// measured about 2 ns more per IPv4 packet (docs/ARCHITECTURE.md, "The life of a packet
/// in XDP").
#[inline(always)]
fn process<C: Ctx>(ctx: &C) -> u32 {
    match parse::l3(ctx) {
        L3::Ipv4 => process4(ctx),
        L3::Ipv6 => process6(ctx),
        L3::Icmp6 => process_icmp6(ctx),
        L3::Pass(s) => pass(s),
    }
}

/// An IPv4 frame.
#[inline(never)]
fn process4<C: Ctx>(ctx: &C) -> u32 {
    match parse::parse4(ctx) {
        Parsed::Pass(s) => pass(s),
        Parsed::Irregular(irr) => irregular::<V4>(&irr),
        Parsed::IcmpError(e) => icmp::translate(ctx, &e, crate::clock::now_ns()),
        Parsed::Packet(p) => packet(ctx, &p),
    }
}

/// An IPv6 frame.
#[inline(never)]
fn process6<C: Ctx>(ctx: &C) -> u32 {
    parse::parse6(
        ctx,
        |p| packet(ctx, p),
        |other| match other {
            Other6::Pass(s) => pass(s),
            Other6::Irregular(irr) => irregular::<V6>(&irr),
        },
    )
}

/// An ICMPv6 frame: a path of its own, not `process6`'s, so that its frame and the TCP/UDP
/// path's do not add up either.
#[inline(never)]
fn process_icmp6<C: Ctx>(ctx: &C) -> u32 {
    match parse::parse_icmp6(ctx) {
        Ok(e) => icmp6::translate(ctx, &e, crate::clock::now_ns()),
        Err(s) => pass(s),
    }
}

/// A packet the fast path does not handle, passed and counted.
#[inline(always)]
fn irregular<F: Family>(irr: &Irregular<F::Addr>) -> u32 {
    // Non-first fragments carry no ports: count them as fragments without knowing whether
    // they were meant for a VIP.
    let to_vip = match irr.dport {
        Some(port) => service::lookup::<F>(irr.dst, port, irr.proto).is_some(),
        None => true,
    };
    pass(if to_vip {
        stat::PASS_FRAGMENT_OR_OPTIONS
    } else {
        stat::PASS_NOT_VIP
    })
}

/// A TCP/UDP packet of either family: its flow, or the service's decision, then the rewrite.
#[inline(always)]
fn packet<C: Ctx, F: tunnel::Encap>(ctx: &C, pkt: &Packet<F>) -> u32 {
    // Established flows first: a non-SYN packet's own conntrack entry answers most traffic
    // with one lookup. `known_miss` spares the full path a second lookup of the same key.
    let mut known_miss = false;
    let mut early = None;
    if !pkt.is_syn() {
        // A NAT backend's reply has no entry of its own (a flow has one, keyed by the client's
        // tuple): it is recognised by its source first, which the bitmap rules out for almost
        // every other packet at the cost of an array read.
        if conntrack::maybe_reply::<F>(&pkt.key)
            && let Some((vip, vport)) = conntrack::lookup_reply::<F>(&pkt.key)
        {
            stats::count(stat::REPLY_NAT);
            return forward::reply(ctx, pkt, vip, vport, crate::clock::now_ns());
        }
        match conntrack::early::<F>(&pkt.key) {
            conntrack::Early::Miss => known_miss = true,
            conntrack::Early::Forward { id, be, flow, now } => {
                stats::count(stat::CONNTRACK_HIT);
                early = Some((flow.service_id, flow.flags, id, be, now));
            }
            conntrack::Early::Full => {}
        }
    }
    // `mode`: the flow flags (DSR, TUNNEL) the packet is forwarded by.
    let (service_id, mode, id, be, new_flow, now) = match early {
        Some((service_id, mode, id, be, now)) => (service_id, mode, id, be, false, now),
        None => {
            let Some(svc) = service::lookup::<F>(pkt.key.dst_addr, pkt.key.dst_port, pkt.key.proto)
            else {
                return pass(stat::PASS_NOT_VIP);
            };
            let now = crate::clock::now_ns();
            let decision = if svc.flags & service_flags::HTTP != 0 {
                http(pkt, &svc, now, known_miss)
            } else {
                l4(pkt, &svc, now, known_miss)
            };
            match decision {
                Decision::Verdict(v) => return v,
                Decision::Forward { id, be, new_flow } => (
                    svc.id,
                    flow_flags::of_service(svc.flags),
                    id,
                    be,
                    new_flow,
                    now,
                ),
            }
        }
    };
    // Single call site: the rewrite code is emitted once.
    stats::traffic(service_id, id, pkt.tot_len, new_flow);
    if mode & flow_flags::DSR != 0 {
        forward::dsr(ctx, pkt, &be, mode & flow_flags::TUNNEL != 0, now)
    } else {
        forward::nat(ctx, pkt, &be, now)
    }
}

#[inline(always)]
fn l4<F: Family>(pkt: &Packet<F>, svc: &Service, now: u64, known_miss: bool) -> Decision<F::Addr> {
    if !pkt.is_syn()
        && !known_miss
        && let Some((id, be)) = conntrack::lookup_forward::<F>(&pkt.key, svc, now)
    {
        stats::count(stat::CONNTRACK_HIT);
        return Decision::Forward {
            id,
            be,
            new_flow: false,
        };
    }
    // A SYN, any UDP miss, and (as Katran does) a TCP mid-flow miss after an LB restart or
    // LRU eviction: the choice is consistent, so re-hashing lands on the same backend.
    let Some((id, be)) = choose(pkt, svc, now) else {
        stats::count(stat::DROP_NO_BACKEND);
        return Decision::Verdict(xdp_action::XDP_DROP);
    };
    conntrack::record::<F>(&pkt.key, id, &be, svc.id, svc.flags, now);
    if svc.flags & service_flags::PERSIST_CLIENT_IP != 0 {
        let key = persist::key::<F>(svc, &pkt.key.src_addr);
        persist::pin::<F>(&key, id, &be, now, svc.persist_ttl_ns);
    }
    Decision::Forward {
        id,
        be,
        new_flow: true,
    }
}

#[inline(always)]
fn http<F: Family>(
    pkt: &Packet<F>,
    svc: &Service,
    now: u64,
    known_miss: bool,
) -> Decision<F::Addr> {
    if pkt.is_syn() {
        if svc.flags & service_flags::FAST_PATH != 0
            && let persist::Lookup::Live(id, be) =
                persist::lookup::<F>(&persist::key::<F>(svc, &pkt.key.src_addr), now)
        {
            stats::count(stat::FAST_PATH);
            conntrack::record::<F>(&pkt.key, id, &be, svc.id, svc.flags, now);
            // The agent owns the pin's expiry (it mirrors a DataScript table): no refresh.
            return Decision::Forward {
                id,
                be,
                new_flow: true,
            };
        }
        // The tuple may have carried an earlier fast-path connection: its entry must not
        // steal this proxied one.
        conntrack::forget::<F>(&pkt.key);
        return Decision::Verdict(pass(stat::PASS_TO_PROXY));
    }
    if !known_miss && let Some((id, be)) = conntrack::lookup_forward::<F>(&pkt.key, svc, now) {
        stats::count(stat::CONNTRACK_HIT);
        return Decision::Forward {
            id,
            be,
            new_flow: false,
        };
    }
    Decision::Verdict(pass(stat::PASS_TO_PROXY))
}

/// New-flow backend choice: a live persistence pin first, else the maglev table.
#[inline(always)]
fn choose<F: Family>(
    pkt: &Packet<F>,
    svc: &Service,
    now: u64,
) -> Option<(u32, BackendOf<F::Addr>)> {
    if svc.flags & service_flags::PERSIST_CLIENT_IP != 0 {
        match persist::lookup::<F>(&persist::key::<F>(svc, &pkt.key.src_addr), now) {
            persist::Lookup::Live(id, be) => {
                stats::count(stat::PERSIST_HIT);
                return Some((id, be));
            }
            persist::Lookup::Stale => stats::count(stat::PERSIST_EXPIRED),
            persist::Lookup::Miss => {}
        }
    }
    let hash = if svc.flags & service_flags::HASH_CLIENT_IP != 0 {
        F::client_hash(&pkt.key, svc.flags)
    } else {
        F::flow_hash(&pkt.key)
    };
    let chosen = maglev::pick::<F>(svc, hash)?;
    stats::count(stat::NEW_FLOW_MAGLEV);
    Some(chosen)
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
