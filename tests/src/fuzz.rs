//! Bounded-time fuzzing on proptest, shared by the fuzz targets of the agent's unit tests
//! (`lb-userspace/src/fuzz/`) and of the integration tests (`lb-userspace/tests/it/fuzz_xdp.rs`).
//!
//! A target is a proptest strategy (structured generation: mostly mutations of valid inputs,
//! so that cases get past the first checks) and a property. [`run`] draws cases until the
//! target's time budget is spent; the first failing case is shrunk to a minimal input, which
//! the panic message prints together with the seed that replays the run.
//!
//! - `LATCH_FUZZ_SECONDS`: seconds per target (fractions allowed); default
//!   [`DEFAULT_SECONDS`], the short run of `cargo xtask test`. `cargo xtask fuzz --seconds N`
//!   sets it.
//! - `LATCH_FUZZ_SEED`: the seed (default: a fresh one, printed with the figures).
//!
//! Why not cargo-fuzz: it needs a nightly toolchain and sanitizers; proptest runs on stable,
//! inside the ordinary test binaries, and shrinks what it finds.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseResult, TestError, TestRunner};

pub const SECONDS_VAR: &str = "LATCH_FUZZ_SECONDS";
pub const SEED_VAR: &str = "LATCH_FUZZ_SEED";
/// Per target in the short run: with six targets on two cores the run stays well under a
/// minute.
pub const DEFAULT_SECONDS: f64 = 3.0;
/// Shrinking a failure may take this long at most; the unshrunk input is reported after.
const MAX_SHRINK: Duration = Duration::from_secs(120);

/// What one target's run did.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: String,
    pub cases: u64,
    pub elapsed: Duration,
    pub seed: u64,
}

/// The time budget of each target, from [`SECONDS_VAR`].
pub fn budget() -> Duration {
    let secs = std::env::var(SECONDS_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(DEFAULT_SECONDS);
    Duration::from_secs_f64(secs)
}

fn seed() -> u64 {
    if let Some(seed) = std::env::var(SEED_VAR)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return seed;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Runs `property` on cases drawn from `strategy` for [`budget`] (at least one case); panics
/// with the minimal failing input and the seed at the first failure. Prints and returns the
/// figures.
pub fn run<S>(target: &str, strategy: S, property: impl Fn(S::Value) -> TestCaseResult) -> Report
where
    S: Strategy,
    S::Value: Debug,
{
    run_for(target, budget(), strategy, property)
}

/// [`run`] with an explicit budget.
pub fn run_for<S>(
    target: &str,
    budget: Duration,
    strategy: S,
    property: impl Fn(S::Value) -> TestCaseResult,
) -> Report
where
    S: Strategy,
    S::Value: Debug,
{
    let seed = seed();
    let config = Config {
        // Findings become named regression tests instead of files next to the source.
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_time: MAX_SHRINK.as_millis() as u32,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let mut cases = 0u64;
    while cases == 0 || started.elapsed() < budget {
        let tree = match strategy.new_tree(&mut runner) {
            Ok(tree) => tree,
            Err(why) => panic!("fuzz {target}: cannot generate a case: {why}"),
        };
        match runner.run_one(tree, &property) {
            Ok(_) => cases += 1,
            Err(TestError::Fail(why, input)) => panic!(
                "fuzz {target}: {why}\nminimal failing input: {input:#?}\n\
                 after {cases} passing cases; replay with {SEED_VAR}={seed}"
            ),
            Err(TestError::Abort(why)) => {
                panic!("fuzz {target}: aborted: {why}; replay with {SEED_VAR}={seed}")
            }
        }
    }
    let report = Report {
        target: target.to_string(),
        cases,
        elapsed: started.elapsed(),
        seed,
    };
    println!(
        "fuzz {target}: {} cases in {:.1}s (seed {seed})",
        report.cases,
        report.elapsed.as_secs_f64()
    );
    report
}

/// Byte-level mutations of a valid input, shared by the targets: positions are taken modulo
/// the input's length at the time, so every edit applies to any input and shrinks toward the
/// start.
#[derive(Clone, Debug)]
pub enum Edit {
    /// XOR one byte with `mask`.
    Flip {
        at: usize,
        mask: u8,
    },
    /// Insert bytes (from a target's dictionary of interesting tokens, or random).
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    /// Copy `len` bytes from `from` to `to`.
    Duplicate {
        from: usize,
        len: usize,
        to: usize,
    },
    Truncate {
        at: usize,
    },
}

impl Edit {
    pub fn apply(&self, b: &mut Vec<u8>) {
        let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % (len + 1) };
        match self {
            Self::Flip { at, mask } => {
                if !b.is_empty() {
                    let i = at % b.len();
                    b[i] ^= mask | 1;
                }
            }
            Self::Insert { at, bytes } => {
                let i = pos(*at, b.len());
                b.splice(i..i, bytes.iter().copied());
            }
            Self::Delete { at, len } => {
                let i = pos(*at, b.len());
                let end = (i + len).min(b.len());
                b.drain(i..end);
            }
            Self::Duplicate { from, len, to } => {
                let i = pos(*from, b.len());
                let end = (i + len).min(b.len());
                let piece = b[i..end].to_vec();
                let j = pos(*to, b.len());
                b.splice(j..j, piece);
            }
            Self::Truncate { at } => {
                let i = pos(*at, b.len());
                b.truncate(i);
            }
        }
    }
}

/// Applies `edits` in order.
pub fn apply_all(input: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = input.to_vec();
    for e in edits {
        e.apply(&mut b);
    }
    b
}

/// A strategy for one [`Edit`]; inserted bytes come from `dictionary` or are random.
pub fn edit(dictionary: &'static [&'static [u8]]) -> impl Strategy<Value = Edit> + Clone {
    use proptest::prelude::*;
    let token: BoxedStrategy<Vec<u8>> = if dictionary.is_empty() {
        proptest::collection::vec(any::<u8>(), 1..8).boxed()
    } else {
        prop_oneof![
            3 => proptest::sample::select(dictionary).prop_map(|t| t.to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 1..8),
        ]
        .boxed()
    };
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, mask)| Edit::Flip { at, mask }),
        (any::<usize>(), token).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), 1usize..64, any::<usize>()).prop_map(|(from, len, to)| Edit::Duplicate {
            from,
            len,
            to
        }),
        any::<usize>().prop_map(|at| Edit::Truncate { at }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_to_any_input_and_stay_in_bounds() {
        let all = [
            Edit::Flip { at: 99, mask: 0 },
            Edit::Insert {
                at: 99,
                bytes: b"xy".to_vec(),
            },
            Edit::Delete { at: 1, len: 99 },
            Edit::Duplicate {
                from: 0,
                len: 99,
                to: 99,
            },
            Edit::Truncate { at: 99 },
        ];
        for e in &all {
            let mut empty = Vec::new();
            e.apply(&mut empty);
        }
        // "abc": flip 'a' (99 % 3 = 0, mask forced odd), insert at 99 % 4 = 3, ...
        let out = apply_all(b"abc", &all[..2]);
        assert_eq!(out, b"`bcxy");
        assert_eq!(apply_all(b"abcd", &[Edit::Delete { at: 1, len: 2 }]), b"ad");
        assert_eq!(
            apply_all(
                b"ab",
                &[Edit::Duplicate {
                    from: 0,
                    len: 9,
                    to: 2
                }]
            ),
            b"abab"
        );
        assert_eq!(apply_all(b"abcd", &[Edit::Truncate { at: 2 }]), b"ab");
    }

    #[test]
    fn a_failing_property_panics_with_the_shrunk_input() {
        let caught = std::panic::catch_unwind(|| {
            run_for(
                "self-test",
                Duration::from_millis(200),
                proptest::collection::vec(0u8..=255, 0..64),
                |v| {
                    proptest::prop_assert!(!v.contains(&7));
                    Ok(())
                },
            )
        });
        let message = caught.expect_err("a property that fails must panic");
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(text.contains("fuzz self-test"), "{text}");
        // Shrinking leaves the one byte that fails.
        assert!(text.contains("[\n    7,\n]"), "{text}");
        assert!(text.contains(SEED_VAR), "{text}");
    }
}
