//! Builds the eBPF objects (latch-xdp and the bench programs of lb-ebpf/src/bin) only for the
//! `bench` feature: plain `cargo xtask` must build before `cargo xtask setup` has installed
//! the eBPF toolchain.
fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    // The benchmark must never measure a stale program: rebuild when either side changes.
    println!("cargo:rerun-if-changed=../lb-ebpf/src");
    println!("cargo:rerun-if-changed=../lb-common/src");
    #[cfg(feature = "bench")]
    {
        let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf");
        aya_build::build_ebpf(
            [aya_build::Package {
                name: "lb-ebpf",
                root_dir,
                ..Default::default()
            }],
            aya_build::Toolchain::default(),
        )?;
    }
    Ok(())
}
