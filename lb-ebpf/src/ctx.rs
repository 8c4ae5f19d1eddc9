//! The two hooks latch runs at: XDP (`latch_xdp`, the fast one) and TC ingress (`latch_tc`,
//! for frames whose TCP/UDP checksum is only partial). One program logic serves both, generic
//! over [`Ctx`]; verdicts are XDP's inside and mapped to TC's by the TC entry point.
//!
//! Why TC at all: a veth sender with TX checksum offload hands its frames on with
//! CHECKSUM_PARTIAL (the checksum field holds only the pseudo-header sum, to be completed on
//! transmit). XDP sees bytes only: it forwards such a frame as a finished one, and the
//! receiver drops it. At TC the frame is still an skb: `bpf_l4_csum_replace` with
//! `BPF_F_PSEUDO_HDR` adjusts a partial checksum as a partial one (and keeps a complete
//! receive sum right), and the redirected skb keeps its checksum state, so the next device or
//! the receiving stack completes it.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_REDIRECT, xdp_action},
    helpers::generated::{bpf_redirect, bpf_xdp_adjust_head},
    programs::{TcContext, XdpContext},
};

/// What the program needs of its hook.
pub trait Ctx {
    /// TCP/UDP checksums may be rewritten in place (XDP: frames always carry a complete one).
    /// Otherwise [`Ctx::l4_csum`] must do it, after every direct packet access: the helper
    /// invalidates packet pointers.
    const DIRECT_L4_CSUM: bool;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The frame's length: at XDP the bytes in reach; at TC the skb's, of which the headers
    /// are made linear (so directly readable) on entry.
    fn len(&self) -> usize;
    fn ingress_ifindex(&self) -> u32;
    /// The context pointer helpers such as `bpf_fib_lookup` take.
    fn raw(&self) -> *mut c_void;
    /// Sends the frame back out of its ingress port: `XDP_TX`.
    fn tx(&self, ingress: u32) -> u32;
    /// Sends the frame out of `ifindex`: `XDP_REDIRECT`, or another verdict on failure.
    fn redirect(&self, ifindex: u32) -> u32;
    /// Updates the TCP/UDP checksum at `offset` for a changed 32-bit word of an address in the
    /// pseudo-header (an IPv4 address, or one word of an IPv6 one); only called when
    /// `DIRECT_L4_CSUM` is false.
    fn l4_csum_addr(&self, offset: usize, udp: bool, from: u32, to: u32);
    /// The same for a changed port.
    fn l4_csum_port(&self, offset: usize, udp: bool, from: u16, to: u16);
    /// Where [`Ctx::grow_for_encap`] puts the new room: right after the Ethernet header (TC),
    /// or in front of the frame (XDP), in which case the Ethernet header must be moved to the
    /// new front.
    const ROOM_AFTER_MAC: bool;
    /// Makes `len` more bytes of room for an outer IP header (tunnel mode); `tc_encap` is the
    /// TC helper's flag naming the outer header (`BPF_F_ADJ_ROOM_ENCAP_L3_*`, so the skb
    /// knows it is encapsulated). False on failure, the frame unchanged. Invalidates packet
    /// pointers.
    fn grow_for_encap(&self, len: u32, tc_encap: u64) -> bool;
}

impl Ctx for XdpContext {
    const DIRECT_L4_CSUM: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: `self.ctx` is the kernel's `xdp_md` for this run, valid for the whole
        // program; the verifier checks (and rewrites) each context field access.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.as_ptr()
    }

    #[inline(always)]
    fn tx(&self, _ingress: u32) -> u32 {
        xdp_action::XDP_TX
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> u32 {
        // Plain bpf_redirect queues into the same per-CPU bulk queue as a devmap redirect
        // (dev_xdp_enqueue), so a devmap would only add a lookup.
        // SAFETY: the helper takes an ifindex and flags by value and touches no memory of
        // ours; an ifindex that is gone just makes it return XDP_ABORTED.
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }

    #[inline(always)]
    fn l4_csum_addr(&self, _offset: usize, _udp: bool, _from: u32, _to: u32) {}

    #[inline(always)]
    fn l4_csum_port(&self, _offset: usize, _udp: bool, _from: u16, _to: u16) {}

    const ROOM_AFTER_MAC: bool = false;

    #[inline(always)]
    fn grow_for_encap(&self, len: u32, _tc_encap: u64) -> bool {
        // SAFETY: the helper takes this run's `xdp_md` and a delta by value; it moves
        // `data` within the frame's headroom (or fails, changing nothing) and touches no
        // memory of ours.
        unsafe { bpf_xdp_adjust_head(self.ctx, -(len as i32)) == 0 }
    }
}

impl Ctx for TcContext {
    const DIRECT_L4_CSUM: bool = false;

    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self) as usize
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: `self.skb.skb` is the kernel's `__sk_buff` for this run, valid for the whole
        // program; the verifier checks (and rewrites) each context field access.
        unsafe { (*self.skb.skb).ingress_ifindex }
    }

    #[inline(always)]
    fn raw(&self) -> *mut c_void {
        self.as_ptr()
    }

    #[inline(always)]
    fn tx(&self, ingress: u32) -> u32 {
        // Out of the port it came in on: an egress redirect to the ingress device.
        // SAFETY: as in `redirect`.
        if unsafe { bpf_redirect(ingress, 0) } == i64::from(TC_ACT_REDIRECT) {
            xdp_action::XDP_TX
        } else {
            xdp_action::XDP_DROP
        }
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> u32 {
        // SAFETY: the helper takes an ifindex and flags by value and touches no memory of
        // ours; a gone ifindex makes the kernel drop the skb after the program.
        if unsafe { bpf_redirect(ifindex, 0) } == i64::from(TC_ACT_REDIRECT) {
            xdp_action::XDP_REDIRECT
        } else {
            xdp_action::XDP_DROP
        }
    }

    #[inline(always)]
    fn l4_csum_addr(&self, offset: usize, udp: bool, from: u32, to: u32) {
        // Failures (offset beyond the skb) leave the checksum as it was: the frame is then
        // dropped by its receiver, as any corrupt frame.
        let _ = self.l4_csum_replace(
            offset,
            u64::from(from),
            u64::from(to),
            u64::from(BPF_F_PSEUDO_HDR) | mangled_0(udp) | 4,
        );
    }

    #[inline(always)]
    fn l4_csum_port(&self, offset: usize, udp: bool, from: u16, to: u16) {
        let _ = self.l4_csum_replace(offset, u64::from(from), u64::from(to), mangled_0(udp) | 2);
    }

    const ROOM_AFTER_MAC: bool = true;

    #[inline(always)]
    fn grow_for_encap(&self, len: u32, tc_encap: u64) -> bool {
        // BPF_ADJ_ROOM_MAC: the room goes between the Ethernet and the IP header; the encap
        // flag makes the skb an encapsulated one (inner headers and GSO type set), so a GSO
        // skb is segmented as IPIP/IP6IP6 on its way out.
        self.adjust_room(len as i32, BPF_ADJ_ROOM_MAC, tc_encap)
            .is_ok()
    }
}

/// `BPF_ADJ_ROOM_MAC` of `enum bpf_adj_room_mode`.
const BPF_ADJ_ROOM_MAC: u32 = 1;

/// UDP: a zero checksum means none and stays so; a computed zero is written 0xffff.
#[inline(always)]
fn mangled_0(udp: bool) -> u64 {
    if udp {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}
