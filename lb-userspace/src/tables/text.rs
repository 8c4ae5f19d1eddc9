//! Strings kept inside the table's own slots when they are short.
//!
//! A lookup in a table of a million entries misses the CPU caches on every memory access it
//! makes, and with keys and values each in their own heap allocation it made four: the hash
//! table's control bytes, its slot, the key's bytes (to compare) and the value's bytes (to
//! copy). Kept inline, the key and the value are in the slot, which is two misses.

use std::ops::Deref;

/// A string of at most `N` bytes stored inline (`N` at most 255), a longer one on the heap.
#[derive(Clone)]
pub(super) enum Text<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Heap(Box<str>),
}

impl<const N: usize> Text<N> {
    /// `a` followed by `b`.
    pub(super) fn concat(a: &str, b: &str) -> Self {
        let len = a.len() + b.len();
        if len <= N && len <= usize::from(u8::MAX) {
            let mut bytes = [0u8; N];
            bytes[..a.len()].copy_from_slice(a.as_bytes());
            bytes[a.len()..len].copy_from_slice(b.as_bytes());
            Self::Inline {
                len: len as u8,
                bytes,
            }
        } else {
            let mut s = String::with_capacity(len);
            s.push_str(a);
            s.push_str(b);
            Self::Heap(s.into_boxed_str())
        }
    }

    pub(super) fn new(s: &str) -> Self {
        Self::concat(s, "")
    }

    /// True when the string is on the heap (for the memory figures).
    #[cfg(test)]
    pub(super) fn on_heap(&self) -> bool {
        matches!(self, Self::Heap(_))
    }
}

impl<const N: usize> Deref for Text<N> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Inline { len, bytes } => {
                let b = &bytes[..usize::from(*len)];
                // SAFETY: `bytes[..len]` is a copy of the bytes of one `&str`, or of two
                // `&str`s back to back, which is valid UTF-8, and it is never modified.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Self::Heap(s) => s,
        }
    }
}

impl<const N: usize> std::fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_stay_inline_and_long_ones_go_to_the_heap() {
        let t = Text::<8>::concat("ab", "cdé");
        assert_eq!(&*t, "abcdé");
        assert!(!t.on_heap());
        let t = Text::<8>::concat("abcd", "efgh");
        assert_eq!((&*t, t.on_heap()), ("abcdefgh", false));
        let t = Text::<8>::concat("abcd", "efghi");
        assert_eq!((&*t, t.on_heap()), ("abcdefghi", true));
        assert_eq!(&*Text::<8>::new(""), "");
        // Never inline beyond what the length byte can say.
        let long = "x".repeat(300);
        let t = Text::<400>::new(&long);
        assert_eq!((&*t, t.on_heap()), (long.as_str(), true));
    }

    #[test]
    fn slots_stay_small() {
        assert_eq!(std::mem::size_of::<Text<22>>(), 24);
        assert_eq!(std::mem::size_of::<Text<46>>(), 48);
    }
}
