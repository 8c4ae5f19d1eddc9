use which::which;

/// The eBPF crate has an undeclared dependency on the `bpf-linker` binary: rebuild when it
/// changes (for example after `cargo xtask setup` rebuilt it against a new LLVM).
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
