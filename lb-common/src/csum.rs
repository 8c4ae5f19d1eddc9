//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624: HC' = ~(~HC + ~m +
//! m')), as the XDP program rewrites addresses, ports and TTLs.
//!
//! All 16-bit words are taken in memory order from network-order data (`from_ne_bytes` of the
//! two bytes), which yields the checksum in memory order too (RFC 1071's byte-order
//! independence): store it with `to_ne_bytes` and nothing is ever swapped. Sums are kept
//! unfolded in a `u32` until [`fold`].

/// Folds an unfolded one's complement sum to 16 bits (end-around carry). Two rounds suffice
/// for any `u32`: the first leaves at most 0x1fffe, the second at most 0xffff.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// `sum` plus both 16-bit words of `word` (a 32-bit field such as an IPv4 address). The split
/// into halves gives the same sum whatever the host byte order.
#[inline(always)]
pub fn add_u32(sum: u32, word: u32) -> u32 {
    sum + (word & 0xffff) + (word >> 16)
}

/// Unfolded one's complement sum of `bytes` as memory-order 16-bit words; an odd last byte is
/// padded with a zero byte, as RFC 1071 pads the data.
pub fn sum(bytes: &[u8]) -> u32 {
    let mut pairs = bytes.chunks_exact(2);
    let mut total: u64 = 0;
    for pair in pairs.by_ref() {
        total += u64::from(u16::from_ne_bytes([pair[0], pair[1]]));
    }
    if let [last] = pairs.remainder() {
        total += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    // Fold the 64-bit total into 32 bits without changing its value mod 0xffff.
    while total > u64::from(u32::MAX) {
        total = (total & 0xffff_ffff) + (total >> 32);
    }
    total as u32
}

/// The checksum of `bytes` (with their checksum field zeroed), in memory order.
pub fn checksum(bytes: &[u8]) -> u16 {
    !fold(sum(bytes))
}

/// Checksum after one 16-bit word changed from `old` to `new` (a port, TTL and protocol).
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// Checksum after one 32-bit word changed from `old` to `new` (an address, in the IP header
/// or in the TCP/UDP pseudo-header).
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    !fold(add_u32(add_u32((!check) as u32, !old), new))
}

/// [`replace_addr_port`] for IPv6: the changed address is the 128-bit one of the
/// pseudo-header (RFC 8200 8.1), as four words. UDP's rules are the same (IPv6 forbids a zero
/// UDP checksum, but one that arrives is left as it is, not invented).
#[inline(always)]
pub fn replace_addr6_port(
    check: u16,
    udp: bool,
    old_addr: &[u32; 4],
    new_addr: &[u32; 4],
    old_port: u16,
    new_port: u16,
) -> Option<u16> {
    if udp && check == 0 {
        return None;
    }
    // One 64-bit sum of whole 32-bit words, folded once at the end: a one's complement sum
    // may be taken in any word size (RFC 1071: 2^16 and 2^32 are both 1 modulo 0xffff), and
    // the words' halves or a fold per word cost about twice the instructions (measured:
    // 4.5 ns of an IPv6 NAT packet's 64 went to this checksum in the bench's loop).
    let mut sum = u64::from(!check) + u64::from(!old_port) + u64::from(new_port);
    let mut i = 0;
    while i < 4 {
        sum += u64::from(!old_addr[i]) + u64::from(new_addr[i]);
        i += 1;
    }
    // At most 11 terms below 2^32: two rounds bring the sum inside a u32.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    let c = !fold(sum as u32);
    Some(if udp && c == 0 { 0xffff } else { c })
}

/// A TCP or UDP checksum after NAT changed one address (in the pseudo-header) and one port,
/// with UDP's rules: a zero checksum means "none" and stays zero (`None`: leave the field
/// alone), and a computed zero is sent as 0xffff, its other representation (RFC 768).
#[inline(always)]
pub fn replace_addr_port(
    check: u16,
    udp: bool,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) -> Option<u16> {
    if udp && check == 0 {
        return None;
    }
    let c = replace2(replace4(check, old_addr, new_addr), old_port, new_port);
    Some(if udp && c == 0 { 0xffff } else { c })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const IP_CHECK: usize = 10;
    const IP_SRC: usize = 12;
    const IP_DST: usize = 16;
    const TCP_CHECK: usize = 16;
    const UDP_CHECK: usize = 6;
    const TCP: u8 = 6;
    const UDP: u8 = 17;

    fn load16(bytes: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([bytes[at], bytes[at + 1]])
    }

    fn load32(bytes: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    }

    fn store16(bytes: &mut [u8], at: usize, value: u16) {
        bytes[at..at + 2].copy_from_slice(&value.to_ne_bytes());
    }

    fn store32(bytes: &mut [u8], at: usize, value: u32) {
        bytes[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }

    /// An option-less IPv4 header with random fields and a correct checksum.
    fn ipv4_header(mut hdr: [u8; 20]) -> [u8; 20] {
        hdr[0] = 0x45;
        store16(&mut hdr, IP_CHECK, 0);
        let check = checksum(&hdr);
        store16(&mut hdr, IP_CHECK, check);
        hdr
    }

    /// A TCP or UDP segment between `src` and `dst`.
    #[derive(Clone, Debug)]
    struct Segment {
        src: u32,
        dst: u32,
        proto: u8,
        /// Header and payload; ports at 0..4.
        l4: Vec<u8>,
    }

    impl Segment {
        fn check_at(&self) -> usize {
            if self.proto == TCP {
                TCP_CHECK
            } else {
                UDP_CHECK
            }
        }

        /// The L4 checksum computed from scratch over pseudo-header and segment, as a sender
        /// writes it (a UDP result of 0 as 0xffff).
        fn full_checksum(&self) -> u16 {
            let mut data = Vec::with_capacity(12 + self.l4.len());
            data.extend_from_slice(&self.src.to_ne_bytes());
            data.extend_from_slice(&self.dst.to_ne_bytes());
            data.extend_from_slice(&[0, self.proto]);
            data.extend_from_slice(&(self.l4.len() as u16).to_be_bytes());
            data.extend_from_slice(&self.l4);
            let at = 12 + self.check_at();
            store16(&mut data, at, 0);
            let check = checksum(&data);
            if self.proto == UDP && check == 0 {
                0xffff
            } else {
                check
            }
        }

        fn with_valid_checksum(mut self) -> Self {
            let check = self.full_checksum();
            let at = self.check_at();
            store16(&mut self.l4, at, check);
            self
        }
    }

    fn segment() -> impl Strategy<Value = Segment> {
        (
            any::<u32>(),
            any::<u32>(),
            prop_oneof![Just(TCP), Just(UDP)],
            proptest::collection::vec(any::<u8>(), 20..90),
        )
            .prop_map(|(src, dst, proto, l4)| {
                Segment {
                    src,
                    dst,
                    proto,
                    l4,
                }
                .with_valid_checksum()
            })
    }

    #[test]
    fn checksum_of_a_known_ipv4_header() {
        // The classic example header (192.168.0.1 -> 192.168.0.199, UDP): checksum 0xb861.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let check = checksum(&hdr);
        assert_eq!(check.to_ne_bytes(), [0xb8, 0x61]);
        // A header that includes its correct checksum sums to all ones.
        store16(&mut hdr, IP_CHECK, check);
        assert_eq!(checksum(&hdr), 0);
    }

    #[test]
    fn odd_length_is_padded_with_a_zero_byte() {
        assert_eq!(
            checksum(&[0xab, 0xcd, 0xef]),
            checksum(&[0xab, 0xcd, 0xef, 0])
        );
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn fold_carries_around_for_any_sum() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(u32::MAX), 0xffff);
    }

    #[test]
    fn long_data_sums_without_overflow() {
        // 2^17 words of 0xffff overflow a u32 sum; the 64-bit total folds to the same value.
        let data = vec![0xff; 1 << 18];
        assert_eq!(checksum(&data), 0);
    }

    #[test]
    fn udp_rewrite_that_computes_zero_is_sent_as_ffff() {
        // Every new port: one of them makes the computed checksum 0, which must become 0xffff.
        let mut seg = Segment {
            src: 0x0100_00c0,
            dst: 0x0a00_00c0,
            proto: UDP,
            l4: vec![0x30, 0x39, 0x00, 0x50, 0x00, 0x0c, 0, 0, 1, 2, 3, 4],
        }
        .with_valid_checksum();
        let original = seg.clone();
        let mut saw_ffff = false;
        for port in 0..=u16::MAX {
            let new_port = u16::from_ne_bytes(port.to_be_bytes());
            store16(&mut seg.l4, 2, new_port);
            let updated = replace_addr_port(
                load16(&original.l4, UDP_CHECK),
                true,
                original.dst,
                seg.dst,
                load16(&original.l4, 2),
                new_port,
            );
            let expected = seg.full_checksum();
            saw_ffff |= expected == 0xffff;
            assert_eq!(updated, Some(expected), "port {port}");
        }
        assert!(saw_ffff);
    }

    proptest! {
        /// Any 16-bit word of an IPv4 header (TTL and protocol, id, fragment, length...).
        #[test]
        fn replace2_equals_recomputation(
            hdr in any::<[u8; 20]>(),
            // Word 0 holds the version, which a valid header keeps.
            word in (1usize..10).prop_filter("not the checksum", |w| *w != IP_CHECK / 2),
            new in any::<u16>(),
        ) {
            let mut hdr = ipv4_header(hdr);
            let at = word * 2;
            let old = load16(&hdr, at);
            let updated = replace2(load16(&hdr, IP_CHECK), old, new);
            store16(&mut hdr, at, new);
            prop_assert_eq!(updated, load16(&ipv4_header(hdr), IP_CHECK));
        }

        /// The source or destination address of an IPv4 header.
        #[test]
        fn replace4_equals_recomputation(
            hdr in any::<[u8; 20]>(),
            dst in any::<bool>(),
            new in any::<u32>(),
        ) {
            let mut hdr = ipv4_header(hdr);
            let at = if dst { IP_DST } else { IP_SRC };
            let updated = replace4(load16(&hdr, IP_CHECK), load32(&hdr, at), new);
            store32(&mut hdr, at, new);
            prop_assert_eq!(updated, load16(&ipv4_header(hdr), IP_CHECK));
        }

        /// An address of the pseudo-header alone (the L4 checksum covers it).
        #[test]
        fn replace4_of_pseudo_header_equals_recomputation(seg in segment(), new in any::<u32>()) {
            let mut after = seg.clone();
            after.dst = new;
            let check = load16(&seg.l4, seg.check_at());
            let updated = replace4(check, seg.dst, new);
            let expected = after.full_checksum();
            // TCP has one representation; UDP writes 0 as 0xffff, which replace4 leaves alone.
            if seg.proto == UDP && updated == 0 {
                prop_assert_eq!(expected, 0xffff);
            } else {
                prop_assert_eq!(updated, expected);
            }
        }

        /// NAT toward a backend (destination address and port) and the reverse NAT of its
        /// replies (source address and port), for TCP and UDP.
        #[test]
        fn nat_rewrite_equals_recomputation(
            seg in segment(),
            reply in any::<bool>(),
            new_addr in any::<u32>(),
            new_port in any::<u16>(),
        ) {
            let mut after = seg.clone();
            let port_at = if reply { 0 } else { 2 };
            let old_addr = if reply {
                after.src = new_addr;
                seg.src
            } else {
                after.dst = new_addr;
                seg.dst
            };
            store16(&mut after.l4, port_at, new_port);
            let updated = replace_addr_port(
                load16(&seg.l4, seg.check_at()),
                seg.proto == UDP,
                old_addr,
                new_addr,
                load16(&seg.l4, port_at),
                new_port,
            );
            prop_assert_eq!(updated, Some(after.full_checksum()));
        }

        /// Sum of a 32-bit word is the sum of its two 16-bit memory-order halves.
        #[test]
        fn add_u32_adds_both_halves(sum in 0u32..0x1000_0000, word in any::<u32>()) {
            let bytes = word.to_ne_bytes();
            prop_assert_eq!(
                fold(add_u32(sum, word)),
                fold(sum + super::sum(&bytes))
            );
        }
    }

    /// The TCP/UDP checksum over the IPv6 pseudo-header (RFC 8200 8.1) and `l4`, with its
    /// checksum field (at `check_at`) zeroed; a UDP 0 is sent as 0xffff.
    fn full_checksum6(
        src: &[u32; 4],
        dst: &[u32; 4],
        proto: u8,
        l4: &[u8],
        check_at: usize,
    ) -> u16 {
        let mut data = Vec::new();
        for w in src.iter().chain(dst) {
            data.extend_from_slice(&w.to_ne_bytes());
        }
        data.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        data.extend_from_slice(&[0, 0, 0, proto]);
        let at = data.len() + check_at;
        data.extend_from_slice(l4);
        store16(&mut data, at, 0);
        let check = checksum(&data);
        if proto == UDP && check == 0 {
            0xffff
        } else {
            check
        }
    }

    proptest! {
        /// IPv6 NAT (the destination address and port; or the source, for replies).
        #[test]
        fn nat6_rewrite_equals_recomputation(
            src in any::<[u32; 4]>(),
            dst in any::<[u32; 4]>(),
            udp in any::<bool>(),
            mut l4 in proptest::collection::vec(any::<u8>(), 20..90),
            new_addr in any::<[u32; 4]>(),
            new_port in any::<u16>(),
        ) {
            let (proto, check_at) = if udp { (UDP, UDP_CHECK) } else { (TCP, TCP_CHECK) };
            let before = full_checksum6(&src, &dst, proto, &l4, check_at);
            store16(&mut l4, check_at, before);
            let old_port = load16(&l4, 2);
            let updated = replace_addr6_port(before, udp, &dst, &new_addr, old_port, new_port);
            store16(&mut l4, 2, new_port);
            prop_assert_eq!(updated, Some(full_checksum6(&src, &new_addr, proto, &l4, check_at)));
        }
    }
}
