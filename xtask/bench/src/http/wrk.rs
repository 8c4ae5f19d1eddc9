//! wrk: the command line and its text output (parsed here, unit-tested).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use latch_tests::Netns;

/// What one wrk run reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

/// `1.23ms`, `635.91us`, `2.01s`, `1.00m` in milliseconds.
pub(crate) fn duration_ms(s: &str) -> Option<f64> {
    let (num, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

/// Parses wrk 4's report (run with `--latency`).
pub fn parse(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut saw_rps = false;
    for line in text.lines() {
        let t = line.trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().context("Requests/sec")?;
            saw_rps = true;
        } else if words.len() >= 4 && words[1] == "requests" && words[2] == "in" {
            r.requests = words[0].parse().context("request count")?;
            r.seconds = duration_ms(words[3].trim_end_matches(','))
                .map(|ms| ms / 1e3)
                .context("run time")?;
        } else if words.len() == 2 && words[0] == "50%" {
            r.p50_ms = duration_ms(words[1]);
        } else if words.len() == 2 && words[0] == "99%" {
            r.p99_ms = duration_ms(words[1]);
        } else if let Some(rest) = t.strip_prefix("Socket errors:") {
            r.errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    if !saw_rps {
        bail!("no Requests/sec line in wrk's output:\n{text}");
    }
    Ok(r)
}

/// One wrk invocation.
#[derive(Clone, Debug)]
pub struct WrkArgs {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u64,
    pub url: String,
    pub cookie: Option<String>,
    pub close: bool,
}

impl WrkArgs {
    pub fn argv(&self) -> Vec<String> {
        let mut v = vec![
            "wrk".to_string(),
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{}s", self.seconds),
            "--timeout".into(),
            "5s".into(),
            "--latency".into(),
        ];
        if let Some(c) = &self.cookie {
            v.push("-H".into());
            v.push(format!("Cookie: JSESSIONID={c}"));
        }
        if self.close {
            v.push("-H".into());
            v.push("Connection: close".into());
        }
        v.push(self.url.clone());
        v
    }
}

/// Runs wrk in `ns`; killed (by its PID) if it overruns its duration by 30 s.
pub fn run(ns: &Netns, args: &WrkArgs) -> Result<WrkResult> {
    parse(&run_bounded(ns, &args.argv(), args.seconds)?)
}

/// Runs `argv` (a load generator running `seconds`) in `ns` and returns its stdout; killed
/// (by its PID) if it overruns by 30 s, an error if it exits with a failure.
pub(crate) fn run_bounded(ns: &Netns, argv: &[String], seconds: u64) -> Result<String> {
    let what = argv.first().map_or("", String::as_str);
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut child = ns
        .command(&refs)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {} s", seconds + 30);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("reading {what}'s output"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{what} exited with {}: {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://198.51.100.20:80/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.82ms    1.01ms  28.13ms   90.12%
    Req/Sec    13.95k     1.02k   16.01k    70.50%
  Latency Distribution
     50%  635.91us
     75%    1.90ms
     90%    2.60ms
     99%    4.10ms
  277643 requests in 10.00s, 61.21MB read
  Socket errors: connect 0, read 12, write 3, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  27759.54
Transfer/sec:      6.12MB
";

    #[test]
    fn parses_rate_percentiles_and_errors() {
        let r = parse(SAMPLE).expect("parses");
        assert_eq!(r.requests, 277_643);
        assert!((r.seconds - 10.0).abs() < 1e-9);
        assert!((r.rps - 27759.54).abs() < 1e-6);
        assert!((r.p50_ms.expect("p50") - 0.63591).abs() < 1e-9);
        assert!((r.p99_ms.expect("p99") - 4.10).abs() < 1e-9);
        assert_eq!(r.errors, 12 + 3 + 1 + 7);
    }

    #[test]
    fn units_and_missing_rate() {
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
        assert_eq!(duration_ms("1.50m"), Some(90_000.0));
        assert_eq!(duration_ms("12"), None);
        assert!(parse("unable to connect to 198.51.100.20:80").is_err());
    }

    #[test]
    fn argv_carries_cookie_and_close() {
        let a = WrkArgs {
            threads: 2,
            connections: 50,
            seconds: 10,
            url: "http://198.51.100.20:80/".into(),
            cookie: Some("b1-x".into()),
            close: true,
        };
        let v = a.argv();
        assert_eq!(&v[..4], ["wrk", "-t2", "-c50", "-d10s"]);
        assert!(v.contains(&"Cookie: JSESSIONID=b1-x".to_string()));
        assert!(v.contains(&"Connection: close".to_string()));
        assert_eq!(
            v.last().map(String::as_str),
            Some("http://198.51.100.20:80/")
        );
    }
}
