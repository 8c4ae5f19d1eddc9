//! The circulating loop: the Mpps generator for kernels that refuse live-frames test runs.
//!
//! ```text
//!  client ns: eth0 [bench_reflect]  <──veth──>  vclient [program under test]  (LB ns)
//!             rebuilds a request, XDP_TX          forwards it back out of vclient (XDP_TX)
//! ```
//!
//! The backend of the loop's services is an address on the client's side of the LB
//! (`LOOP_BACKEND` in dataplane.rs), so whatever the LB forwards leaves by the port it came in
//! by. `bench_reflect` on the client's veth turns every frame that comes back into a fresh
//! request to the VIP from a template (fixed flows, or a new 5-tuple every time) and returns
//! it with XDP_TX. A population injected once from an AF_PACKET socket on each CPU then
//! circulates on that CPU (a veth queues an XDP_TX frame on the peer's queue of the sending
//! CPU, whose NAPI runs there too), limited only by the two XDP paths: no system call per
//! packet, which capped the AF_PACKET generator at about 0.57 Mpps here.
//!
//! What a loop's rate measures: per packet, the reflector's work, the LB's, and two veth
//! crossings, all on one CPU. Between two programs under test the reflector and crossings are
//! the same, so the difference of the per-packet times (1 / rate per CPU) is the difference of
//! the programs; the `bench_tx` bounce (XDP_TX of the frame as it is) gives the loop's own
//! share. A population never exceeds a veth ring (256 frames), so no frame is lost for want
//! of room; the frames still circulating when the window ends are counted as a check.
//!
//! Bounds: the reflector drops everything once its deadline (CLOCK_MONOTONIC, set to the
//! window plus a margin, set to 0 at the end of each window) has passed, so a loop ends by
//! itself even if the bench dies; the namespaces go with the topology.

use std::{
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, PerCpuArray};
use latch_tests::Netns;

use crate::{
    env::{self, BenchProgs, REFLECT},
    frames::{LOOP_FRAME_LEN, ReflectConfig, reflected_frame},
    mpps::{self, Window},
};

/// Frames injected per CPU: below a veth ring's 256, so a full population always fits in the
/// ring it is queued on, and above a NAPI budget (64), so polls run full batches.
pub const POPULATION_PER_CPU: usize = 192;
/// Time the loop runs before the window opens.
const WARMUP: Duration = Duration::from_millis(500);
/// The reflector's deadline is the window's end plus this.
const DEADLINE_MARGIN: Duration = Duration::from_secs(3);
/// Time for the frames in flight to reach the reflector and be dropped after a window.
const DRAIN: Duration = Duration::from_millis(200);

/// The reflector, attached to the client's veth for the whole Mpps section.
pub struct Loop {
    progs: BenchProgs,
}

/// One loop window: the rate, and the population check.
pub struct LoopWindow {
    pub window: Window,
    pub injected: u64,
    /// Frames the reflector dropped after the window: what was still circulating.
    pub alive: u64,
}

fn monotonic_ns() -> u64 {
    // SAFETY: a zeroed timespec is valid, and clock_gettime writes only into it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Loop {
    /// Loads the bench object and attaches `bench_reflect` to `iface` of `client`, with a
    /// deadline of 0 (it drops every UDP frame until a window arms it).
    pub fn attach(client: &Netns, iface: &str) -> Result<Self> {
        let mut l = Self {
            progs: BenchProgs::load()?,
        };
        l.set(&ReflectConfig::default())?;
        l.progs.attach(client, iface, REFLECT)?;
        Ok(l)
    }

    pub fn detach(&mut self, client: &Netns) -> Result<()> {
        self.progs.detach(client)
    }

    fn set(&mut self, cfg: &ReflectConfig) -> Result<()> {
        let mut m: Array<_, ReflectConfig> = Array::try_from(
            self.progs
                .ebpf()
                .map_mut("BENCH_REFLECT")
                .context("no BENCH_REFLECT map")?,
        )?;
        m.set(0, *cfg, 0)?;
        Ok(())
    }

    /// Requests the reflector has returned, summed over CPUs.
    pub fn count(&self) -> Result<u64> {
        self.progs.count()
    }

    fn ended(&mut self) -> Result<u64> {
        let m: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.progs
                .ebpf()
                .map("BENCH_ENDED")
                .context("no BENCH_ENDED map")?,
        )?;
        Ok(m.get(&0, 0)?.iter().sum())
    }

    /// One window of `secs` seconds: arms the reflector with `cfg`, injects
    /// [`POPULATION_PER_CPU`] frames from `iface` of the namespace at `ns_path` on each of
    /// `cpus` CPUs, counts what the reflector returns over the window (after a warm-up), then
    /// ends the loop and counts the frames still circulating.
    pub fn window(
        &mut self,
        ns_path: &str,
        iface: &str,
        cfg: &ReflectConfig,
        cpus: usize,
        secs: u64,
    ) -> Result<LoopWindow> {
        let window = Duration::from_secs(secs);
        let mut armed = *cfg;
        armed.deadline_ns =
            monotonic_ns() + (WARMUP + window + DEADLINE_MARGIN).as_nanos() as u64 + 1_000_000_000;
        self.set(&armed)?;
        let ended0 = self.ended()?;
        let run = (|| -> Result<(u64, Window)> {
            let injected = inject(ns_path, iface, &armed, cpus)?;
            mpps::sleep_unless_stopped(WARMUP);
            let c0 = self.count()?;
            let from = Instant::now();
            mpps::sleep_unless_stopped(window);
            let c1 = self.count()?;
            let n = c1.saturating_sub(c0);
            Ok((
                injected,
                Window {
                    received: n,
                    generated: n,
                    secs: from.elapsed().as_secs_f64(),
                },
            ))
        })();
        // Ends the loop whatever happened above: every frame is dropped at its next pass.
        // Only the deadline changes, so a pass that reads the map while it is rewritten still
        // builds a well-formed frame.
        armed.deadline_ns = 0;
        self.set(&armed)?;
        thread::sleep(DRAIN);
        let alive = self.ended()?.saturating_sub(ended0);
        let (injected, window) = run?;
        env::check_stopped()?;
        Ok(LoopWindow {
            window,
            injected,
            alive,
        })
    }
}

/// Sends the first frames of the loop: on each CPU a thread pinned there sends
/// [`POPULATION_PER_CPU`] requests as the reflector would build them on that CPU. Returns the
/// frames sent.
fn inject(ns_path: &str, iface: &str, cfg: &ReflectConfig, cpus: usize) -> Result<u64> {
    let handles: Vec<_> = (0..cpus)
        .map(|cpu| {
            let (path, iface, cfg) = (ns_path.to_string(), iface.to_string(), *cfg);
            thread::Builder::new()
                .name(format!("inject{cpu}"))
                .spawn(move || -> Result<u64> {
                    env::pin_to_cpu(cpu)?;
                    env::enter(&path)?;
                    let fd = mpps::packet_socket(env::ifindex(&iface)?)?;
                    let frames: Vec<[u8; LOOP_FRAME_LEN]> = (0..POPULATION_PER_CPU)
                        .map(|i| reflected_frame(&cfg, cpu as u32, i as u64))
                        .collect();
                    send_all(fd.as_raw_fd(), &frames)
                })
        })
        .collect::<Result<_, _>>()?;
    let mut sent = 0;
    for h in handles {
        sent += h
            .join()
            .map_err(|_| anyhow!("injecting thread panicked"))??;
    }
    Ok(sent)
}

/// Sends every frame with one `send` each, retrying a full ring a bounded number of times.
fn send_all(fd: i32, frames: &[[u8; LOOP_FRAME_LEN]]) -> Result<u64> {
    let mut sent = 0;
    for f in frames {
        let mut tries = 0;
        loop {
            // SAFETY: valid descriptor; `f` is a live buffer of the stated length.
            let n = unsafe { libc::send(fd, f.as_ptr().cast(), f.len(), 0) };
            if n >= 0 {
                sent += 1;
                break;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) if tries < 1000 => {
                    tries += 1;
                    thread::sleep(Duration::from_micros(100));
                }
                _ => return Err(err).context("injecting the loop's frames"),
            }
        }
    }
    if sent == 0 {
        bail!("no frame injected");
    }
    Ok(sent)
}
