//! A reload keeps a service's VMs when its scripts and limits are unchanged; each
//! transaction still sees its own configuration's environment.

use super::*;

const COUNT: &str = "local up, all = avi.pool.get_servers('web')\navi.vs.log(up .. '/' .. all)";

/// The environment of `f` with `pools` instead (what a reload that changed a pool builds).
fn env_with(f: &Fx, pools: Arc<dyn PoolView>, limits: DsLimits) -> ScriptEnv {
    ScriptEnv {
        tables: Arc::clone(&f.tables),
        pools,
        clock: f.clock.clone(),
        limits,
        observer: None,
        geo: None,
        groups: Arc::default(),
        rate_limits: Arc::default(),
    }
}

/// Pool `web` with `n` servers, all up.
fn web_of(n: u8) -> Arc<dyn PoolView> {
    let servers = (1..=n)
        .map(|i| ServerView {
            addr: sa(&format!("192.0.2.{i}:80")),
            up: true,
        })
        .collect();
    Arc::new(Pools(HashMap::from([("web".to_string(), servers)])))
}

fn logged(hooks: &DataScriptHooks) -> String {
    let mut t = hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    t.log_output().unwrap_or_default()
}

fn set_of(f: &Fx) -> Arc<ScriptSet> {
    let set = f.hooks.scripts();
    Arc::new(ScriptSet::compile(set.vs_name(), set.scripts.clone()).expect("compile"))
}

#[test]
fn unchanged_scripts_keep_their_vms_and_see_the_new_pools() {
    let f = fixture_with(vec![src(Event::HttpReq, COUNT)], limits());
    assert_eq!(logged(&f.hooks), "2/3");
    let next = DataScriptHooks::reusing(
        Some(&f.hooks),
        set_of(&f),
        env_with(&f, web_of(5), limits()),
        Arc::clone(f.hooks.counters()),
    )
    .expect("hooks");
    assert!(next.shares_vms_with(&f.hooks));
    assert_eq!(logged(&next), "5/5");
    // The running configuration is untouched: its next transaction, on the same VMs, still
    // sees its own pools.
    assert_eq!(logged(&f.hooks), "2/3");
    assert_eq!(logged(&next), "5/5");
}

#[test]
fn a_transaction_keeps_its_configuration_across_a_reload() {
    let f = fixture_with(
        vec![src(Event::HttpReq, COUNT), src(Event::HttpResp, COUNT)],
        DsLimits {
            vms: 1,
            ..DsLimits::default()
        },
    );
    let mut old = f.hooks.begin(info());
    forward(old.on_request(&mut req("/", &[])));
    let next = DataScriptHooks::reusing(
        Some(&f.hooks),
        set_of(&f),
        env_with(
            &f,
            web_of(4),
            DsLimits {
                vms: 1,
                ..DsLimits::default()
            },
        ),
        Arc::default(),
    )
    .expect("hooks");
    assert!(next.shares_vms_with(&f.hooks));
    // A transaction of the new configuration runs on the one VM between the old one's events.
    let mut new = next.begin(info());
    forward(new.on_request(&mut req("/", &[])));
    let _ = old.on_response(&mut resp(200, &[]), sa(S1));
    let _ = new.on_response(&mut resp(200, &[]), sa(S1));
    assert_eq!(old.log_output().unwrap_or_default(), "2/3\n2/3");
    assert_eq!(new.log_output().unwrap_or_default(), "4/4\n4/4");
}

#[test]
fn changed_scripts_or_limits_get_new_vms() {
    let f = fixture_with(vec![src(Event::HttpReq, COUNT)], limits());
    let changed = Arc::new(
        ScriptSet::compile("shop", vec![src(Event::HttpReq, "avi.vs.log('new')")])
            .expect("compile"),
    );
    let next = DataScriptHooks::reusing(
        Some(&f.hooks),
        changed,
        env_with(&f, pools(), limits()),
        Arc::default(),
    )
    .expect("hooks");
    assert!(!next.shares_vms_with(&f.hooks));
    assert_eq!(logged(&next), "new");

    let tighter = DsLimits {
        instruction_budget: 5_000,
        ..limits()
    };
    let next = DataScriptHooks::reusing(
        Some(&f.hooks),
        set_of(&f),
        env_with(&f, pools(), tighter),
        Arc::default(),
    )
    .expect("hooks");
    assert!(!next.shares_vms_with(&f.hooks));

    // The same text moved to another line of the file: positions in errors and logs change,
    // so the VMs are not kept either.
    let mut moved = f.hooks.scripts().scripts.clone();
    moved[0].first_line += 3;
    let moved = Arc::new(ScriptSet::compile("shop", moved).expect("compile"));
    assert!(!f.hooks.scripts().compiled_from("shop", &moved.scripts));
    let next = DataScriptHooks::reusing(
        Some(&f.hooks),
        moved,
        env_with(&f, pools(), limits()),
        Arc::default(),
    )
    .expect("hooks");
    assert!(!next.shares_vms_with(&f.hooks));
}

#[test]
fn vms_beyond_the_first_are_built_when_a_worker_first_needs_one() {
    let f = fixture_with(
        vec![src(Event::HttpReq, COUNT)],
        DsLimits {
            vms: 4,
            ..DsLimits::default()
        },
    );
    // One VM proves the scripts load; the others cost nothing until used.
    assert_eq!(f.hooks.memory_used().len(), 1);
    // Each thread is a worker with its own VM slot; eight of them cover several slots.
    for _ in 0..8 {
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(logged(&f.hooks), "2/3"));
        });
    }
    let built = f.hooks.memory_used().len();
    assert!((2..=4).contains(&built), "{built} VMs built");
}
