//! Points the bench at lb-ebpf's objects (latch-xdp and the bench programs): lb-userspace's
//! build script builds them and announces their directory through its `links` metadata, so
//! the bench measures exactly the objects the agent embeds and lb-ebpf is built only once.
fn main() -> anyhow::Result<()> {
    use anyhow::Context;
    const OBJ_DIR: &str = "DEP_LATCH_EBPF_OBJ_DIR";
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed={OBJ_DIR}");
    let dir = std::env::var(OBJ_DIR)
        .context("lb-userspace's build script did not announce its eBPF object directory")?;
    println!("cargo::rustc-env=LATCH_EBPF_OBJ_DIR={dir}");
    Ok(())
}
