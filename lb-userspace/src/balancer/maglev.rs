//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size in which
//! every backend owns an almost equal share of slots, and in which removing one backend moves
//! few slots owned by the others.
//!
//! The table is rebuilt from scratch by the agent and written to the kernel; the XDP program
//! only indexes it with a flow hash. Tables must be identical across agent restarts and across
//! load-balancer hosts (so that a flow keeps its backend whichever host or agent generation
//! forwards it), hence the fixed-seed hashes and the order-independent construction. The
//! arithmetic both sides share (each backend's permutation, the XDP lookup) is in
//! `lb_common::maglev`.

use lb_common::maglev::Permutation;

/// One table participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Value written into the slots this backend owns (the backend id in the kernel maps).
    pub id: u32,
    /// Stable identity the permutation is derived from (for example `"192.0.2.11:8080"`).
    /// Two hosts that agree on keys agree on the table, whatever ids they allocated.
    pub key: String,
    /// Relative share of slots; 0 excludes the backend.
    pub weight: u32,
}

impl MaglevBackend {
    /// A backend of weight 1.
    pub fn new(id: u32, key: impl Into<String>) -> Self {
        Self {
            id,
            key: key.into(),
            weight: 1,
        }
    }

    /// The same backend with another weight.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// Builds a Maglev lookup table of `size` slots (which should be prime so that every skip
/// generates a full permutation). Each slot holds the `id` of a backend; with no backend of
/// non-zero weight every slot is 0.
///
/// The result depends only on the set of (key, id, weight) triples, not on their order.
/// With equal weights the slot counts of any two backends differ by at most one. With weights,
/// a backend of weight `w` claims `w / max_weight` slots per round, so shares follow weights.
pub fn build_table(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let m = size as usize;
    let mut table = vec![0u32; m];
    if m == 0 {
        return table;
    }

    let mut members: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    if members.is_empty() {
        return table;
    }
    // Order-independence: ties between backends are resolved by key, then id.
    members.sort_by(|a, b| a.key.cmp(&b.key).then(a.id.cmp(&b.id)));

    let size64 = u64::from(size);
    struct Cursor {
        id: u32,
        permutation: Permutation,
        next: u64,
        weight: u64,
        credit: u64,
    }
    let mut cursors: Vec<Cursor> = members
        .iter()
        .map(|b| Cursor {
            id: b.id,
            permutation: Permutation::new(b.key.as_bytes(), size),
            next: 0,
            weight: u64::from(b.weight),
            credit: 0,
        })
        .collect();
    let max_weight = cursors.iter().map(|c| c.weight).max().unwrap_or(1);

    let mut filled = vec![false; m];
    let mut remaining = m;
    while remaining > 0 {
        for c in cursors.iter_mut() {
            c.credit += c.weight;
            if c.credit < max_weight {
                continue;
            }
            c.credit -= max_weight;
            // Walk this backend's permutation to its next free slot. Termination: the
            // permutation visits every slot once per `size` steps when `size` is prime, and at
            // least one slot is free.
            let mut slot;
            let mut steps = 0u64;
            loop {
                slot = c.permutation.slot(c.next);
                c.next += 1;
                steps += 1;
                if !filled[slot] || steps > size64 {
                    break;
                }
            }
            if filled[slot] {
                // Only reachable for a non-prime size where the permutation cycles early:
                // fall back to the first free slot so the table is still complete.
                match filled.iter().position(|f| !f) {
                    Some(free) => slot = free,
                    None => break,
                }
            }
            filled[slot] = true;
            table[slot] = c.id;
            remaining -= 1;
            if remaining == 0 {
                break;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const M: u32 = lb_common::MAGLEV_TABLE_SIZE;
    /// Fingerprint of the 17-backend table; a change here reshuffles flows across a mixed-version fleet.
    const GOLDEN_FINGERPRINT_17: u64 = 2_874_588_745_392_092_830;

    fn backends(n: u32) -> Vec<MaglevBackend> {
        (1..=n)
            .map(|i| MaglevBackend::new(i, format!("192.0.2.{}:{}", i % 250, 8000 + i)))
            .collect()
    }

    fn counts(table: &[u32]) -> HashMap<u32, usize> {
        let mut c = HashMap::new();
        for &id in table {
            *c.entry(id).or_default() += 1;
        }
        c
    }

    #[test]
    fn empty_backends_give_all_zeros() {
        let t = build_table(&[], M);
        assert_eq!(t.len(), M as usize);
        assert!(t.iter().all(|&x| x == 0));
        let zero_weight = [MaglevBackend::new(7, "a").with_weight(0)];
        assert!(build_table(&zero_weight, M).iter().all(|&x| x == 0));
    }

    #[test]
    fn single_backend_owns_everything() {
        let t = build_table(&[MaglevBackend::new(9, "192.0.2.1:80")], M);
        assert!(t.iter().all(|&x| x == 9));
    }

    #[test]
    fn balanced_within_one_percent_for_3_to_100_backends() {
        for n in 3..=100u32 {
            let t = build_table(&backends(n), M);
            let c = counts(&t);
            assert_eq!(c.len(), n as usize, "n={n}: every backend owns slots");
            assert!(!c.contains_key(&0), "n={n}: no empty slot");
            let ideal = f64::from(M) / f64::from(n);
            for (id, &cnt) in &c {
                let dev = (cnt as f64 - ideal).abs() / ideal;
                assert!(
                    dev <= 0.01,
                    "n={n} backend {id}: {cnt} slots, ideal {ideal:.1}, deviation {:.3}%",
                    dev * 100.0
                );
            }
        }
    }

    #[test]
    fn removing_one_backend_moves_few_other_slots() {
        for n in [3u32, 5, 10, 32, 100] {
            let all = backends(n);
            let before = build_table(&all, M);
            for removed in [1, n / 2 + 1, n] {
                let rest: Vec<_> = all.iter().filter(|b| b.id != removed).cloned().collect();
                let after = build_table(&rest, M);
                let owned_by_removed = before.iter().filter(|&&id| id == removed).count();
                let moved_others = before
                    .iter()
                    .zip(&after)
                    .filter(|(b, a)| **b != removed && b != a)
                    .count();
                // The removed backend's slots must all move; the others' should mostly stay.
                // Maglev trades perfect stability for balance: with 16381 slots the extra
                // movement measures about 1.4% of the table at 100 backends (less with
                // fewer), bounded here at 2%.
                assert!(after.iter().all(|&id| id != removed));
                let bound = M as usize / 50;
                assert!(
                    moved_others <= bound,
                    "n={n} removed {removed}: {moved_others} other slots moved (removed owned \
                     {owned_by_removed}, bound {bound})"
                );
            }
        }
    }

    #[test]
    fn deterministic_and_order_independent() {
        let a = backends(17);
        let t1 = build_table(&a, M);
        let t2 = build_table(&a, M);
        assert_eq!(t1, t2);
        let mut reversed = a.clone();
        reversed.reverse();
        assert_eq!(t1, build_table(&reversed, M));
        // The table is a contract between hosts and agent versions: pin a fingerprint.
        let fingerprint = t1.iter().fold(0u64, |h, &id| {
            h.wrapping_mul(31).wrapping_add(u64::from(id))
        });
        assert_eq!(
            fingerprint, GOLDEN_FINGERPRINT_17,
            "maglev placement changed"
        );
    }

    #[test]
    fn ids_do_not_change_placement_only_labels() {
        // Two hosts with different id allocations but the same keys put the same key in the
        // same slots.
        let a: Vec<_> = backends(8);
        let b: Vec<_> = a
            .iter()
            .map(|x| MaglevBackend::new(x.id + 100, x.key.clone()))
            .collect();
        let ta = build_table(&a, M);
        let tb = build_table(&b, M);
        assert!(ta.iter().zip(&tb).all(|(x, y)| x + 100 == *y));
    }

    /// Backends of weights 1 to 5 (times the agent's weight scale of 16, as it passes them).
    fn weighted_backends(n: u32) -> Vec<MaglevBackend> {
        backends(n)
            .into_iter()
            .map(|b| {
                let w = 1 + b.id % 5;
                b.with_weight(w * 16)
            })
            .collect()
    }

    #[test]
    fn weighted_shares_within_one_percent_for_3_to_100_backends() {
        let mut worst = (0.0f64, 0u32);
        for n in 3..=100u32 {
            let bs = weighted_backends(n);
            let c = counts(&build_table(&bs, M));
            assert!(!c.contains_key(&0), "n={n}: no empty slot");
            let total: u32 = bs.iter().map(|b| b.weight).sum();
            for b in &bs {
                let ideal = f64::from(M) * f64::from(b.weight) / f64::from(total);
                let got = c.get(&b.id).copied().unwrap_or(0) as f64;
                // A slot is the unit: a share of 40 slots cannot be nearer than half of one.
                let dev = ((got - ideal).abs() - 1.0).max(0.0) / ideal;
                if dev > worst.0 {
                    worst = (dev, n);
                }
                assert!(
                    dev <= 0.01,
                    "n={n} backend {} weight {}: {got} slots, ideal {ideal:.1}",
                    b.id,
                    b.weight
                );
            }
        }
        // Measured: 0.22% at worst (n=96).
        assert!(
            worst.0 <= 0.01,
            "worst {:.3}% at n={}",
            worst.0 * 100.0,
            worst.1
        );
    }

    #[test]
    fn a_weight_change_moves_few_slots() {
        for n in [3u32, 10, 32, 100] {
            let bs = weighted_backends(n);
            let before = build_table(&bs, M);
            let changed = bs[0].id;
            let mut heavier = bs.clone();
            heavier[0].weight += 16;
            let after = build_table(&heavier, M);
            let gained = after.iter().filter(|&&id| id == changed).count()
                - before.iter().filter(|&&id| id == changed).count();
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            // At least the slots the heavier backend gains move. Maglev pays for balance with
            // some churn between the others, as when a backend leaves: measured at most 1.1%
            // of the table (100 backends: 54 gained, 227 moved), bounded here at 2%.
            let bound = gained + M as usize / 50;
            assert!(
                moved <= bound,
                "n={n}: {moved} slots moved for {gained} gained (bound {bound})"
            );
        }
    }

    #[test]
    fn weights_shape_shares() {
        let bs = vec![
            MaglevBackend::new(1, "192.0.2.1:80").with_weight(1),
            MaglevBackend::new(2, "192.0.2.2:80").with_weight(2),
            MaglevBackend::new(3, "192.0.2.3:80").with_weight(5),
        ];
        let c = counts(&build_table(&bs, M));
        let total_w = 8.0;
        for b in &bs {
            let ideal = f64::from(M) * f64::from(b.weight) / total_w;
            let got = c.get(&b.id).copied().unwrap_or(0) as f64;
            assert!(
                (got - ideal).abs() / ideal <= 0.01,
                "backend {} weight {}: {got} slots, ideal {ideal:.1}",
                b.id,
                b.weight
            );
        }
    }
}
