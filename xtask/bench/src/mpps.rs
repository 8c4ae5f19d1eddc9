//! Mpps on veth: generator threads in the client namespace push live frames (BPF_PROG_TEST_RUN
//! with BPF_F_TEST_XDP_LIVE_FRAMES running `bench_gen`, which returns XDP_TX) out of the client
//! veth into the LB's veth; receivers count what arrives.
//!
//! Where the kernel refuses live-frames test runs (EPERM: a BPF LSM policy on some machines),
//! the bench uses the circulating loop instead ([`Generator::Loop`], circulate.rs). An
//! AF_PACKET generator (`sendmmsg` batches with PACKET_QDISC_BYPASS) was tried first: a system
//! call per batch and the veth's transmit per frame capped it at about 0.57 Mpps here, so its
//! rows measured the generator. Its socket ([`packet_socket`]) now only injects the loop's
//! first frames.
//!
//! Every live-frames call pays a fixed cost of about 40 ms on this kernel (6.18: the call sets
//! up and destroys a page_pool, and the destruction waits for an RCU grace period) during which
//! the thread sleeps. With calls of 2^17 frames that idled the CPUs for more than half of the
//! time and capped the XDP_DROP ceiling at 3.9 Mpps instead of 10-11. So calls are sized to last
//! about `CALL_SECS`, two threads share each CPU so that one sends while the other sleeps in
//! that grace period, and the window is measured by the main thread while all generators are
//! running (after a warm-up), not from thread start to thread end.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
};

use crate::{
    env::{self, BenchProgs, GEN},
    frames::{FRAME_LEN, GenConfig},
};

/// How generator threads send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generator {
    /// BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (XDP_TX from the client's veth).
    LiveFrames,
    /// A fixed population of frames circulating between `bench_reflect` on the client's veth
    /// and the program under test (circulate.rs).
    Loop,
}

impl Generator {
    pub fn describe(self) -> &'static str {
        match self {
            Generator::LiveFrames => "XDP live frames (BPF_F_TEST_XDP_LIVE_FRAMES, XDP_TX)",
            Generator::Loop => {
                "circulating loop: frames injected once, returned by an XDP_TX reflector on the \
                 client's veth (bench_reflect)"
            }
        }
    }
}

/// The bench object with `bench_gen` configured by `cfg` (a copy per generator thread, so
/// configs and sequence counters stay per thread).
fn load_generator(cfg: GenConfig) -> Result<BenchProgs> {
    let mut progs = BenchProgs::load()?;
    let mut m: Array<_, GenConfig> = Array::try_from(
        progs
            .ebpf()
            .map_mut("BENCH_GEN")
            .context("no BENCH_GEN map")?,
    )?;
    m.set(0, cfg, 0)?;
    Ok(progs)
}

/// The xdp_md a live-frames run takes: the frame's length and the interface it leaves by.
fn live_ctx(ifindex: u32) -> Vec<u8> {
    let md: [u32; 6] = [0, FRAME_LEN as u32, 0, ifindex, 0, 0];
    md.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// Which generator this kernel allows: one live-frames run of one frame from `iface` in the
/// namespace at `ns_path`; EPERM (or EACCES) means the circulating loop. The reason is
/// returned for the report.
pub fn choose_generator(ns_path: &str, iface: &str, cfg: GenConfig) -> Result<(Generator, String)> {
    let (path, iface) = (ns_path.to_string(), iface.to_string());
    let probe = thread::spawn(move || -> Result<Result<(), (bool, String)>> {
        env::enter(&path)?;
        let mut progs = load_generator(cfg)?;
        let ifindex = env::ifindex(&iface)?;
        let prog: &mut Xdp = env::xdp(progs.ebpf(), GEN)?;
        let frame = [0u8; FRAME_LEN];
        let ctx = live_ctx(ifindex);
        Ok(prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat: 1,
                attrs: TestRunAttrs::new().xdp_live_frames(1),
                ..Default::default()
            })
            .map(|_| ())
            .map_err(|e| {
                let e = anyhow::Error::from(e);
                let refused = e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .and_then(std::io::Error::raw_os_error)
                        .is_some_and(|code| code == libc::EPERM || code == libc::EACCES)
                });
                (refused, format!("{e:#}"))
            }))
    });
    match probe
        .join()
        .map_err(|_| anyhow!("probe thread panicked"))??
    {
        Ok(()) => Ok((
            Generator::LiveFrames,
            "live-frames test run accepted".into(),
        )),
        Err((true, e)) => Ok((
            Generator::Loop,
            format!("live-frames test run refused: {e}"),
        )),
        Err((false, e)) => Err(anyhow!("live-frames probe: {e}")),
    }
}

/// Frames in the first call of each thread; later calls are sized from the measured rate.
const FIRST_REPEAT: u32 = 1 << 16;
/// Largest call, so that a stop request is honoured within about a second even when fast.
const MAX_REPEAT: u32 = 1 << 23;
/// Target duration of one call: long against the fixed per-call cost, short enough to stop.
const CALL_SECS: f64 = 0.3;
/// Frames the kernel builds and sends per batch in live-frames mode.
const BATCH: u32 = 64;
/// Generator threads per CPU (see the module comment).
pub const THREADS_PER_CPU: usize = 2;
/// Time every generator runs before the window opens, so that it starts in steady state.
const WARMUP: Duration = Duration::from_millis(700);

/// One measurement window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub received: u64,
    pub generated: u64,
    pub secs: f64,
}

impl Window {
    pub fn received_mpps(&self) -> f64 {
        self.received as f64 / self.secs / 1e6
    }
    pub fn generated_mpps(&self) -> f64 {
        self.generated as f64 / self.secs / 1e6
    }
}

/// One live-frames call: when it ran and how many frames it sent.
#[derive(Clone, Copy, Debug)]
struct Call {
    start: Instant,
    end: Instant,
    frames: u64,
}

impl Call {
    /// Frames sent inside `[from, to]`, assuming a constant rate during the call.
    fn frames_within(&self, from: Instant, to: Instant) -> f64 {
        let total = self.end.saturating_duration_since(self.start).as_secs_f64();
        let start = self.start.max(from);
        let end = self.end.min(to);
        if end <= start || total <= 0.0 {
            return 0.0;
        }
        self.frames as f64 * end.duration_since(start).as_secs_f64() / total
    }
}

/// Frames for the next call, sized from the last one to last about `CALL_SECS`.
fn next_repeat(last: &Call) -> u32 {
    let secs = last.end.duration_since(last.start).as_secs_f64().max(1e-6);
    let want = last.frames as f64 / secs * CALL_SECS;
    (want as u32).clamp(FIRST_REPEAT, MAX_REPEAT)
}

/// What one generator thread is given.
struct GenThread {
    cpu: usize,
    ns_path: String,
    iface: &'static str,
    cfg: GenConfig,
    start: Arc<Barrier>,
    stop: Arc<AtomicBool>,
}

/// One generator thread: pins itself to `cpu`, enters the client namespace, loads its own copy
/// of the bench object (configs and sequence counters stay per thread), then sends until
/// `stop` is set.
fn generator(gen_kind: Generator, t: GenThread) -> Result<Vec<Call>> {
    if gen_kind != Generator::LiveFrames {
        bail!("the circulating loop has no generator threads (circulate.rs)");
    }
    let GenThread {
        cpu,
        ns_path,
        iface,
        cfg,
        start,
        stop,
    } = t;
    let prepared = (|| -> Result<(BenchProgs, u32)> {
        env::pin_to_cpu(cpu)?;
        env::enter(&ns_path)?;
        let progs = load_generator(cfg)?;
        Ok((progs, env::ifindex(iface)?))
    })();
    // Every thread reaches the barrier, also after a failure, so nobody waits forever.
    start.wait();
    let (mut progs, ifindex) = prepared?;
    let prog: &mut Xdp = env::xdp(progs.ebpf(), GEN)?;
    let frame = [0u8; FRAME_LEN];
    let ctx = live_ctx(ifindex);
    let mut calls = Vec::new();
    let mut repeat = FIRST_REPEAT;
    while !stop.load(Ordering::Relaxed) && !env::stopped() {
        let t0 = Instant::now();
        prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..Default::default()
        })
        .context("live-frames test run")?;
        let call = Call {
            start: t0,
            end: Instant::now(),
            frames: u64::from(repeat),
        };
        repeat = next_repeat(&call);
        calls.push(call);
    }
    Ok(calls)
}

/// Sends with `configs.len()` threads (spread over the CPUs, `THREADS_PER_CPU` each) from
/// `iface` in the namespace at `ns_path`, and measures a window of `secs` seconds once all of
/// them run: `received` is read at both ends of the window, the generated count is the
/// generators' calls prorated to it.
pub fn window(
    gen_kind: Generator,
    ns_path: &str,
    iface: &'static str,
    configs: &[GenConfig],
    secs: u64,
    received: &dyn Fn() -> Result<u64>,
) -> Result<Window> {
    let cpus = configs.len().div_ceil(THREADS_PER_CPU).max(1);
    let start = Arc::new(Barrier::new(configs.len() + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = configs
        .iter()
        .enumerate()
        .map(|(i, cfg)| {
            let (path, cfg, start, stop) = (ns_path.to_string(), *cfg, start.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("gen{i}"))
                .spawn(move || {
                    generator(
                        gen_kind,
                        GenThread {
                            cpu: i % cpus,
                            ns_path: path,
                            iface,
                            cfg,
                            start,
                            stop,
                        },
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    start.wait();
    let measured = (|| -> Result<(Instant, Instant, u64)> {
        sleep_unless_stopped(WARMUP);
        let before = received()?;
        let from = Instant::now();
        sleep_unless_stopped(Duration::from_secs(secs));
        let after = received()?;
        Ok((from, Instant::now(), after.saturating_sub(before)))
    })();
    stop.store(true, Ordering::Relaxed);
    let mut calls = Vec::new();
    let mut first_err = None;
    for h in handles {
        match h.join().map_err(|_| anyhow!("generator thread panicked"))? {
            Ok(c) => calls.extend(c),
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let (from, to, received) = measured?;
    env::check_stopped()?;
    let generated: f64 = calls.iter().map(|c| c.frames_within(from, to)).sum();
    Ok(Window {
        received,
        generated: generated.round() as u64,
        secs: to.duration_since(from).as_secs_f64(),
    })
}

/// An AF_PACKET socket bound to `ifindex` for sending only (protocol 0: it receives
/// nothing), with the qdisc bypassed as a NIC driver's generator would.
pub fn packet_socket(ifindex: u32) -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    // SAFETY: valid descriptor, option value pointer and length of a c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
    }
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set below make it a bind address.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: valid descriptor and a sockaddr_ll of the stated length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the AF_PACKET socket");
    }
    Ok(fd)
}

pub fn sleep_unless_stopped(d: Duration) {
    let end = Instant::now() + d;
    while !env::stopped() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_prorated_to_the_part_inside_the_window() {
        let t = Instant::now();
        let call = Call {
            start: t,
            end: t + Duration::from_secs(2),
            frames: 1000,
        };
        let inside = call.frames_within(t + Duration::from_secs(1), t + Duration::from_secs(5));
        assert!((inside - 500.0).abs() < 1e-6, "{inside}");
        assert_eq!(
            call.frames_within(t + Duration::from_secs(3), t + Duration::from_secs(4)),
            0.0
        );
    }

    #[test]
    fn calls_are_sized_to_the_measured_rate() {
        let t = Instant::now();
        let call = Call {
            start: t,
            end: t + Duration::from_millis(100),
            frames: 200_000,
        };
        // 2 Mpps -> 0.3 s is 600k frames.
        let r = next_repeat(&call);
        assert!((590_000..=610_000).contains(&r), "{r}");
    }
}
