use which::which;

fn main() {
    // The eBPF crate has an undeclared dependency on the `bpf-linker` binary: rebuild when it
    // changes (for example after `cargo xtask setup` rebuilt it against a new LLVM).
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
    // bpf-linker's default `-bpf-expand-memcpy-in-order` zeroes LLVM's store budget for every
    // memory intrinsic, which turns each small zeroing (struct padding, the fib lookup
    // parameters) into a call to a byte-loop `memset` on the hot path. With it off, LLVM
    // emits plain stores.
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
