//! Token buckets of the rate limiters one virtual service's scripts use
//! (`avi.vs.ratelimit.exceed`, `avi.vs.rate_limit`): one bucket per (limiter, key), shared by
//! every worker, bounded in memory. Pure logic: the time is passed in, no Lua here.
//!
//! A bucket holds up to `burst` tokens and gains `count` tokens per `period`, evenly; a new
//! key starts full. A request takes `consume` tokens (default 1) when they are there and is
//! "exceeded" (takes none) when they are not.
//!
//! Memory: at most `max_keys` keys per limiter. Before a new key goes over that, the keys
//! whose bucket has refilled (they behave exactly like an absent key) are dropped, and if that
//! is not enough, the least recently used tenth. Keys longer than [`MAX_KEY_BYTES`] are kept as
//! their SHA-256, so a key costs a bounded number of bytes.

use std::collections::HashMap;

use dashmap::DashMap;
use parking_lot::Mutex;
use sha2::Digest;

use crate::config::{RateLimiterConfig, VsRateLimit, known_names};

/// Longest key stored as it is.
pub(crate) const MAX_KEY_BYTES: usize = 256;

/// A bucket's state.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    /// When `tokens` was last brought up to date (ns of the scripts' clock).
    at_ns: u64,
}

/// One `[[rate_limiter]]`'s buckets.
struct Limiter {
    config: RateLimiterConfig,
    /// Tokens gained per nanosecond.
    per_ns: f64,
    buckets: DashMap<Box<[u8]>, Bucket>,
    /// Held by the one thread that evicts, so concurrent inserts do not all scan.
    evicting: Mutex<()>,
}

impl Limiter {
    fn new(config: &RateLimiterConfig) -> Limiter {
        let period_ns = config.period.as_nanos().max(1) as f64;
        Limiter {
            per_ns: config.count as f64 / period_ns,
            config: config.clone(),
            buckets: DashMap::new(),
            evicting: Mutex::new(()),
        }
    }

    fn capacity(&self) -> f64 {
        self.config.burst.max(self.config.count) as f64
    }

    fn refilled(&self, b: &Bucket, now_ns: u64) -> f64 {
        let gained = now_ns.saturating_sub(b.at_ns) as f64 * self.per_ns;
        (b.tokens + gained).min(self.capacity())
    }

    fn exceed(&self, key: &[u8], consume: f64, now_ns: u64) -> bool {
        let key = stored_key(key);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.config.max_keys {
            self.evict(now_ns);
        }
        let capacity = self.capacity();
        let mut bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            at_ns: now_ns,
        });
        let tokens = self.refilled(&bucket, now_ns);
        // consume = 0 asks whether one more request would pass, taking nothing. The epsilon
        // absorbs rounding in the refill (2 per second for half a second is one token).
        let need = if consume == 0.0 { 1.0 } else { consume };
        let exceeded = tokens + 1e-9 < need;
        bucket.tokens = if exceeded { tokens } else { tokens - consume };
        bucket.at_ns = now_ns.max(bucket.at_ns);
        exceeded
    }

    /// Makes room for a tenth of `max_keys`: refilled buckets first, then the least
    /// recently used.
    fn evict(&self, now_ns: u64) {
        let Some(_guard) = self.evicting.try_lock() else {
            return;
        };
        let capacity = self.capacity();
        self.buckets
            .retain(|_, b| self.refilled(b, now_ns) < capacity);
        let target = self.config.max_keys - self.config.max_keys.div_ceil(10);
        let len = self.buckets.len();
        if len <= target {
            return;
        }
        let mut times: Vec<u64> = self.buckets.iter().map(|e| e.at_ns).collect();
        let drop = len - target;
        let (_, cutoff, _) = times.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let mut dropped = 0;
        self.buckets.retain(|_, b| {
            if dropped < drop && b.at_ns <= cutoff {
                dropped += 1;
                false
            } else {
                true
            }
        });
    }
}

/// The key as stored: itself, or its SHA-256 when longer than [`MAX_KEY_BYTES`].
fn stored_key(key: &[u8]) -> Box<[u8]> {
    if key.len() <= MAX_KEY_BYTES {
        Box::from(key)
    } else {
        let mut k = b"sha256:".to_vec();
        k.extend_from_slice(&sha2::Sha256::digest(key));
        k.into_boxed_slice()
    }
}

/// Error of a call naming a rate limiter the config does not have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown rate limiter '{name}' ({known})")]
pub(crate) struct UnknownLimiter {
    name: String,
    known: String,
}

/// The rate limiters of one virtual service's scripts.
#[derive(Default)]
pub struct RateLimits {
    limiters: HashMap<String, Limiter>,
    profile: Option<VsRateLimit>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.limiters.keys().collect();
        names.sort();
        f.debug_struct("RateLimits")
            .field("limiters", &names)
            .field("profile", &self.profile)
            .finish()
    }
}

impl RateLimits {
    /// Empty buckets for `limiters`; `profile` is the service's `rate_limit` (the limiter and
    /// action of `avi.vs.rate_limit`).
    pub fn new(limiters: &[RateLimiterConfig], profile: Option<VsRateLimit>) -> RateLimits {
        RateLimits {
            limiters: limiters
                .iter()
                .map(|c| (c.name.clone(), Limiter::new(c)))
                .collect(),
            profile,
        }
    }

    /// The service's `rate_limit`, if it has one.
    pub(crate) fn profile(&self) -> Option<&VsRateLimit> {
        self.profile.as_ref()
    }

    /// Counts a request of `key` against `limiter`, taking `consume` tokens: true when the
    /// count is exceeded (then nothing is taken).
    pub(crate) fn exceed(
        &self,
        limiter: &str,
        key: &[u8],
        consume: f64,
        now_ns: u64,
    ) -> Result<bool, UnknownLimiter> {
        let l = self.limiters.get(limiter).ok_or_else(|| {
            let mut names: Vec<&str> = self.limiters.keys().map(String::as_str).collect();
            names.sort_unstable();
            UnknownLimiter {
                name: limiter.to_string(),
                known: known_names(names.into_iter(), "rate limiters"),
            }
        })?;
        Ok(l.exceed(key, consume, now_ns))
    }

    /// Keys tracked by `limiter`.
    #[cfg(test)]
    fn keys(&self, limiter: &str) -> usize {
        self.limiters.get(limiter).map_or(0, |l| l.buckets.len())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limits(count: u64, period_s: u64, burst: u64, max_keys: usize) -> RateLimits {
        RateLimits::new(
            &[RateLimiterConfig {
                name: "rl".into(),
                count,
                period: Duration::from_secs(period_s),
                burst: burst.max(count),
                max_keys,
            }],
            None,
        )
    }

    fn run(l: &RateLimits, key: &str, n: usize, now: u64) -> Vec<bool> {
        (0..n)
            .map(|_| l.exceed("rl", key.as_bytes(), 1.0, now).expect("known"))
            .collect()
    }

    #[test]
    fn a_key_gets_its_burst_then_the_rate() {
        let l = limits(2, 1, 5, 100);
        let t0 = 10 * SEC;
        assert_eq!(
            run(&l, "a", 6, t0),
            [false, false, false, false, false, true]
        );
        // Half a second gives one token back (2 per second).
        assert_eq!(run(&l, "a", 2, t0 + SEC / 2), [false, true]);
        // Other keys have their own bucket.
        assert_eq!(run(&l, "b", 1, t0), [false]);
        // A long pause refills to the burst, never beyond.
        assert_eq!(
            run(&l, "a", 6, t0 + 100 * SEC)
                .iter()
                .filter(|e| !**e)
                .count(),
            5
        );
    }

    #[test]
    fn consume_takes_several_tokens_and_zero_only_looks() {
        let l = limits(10, 1, 10, 100);
        let t = SEC;
        assert_eq!(l.exceed("rl", b"k", 7.0, t), Ok(false));
        assert_eq!(l.exceed("rl", b"k", 4.0, t), Ok(true), "3 left");
        assert_eq!(
            l.exceed("rl", b"k", 0.0, t),
            Ok(false),
            "one more would pass"
        );
        assert_eq!(l.exceed("rl", b"k", 3.0, t), Ok(false));
        assert_eq!(l.exceed("rl", b"k", 0.0, t), Ok(true), "none left");
    }

    #[test]
    fn an_unknown_limiter_is_an_error_naming_the_known_ones() {
        let l = limits(1, 1, 1, 10);
        assert_eq!(
            l.exceed("nope", b"k", 1.0, 0).map_err(|e| e.to_string()),
            Err("unknown rate limiter 'nope' (known rate limiters: `rl`)".to_string())
        );
        assert_eq!(
            RateLimits::default()
                .exceed("x", b"k", 1.0, 0)
                .map_err(|e| e.to_string()),
            Err("unknown rate limiter 'x' (no rate limiters are defined)".to_string())
        );
    }

    #[test]
    fn keys_are_bounded_refilled_buckets_go_first_then_the_oldest() {
        let l = limits(1, 60, 1, 100);
        // 100 keys, each used up at its own time.
        for i in 0..100u64 {
            assert_eq!(run(&l, &format!("k{i}"), 1, i * SEC), [false]);
        }
        assert_eq!(l.keys("rl"), 100);
        // At 100.5 s the keys used up to 40 s have refilled (41 of them): they go.
        assert_eq!(run(&l, "new", 1, 100 * SEC + SEC / 2), [false]);
        assert_eq!(l.keys("rl"), 60);
        // k50 is still limited: its state was kept.
        assert_eq!(run(&l, "k50", 1, 100 * SEC + SEC / 2), [true]);
        // Fill up again; at 101.5 s only k41 has refilled, so the least recent of the rest go
        // too, down to 90 keys before the new one.
        for i in 0..40u64 {
            run(&l, &format!("x{i}"), 1, 101 * SEC);
        }
        assert_eq!(l.keys("rl"), 100);
        let later = 101 * SEC + SEC / 2;
        run(&l, "y", 1, later);
        assert_eq!(l.keys("rl"), 91);
        // The oldest (k42..k49, k51) went; the recent ones stayed, still limited.
        assert_eq!(run(&l, "x0", 1, later), [true]);
        assert_eq!(run(&l, "k50", 1, later), [true]);
        assert_eq!(
            run(&l, "k45", 1, later),
            [false],
            "forgotten, so full again"
        );
    }

    #[test]
    fn long_keys_are_stored_as_their_hash() {
        let l = limits(1, 60, 1, 10);
        let long = "k".repeat(10_000);
        assert_eq!(run(&l, &long, 2, SEC), [false, true]);
        assert_eq!(stored_key(long.as_bytes()).len(), 7 + 32);
        assert_eq!(&*stored_key(b"short"), b"short");
    }

    #[test]
    fn buckets_are_shared_between_threads() {
        let l = std::sync::Arc::new(limits(1000, 3600, 1000, 10));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = std::sync::Arc::clone(&l);
                std::thread::spawn(move || run(&l, "k", 500, SEC).iter().filter(|e| !**e).count())
            })
            .collect();
        let passed: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(passed, 1000);
    }
}
