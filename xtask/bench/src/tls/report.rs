//! Results, ratios, targets and the Markdown rendering of `bench tls`: pure, unit-tested.

use serde::Serialize;

use crate::http::report::{LoadSummary, Sample, div, fmt_x, opt, summarize};
use crate::report::{Machine, Target};

/// The server certificate's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Cert {
    EcdsaP256,
    Rsa2048,
}

impl Cert {
    pub fn label(self) -> &'static str {
        match self {
            Cert::EcdsaP256 => "ECDSA P-256",
            Cert::Rsa2048 => "RSA 2048",
        }
    }
}

/// What the client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// wrk over https with `Connection: close`: one TCP connection and one full TLS handshake
    /// per request.
    Handshake,
    /// wrk over https, persistent connections.
    KeepAlive,
    /// h2load: HTTP/2 (ALPN h2), persistent connections, several streams each.
    H2,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Handshake => "handshakes (connection per request)",
            Mode::KeepAlive => "TLS keep-alive (HTTP/1.1)",
            Mode::H2 => "HTTP/2 (h2load)",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Mode::Handshake => "handshakes/s",
            _ => "req/s",
        }
    }
}

/// The TLS terminator under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Lb {
    Latch,
    Haproxy,
}

impl Lb {
    pub fn label(self) -> &'static str {
        match self {
            Lb::Latch => "latch (rustls, aws-lc-rs)",
            Lb::Haproxy => "HAProxy 2.6 (OpenSSL 3.0)",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Lb::Latch => "latch",
            Lb::Haproxy => "HAProxy",
        }
    }
}

/// One (LB, workers, certificate, mode) over every round.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub key: String,
    pub lb: Lb,
    pub workers: usize,
    pub cert: Cert,
    pub mode: Mode,
    pub rounds_rate: Vec<f64>,
    /// Median over the rounds: requests/s (handshakes/s in handshake mode).
    pub rate: f64,
    /// (max - min) / median of the rounds, percent.
    pub spread_pct: f64,
    /// p50/p99 from wrk; none from h2load (it prints a mean, kept in `note`).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// CPU time (user + system) of the LB's process per request, median over rounds.
    pub cpu_us_per_req: Option<f64>,
    pub errors: u64,
    /// The negotiated session (`openssl s_client -brief`), and h2load's mean latency.
    pub note: String,
}

impl Measurement {
    /// Medians and spread of `samples`.
    pub fn of(
        lb: Lb,
        workers: usize,
        cert: Cert,
        mode: Mode,
        samples: &[Sample],
        note: String,
    ) -> Self {
        let (rounds_rate, rate, p50_ms, p99_ms, cpu_us_per_req, errors) = summarize(samples);
        Self {
            key: format!("{lb:?}_w{workers}_{cert:?}_{mode:?}").to_lowercase(),
            lb,
            workers,
            cert,
            mode,
            spread_pct: spread_pct(&rounds_rate, rate),
            rounds_rate,
            rate,
            p50_ms,
            p99_ms,
            cpu_us_per_req,
            errors,
            note,
        }
    }
}

/// (max - min) / median in percent; 0 for one round.
pub fn spread_pct(rounds: &[f64], median: f64) -> f64 {
    let max = rounds.iter().copied().fold(f64::MIN, f64::max);
    let min = rounds.iter().copied().fold(f64::MAX, f64::min);
    if rounds.len() < 2 || median <= 0.0 {
        0.0
    } else {
        (max - min) / median * 100.0
    }
}

/// A named ratio of two measurements.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub what: String,
    pub value: Option<f64>,
    /// Ratio of CPU per request (latch / HAProxy): below 1 is cheaper.
    pub cpu: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TlsReport {
    #[serde(flatten)]
    pub machine: Machine,
    pub seconds_per_run: u64,
    pub rounds: u32,
    pub wrk_threads: u32,
    pub connections: u32,
    pub h2_streams: u32,
    pub load_average: LoadSummary,
    pub measurements: Vec<Measurement>,
    pub ratios: Vec<Ratio>,
    pub targets: Vec<Target>,
    pub method: Vec<String>,
    pub flame: crate::flame::Section,
}

pub const HANDSHAKES_VS_HAPROXY_MIN: f64 = 2.0;
pub const KEEPALIVE_VS_HAPROXY_MIN: f64 = 1.2;

/// The (certificate, mode) pairs measured, in report order.
pub const CASES: [(Cert, Mode); 4] = [
    (Cert::EcdsaP256, Mode::Handshake),
    (Cert::Rsa2048, Mode::Handshake),
    (Cert::EcdsaP256, Mode::KeepAlive),
    (Cert::EcdsaP256, Mode::H2),
];

fn find(
    ms: &[Measurement],
    lb: Lb,
    workers: usize,
    cert: Cert,
    mode: Mode,
) -> Option<&Measurement> {
    ms.iter()
        .find(|m| m.lb == lb && m.workers == workers && m.cert == cert && m.mode == mode)
}

fn workers(ms: &[Measurement]) -> Vec<usize> {
    let mut w: Vec<usize> = ms.iter().map(|m| m.workers).collect();
    w.sort_unstable();
    w.dedup();
    w
}

/// latch / HAProxy for every case and worker count.
pub fn ratios(ms: &[Measurement]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for (cert, mode) in CASES {
        for w in workers(ms) {
            let get = |lb| find(ms, lb, w, cert, mode);
            let (l, h) = (get(Lb::Latch), get(Lb::Haproxy));
            out.push(Ratio {
                what: format!(
                    "latch / HAProxy, {}, {}, {w} worker(s)",
                    mode.label(),
                    cert.label()
                ),
                value: div(l.map(|m| m.rate), h.map(|m| m.rate)),
                cpu: div(
                    l.and_then(|m| m.cpu_us_per_req),
                    h.and_then(|m| m.cpu_us_per_req),
                ),
            });
        }
    }
    out
}

/// Handshakes/s >= 2x HAProxy (each certificate and worker count); TLS keep-alive >= 1.2x
/// (the HTTP performance issue, 14).
pub fn targets(ms: &[Measurement]) -> Vec<Target> {
    let mut t = Vec::new();
    for (cert, mode, min) in [
        (Cert::EcdsaP256, Mode::Handshake, HANDSHAKES_VS_HAPROXY_MIN),
        (Cert::Rsa2048, Mode::Handshake, HANDSHAKES_VS_HAPROXY_MIN),
        (Cert::EcdsaP256, Mode::KeepAlive, KEEPALIVE_VS_HAPROXY_MIN),
    ] {
        for w in workers(ms) {
            let rate = |lb| {
                find(ms, lb, w, cert, mode)
                    .filter(|m| m.rate > 0.0)
                    .map(|m| m.rate)
            };
            let r = div(rate(Lb::Latch), rate(Lb::Haproxy));
            let what = match mode {
                Mode::Handshake => {
                    format!("handshakes/s vs HAProxy, {}, {w} worker(s)", cert.label())
                }
                _ => format!("{} req/s vs HAProxy, {w} worker(s)", mode.label()),
            };
            t.push(Target {
                what,
                target: format!(">= {min:.1}x"),
                value: fmt_x(r),
                met: r.map(|r| r >= min),
            });
        }
    }
    t
}

pub fn markdown(r: &TlsReport) -> String {
    let mut s = String::new();
    s.push_str("# latch TLS benchmark\n\n");
    s.push_str(&format!(
        "Kernel {}, {} CPUs (shared by the clients, the LB and the backends). wrk -t{} -c{}, \
         h2load -t{} -c{} -m{}, {} s per run, {} round(s) alternating between targets, medians \
         reported; spread is (max - min) / median over the rounds. 1-minute load average \
         before each target: {:.1} .. {:.1} (median {:.1}).\n\n",
        r.machine.kernel,
        r.machine.cpus,
        r.wrk_threads,
        r.connections,
        r.wrk_threads,
        r.connections,
        r.h2_streams,
        r.seconds_per_run,
        r.rounds,
        r.load_average.min,
        r.load_average.max,
        r.load_average.median
    ));
    for (cert, mode) in CASES {
        s.push_str(&format!("## {}, {}\n\n", mode.label(), cert.label()));
        s.push_str(&format!(
            "| target | workers | {} (median) | rounds | spread | p50 ms | p99 ms | LB CPU us/req | errors | session |\n",
            mode.unit()
        ));
        s.push_str("|---|---:|---:|---|---:|---:|---:|---:|---:|---|\n");
        for m in r
            .measurements
            .iter()
            .filter(|m| m.cert == cert && m.mode == mode)
        {
            let rounds: Vec<String> = m.rounds_rate.iter().map(|v| format!("{v:.0}")).collect();
            s.push_str(&format!(
                "| {} | {} | {:.0} | {} | {:.0}% | {} | {} | {} | {} | {} |\n",
                m.lb.label(),
                m.workers,
                m.rate,
                rounds.join(", "),
                m.spread_pct,
                opt(m.p50_ms, 2),
                opt(m.p99_ms, 2),
                opt(m.cpu_us_per_req, 1),
                m.errors,
                m.note
            ));
        }
        s.push('\n');
    }
    s.push_str("## Ratios (same run)\n\n| ratio | rate | CPU per request |\n|---|---:|---:|\n");
    for q in &r.ratios {
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            q.what,
            q.value.map_or("-".into(), |v| format!("{v:.2}x")),
            q.cpu.map_or("-".into(), |v| format!("{v:.2}x"))
        ));
    }
    s.push_str(&crate::report::targets_and_method_md(&r.targets, &r.method));
    s.push_str(&r.flame.markdown());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rps: f64, cpu: f64) -> Sample {
        Sample {
            rps,
            p50_ms: Some(1.0),
            p99_ms: Some(4.0),
            cpu_us_per_req: Some(cpu),
            errors: 0,
        }
    }

    fn m(lb: Lb, w: usize, cert: Cert, mode: Mode, rates: &[f64], cpu: f64) -> Measurement {
        let samples: Vec<Sample> = rates.iter().map(|r| sample(*r, cpu)).collect();
        Measurement::of(lb, w, cert, mode, &samples, String::new())
    }

    fn all() -> Vec<Measurement> {
        use Cert::*;
        use Lb::*;
        use Mode::*;
        vec![
            m(
                Latch,
                1,
                EcdsaP256,
                Handshake,
                &[5000.0, 4000.0, 4500.0],
                150.0,
            ),
            m(Haproxy, 1, EcdsaP256, Handshake, &[2000.0], 300.0),
            m(Latch, 1, Rsa2048, Handshake, &[1500.0], 500.0),
            m(Haproxy, 1, Rsa2048, Handshake, &[1000.0], 600.0),
            m(Latch, 1, EcdsaP256, KeepAlive, &[20_000.0], 30.0),
            m(Haproxy, 1, EcdsaP256, KeepAlive, &[25_000.0], 25.0),
            m(Latch, 2, EcdsaP256, KeepAlive, &[30_000.0], 30.0),
        ]
    }

    #[test]
    fn medians_and_spread_over_rounds() {
        let x = &all()[0];
        assert_eq!(x.rate, 4500.0);
        // (5000 - 4000) / 4500
        assert!((x.spread_pct - 22.222).abs() < 1e-3);
        assert_eq!(x.key, "latch_w1_ecdsap256_handshake");
        assert_eq!(spread_pct(&[7.0], 7.0), 0.0);
    }

    #[test]
    fn targets_judge_each_certificate_and_worker_count() {
        let t = targets(&all());
        let get = |what: &str| {
            t.iter()
                .find(|t| t.what == what)
                .map(|t| t.met)
                .expect(what)
        };
        // 4500 / 2000 = 2.25 >= 2
        assert_eq!(
            get("handshakes/s vs HAProxy, ECDSA P-256, 1 worker(s)"),
            Some(true)
        );
        // 1500 / 1000 = 1.5 < 2
        assert_eq!(
            get("handshakes/s vs HAProxy, RSA 2048, 1 worker(s)"),
            Some(false)
        );
        // 20000 / 25000 = 0.8 < 1.0
        assert_eq!(
            get("TLS keep-alive (HTTP/1.1) req/s vs HAProxy, 1 worker(s)"),
            Some(false)
        );
        // No HAProxy figure at 2 workers: not measured rather than missed.
        assert_eq!(
            get("TLS keep-alive (HTTP/1.1) req/s vs HAProxy, 2 worker(s)"),
            None
        );
        assert_eq!(t.len(), 6);
    }

    #[test]
    fn ratios_carry_cpu_per_request() {
        let q = ratios(&all());
        let r = q
            .iter()
            .find(|r| r.what == "latch / HAProxy, handshakes (connection per request), ECDSA P-256, 1 worker(s)")
            .expect("ratio");
        assert_eq!(r.value, Some(2.25));
        assert_eq!(r.cpu, Some(0.5));
    }

    #[test]
    fn markdown_has_every_case_and_the_verdicts() {
        let ms = all();
        let r = TlsReport {
            machine: crate::report::Machine {
                kernel: "k".into(),
                cpus: 2,
                unix_time: 0,
            },
            seconds_per_run: 5,
            rounds: 3,
            wrk_threads: 2,
            connections: 50,
            h2_streams: 10,
            load_average: LoadSummary::of(&[1.0, 2.0]),
            ratios: ratios(&ms),
            targets: targets(&ms),
            measurements: ms,
            method: vec!["how".into()],
            flame: crate::flame::Section::default(),
        };
        let md = markdown(&r);
        assert!(md.contains("## handshakes (connection per request), RSA 2048"));
        assert!(md.contains("## HTTP/2 (h2load), ECDSA P-256"));
        assert!(md.contains("| latch (rustls, aws-lc-rs) | 1 | 4500 | 5000, 4000, 4500 | 22% |"));
        assert!(md.contains(
            "| handshakes/s vs HAProxy, RSA 2048, 1 worker(s) | >= 2.0x | 1.50x | MISSED |"
        ));
        assert!(md.contains("- how"));
    }
}
