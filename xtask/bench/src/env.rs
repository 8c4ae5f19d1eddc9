//! The bench's surroundings: namespaces entered per call, the bpffs pin directory, the eBPF
//! objects and the small bench programs attached to interfaces, and Ctrl-C.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use latch_tests::Netns;

// Built by lb-userspace/build.rs; build.rs passes their directory on.
pub static LATCH_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("LATCH_EBPF_OBJ_DIR"), "/latch-xdp"));
pub static BENCH_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("LATCH_EBPF_OBJ_DIR"), "/latch-bench"));

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Ctrl-C sets a flag that every traffic loop checks, so the run ends early but still removes
/// its namespaces, links and pins on the way out.
pub fn install_sigint() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}

pub fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

pub fn check_stopped() -> Result<()> {
    if stopped() {
        bail!("interrupted");
    }
    Ok(())
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    let target = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: valid namespace fd; setns affects only this thread.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("setns {path}"));
    }
    Ok(())
}

/// Pins the calling thread to `cpu`. Generator threads left to the scheduler were measured
/// sharing one CPU for long stretches while the other idled (a live-frames run disables
/// migration while it sends), which capped the XDP_DROP ceiling at a third of its rate.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within its bounds for
    // cpu < CPU_SETSIZE, which the caller's thread count (at most the CPU count) respects.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// Lets the calling thread run on CPUs `0..cpus` again (after [`pin_to_cpu`]).
pub fn allow_all_cpus(cpus: usize) -> Result<()> {
    // SAFETY: as in `pin_to_cpu`; every index is below the CPU count.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("restoring the CPU affinity");
    }
    Ok(())
}

/// Runs `f` with the calling thread inside `ns`, then returns to the original namespace.
/// Interface names and ifindexes (attach, BPF_PROG_TEST_RUN's ingress) resolve in the
/// caller's namespace, and objects must stay on this thread, hence no helper thread.
pub fn with_ns<T>(ns: &Netns, f: impl FnOnce() -> T) -> Result<T> {
    let original = File::open("/proc/thread-self/ns/net").context("own netns")?;
    enter(&ns.path())?;
    let out = f();
    // SAFETY: valid namespace fd.
    if unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("returning to own netns");
    }
    Ok(out)
}

pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("no interface {name}");
    }
    Ok(idx)
}

/// The pin directory of the bench's data plane, torn down (links, maps) on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new() -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/latch-bench-{}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = latch::dataplane::teardown(&self.0) {
            eprintln!("warning: tearing down {}: {e}", self.0.display());
        }
    }
}

/// One loaded copy of the bench object, with at most one of its programs attached.
pub struct BenchProgs {
    ebpf: Ebpf,
    attached: Option<(&'static str, XdpLinkId)>,
}

pub const COUNT_DROP: &str = "bench_count_drop";
pub const PASS: &str = "bench_pass";
pub const GEN: &str = "bench_gen";
pub const REDIRECT: &str = "bench_redirect";
pub const TX: &str = "bench_tx";
pub const REFLECT: &str = "bench_reflect";

impl BenchProgs {
    pub fn load() -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(BENCH_OBJ)
            .context("loading the bench object")?;
        for name in [COUNT_DROP, PASS, GEN, REDIRECT, TX, REFLECT] {
            xdp(&mut ebpf, name)?
                .load()
                .with_context(|| format!("verifier: {name}"))?;
        }
        Ok(Self {
            ebpf,
            attached: None,
        })
    }

    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Attaches `prog` to `iface` of `ns` in driver mode.
    pub fn attach(&mut self, ns: &Netns, iface: &str, prog: &'static str) -> Result<()> {
        self.detach(ns)?;
        let p = xdp(&mut self.ebpf, prog)?;
        let id = retry_busy(|| {
            with_ns(ns, || p.attach(iface, XdpMode::Driver))?
                .with_context(|| format!("attaching {prog} to {iface} in {}", ns.name()))
        })?;
        self.attached = Some((prog, id));
        Ok(())
    }

    pub fn detach(&mut self, ns: &Netns) -> Result<()> {
        if let Some((prog, id)) = self.attached.take() {
            let p = xdp(&mut self.ebpf, prog)?;
            with_ns(ns, || p.detach(id))?.with_context(|| format!("detaching {prog}"))?;
        }
        Ok(())
    }

    /// Points `bench_redirect` at `ifindex` with these MACs (destination, then source).
    pub fn set_redirect(&mut self, ifindex: u32, dmac: [u8; 6], smac: [u8; 6]) -> Result<()> {
        let mut value = [0u8; 16];
        value[..6].copy_from_slice(&dmac);
        value[6..12].copy_from_slice(&smac);
        value[12..].copy_from_slice(&ifindex.to_ne_bytes());
        let mut hop: Array<_, [u8; 16]> =
            Array::try_from(self.ebpf.map_mut("BENCH_HOP").context("no BENCH_HOP map")?)?;
        hop.set(0, value, 0)?;
        Ok(())
    }

    /// Runs and total run time (ns) of `prog`, from the kernel's run-time statistics.
    pub fn runs(&self, prog: &str) -> Result<(u64, u64)> {
        let info = self
            .ebpf
            .program(prog)
            .with_context(|| format!("no program {prog}"))?
            .info()?;
        Ok((info.run_count(), info.run_time().as_nanos() as u64))
    }

    /// Frames counted (and dropped) by `bench_count_drop`, summed over CPUs.
    pub fn count(&self) -> Result<u64> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("BENCH_COUNT").context("no BENCH_COUNT map")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }
}

/// Retries `f` while it fails with EBUSY, for at most about two seconds. Removing a pinned XDP
/// link (how the agent detaches) releases it from a kernel work queue, so the interface can
/// still be busy for a moment afterwards.
pub fn retry_busy<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        match f() {
            Err(e) if tries < 100 && format!("{e:#}").contains("os error 16") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

pub fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let p: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?;
    Ok(p)
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn out_dir() -> PathBuf {
    repo_root().join("target/bench")
}

/// The workspace root (this crate is xtask/bench).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
