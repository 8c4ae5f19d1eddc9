#![no_std]
#![warn(clippy::undocumented_unsafe_blocks)]
//! latch XDP programs; the program itself is the `latch-xdp` binary (src/main.rs).
