//! avi.ipgroup, avi.stringgroup, avi.vs.rate_limit and avi.vs.ratelimit.exceed: documented
//! types and values, and the choices the README writes down where Avi is silent.

use std::time::Duration;

use super::*;
use crate::config::{
    Groups, IpGroup, RateLimitAction, RateLimiterConfig, StringEntry, StringGroup, VsRateLimit,
};

fn entry(key: &str, value: Option<&str>) -> StringEntry {
    StringEntry {
        key: key.into(),
        value: value.map(Into::into),
    }
}

fn groups() -> Arc<Groups> {
    let mut g = Groups::default();
    let bots = StringGroup::new(
        "bots",
        vec![
            entry("Googlebot", None),
            entry("bot", None),
            entry("/Admin", None),
        ],
    );
    let routes = StringGroup::new(
        "routes",
        vec![
            entry("/shop", Some("pool-shop")),
            entry("/shop/api", Some("pool-api")),
        ],
    );
    g.string.insert("bots".into(), bots);
    g.string.insert("routes".into(), routes);
    let office =
        ["192.0.2.0/28", "203.0.113.7", "2001:db8::/32"].map(|s| s.parse().expect("entry"));
    g.ip.insert("office".into(), IpGroup::new("office", &office));
    Arc::new(g)
}

fn rate_limits(action: Option<RateLimitAction>) -> Arc<RateLimits> {
    let limiter = RateLimiterConfig {
        name: "per-client".into(),
        count: 2,
        period: Duration::from_secs(60),
        burst: 2,
        max_keys: 100,
    };
    Arc::new(RateLimits::new(
        &[limiter],
        action.map(|action| VsRateLimit {
            limiter: "per-client".into(),
            action,
        }),
    ))
}

fn fixture(script: &str, action: Option<RateLimitAction>) -> Fx {
    fixture_with_env(vec![src(Event::HttpReq, script)], limits(), |env| {
        env.groups = groups();
        env.rate_limits = rate_limits(action);
    })
}

/// What the script logged for one request (it must forward).
fn log_of(script: &str) -> String {
    logs(&fixture(script, None), "/", 1).concat()
}

/// What the scripts logged for `n` requests to `uri`, each of which must be forwarded.
fn logs(f: &Fx, uri: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (t, v, _) = run_req(f, uri, &[]);
            forward(v);
            t.log_output().unwrap_or_default()
        })
        .collect()
}

#[test]
fn ipgroup_contains_is_a_boolean_for_v4_and_v6() {
    let log = log_of(
        r#"local c = avi.ipgroup.contains
           avi.vs.log(type(c("office", "192.0.2.9")), c("office", "192.0.2.9"))
           avi.vs.log(c("office", "192.0.2.16"), c("office", "203.0.113.7"))
           avi.vs.log(c("office", "2001:db8::1"), c("office", "2001:db9::1"))
           avi.vs.log(c("office", avi.vs.client_ip()), c("office", nil), c("office", "nonsense"))"#,
    );
    assert_eq!(
        log,
        "boolean true\nfalse true\ntrue false\ntrue false false"
    );
}

#[test]
fn ipgroup_unknown_group_is_a_lua_error_naming_the_known_ones() {
    let log = log_of(r#"avi.vs.log(pcall(avi.ipgroup.contains, "nope", "192.0.2.1"))"#);
    assert_eq!(
        log,
        "false avi.ipgroup.contains: unknown ip group 'nope' (known ip groups: `office`)"
    );
}

#[test]
fn stringgroup_returns_value_and_match_shortest_entry_first() {
    let log = log_of(
        r#"local sg = avi.stringgroup
           avi.vs.log(sg.beginswith("routes", "/shop/api/v1"))
           avi.vs.log(sg.equals("routes", "/shop/api"))
           avi.vs.log(sg.beginswith("routes", "/other"))
           avi.vs.log(sg.contains("bots", "Mozilla (compatible; Googlebot/2.1)"))
           avi.vs.log(sg.endswith("bots", "MyBot"))
           local v, m = sg.equals("bots", "nothing")
           avi.vs.log(type(v), type(m), m)"#,
    );
    assert_eq!(
        log,
        "pool-shop true\npool-api true\nnil false\nbot true\nbot true\nnil boolean false"
    );
}

#[test]
fn stringgroup_is_case_insensitive_unless_case_is_asked_for() {
    let log = log_of(
        r#"local sg = avi.stringgroup
           avi.vs.log(sg.equals("bots", "/admin"), sg.equals_CASE("bots", "/admin"))
           avi.vs.log(sg.beginswith("routes", "/SHOP/x"), sg.beginswith_CASE("routes", "/SHOP/x"))
           avi.vs.log(sg.endswith_CASE("bots", "Mybot"), sg.contains_CASE("bots", "xGOOGLEBOTx"))"#,
    );
    assert_eq!(
        log,
        // A call that is not the last argument gives its first result only, as Lua does.
        "/Admin nil false\npool-shop nil false\nbot nil false"
    );
}

#[test]
fn stringgroup_single_result_form_works_for_plain_groups() {
    // The documented non-KV examples write `if avi.stringgroup.endswith(...) then`.
    let log = log_of(
        r#"if avi.stringgroup.endswith("bots", "crawler-bot") then avi.vs.log("bot") end
           if not avi.stringgroup.endswith("bots", "curl") then avi.vs.log("human") end
           avi.vs.log(avi.stringgroup.contains("bots", nil))
           avi.vs.log(pcall(avi.stringgroup.contains, "bots", {}))
           avi.vs.log(pcall(avi.stringgroup.equals, "nope", "x"))"#,
    );
    assert_eq!(
        log,
        "bot\nhuman\nnil false\n\
         false bad argument #2 to 'contains' (string expected, got table)\n\
         false avi.stringgroup.equals: unknown string group 'nope' (known string groups: `bots`, `routes`)"
    );
}

#[test]
fn ratelimit_exceed_counts_per_key_and_is_shared_by_requests() {
    let f = fixture(
        r#"avi.vs.log(avi.vs.ratelimit.exceed("per-client", avi.vs.client_ip()))"#,
        None,
    );
    assert_eq!(logs(&f, "/", 3), ["false", "false", "true"]);
    // 30 s later one of the 2 tokens per minute is back.
    f.clock.advance_s(30);
    assert_eq!(logs(&f, "/", 1), ["false"]);
}

#[test]
fn ratelimit_exceed_takes_consume_and_checks_its_arguments() {
    let log = log_of(
        r#"local e = avi.vs.ratelimit.exceed
           avi.vs.log(type(e("per-client", "k", 0)), e("per-client", "k", 2), e("per-client", "k", 0))
           avi.vs.log(e("per-client", 42), e("per-client", 42), e("per-client", 42))
           avi.vs.log(pcall(e, "nope", "k"))
           avi.vs.log(pcall(e, "per-client", nil))
           avi.vs.log(pcall(e, "per-client", "k", -1))"#,
    );
    assert_eq!(
        log,
        "boolean false true\n\
         false false true\n\
         false avi.vs.ratelimit.exceed: unknown rate limiter 'nope' (known rate limiters: `per-client`)\n\
         false bad argument #2 to 'exceed' (string expected, got nil)\n\
         false bad argument #3 to 'exceed' (a number >= 0 expected, got number)"
    );
}

#[test]
fn rate_limit_answers_429_when_exceeded_unless_deferred() {
    let f = fixture(
        r#"local exceeded, action = avi.vs.rate_limit(avi.RL_CUSTOM_STRING, "k", avi.http.get_query("defer"))
           avi.vs.log(type(exceeded), exceeded, type(action), action == avi.RL_ACTION_LOCAL_RSP)"#,
        Some(RateLimitAction::LocalResponse),
    );
    assert_eq!(logs(&f, "/", 2), ["boolean false number true"; 2]);
    let (_, v, _) = run_req(&f, "/", &[]);
    assert_eq!(responded(v).status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(logs(&f, "/?defer=true", 1), ["boolean true number true"]);
}

#[test]
fn rate_limit_close_connection_and_none_actions() {
    let f = fixture(
        r#"avi.vs.log(avi.vs.rate_limit(avi.RL_CUSTOM_STRING, "k"))"#,
        Some(RateLimitAction::CloseConnection),
    );
    logs(&f, "/", 2);
    let (t, v, _) = run_req(&f, "/", &[]);
    assert_eq!(responded(v).status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(t.close_connection());

    let f = fixture(
        r#"avi.vs.log(avi.vs.rate_limit(avi.RL_CUSTOM_STRING, "k"))"#,
        Some(RateLimitAction::None),
    );
    assert_eq!(logs(&f, "/", 3), ["false 0", "false 0", "true 0"]);
}

#[test]
fn rate_limit_needs_the_custom_string_type_and_a_profile() {
    let log = log_of(
        r#"avi.vs.log(pcall(avi.vs.rate_limit, 7, "k"))
           avi.vs.log(pcall(avi.vs.rate_limit, avi.RL_CUSTOM_STRING, "k"))"#,
    );
    assert_eq!(
        log,
        "false bad argument #1 to 'rate_limit' (avi.RL_CUSTOM_STRING expected)\n\
         false avi.vs.rate_limit: virtual service 'shop' has no rate_limit (rate_limit = { limiter = \"...\" })"
    );
}
