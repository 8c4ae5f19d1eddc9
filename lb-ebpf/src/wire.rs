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
        /// Loads the word at `p` with one instruction, whatever its alignment.
        ///
        /// # Safety
        /// `p .. p + size_of::<T>()` must be readable packet bytes, bounds-checked against
        /// `data_end` on every path to this call (the verifier rejects the program otherwise).
        #[inline(always)]
        pub unsafe fn $load(p: *const u8) -> $t {
            let v: u64;
            // SAFETY: the caller guarantees that the bytes at `p` are readable packet memory;
            // the instruction reads only them and writes only the output register (no stack,
            // no flags), as the options declare.
            unsafe {
                asm!(concat!("{v} = *(", $w, " *)({p} + 0)"), p = in(reg) p, v = lateout(reg) v,
                    options(readonly, nostack, preserves_flags))
            };
            v as $t
        }

        /// Stores `v` at `p` with one instruction, whatever its alignment.
        ///
        /// # Safety
        /// `p .. p + size_of::<T>()` must be writable packet bytes, bounds-checked against
        /// `data_end` on every path to this call, and not borrowed by any Rust reference.
        #[inline(always)]
        pub unsafe fn $store(p: *mut u8, v: $t) {
            // SAFETY: the caller guarantees that the bytes at `p` are writable packet memory
            // that no reference aliases; the instruction writes only them (no stack, no flags).
            unsafe {
                asm!(concat!("*(", $w, " *)({p} + 0) = {v}"), p = in(reg) p, v = in(reg) v as u64,
                    options(nostack, preserves_flags))
            };
        }
    };
}

word_access!(load_u32, store_u32, u32, "u32");
word_access!(load_u16, store_u16, u16, "u16");

/// Reads a checksum field as stored.
///
/// # Safety
/// `field` must point into the packet, bounds-checked (as `parse` does for the fields of a
/// `Packet`).
#[inline(always)]
pub unsafe fn load_check(field: *const [u8; 2]) -> u16 {
    // SAFETY: the caller's contract is `load_u16`'s for these two bytes.
    unsafe { load_u16(field.cast::<u8>()) }
}

/// Writes a checksum field.
///
/// # Safety
/// `field` must point into the packet, bounds-checked (as `parse` does for the fields of a
/// `Packet`), with no reference to it alive.
#[inline(always)]
pub unsafe fn store_check(field: *mut [u8; 2], value: u16) {
    // SAFETY: the caller's contract is `store_u16`'s for these two bytes.
    unsafe { store_u16(field.cast::<u8>(), value) }
}
