//! `bench tls`: latch beside HAProxy as TLS terminators, in bench http's topology with its
//! backends (3 nginx, one worker each), the same certificate for both (made at run time with
//! rcgen), at each worker count, rounds alternating between targets. Per target: full
//! handshakes per second (one connection per request) with an ECDSA P-256 and an RSA 2048
//! certificate, TLS keep-alive req/s (wrk over https) and HTTP/2 req/s (h2load), each with
//! the LB's CPU time per request. Writes target/bench/tls.{md,json,png}.

mod conf;
mod h2load;
mod handshake;
mod plot;
mod report;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use latch_tests::{CertFiles, KeyAlg, KeyForm, LatchAgent, TestCa, Topology, agent_section};

use crate::env;
use crate::http::{
    self, Running, TempDir, conf::Upstream, report::LoadSummary, report::Sample, wrk,
};
use report::{CASES, Cert, Lb, Measurement, Mode, TlsReport};

const VIP_PORT: u16 = 443;
const SERVER_NAME: &str = "bench.example";

/// Command-line knobs.
#[derive(Clone, Debug)]
pub struct Options {
    pub seconds: u64,
    pub rounds: u32,
    pub connections: u32,
    pub wrk_threads: u32,
    /// h2load's concurrent streams per connection.
    pub h2_streams: u32,
    pub workers: Vec<usize>,
    /// Record a flame graph of latch per scenario after the measured rounds.
    pub flame: bool,
}

#[derive(Clone, Debug)]
struct Scenario {
    lb: Lb,
    workers: usize,
    cert: Cert,
    modes: Vec<Mode>,
    index: usize,
}

impl Scenario {
    fn label(&self) -> String {
        format!(
            "{} ({} worker(s), {})",
            self.lb.short(),
            self.workers,
            self.cert.label()
        )
    }

    fn client(&self) -> Ipv4Addr {
        latch_tests::topology::client_addr(self.index)
    }

    fn target(&self) -> SocketAddrV4 {
        SocketAddrV4::new(http::conf::scenario_vip(self.index), VIP_PORT)
    }
}

fn scenarios(workers: &[usize]) -> Vec<Scenario> {
    let mut v = Vec::new();
    for cert in [Cert::EcdsaP256, Cert::Rsa2048] {
        let modes: Vec<Mode> = CASES
            .iter()
            .filter(|(c, _)| *c == cert)
            .map(|(_, m)| *m)
            .collect();
        for &w in workers {
            for lb in [Lb::Latch, Lb::Haproxy] {
                v.push((lb, w, cert, modes.clone()));
            }
        }
    }
    v.into_iter()
        .enumerate()
        .map(|(index, (lb, workers, cert, modes))| Scenario {
            lb,
            workers,
            cert,
            modes,
            index,
        })
        .collect()
}

/// One certificate as each LB reads it: latch a PEM certificate and a PKCS#8 key, HAProxy
/// both in one PEM file.
struct CertSet {
    files: CertFiles,
    combined: PathBuf,
}

fn make_certs(dir: &TempDir) -> Result<(CertSet, CertSet)> {
    let ca = TestCa::new(&dir.0, "bench-ca")?;
    let make = |file: &str, alg| -> Result<CertSet> {
        let files = ca.server(&dir.0, file, &[SERVER_NAME], alg, KeyForm::Pkcs8)?;
        let combined = dir.0.join(format!("{file}-combined.pem"));
        std::fs::write(
            &combined,
            std::fs::read_to_string(&files.cert)? + &std::fs::read_to_string(&files.key)?,
        )?;
        Ok(CertSet { files, combined })
    };
    Ok((
        make("ecdsa", KeyAlg::EcdsaP256)?,
        make("rsa", KeyAlg::Rsa2048)?,
    ))
}

/// One mode's run: the sample and a note.
type Run = (Mode, Sample, String);

struct Bench<'a> {
    topo: &'a Topology,
    latch_bin: PathBuf,
    ups: Vec<Upstream>,
    opts: &'a Options,
    ecdsa: CertSet,
    rsa: CertSet,
}

impl Bench<'_> {
    fn certs(&self, cert: Cert) -> &CertSet {
        match cert {
            Cert::EcdsaP256 => &self.ecdsa,
            Cert::Rsa2048 => &self.rsa,
        }
    }

    fn start(&self, s: &Scenario) -> Result<Running> {
        let listen = s.target();
        let lb = self.topo.lb();
        let certs = self.certs(s.cert);
        let running = match s.lb {
            Lb::Latch => {
                let mut agent = LatchAgent::prepare(&self.latch_bin, lb)?;
                let text = conf::latch(
                    &agent_section(&self.topo.lb_interfaces(), agent.bpffs_dir()),
                    s.workers,
                    listen,
                    &self.ups,
                    &certs.files.cert,
                    &certs.files.key,
                );
                agent.write_config(&text)?;
                agent.start().context("starting latch")?;
                Running::Latch(Box::new(agent))
            }
            Lb::Haproxy => {
                let dir = TempDir::new(&format!("tls-haproxy-{}", s.index))?;
                let cfg = dir.0.join("haproxy.cfg");
                std::fs::write(
                    &cfg,
                    conf::haproxy(listen, s.workers, &self.ups, &certs.combined),
                )?;
                let cfg = cfg.display().to_string();
                http::spawn_process(lb, &["haproxy", "-db", "-f", &cfg], "haproxy", dir)?
            }
        };
        if let Err(e) = http::wait_listening(self.topo.client(), listen, s.lb.label()) {
            let log = running.log();
            running.stop();
            return Err(e.context(log));
        }
        Ok(running)
    }

    /// The negotiated session, as `openssl s_client -brief` reports it.
    fn session(&self, s: &Scenario) -> String {
        let connect = s.target().to_string();
        let out = self
            .topo
            .client()
            .command(&[
                "openssl",
                "s_client",
                "-brief",
                "-connect",
                &connect,
                "-servername",
                SERVER_NAME,
            ])
            .stdin(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stderr).into_owned()
                    + &String::from_utf8_lossy(&o.stdout);
                conf::session_summary(&text).unwrap_or_else(|| "no TLS session".into())
            }
            Err(e) => format!("openssl s_client: {e}"),
        }
    }

    fn wrk(&self, s: &Scenario, seconds: u64) -> Result<wrk::WrkResult> {
        wrk::run(
            self.topo.client(),
            &wrk::WrkArgs {
                threads: self.opts.wrk_threads,
                connections: self.opts.connections,
                seconds,
                url: format!("https://{}/", s.target()),
                cookie: None,
                close: false,
            },
        )
    }

    /// One load run: (sample without CPU, requests, extra note).
    /// Runs `mode`'s load for `secs` seconds.
    fn load(&self, s: &Scenario, mode: Mode, secs: u64) -> Result<(Sample, u64, String)> {
        let from_wrk = |w: wrk::WrkResult| {
            (
                Sample {
                    rps: w.rps,
                    p50_ms: w.p50_ms,
                    p99_ms: w.p99_ms,
                    cpu_us_per_req: None,
                    errors: w.errors,
                },
                w.requests,
                String::new(),
            )
        };
        Ok(match mode {
            Mode::Handshake => from_wrk(handshake::run(
                self.topo.client(),
                s.target(),
                self.opts.connections,
                secs,
            )?),
            Mode::KeepAlive => from_wrk(self.wrk(s, secs)?),
            Mode::H2 => {
                let h = h2load::run(
                    self.topo.client(),
                    &h2load::H2loadArgs {
                        threads: self.opts.wrk_threads,
                        clients: self.opts.connections,
                        streams: self.opts.h2_streams,
                        seconds: secs,
                        url: format!("https://{}/", s.target()),
                    },
                )?;
                (
                    Sample {
                        rps: h.rps,
                        p50_ms: None,
                        p99_ms: None,
                        cpu_us_per_req: None,
                        errors: h.errors,
                    },
                    h.requests,
                    h.mean_ms
                        .map_or(String::new(), |m| format!("h2load mean {m:.2} ms")),
                )
            }
        })
    }

    /// A flame graph of latch per scenario and mode, each under the load of a measured run
    /// (at most 5 s), after a warm-up as in the rounds.
    fn flame_graphs(&self, list: &[Scenario]) -> crate::flame::Section {
        if let Some(nothing) = crate::flame::Section::unavailable() {
            return nothing;
        }
        let mut section = crate::flame::Section::default();
        let seconds = self.opts.seconds.min(5);
        for s in list.iter().filter(|s| s.lb == Lb::Latch) {
            for &mode in &s.modes {
                if env::check_stopped().is_err() {
                    return section;
                }
                let scenario = format!("{}, {}", s.label(), mode.label());
                let running = match self.start(s) {
                    Ok(r) => r,
                    Err(e) => {
                        section.notes.push(format!("{scenario}: {e:#}"));
                        continue;
                    }
                };
                match self.wrk(s, 1) {
                    Ok(_) => {
                        let label = format!(
                            "tls {} w{} {} {}",
                            s.lb.short(),
                            s.workers,
                            s.cert.label(),
                            mode.label()
                        )
                        .to_lowercase();
                        // A file name: the label's words joined by "_".
                        let name = label
                            .split(|c: char| !c.is_ascii_alphanumeric())
                            .filter(|w| !w.is_empty())
                            .collect::<Vec<_>>()
                            .join("_");
                        section.profile(running.pid(), &name, &scenario, || {
                            self.load(s, mode, seconds)
                        });
                    }
                    Err(e) => section.notes.push(format!("{scenario}: {e:#}")),
                }
                running.stop();
            }
        }
        section
    }

    /// One scenario in one round: start, session check, warm-up, each mode, stop.
    fn measure(&self, s: &Scenario) -> Result<(String, Vec<Run>)> {
        let running = self.start(s)?;
        let result = (|| -> Result<(String, Vec<Run>)> {
            let session = self.session(s);
            self.wrk(s, 2).context("warm-up")?;
            let mut out = Vec::new();
            for &mode in &s.modes {
                env::check_stopped()?;
                let before = running.cpu_seconds();
                let (mut sample, requests, note) = self.load(s, mode, self.opts.seconds)?;
                let after = running.cpu_seconds();
                sample.cpu_us_per_req = match (before, after) {
                    (Some(a), Some(b)) if requests > 0 => Some((b - a) * 1e6 / requests as f64),
                    _ => None,
                };
                out.push((mode, sample, note));
            }
            Ok((session, out))
        })();
        running.stop();
        result
    }
}

fn method_notes(o: &Options) -> Vec<String> {
    vec![
        format!(
            "Handshakes: {} client threads in the client namespace, each looping TCP connect, \
             a full TLS handshake, `GET /` with `Connection: close`, read to the end, for {} s. \
             The client is rustls (aws-lc-rs) with resumption off and X25519 as its only key \
             share, as OpenSSL 3.0's clients offer; the certificate is not checked (like wrk's \
             SSL_VERIFY_NONE), the handshake signature is. Not wrk: wrk reuses its SSL object \
             on reconnect, so its connections after the first resume their session (an \
             `openssl s_server -www` counted 964 session cache hits in 966 handshakes), which \
             would measure resumption, not handshakes. Not h2load: it does not reconnect.",
            o.connections, o.seconds
        ),
        format!(
            "TLS keep-alive: wrk -t{} -c{} -d{}s --latency https://VIP/. HTTP/2: h2load -t{} \
             -c{} -m{} -D {} --warm-up-time 1 https://VIP/ (ALPN h2; h2load prints a mean, no \
             percentiles). A 2 s wrk keep-alive warm-up precedes each target's runs.",
            o.wrk_threads,
            o.connections,
            o.seconds,
            o.wrk_threads,
            o.connections,
            o.h2_streams,
            o.seconds
        ),
        format!(
            "Rounds: {}; each round runs every target in the same order (the LB started fresh \
             for each), so targets alternate; medians over rounds, each figure on its own; \
             spread = (max - min) / median.",
            o.rounds
        ),
        "Certificates: one CA (rcgen, ECDSA P-256) signs a server certificate for \
         bench.example with an ECDSA P-256 key and one with an RSA 2048 key (PKCS#8), made at \
         run time. latch reads the PEM certificate and key; HAProxy the same two concatenated \
         in one PEM (`ssl crt`)."
            .into(),
        "latch: the plain config of bench http (no scripts) with `tls = { certificates = \
         [...], alpn = [\"h2\", \"http/1.1\"] }`, everything else default (TLS 1.2 and 1.3, \
         resumption on), release build, access log off (RUST_LOG=info,latch::access=off). \
         HAProxy 2.6 (Debian, OpenSSL 3.0): `bind VIP:443 ssl crt <pem> alpn h2,http/1.1`, \
         `nbthread` = workers, round robin, `http-reuse always`, no stick table, no log; \
         every TLS setting is HAProxy's default (ssl-min-ver TLSv1.2, OpenSSL's default \
         ciphers and TLS 1.3 suites, session cache and tickets on). The session column is \
         what `openssl s_client -brief` negotiated with each."
            .into(),
        "LB CPU us/req: user+system CPU time of the LB's process over the run divided by the \
         requests completed (handshakes in handshake mode)."
            .into(),
        "Backends as in bench http: 3 nginx, one worker each, plain HTTP/1.1 behind the LB. \
         The machine is shared (2 CPUs for the clients, the LB and the backends, plus other \
         jobs): compare figures of the same run; CPU us/req is the steadier figure."
            .into(),
    ]
}

pub fn run(opts: Options) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench tls needs root (network namespaces)");
    }
    // Access logs off everywhere (HAProxy and nginx have none here). Set before any thread.
    // SAFETY: single-threaded at this point (no thread has been spawned yet).
    unsafe { std::env::set_var("RUST_LOG", "info,latch::access=off") };
    http::check_installed(&[
        ("wrk", "--version"),
        ("haproxy", "-v"),
        ("nginx", "-v"),
        ("h2load", "--version"),
        ("openssl", "version"),
    ])?;
    let latch_bin = http::build_latch()?;
    env::check_stopped()?;
    let list = scenarios(&opts.workers);
    let runs: usize = list.iter().map(|s| s.modes.len()).sum();
    let estimate = opts.rounds as u64 * (runs as u64 * (opts.seconds + 1) + list.len() as u64 * 5);
    println!(
        "==> bench tls: {} targets, {runs} runs x {} rounds x {} s (about {} min)",
        list.len(),
        opts.rounds,
        opts.seconds,
        estimate.div_ceil(60)
    );
    let cert_dir = TempDir::new("tls-certs")?;
    let (ecdsa, rsa) = make_certs(&cert_dir)?;
    let topo = http::prepare_topology(list.len())?;
    for s in &list {
        http::route_vip(&topo, *s.target().ip(), s.client(), true)?;
    }
    let ups = http::upstreams(&topo);
    let backends = http::start_backends(&topo, &ups)?;
    let bench = Bench {
        topo: &topo,
        latch_bin,
        ups,
        opts: &opts,
        ecdsa,
        rsa,
    };
    let mut samples: Vec<Vec<Vec<Sample>>> = list
        .iter()
        .map(|s| vec![Vec::new(); s.modes.len()])
        .collect();
    let mut notes: Vec<Vec<String>> = list
        .iter()
        .map(|s| vec![String::new(); s.modes.len()])
        .collect();
    let started = Instant::now();
    let mut loads: Vec<f64> = Vec::new();
    let result = (|| -> Result<()> {
        for round in 1..=opts.rounds {
            for (i, s) in list.iter().enumerate() {
                env::check_stopped()?;
                loads.push(http::load_average());
                let (session, out) = bench
                    .measure(s)
                    .with_context(|| format!("round {round}: {}", s.label()))?;
                for (k, (mode, sample, note)) in out.into_iter().enumerate() {
                    println!(
                        "    round {round}/{} {:<34} {:<36} {:>8.0}/s  p99 {:>6} ms  cpu {:>6} us/req  errors {}  [{session}{}]",
                        opts.rounds,
                        s.label(),
                        mode.label(),
                        sample.rps,
                        sample.p99_ms.map_or("-".into(), |v| format!("{v:.2}")),
                        sample
                            .cpu_us_per_req
                            .map_or("-".into(), |v| format!("{v:.1}")),
                        sample.errors,
                        if note.is_empty() {
                            String::new()
                        } else {
                            format!("; {note}")
                        }
                    );
                    samples[i][k].push(sample);
                    notes[i][k] = if note.is_empty() {
                        session.clone()
                    } else {
                        format!("{session}; {note}")
                    };
                }
            }
        }
        Ok(())
    })();
    println!("    measured for {:.0} s", started.elapsed().as_secs_f64());
    let flame = if result.is_ok() && opts.flame {
        bench.flame_graphs(&list)
    } else {
        crate::flame::Section::default()
    };
    for b in backends {
        b.stop();
    }
    result?;

    let mut measurements = Vec::new();
    for (i, s) in list.iter().enumerate() {
        for (k, &mode) in s.modes.iter().enumerate() {
            measurements.push(Measurement::of(
                s.lb,
                s.workers,
                s.cert,
                mode,
                &samples[i][k],
                notes[i][k].clone(),
            ));
        }
    }
    let report = TlsReport {
        machine: crate::report::Machine::now(),
        seconds_per_run: opts.seconds,
        rounds: opts.rounds,
        wrk_threads: opts.wrk_threads,
        connections: opts.connections,
        h2_streams: opts.h2_streams,
        load_average: LoadSummary::of(&loads),
        ratios: report::ratios(&measurements),
        targets: report::targets(&measurements),
        measurements,
        method: method_notes(&opts),
        flame,
    };
    write(&report)
}

fn write(r: &TlsReport) -> Result<()> {
    let dir =
        crate::report::write_report("tls", r, report::markdown(r), |p| plot::write_png(r, p))?;
    println!();
    println!(
        "==> summary (medians of {} rounds; load average {:.1} .. {:.1}, on {} CPUs)",
        r.rounds, r.load_average.min, r.load_average.max, r.machine.cpus
    );
    println!(
        "{:<56} {:>10} {:>7} {:>8} {:>10}",
        "target", "rate/s", "spread", "p99 ms", "cpu us/req"
    );
    for m in &r.measurements {
        println!(
            "{:<56} {:>10.0} {:>6.0}% {:>8} {:>10}",
            format!(
                "{}, {} wk, {}, {}",
                m.lb.short(),
                m.workers,
                m.mode.label(),
                m.cert.label()
            ),
            m.rate,
            m.spread_pct,
            m.p99_ms.map_or("-".into(), |v| format!("{v:.2}")),
            m.cpu_us_per_req.map_or("-".into(), |v| format!("{v:.1}")),
        );
    }
    println!();
    for x in &r.targets {
        println!(
            "{:<60} {:<8} {:<14} {}",
            x.what,
            x.target,
            x.value,
            crate::report::verdict(x.met)
        );
    }
    println!();
    println!("==> wrote {}/tls.{{md,json,png}}", dir.display());
    Ok(())
}
