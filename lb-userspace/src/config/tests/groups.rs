use super::*;

#[test]
fn groups_and_rate_limiters_load_inline() {
    let c = ok(&with_base(
        r#"rate_limit = { limiter = "per-client" }

[[string_group]]
name = "bots"
entries = ["Googlebot", "bingbot"]

[[string_group]]
name = "routes"
entries = { "/shop" = "pool-shop", "/api" = "pool-api" }

[[ip_group]]
name = "office"
entries = ["192.0.2.7", "198.51.100.0/24", "203.0.113.10-203.0.113.20", "2001:db8::/32"]

[[rate_limiter]]
name = "per-client"
count = 10
period = "1m"
burst = 20

[[rate_limiter]]
name = "small-burst"
count = 5
burst = 2
max_keys = 1000
"#,
    ));
    let bots = &c.groups.string["bots"];
    assert_eq!(bots.entries().len(), 2);
    assert!(bots.entries().iter().all(|e| e.value.is_none()));
    let routes = &c.groups.string["routes"];
    let shop = routes.find(StringMatch::BeginsWith, false, b"/shop/cart");
    assert_eq!(shop.and_then(|e| e.value.as_deref()), Some("pool-shop"));
    let office = &c.groups.ip["office"];
    assert!(office.contains("203.0.113.15".parse().expect("ip")));
    assert!(office.contains("2001:db8::1".parse().expect("ip")));
    assert!(!office.contains("192.0.2.8".parse().expect("ip")));
    let pc = c.rate_limiter("per-client").expect("limiter");
    assert_eq!(
        (pc.count, pc.period, pc.burst, pc.max_keys),
        (10, Duration::from_secs(60), 20, DEFAULT_RATE_LIMIT_KEYS)
    );
    let small = c.rate_limiter("small-burst").expect("limiter");
    assert_eq!(
        (small.period, small.burst, small.max_keys),
        (Duration::from_secs(1), 5, 1000),
        "a burst below the count has no effect"
    );
    assert_eq!(
        c.virtual_services[0].rate_limit,
        Some(VsRateLimit {
            limiter: "per-client".into(),
            action: RateLimitAction::LocalResponse
        })
    );
}

#[test]
fn group_files_resolve_relative_to_the_config_and_bad_lines_are_located() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("bots.txt"),
        "# crawlers\nGooglebot\n/shop\tpool-shop\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("deny.txt"),
        "192.0.2.0/24\n\n  192.0.2.300\n2001:db8::1\n",
    )
    .expect("write");
    let cfg = dir.path().join("latch.toml");
    let text = with_base(
        "\n[[string_group]]\nname = \"bots\"\nfile = \"bots.txt\"\n\n\
         [[ip_group]]\nname = \"deny\"\nfile = \"deny.txt\"\n",
    );
    let e = parse(&text, &cfg).expect_err("bad address in the file");
    assert_eq!(e.len(), 1, "{e}");
    let d = &e.diagnostics[0];
    assert_eq!(
        (d.file.clone(), d.line, d.col),
        (dir.path().join("deny.txt"), 3, 3)
    );
    assert!(d.message.contains("`192.0.2.300`"), "{}", d.message);

    std::fs::write(dir.path().join("deny.txt"), "192.0.2.0/24\n2001:db8::1\n").expect("write");
    let c = parse(&text, &cfg).unwrap_or_else(|e| panic!("{e}"));
    let bots = &c.groups.string["bots"];
    let e = bots.find(StringMatch::Equals, true, b"/shop");
    assert_eq!(e.and_then(|e| e.value.as_deref()), Some("pool-shop"));
    assert!(c.groups.ip["deny"].contains("2001:db8::1".parse().expect("ip")));
}

#[test]
fn group_and_rate_limiter_errors_are_located() {
    let text = with_base(
        r#"rate_limit = { limiter = "nope", action = "shout" }

[[string_group]]
name = "a"
entries = ["x"]
file = "a.txt"

[[string_group]]
name = "a"
entries = [1]

[[ip_group]]
name = "b"

[[ip_group]]
name = "c"
entries = ["192.0.2.1", "192.0.2.9-192.0.2.1", "10.0.0.0/40"]

[[ip_group]]
name = "d"
file = "/nonexistent/latch-deny.txt"

[[rate_limiter]]
name = "r"
count = 0
period = "soon"
burst = -1
max_keys = 0
"#,
    );
    let errs = errors(&text);
    let want = [
        "latch.toml:13:43: unknown variant `shout`, expected one of `none`, `local_response`, `close_connection`",
        "latch.toml:18:8: string group has both `entries` and `file`; keep one",
        "latch.toml:22:12: invalid type: integer `1`, expected a string",
        "latch.toml:25:8: ip group needs `entries` or `file`",
        "latch.toml:29:25: range `192.0.2.9-192.0.2.1` ends before it starts",
        "latch.toml:29:48: invalid prefix `10.0.0.0/40`: expected e.g. 192.0.2.0/24 or 2001:db8::/32",
        "latch.toml:33:8: cannot read ip group file /nonexistent/latch-deny.txt: No such file or directory (os error 2)",
        "latch.toml:37:9: rate limiter count must be at least 1, got 0",
        "latch.toml:38:10: invalid duration `soon`",
        "latch.toml:39:9: rate limiter burst must not be negative",
        "latch.toml:40:12: rate limiter max_keys must be at least 1",
    ];
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    for (got, want) in errs.iter().zip(want) {
        let got = got.trim_start_matches("/etc/latch/");
        assert!(got.starts_with(want), "got {got}\nwant {want}");
    }
}

#[test]
fn duplicate_names_and_unknown_limiters_are_refused() {
    let text = with_base(
        r#"rate_limit = { limiter = "nope" }

[[ip_group]]
name = "g"
entries = []

[[ip_group]]
name = "g"
entries = []

[[rate_limiter]]
name = "r"
count = 1
"#,
    );
    assert_eq!(
        errors(&text),
        [
            "/etc/latch/latch.toml:13:26: unknown rate limiter `nope` (known rate limiters: `r`)",
            "/etc/latch/latch.toml:20:8: duplicate ip group name `g` (first defined on line 16)",
        ]
    );
}

#[test]
fn rate_limit_on_an_l4_service_is_refused() {
    let text = r#"[agent]
interfaces = ["lb-c"]

[[pool]]
name = "web"
servers = ["192.0.2.11:8080"]

[[rate_limiter]]
name = "r"
count = 1

[[virtual_service]]
name = "tcp"
listen = "198.51.100.10:80"
type = "tcp"
pool = "web"
rate_limit = { limiter = "r" }
"#;
    assert_eq!(
        errors(text),
        [
            "/etc/latch/latch.toml:17:14: rate_limit is for DataScripts (avi.vs.rate_limit), which run on http services only"
        ]
    );
}

#[test]
fn a_reload_that_changes_only_groups_or_limiters_is_a_change() {
    let group = |entries: &str| {
        with_base(&format!(
            "\n[[ip_group]]\nname = \"g\"\nentries = [{entries}]\n\n[[rate_limiter]]\nname = \"r\"\ncount = 1\n"
        ))
    };
    let old = ok(&group("\"192.0.2.1\""));
    assert!(diff(&old, &ok(&group("\"192.0.2.1\""))).is_empty());
    let new = ok(&group("\"192.0.2.2\""));
    let d = diff(&old, &new);
    assert!(d.script_objects_changed, "{d:?}");
    assert!(d.services_changed.is_empty() && !d.agent_changed, "{d:?}");
    let faster = ok(&group("\"192.0.2.1\"").replace("count = 1", "count = 2"));
    assert!(diff(&old, &faster).script_objects_changed);
}
