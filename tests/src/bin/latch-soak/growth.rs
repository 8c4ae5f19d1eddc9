//! Is a sampled series (RSS, open fds) bounded? Pure, so the rule is unit-tested without a soak.
//!
//! The rule: drop the warm-up samples, split the rest into thirds and compare the largest value
//! of the last third with the largest of the first: the series grows without bound when
//! `last_max > first_max * (1 + rel) + abs`. Maxima rather than means, because a sawtooth
//! (allocator arenas, connections opening and closing) is bounded when its peaks are, and a
//! leak raises the peaks too. Comparing thirds of the same run needs no absolute baseline, so
//! the same rule holds for a debug and a release build. A leak slower than the tolerance over
//! one run is not caught; the report prints both maxima so a slow drift stays visible.

/// How much the last third's peak may exceed the first third's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Relative to the first third's peak (0.10: ten percent).
    pub rel: f64,
    /// Absolute, in the series' unit (KiB for RSS, descriptors for fds).
    pub abs: f64,
}

impl Tolerance {
    pub fn limit(&self, first_max: f64) -> f64 {
        first_max * (1.0 + self.rel) + self.abs
    }
}

/// The fewest samples (after the warm-up) the rule judges: three per third.
pub const MIN_SAMPLES: usize = 9;

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The last third's peak stayed within the limit.
    Bounded {
        first_max: f64,
        last_max: f64,
        limit: f64,
    },
    /// The last third's peak passed the limit.
    Grows {
        first_max: f64,
        last_max: f64,
        limit: f64,
    },
    /// Too few samples after the warm-up to say (the segment is reported, not judged).
    TooShort { samples: usize },
}

impl Verdict {
    pub fn grows(&self) -> bool {
        matches!(self, Verdict::Grows { .. })
    }

    /// (first third's peak, last third's peak, limit) of a judged series.
    pub fn peaks(&self) -> Option<(f64, f64, f64)> {
        match self {
            Verdict::Bounded {
                first_max,
                last_max,
                limit,
            }
            | Verdict::Grows {
                first_max,
                last_max,
                limit,
            } => Some((*first_max, *last_max, *limit)),
            Verdict::TooShort { .. } => None,
        }
    }
}

/// Judges `samples` (in time order) after skipping the first `warmup` of them.
pub fn judge(samples: &[f64], warmup: usize, tol: Tolerance) -> Verdict {
    let rest = samples.get(warmup..).unwrap_or_default();
    if rest.len() < MIN_SAMPLES {
        return Verdict::TooShort {
            samples: rest.len(),
        };
    }
    let third = rest.len() / 3;
    let peak = |s: &[f64]| s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let first_max = peak(&rest[..third]);
    let last_max = peak(&rest[rest.len() - third..]);
    let limit = tol.limit(first_max);
    if last_max > limit {
        Verdict::Grows {
            first_max,
            last_max,
            limit,
        }
    } else {
        Verdict::Bounded {
            first_max,
            last_max,
            limit,
        }
    }
}

/// Back in the band: the value measured once the load stopped against the one measured before
/// it started (fds: a descriptor per connection that never closed would stay above it).
pub fn back_in_band(quiet_before: f64, quiet_after: f64, tol: Tolerance) -> bool {
    quiet_after <= tol.limit(quiet_before)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        rel: 0.10,
        abs: 4.0,
    };

    #[test]
    fn a_flat_noisy_series_is_bounded() {
        let s: Vec<f64> = (0..60).map(|i| 100.0 + f64::from(i % 7)).collect();
        assert!(matches!(judge(&s, 5, TOL), Verdict::Bounded { .. }));
    }

    #[test]
    fn a_sawtooth_with_steady_peaks_is_bounded() {
        let s: Vec<f64> = (0..90)
            .map(|i| if i % 10 == 9 { 180.0 } else { 120.0 })
            .collect();
        let v = judge(&s, 0, TOL);
        assert_eq!(
            v,
            Verdict::Bounded {
                first_max: 180.0,
                last_max: 180.0,
                limit: 180.0 * 1.1 + 4.0
            }
        );
    }

    #[test]
    fn a_linear_leak_grows() {
        let s: Vec<f64> = (0..60).map(|i| 100.0 + 2.0 * f64::from(i)).collect();
        let v = judge(&s, 0, TOL);
        assert!(v.grows(), "{v:?}");
        // first third 0..20: peak 138; last third 40..60: peak 218.
        assert_eq!(
            v,
            Verdict::Grows {
                first_max: 138.0,
                last_max: 218.0,
                limit: 138.0 * 1.1 + 4.0
            }
        );
    }

    #[test]
    fn growth_during_warmup_only_is_not_a_leak() {
        // Ramps up for 40 samples (tables filling, pools warming), flat afterwards.
        let s: Vec<f64> = (0..100)
            .map(|i| 100.0 + 5.0 * f64::from(i.min(40)))
            .collect();
        assert!(
            judge(&s, 0, TOL).grows(),
            "without the warm-up the ramp counts"
        );
        assert!(!judge(&s, 40, TOL).grows());
    }

    #[test]
    fn within_the_absolute_tolerance_is_bounded_beyond_it_grows() {
        let mut s = vec![10.0; 30];
        s[29] = 14.0;
        assert!(!judge(&s, 0, TOL).grows(), "10 * 1.1 + 4 = 15");
        s[29] = 15.5;
        assert!(judge(&s, 0, TOL).grows());
    }

    #[test]
    fn too_few_samples_are_not_judged() {
        assert_eq!(judge(&[1.0; 12], 4, TOL), Verdict::TooShort { samples: 8 });
        assert_eq!(judge(&[1.0; 3], 10, TOL), Verdict::TooShort { samples: 0 });
    }

    #[test]
    fn quiet_band() {
        let fds = Tolerance { rel: 0.0, abs: 8.0 };
        assert!(back_in_band(40.0, 48.0, fds));
        assert!(!back_in_band(40.0, 49.0, fds));
    }
}
