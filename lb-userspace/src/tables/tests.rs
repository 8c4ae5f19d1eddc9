use super::*;
use parking_lot::Mutex;

const S: u64 = NS_PER_S;
const T0: u64 = 1_000 * S;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Up(String, String, String, u64),
    Rm(String, String, RemoveReason),
}

#[derive(Default)]
struct Rec(Mutex<Vec<Ev>>);

impl Mirror for Rec {
    fn upsert(&self, _vs: &str, table: &str, key: &str, value: &str, exp: u64) {
        self.0
            .lock()
            .push(Ev::Up(table.into(), key.into(), value.into(), exp));
    }
    fn remove(&self, _vs: &str, table: &str, key: &str, reason: RemoveReason) {
        self.0.lock().push(Ev::Rm(table.into(), key.into(), reason));
    }
}

fn setup(limits: TableLimits) -> (VsTables, Arc<Rec>) {
    let rec = Arc::new(Rec::default());
    (VsTables::new("shop", limits, rec.clone()), rec)
}

fn t() -> (VsTables, Arc<Rec>) {
    setup(TableLimits::default())
}

#[test]
fn insert_new_then_existing_keeps_value_and_resets_lifetime() {
    let (tb, rec) = t();
    assert_eq!(
        tb.insert("", "k", "v1", 100, T0),
        Ok(InsertOutcome::Inserted)
    );
    // 60 s later: a second insert keeps v1 and resets the lifetime to 1000 s from now.
    let now = T0 + 60 * S;
    assert_eq!(
        tb.insert("", "k", "v2", 1000, now),
        Ok(InsertOutcome::Updated)
    );
    assert_eq!(tb.lookup("", "k", 0, now), Some(("v1".into(), 1000)));
    // A shorter lifetime also resets (to 10 s from now), not max(old, new).
    assert_eq!(
        tb.insert("", "k", "v3", 10, now),
        Ok(InsertOutcome::Updated)
    );
    assert_eq!(tb.lookup("", "k", 0, now), Some(("v1".into(), 10)));
    let ev = rec.0.lock().clone();
    assert_eq!(
        ev,
        vec![
            Ev::Up("".into(), "k".into(), "v1".into(), T0 + 100 * S),
            Ev::Up("".into(), "k".into(), "v1".into(), now + 1000 * S),
            Ev::Up("".into(), "k".into(), "v1".into(), now + 10 * S),
        ]
    );
    let c = tb.counters();
    assert_eq!((c.inserts, c.updates, c.hits, c.entries), (1, 2, 2, 1));
}

#[test]
fn expired_key_is_replaced_by_insert() {
    let (tb, rec) = t();
    tb.insert("", "k", "old", 5, T0).expect("test value");
    let now = T0 + 5 * S; // expiry is exclusive: live strictly before T0+5s
    assert_eq!(tb.lookup("", "k", 0, now - 1), Some(("old".into(), 0)));
    assert_eq!(
        tb.insert("", "k", "new", 5, now),
        Ok(InsertOutcome::Inserted)
    );
    assert_eq!(tb.lookup("", "k", 0, now), Some(("new".into(), 5)));
    assert_eq!(tb.len(), 1);
    assert!(
        rec.0
            .lock()
            .contains(&Ev::Rm("".into(), "k".into(), RemoveReason::Expired))
    );
    assert_eq!(tb.counters().expirations, 1);
}

#[test]
fn lookup_extends_by_exten_capped_at_max_lifetime() {
    let (tb, _) = setup(TableLimits {
        max_lifetime_s: 1000,
        ..TableLimits::default()
    });
    tb.insert("", "k", "v", 100, T0).expect("test value");
    // Default-style extension of 300: 100 + 300 = 400 remaining.
    assert_eq!(tb.lookup("", "k", 300, T0), Some(("v".into(), 400)));
    // 0 leaves it.
    assert_eq!(tb.lookup("", "k", 0, T0 + 50 * S), Some(("v".into(), 350)));
    // Never beyond max lifetime from now.
    assert_eq!(tb.lookup("", "k", 5000, T0), Some(("v".into(), 1000)));
    // Insert lifetime is capped too.
    tb.insert("", "x", "v", 99_999, T0).expect("test value");
    assert_eq!(tb.lookup("", "x", 0, T0), Some(("v".into(), 1000)));
}

#[test]
fn lookup_miss_and_expired_are_none_and_lazily_removed() {
    let (tb, rec) = t();
    assert_eq!(tb.lookup("", "nope", 300, T0), None);
    tb.insert("", "k", "v", 10, T0).expect("test value");
    assert_eq!(tb.lookup("", "k", 300, T0 + 10 * S), None);
    assert_eq!(tb.len(), 0);
    assert_eq!(
        rec.0.lock().last(),
        Some(&Ev::Rm("".into(), "k".into(), RemoveReason::Expired))
    );
    let c = tb.counters();
    assert_eq!((c.misses, c.expirations), (2, 1));
}

#[test]
fn refresh_extends_and_reports_liveness() {
    let (tb, _) = t();
    assert!(!tb.refresh("", "k", 300, T0));
    tb.insert("", "k", "v", 10, T0).expect("test value");
    assert!(tb.refresh("", "k", 20, T0 + 5 * S));
    assert_eq!(tb.lookup("", "k", 0, T0 + 5 * S), Some(("v".into(), 25)));
    assert!(!tb.refresh("", "k", 20, T0 + 30 * S));
}

#[test]
fn remove_and_counters() {
    let (tb, rec) = t();
    tb.insert("", "k", "v", 10, T0).expect("test value");
    assert!(tb.remove("", "k", T0));
    assert!(!tb.remove("", "k", T0));
    assert_eq!(tb.lookup("", "k", 0, T0), None);
    assert_eq!(tb.counters().removals, 1);
    assert_eq!(
        rec.0.lock().last(),
        Some(&Ev::Rm("".into(), "k".into(), RemoveReason::Removed))
    );
    assert!(tb.is_empty());
}

#[test]
fn named_tables_are_separate_namespaces() {
    let (tb, _) = t();
    tb.insert("", "k", "default", 10, T0).expect("test value");
    tb.insert("ids", "k", "named", 10, T0).expect("test value");
    assert_eq!(
        tb.lookup("", "k", 0, T0).map(|x| x.0),
        Some("default".into())
    );
    assert_eq!(
        tb.lookup("ids", "k", 0, T0).map(|x| x.0),
        Some("named".into())
    );
    assert_eq!(tb.lookup("other", "k", 0, T0), None);
    assert!(tb.remove("ids", "k", T0));
    assert_eq!(
        tb.lookup("", "k", 0, T0).map(|x| x.0),
        Some("default".into())
    );
    // A named table exists while it holds entries; the default table always does.
    assert_eq!(tb.table_names(), vec!["".to_string()]);
    tb.insert("ids", "k2", "named", 10, T0).expect("test value");
    assert_eq!(tb.table_names(), vec!["".to_string(), "ids".to_string()]);
}

#[test]
fn memory_limit_refuses_inserts_and_counts_bytes() {
    let cost = |t: &str, k: &str, v: &str| ENTRY_OVERHEAD_BYTES + t.len() + k.len() + v.len();
    let limit = 2 * cost("", "a", "vv") + cost("t", "b", "vv");
    let (tb, _) = setup(TableLimits {
        max_bytes: limit,
        ..TableLimits::default()
    });
    tb.insert("", "a", "vv", 10, T0).expect("fits");
    tb.insert("t", "b", "vv", 10, T0).expect("fits");
    assert_eq!(tb.memory_used(), cost("", "a", "vv") + cost("t", "b", "vv"));
    assert_eq!(
        tb.insert("", "c", "vvv", 10, T0),
        Err(InsertError::MemoryFull { limit })
    );
    assert_eq!(tb.counters().failures, 1);
    // A live key is only extended: no new bytes.
    assert_eq!(
        tb.insert("t", "b", "xx", 10, T0),
        Ok(InsertOutcome::Updated)
    );
    tb.insert("", "c", "vv", 10, T0).expect("exactly fits");
    let c = tb.counters();
    assert_eq!((c.bytes, c.memory_limit), (limit as u64, limit as u64));
    // Removal, expiry and flush give the bytes back.
    assert!(tb.remove("", "c", T0));
    assert_eq!(tb.sweep(T0 + 10 * S).len(), 2);
    assert_eq!(tb.memory_used(), 0);
    tb.insert("x", "k", "v", 10, T0 + 10 * S)
        .expect("room again");
    assert_eq!(tb.flush(None), 1);
    assert_eq!(tb.memory_used(), 0);
    // A reload may lower the limit: stored entries stay, inserts are refused.
    tb.insert("", "a", "vv", 100, T0 + 10 * S).expect("fits");
    tb.set_memory_limit(100);
    assert_eq!(
        tb.lookup("", "a", 0, T0 + 10 * S).map(|v| v.0),
        Some("vv".into())
    );
    assert!(matches!(
        tb.insert("", "z", "v", 10, T0 + 10 * S),
        Err(InsertError::MemoryFull { limit: 100 })
    ));
    assert!(matches!(
        tb.apply_remote_upsert("", "z", "v", T0 + 20 * S, T0 + 10 * S),
        Err(InsertError::MemoryFull { limit: 100 })
    ));
}

#[test]
fn named_tables_cost_no_more_than_their_entries() {
    let (tb, _) = setup(TableLimits::default());
    for i in 0..1000 {
        tb.insert(&format!("t{i}"), "k", "v", 10, T0)
            .expect("insert");
    }
    assert_eq!(tb.len(), 1000);
    assert_eq!(
        tb.memory_used(),
        1000 * (ENTRY_OVERHEAD_BYTES + "t000".len() + 2) - 100 - 10
    );
    assert_eq!(tb.lookup("t999", "k", 0, T0).map(|v| v.0), Some("v".into()));
    // ("ab", "c") and ("a", "bc") are different entries.
    tb.insert("ab", "c", "1", 10, T0).expect("insert");
    tb.insert("a", "bc", "2", 10, T0).expect("insert");
    assert_eq!(tb.lookup("ab", "c", 0, T0).map(|v| v.0), Some("1".into()));
    assert_eq!(tb.lookup("a", "bc", 0, T0).map(|v| v.0), Some("2".into()));
    assert_eq!(tb.list(Some("a"), None, 10, T0).len(), 1);
}

#[test]
fn limits_refuse_and_count_failures() {
    let (tb, _) = setup(TableLimits {
        max_entries: 2,
        max_key_bytes: 4,
        max_value_bytes: 3,
        max_lifetime_s: 100,
        ..TableLimits::default()
    });
    assert_eq!(
        tb.insert("", "12345", "v", 10, T0),
        Err(InsertError::KeyTooLong { len: 5, max: 4 })
    );
    assert_eq!(
        tb.insert("", "k", "long", 10, T0),
        Err(InsertError::ValueTooLong { len: 4, max: 3 })
    );
    tb.insert("", "a", "v", 10, T0).expect("test value");
    tb.insert("t", "b", "v", 10, T0).expect("test value");
    // The limit counts entries across all tables of the VS.
    assert_eq!(
        tb.insert("", "c", "v", 10, T0),
        Err(InsertError::Full { max: 2 })
    );
    // Updating an existing key still works when full.
    assert_eq!(tb.insert("", "a", "v", 10, T0), Ok(InsertOutcome::Updated));
    assert_eq!(tb.counters().failures, 3);
    // Expired entries free their slot once swept.
    assert_eq!(tb.sweep(T0 + 10 * S).len(), 2);
    assert!(tb.insert("", "c", "v", 10, T0 + 10 * S).is_ok());
}

#[test]
fn sweep_returns_expired_and_notifies() {
    let (tb, rec) = t();
    tb.insert("", "a", "1", 10, T0).expect("test value");
    tb.insert("t", "b", "2", 20, T0).expect("test value");
    tb.insert("", "c", "3", 30, T0).expect("test value");
    rec.0.lock().clear();
    let mut gone = tb.sweep(T0 + 20 * S);
    gone.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<_> = gone
        .iter()
        .map(|e| (e.table.as_str(), e.key.as_str()))
        .collect();
    assert_eq!(keys, vec![("", "a"), ("t", "b")]);
    assert_eq!(tb.len(), 1);
    assert_eq!(rec.0.lock().len(), 2);
    assert_eq!(tb.counters().expirations, 2);
}

#[test]
fn list_get_delete_flush() {
    let (tb, rec) = t();
    for (tbl, k) in [("", "u1"), ("", "u2"), ("", "x1"), ("t", "u3")] {
        tb.insert(tbl, k, "v", 10, T0).expect("test value");
    }
    let all = tb.list(None, None, 100, T0);
    assert_eq!(all.len(), 4);
    let u: Vec<_> = tb
        .list(Some(""), Some("u"), 100, T0)
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(u, vec!["u1", "u2"]);
    assert_eq!(tb.list(None, Some("u"), 2, T0).len(), 2);
    let g = tb.get("t", "u3", T0 + S).expect("test value");
    assert_eq!(g.remaining_s(T0 + S), 9);
    assert_eq!(tb.get("t", "u3", T0 + 11 * S), None);
    assert_eq!(tb.flush(Some("")), 3);
    assert!(tb.is_empty());
    assert_eq!(
        rec.0
            .lock()
            .iter()
            .filter(|e| matches!(e, Ev::Rm(_, _, RemoveReason::Removed)))
            .count(),
        3
    );
}

#[test]
fn restore_does_not_notify_and_skips_expired() {
    let (tb, rec) = t();
    let n = tb.restore(
        vec![
            EntryView {
                table: "".into(),
                key: "a".into(),
                value: "1".into(),
                expires_at_mono_ns: T0 + 10 * S,
            },
            EntryView {
                table: "t".into(),
                key: "b".into(),
                value: "2".into(),
                expires_at_mono_ns: T0 - 1,
            },
        ],
        T0,
    );
    assert_eq!(n, 1);
    assert!(rec.0.lock().is_empty());
    assert_eq!(tb.lookup("", "a", 0, T0), Some(("1".into(), 10)));
    assert_eq!(tb.len(), 1);
}

#[test]
fn concurrent_inserts_of_one_key_agree() {
    for round in 0..50 {
        let (tb, _) = t();
        let tb = Arc::new(tb);
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let tb = Arc::clone(&tb);
                let b = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    b.wait();
                    let key = format!("k{round}");
                    tb.insert("", &key, &format!("v{i}"), 100, T0)
                        .expect("insert");
                    tb.lookup("", &key, 0, T0).map(|x| x.0)
                })
            })
            .collect();
        let seen: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect();
        assert!(seen[0].is_some());
        assert!(seen.iter().all(|s| s == &seen[0]), "{seen:?}");
        let c = tb.counters();
        assert_eq!((c.inserts, c.updates, c.entries), (1, 3, 1));
    }
}

#[test]
fn store_creates_vs_tables_and_sweeps_all() {
    let rec = Arc::new(Rec::default());
    let store = TableStore::new(TableLimits::default(), rec.clone());
    store
        .vs("a")
        .insert("", "k", "v", 1, T0)
        .expect("test value");
    store
        .vs("b")
        .insert("", "k", "v", 100, T0)
        .expect("test value");
    assert!(Arc::ptr_eq(
        &store.vs("a"),
        &store.get_vs("a").expect("test value")
    ));
    let gone = store.sweep(T0 + 2 * S);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].0, "a");
    assert_eq!(rec.0.lock().len(), 3);
    let rec2 = Arc::new(Rec::default());
    store.set_mirror(rec2.clone());
    store.vs("b").remove("", "k", T0);
    store
        .vs("c")
        .insert("", "k", "v", 1, T0)
        .expect("test value");
    assert_eq!(rec2.0.lock().len(), 2);
    assert_eq!(rec.0.lock().len(), 3);
    store.retain_vs(|v| v != "a");
    assert_eq!(store.vs_names(), vec!["b".to_string(), "c".to_string()]);
}

#[test]
fn monotonic_clock_moves_forward() {
    let a = MonotonicClock.now_ns();
    let b = MonotonicClock.now_ns();
    assert!(a > 0 && b >= a);
}

/// Bytes per entry in user space (glibc heap), 100k entries, 32-byte keys, 16-byte values.
/// `cargo test -p lb-userspace --lib tables::tests::memory_per_entry -- --ignored --nocapture`
#[test]
#[ignore]
fn memory_per_entry() {
    fn heap() -> usize {
        // SAFETY: mallinfo2 only reads allocator statistics.
        unsafe { libc::mallinfo2().uordblks }
    }
    let (tb, _) = setup(TableLimits::default());
    let n = 100_000;
    let before = heap();
    for i in 0..n {
        let key = format!("{i:032}");
        tb.insert("", &key, "0123456789abcdef", 300, T0)
            .expect("test value");
    }
    let after = heap();
    let per = (after - before) as f64 / n as f64;
    println!("{per:.1} bytes/entry ({n} entries, 32-byte keys, 16-byte values)");
    assert_eq!(tb.len(), n);
    // One named table per entry (a script whose third argument is a string names a table).
    let (tb, _) = setup(TableLimits::default());
    let n = 20_000;
    let before = heap();
    for i in 0..n {
        let table = format!("t{i:07}");
        tb.insert(&table, "k", "0123456789abcdef", 300, T0)
            .expect("test value");
    }
    let per = (heap() - before) as f64 / n as f64;
    println!("{per:.1} bytes/entry ({n} entries, each in its own named table)");
    let charged = tb.memory_used() as f64 / n as f64;
    println!("{charged:.1} bytes/entry charged against the memory limit");
}

fn with_replicator() -> (VsTables, Arc<Rec>, Arc<Rec>) {
    let (tb, rec) = t();
    let repl = Arc::new(Rec::default());
    tb.set_replicator(repl.clone());
    (tb, rec, repl)
}

#[test]
fn replicator_sees_local_changes_after_the_mirror() {
    let (tb, rec, repl) = with_replicator();
    tb.insert("", "k", "v", 100, T0).expect("insert");
    assert!(tb.refresh("", "k", 10, T0));
    assert!(tb.remove("", "k", T0));
    tb.insert("s", "e", "v", 1, T0).expect("insert");
    assert_eq!(tb.sweep(T0 + 2 * S).len(), 1);
    let want = vec![
        Ev::Up("".into(), "k".into(), "v".into(), T0 + 100 * S),
        Ev::Up("".into(), "k".into(), "v".into(), T0 + 110 * S),
        Ev::Rm("".into(), "k".into(), RemoveReason::Removed),
        Ev::Up("s".into(), "e".into(), "v".into(), T0 + S),
        Ev::Rm("s".into(), "e".into(), RemoveReason::Expired),
    ];
    assert_eq!(*rec.0.lock(), want);
    assert_eq!(*repl.0.lock(), want);
}

#[test]
fn remote_upsert_reaches_the_mirror_but_not_the_replicator() {
    let (tb, rec, repl) = with_replicator();
    assert_eq!(
        tb.apply_remote_upsert("", "k", "a", T0 + 50 * S, T0),
        Ok(RemoteOutcome::Inserted)
    );
    assert_eq!(tb.lookup("", "k", 0, T0), Some(("a".into(), 50)));
    // Same value, later expiry: extended.
    assert_eq!(
        tb.apply_remote_upsert("", "k", "a", T0 + 80 * S, T0),
        Ok(RemoteOutcome::Extended)
    );
    assert_eq!(
        tb.apply_remote_upsert("", "k", "a", T0 + 80 * S, T0),
        Ok(RemoteOutcome::Unchanged)
    );
    // Another value replaces the local one (adopting the cluster's winner): the mirror sees
    // the old value leave first.
    assert_eq!(
        tb.apply_remote_upsert("", "k", "b", T0 + 90 * S, T0),
        Ok(RemoteOutcome::Replaced)
    );
    assert_eq!(tb.lookup("", "k", 0, T0), Some(("b".into(), 90)));
    assert_eq!(
        *rec.0.lock(),
        vec![
            Ev::Up("".into(), "k".into(), "a".into(), T0 + 50 * S),
            Ev::Up("".into(), "k".into(), "a".into(), T0 + 80 * S),
            Ev::Rm("".into(), "k".into(), RemoveReason::Removed),
            Ev::Up("".into(), "k".into(), "b".into(), T0 + 90 * S),
        ]
    );
    assert!(repl.0.lock().is_empty());
    assert_eq!(tb.len(), 1);
}

#[test]
fn remote_upsert_respects_limits_and_past_expiry() {
    let (tb, _rec) = setup(TableLimits {
        max_entries: 1,
        max_key_bytes: 4,
        max_value_bytes: 4,
        max_lifetime_s: 100,
        ..TableLimits::default()
    });
    assert!(matches!(
        tb.apply_remote_upsert("", "kkkkk", "v", T0 + S, T0),
        Err(InsertError::KeyTooLong { .. })
    ));
    assert!(matches!(
        tb.apply_remote_upsert("", "k", "vvvvv", T0 + S, T0),
        Err(InsertError::ValueTooLong { .. })
    ));
    assert_eq!(
        tb.apply_remote_upsert("", "k", "v", T0, T0),
        Ok(RemoteOutcome::Unchanged)
    );
    assert!(tb.is_empty());
    // Capped at the maximum lifetime.
    tb.apply_remote_upsert("", "k", "v", T0 + 1000 * S, T0)
        .expect("upsert");
    assert_eq!(tb.lookup("", "k", 0, T0), Some(("v".into(), 100)));
    assert_eq!(
        tb.apply_remote_upsert("", "k2", "v", T0 + S, T0),
        Err(InsertError::Full { max: 1 })
    );
}

#[test]
fn remote_remove_honours_the_expiry_bound() {
    let (tb, rec, repl) = with_replicator();
    tb.insert("", "k", "v", 100, T0).expect("insert");
    repl.0.lock().clear();
    rec.0.lock().clear();
    // An expiry report from a host whose copy ended earlier does not remove a longer-lived one.
    assert!(!tb.apply_remote_remove("", "k", RemoveReason::Expired, T0 + 10 * S));
    assert_eq!(tb.len(), 1);
    assert!(tb.apply_remote_remove("", "k", RemoveReason::Expired, T0 + 100 * S));
    assert!(tb.is_empty());
    tb.insert("", "k", "v", 100, T0).expect("insert");
    repl.0.lock().clear();
    assert!(tb.apply_remote_remove("", "k", RemoveReason::Removed, u64::MAX));
    assert!(!tb.apply_remote_remove("", "k", RemoveReason::Removed, u64::MAX));
    assert!(repl.0.lock().is_empty());
    let ev = rec.0.lock().clone();
    assert_eq!(
        ev.first(),
        Some(&Ev::Rm("".into(), "k".into(), RemoveReason::Expired))
    );
    assert_eq!(
        ev.last(),
        Some(&Ev::Rm("".into(), "k".into(), RemoveReason::Removed))
    );
    let c = tb.counters();
    assert_eq!((c.expirations, c.removals, c.entries), (1, 1, 0));
}

#[test]
fn store_gives_the_replicator_to_future_virtual_services() {
    let store = TableStore::new(TableLimits::default(), Arc::new(NoMirror));
    let early = store.vs("a");
    let repl = Arc::new(Rec::default());
    store.set_replicator(repl.clone());
    let late = store.vs("b");
    early.insert("", "x", "1", 10, T0).expect("insert");
    late.insert("", "y", "2", 10, T0).expect("insert");
    assert_eq!(repl.0.lock().len(), 2);
}

#[test]
fn lifetime_only_changes_reach_mirrors_at_most_once_per_second_of_lifetime() {
    let (tb, rec) = t();
    tb.insert("", "k", "v", 1000, T0).expect("insert");
    // Re-inserting every 100 ms resets the lifetime to 1000 s from then: the expiry moves
    // 100 ms at a time, so the mirror hears of it once it moved a whole second.
    for i in 1..=25u64 {
        tb.insert("", "k", "v", 1000, T0 + i * S / 10)
            .expect("insert");
    }
    let ups: Vec<u64> = rec
        .0
        .lock()
        .iter()
        .filter_map(|e| match e {
            Ev::Up(_, _, _, exp) => Some(*exp),
            Ev::Rm(..) => None,
        })
        .collect();
    assert_eq!(
        ups,
        vec![T0 + 1000 * S, T0 + S + 1000 * S, T0 + 2 * S + 1000 * S],
        "initial insert, then one write per second of extension"
    );
    // A shorter lifetime is never held back: the mirror must not outlive the entry.
    tb.insert("", "k", "v", 10, T0 + 3 * S).expect("insert");
    assert_eq!(
        rec.0.lock().last(),
        Some(&Ev::Up("".into(), "k".into(), "v".into(), T0 + 13 * S))
    );
    // The table itself always has the exact expiry.
    assert_eq!(tb.lookup("", "k", 0, T0 + 3 * S), Some(("v".into(), 10)));
}

/// Counts which kind of notification each change is.
#[derive(Default)]
struct Kinds(Mutex<Vec<&'static str>>);

impl Mirror for Kinds {
    fn upsert(&self, _: &str, _: &str, _: &str, _: &str, _: u64) {
        self.0.lock().push("upsert");
    }
    fn extend(&self, _: &str, _: &str, _: &str, _: &str, _: u64) {
        self.0.lock().push("extend");
    }
    fn remove(&self, _: &str, _: &str, _: &str, _: RemoveReason) {
        self.0.lock().push("remove");
    }
}

#[test]
fn only_lifetime_changes_are_extensions() {
    let kinds = Arc::new(Kinds::default());
    let tb = VsTables::new("shop", TableLimits::default(), kinds.clone());
    tb.insert("", "k", "v", 100, T0).expect("insert");
    // The seed's pattern: a lookup with the default extension, then an insert resetting it.
    tb.lookup("", "k", 300, T0 + S);
    tb.insert("", "k", "v", 100, T0 + 2 * S).expect("insert");
    tb.remove("", "k", T0 + 3 * S);
    // Expired, then stored again: a new entry, not an extension.
    tb.insert("", "k", "w", 1, T0 + 4 * S).expect("insert");
    tb.insert("", "k", "x", 10, T0 + 6 * S).expect("insert");
    assert_eq!(
        *kinds.0.lock(),
        vec![
            "upsert", "extend", "extend", "remove", "upsert", "remove", "upsert"
        ]
    );
}
