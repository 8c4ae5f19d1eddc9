//! Whole-word access to packet bytes.
//!
//! Packet fields sit at 2-byte-aligned offsets (after the 14-byte Ethernet header), and the
//! BPF backend splits every access it cannot prove aligned into single bytes, shifts and ors:
//! about a hundred extra instructions on the forwarding path. The kernel accepts misaligned
//! packet access on the architectures that JIT XDP for speed (x86-64, arm64), so these
//! helpers load and store whole words with one instruction each. Values keep wire byte
//! order (the first byte in memory is the lowest byte of the value on little-endian BPF),
//! exactly as `from_ne_bytes` of the bytes would give.
//!
//! Callers must have bounds-checked the whole access against `data_end`; the verifier
//! rejects the program otherwise.

use core::arch::asm;

/// One load and one store function per width; `$w` is the BPF size keyword.
macro_rules! word_access {
    ($load:ident, $store:ident, $t:ty, $w:literal) => {
        #[inline(always)]
        pub unsafe fn $load(p: *const u8) -> $t {
            let v: u64;
            unsafe {
                asm!(concat!("{v} = *(", $w, " *)({p} + 0)"), p = in(reg) p, v = lateout(reg) v,
                    options(readonly, nostack, preserves_flags))
            };
            v as $t
        }

        #[inline(always)]
        pub unsafe fn $store(p: *mut u8, v: $t) {
            unsafe {
                asm!(concat!("*(", $w, " *)({p} + 0) = {v}"), p = in(reg) p, v = in(reg) v as u64,
                    options(nostack, preserves_flags))
            };
        }
    };
}

word_access!(load_u32, store_u32, u32, "u32");
word_access!(load_u16, store_u16, u16, "u16");
