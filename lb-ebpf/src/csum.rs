//! Incremental Internet checksum updates (RFC 1624: HC' = ~(~HC + ~m + m')).
//!
//! All 16-bit words are taken in memory order from network-order data, which yields the
//! checksum in network order too (RFC 1071's byte-order independence), so nothing is swapped.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// Checksum after one 32-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u32
        + (!(old as u16)) as u32
        + (!((old >> 16) as u16)) as u32
        + (new & 0xffff)
        + (new >> 16);
    !fold(sum)
}

/// Reads a checksum field (in the packet, bounds-checked by the parser) as stored.
#[inline(always)]
pub fn load(field: *const [u8; 2]) -> u16 {
    unsafe { crate::wire::load_u16(field.cast::<u8>()) }
}

/// Writes a checksum field (in the packet, bounds-checked by the parser).
#[inline(always)]
pub fn store(field: *mut [u8; 2], value: u16) {
    unsafe { crate::wire::store_u16(field.cast::<u8>(), value) }
}
