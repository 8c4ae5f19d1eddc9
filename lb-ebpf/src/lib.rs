#![no_std]
//! latch XDP programs; the program itself is the `latch-xdp` binary (src/main.rs).
