//! h2load (nghttp2-client): the command line and its text output (parsed here, unit-tested).

use anyhow::{Context, Result, bail};
use latch_tests::Netns;

use crate::http::wrk::{duration_ms, run_bounded};

/// What one h2load run reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct H2Result {
    /// Requests that completed (`done`).
    pub requests: u64,
    pub rps: f64,
    /// Mean time per request, ms (h2load prints min/max/mean/sd, no percentiles).
    pub mean_ms: Option<f64>,
    /// Failed, errored and timed-out requests plus non-2xx/3xx answers.
    pub errors: u64,
}

/// The number before `word` in a comma-separated list (`102034 done, 0 failed`).
fn count(list: &str, word: &str) -> Option<u64> {
    list.split(',').find_map(|part| {
        let mut w = part.split_whitespace();
        let n = w.next()?.parse().ok()?;
        (w.next()? == word).then_some(n)
    })
}

/// Parses h2load's report.
pub fn parse(text: &str) -> Result<H2Result> {
    let mut r = H2Result::default();
    let mut saw_rate = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("finished in ") {
            // "finished in 5.00s, 20406.80 req/s, 1.52MB/s"
            let rate = rest
                .split(", ")
                .find_map(|p| p.strip_suffix(" req/s"))
                .context("no req/s on the finished line")?;
            r.rps = rate.trim().parse().context("req/s")?;
            saw_rate = true;
        } else if let Some(rest) = t.strip_prefix("requests:") {
            r.requests = count(rest, "done").context("requests done")?;
            r.errors += ["failed", "errored", "timeout"]
                .iter()
                .filter_map(|w| count(rest, w))
                .sum::<u64>();
        } else if let Some(rest) = t.strip_prefix("status codes:") {
            r.errors += count(rest, "4xx").unwrap_or(0) + count(rest, "5xx").unwrap_or(0);
        } else if let Some(rest) = t.strip_prefix("time for request:") {
            // min, max, mean, sd, +/- sd
            r.mean_ms = rest.split_whitespace().nth(2).and_then(duration_ms);
        }
    }
    if !saw_rate {
        bail!("no `finished in` line in h2load's output:\n{text}");
    }
    Ok(r)
}

/// One h2load invocation: HTTP/2 over TLS (ALPN h2), timing-based.
#[derive(Clone, Debug)]
pub struct H2loadArgs {
    pub threads: u32,
    pub clients: u32,
    /// Concurrent streams per connection (`-m`).
    pub streams: u32,
    pub seconds: u64,
    pub url: String,
}

impl H2loadArgs {
    pub fn argv(&self) -> Vec<String> {
        vec![
            "h2load".to_string(),
            format!("-t{}", self.threads),
            format!("-c{}", self.clients),
            format!("-m{}", self.streams),
            "-D".into(),
            self.seconds.to_string(),
            "--warm-up-time".into(),
            "1".into(),
            self.url.clone(),
        ]
    }
}

/// Runs h2load in `ns`; killed (by its PID) if it overruns its duration by 30 s.
pub fn run(ns: &Netns, args: &H2loadArgs) -> Result<H2Result> {
    parse(&run_bounded(ns, &args.argv(), args.seconds)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "starting benchmark...
spawning thread #0: 25 total client(s). Timing-based test with 1s of warm-up time and 5s of main duration for measurements.
spawning thread #1: 25 total client(s). Timing-based test with 1s of warm-up time and 5s of main duration for measurements.
Warm-up started for thread #0.
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 5.00s, 20406.80 req/s, 1.52MB/s
requests: 102034 total, 102534 started, 102030 done, 102020 succeeded, 4 failed, 3 errored, 2 timeout
status codes: 102020 2xx, 0 3xx, 5 4xx, 1 5xx
traffic: 7.62MB (7985736) total, 1.03MB (1075684) headers (space savings 93.18%), 4.96MB (5204234) data
                     min         max         mean         sd        +/- sd
time for request:      283us     38.91ms      4.86ms      2.37ms    73.55%
time for connect:     2.14ms     10.58ms      5.86ms      2.43ms    64.00%
time to 1st byte:     9.40ms     13.73ms     11.55ms      1.19ms    58.00%
req/s           :     406.66      410.87      408.16        0.88    68.00%
";

    #[test]
    fn parses_rate_requests_latency_and_errors() {
        let r = parse(SAMPLE).expect("parses");
        assert!((r.rps - 20406.80).abs() < 1e-6);
        assert_eq!(r.requests, 102_030);
        assert!((r.mean_ms.expect("mean") - 4.86).abs() < 1e-9);
        assert_eq!(r.errors, 4 + 3 + 2 + 5 + 1);
    }

    #[test]
    fn a_run_without_a_result_is_an_error() {
        assert!(parse("starting benchmark...\nNo protocol negotiated. Exiting...\n").is_err());
    }

    #[test]
    fn argv_is_timing_based_with_streams() {
        let a = H2loadArgs {
            threads: 2,
            clients: 50,
            streams: 10,
            seconds: 5,
            url: "https://198.51.100.20:443/".into(),
        };
        assert_eq!(
            a.argv(),
            [
                "h2load",
                "-t2",
                "-c50",
                "-m10",
                "-D",
                "5",
                "--warm-up-time",
                "1",
                "https://198.51.100.20:443/"
            ]
        );
    }
}
