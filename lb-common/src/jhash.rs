//! Bob Jenkins' lookup3 hash as the Linux kernel has it (include/linux/jhash.h): good avalanche
//! on small fixed-size keys, and cheap in BPF (adds, xors and rotates only).

/// The kernel's `JHASH_INITVAL`, lookup3's arbitrary starting value.
pub const JHASH_INITVAL: u32 = 0xdead_beef;

/// The kernel's `jhash_3words`: lookup3's final mix of three words, seeded with `initval`.
/// Equal to the kernel's byte-wise `jhash` of the three words' 12 bytes in host order.
#[inline(always)]
pub fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    let iv = initval.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2);
    let mut a = a.wrapping_add(iv);
    let mut b = b.wrapping_add(iv);
    let mut c = c.wrapping_add(iv);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The kernel's byte-wise `jhash` (lookup3's `hashlittle` on a little-endian host), the
    /// reference `jhash_3words` must agree with.
    fn jhash_bytes(key: &[u8], initval: u32) -> u32 {
        fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
            *a = a.wrapping_sub(*c);
            *a ^= c.rotate_left(4);
            *c = c.wrapping_add(*b);
            *b = b.wrapping_sub(*a);
            *b ^= a.rotate_left(6);
            *a = a.wrapping_add(*c);
            *c = c.wrapping_sub(*b);
            *c ^= b.rotate_left(8);
            *b = b.wrapping_add(*a);
            *a = a.wrapping_sub(*c);
            *a ^= c.rotate_left(16);
            *c = c.wrapping_add(*b);
            *b = b.wrapping_sub(*a);
            *b ^= a.rotate_left(19);
            *a = a.wrapping_add(*c);
            *c = c.wrapping_sub(*b);
            *c ^= b.rotate_left(4);
            *b = b.wrapping_add(*a);
        }
        fn word(bytes: &[u8]) -> u32 {
            // The tail block: missing bytes count as zero.
            let mut w = [0u8; 4];
            w[..bytes.len()].copy_from_slice(bytes);
            u32::from_le_bytes(w)
        }
        let start = JHASH_INITVAL
            .wrapping_add(key.len() as u32)
            .wrapping_add(initval);
        let (mut a, mut b, mut c) = (start, start, start);
        let mut rest = key;
        while rest.len() > 12 {
            a = a.wrapping_add(word(&rest[0..4]));
            b = b.wrapping_add(word(&rest[4..8]));
            c = c.wrapping_add(word(&rest[8..12]));
            mix(&mut a, &mut b, &mut c);
            rest = &rest[12..];
        }
        if rest.is_empty() {
            return c;
        }
        let mut tail = [0u8; 12];
        tail[..rest.len()].copy_from_slice(rest);
        a = a.wrapping_add(word(&tail[0..4]));
        b = b.wrapping_add(word(&tail[4..8]));
        c = c.wrapping_add(word(&tail[8..12]));
        // __jhash_final, written out again so that the comparison below is with a separate
        // implementation. Each step: state[x] ^= state[y]; state[x] -= rol(state[y], rotation).
        for (x, y, rotation) in [
            (2, 1, 14),
            (0, 2, 11),
            (1, 0, 25),
            (2, 1, 16),
            (0, 2, 4),
            (1, 0, 14),
            (2, 1, 24),
        ] {
            let mut state = [a, b, c];
            state[x] ^= state[y];
            state[x] = state[x].wrapping_sub(state[y].rotate_left(rotation));
            [a, b, c] = state;
        }
        c
    }

    #[test]
    fn reference_matches_lookup3_published_vectors() {
        // lookup3.c's driver5 (Bob Jenkins, 2006); the kernel's jhash gives the same.
        let text = b"Four score and seven years ago";
        assert_eq!(jhash_bytes(b"", 0), 0xdead_beef);
        assert_eq!(jhash_bytes(b"", 0xdead_beef), 0xbd5b_7dde);
        assert_eq!(jhash_bytes(text, 0), 0x1777_0551);
        assert_eq!(jhash_bytes(text, 1), 0xcd62_8161);
    }

    #[test]
    fn jhash_3words_matches_the_kernel() {
        // Values of include/linux/jhash.h's jhash_3words, compiled as C.
        for (a, b, c, initval, expected) in [
            (0, 0, 0, 0, 0x1b68_e557),
            (1, 2, 3, 0, 0xa461_58f5),
            (0xc000_0201, 0xc633_6401, 0x0500_00d2, 6, 0x4987_6e4a),
            (u32::MAX, u32::MAX, u32::MAX, u32::MAX, 0xc343_af0b),
            (0x0100_007f, 0x0200_007f, 0x901f_3930, 17, 0x8d02_78d0),
            (0xdead_beef, 0x1234_5678, 0x9abc_def0, 42, 0xa47e_f4cd),
        ] {
            assert_eq!(
                jhash_3words(a, b, c, initval),
                expected,
                "({a:#x}, {b:#x}, {c:#x})"
            );
        }
    }

    proptest! {
        #[test]
        fn jhash_3words_equals_jhash_of_the_twelve_bytes(
            a in any::<u32>(), b in any::<u32>(), c in any::<u32>(), initval in any::<u32>(),
        ) {
            let mut key = [0u8; 12];
            key[0..4].copy_from_slice(&a.to_le_bytes());
            key[4..8].copy_from_slice(&b.to_le_bytes());
            key[8..12].copy_from_slice(&c.to_le_bytes());
            prop_assert_eq!(jhash_3words(a, b, c, initval), jhash_bytes(&key, initval));
        }
    }
}
