//! IP groups and rate limiters through `latch run`: a script meters the clients of an IP group
//! with `avi.vs.ratelimit.exceed` and answers 429 beyond the count, and `avi.vs.rate_limit`
//! answers 429 by itself. Needs root: `#[ignore]`d, run with `--include-ignored`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use latch_tests::{
    AgentSettings, DataScript, IpGroup, LatchConfig, Pool, RateLimiter, Topology, VirtualService,
    http_get_from,
};

use crate::netns_config::{HTTP_PORT, TestResult, lb_agent, start_agent, web_pool};

/// Client 1 (203.0.113.2) is metered, 3 requests a minute; /profile goes through the
/// service's rate_limit, 2 a minute for everyone together.
const SCRIPT: &str = r#"
if avi.http.get_path() == "/profile" then
  avi.vs.rate_limit(avi.RL_CUSTOM_STRING, "profile")
elseif avi.ipgroup.contains("metered", avi.vs.client_ip())
   and avi.vs.ratelimit.exceed("per-client", avi.vs.client_ip()) then
  avi.http.response(429, {content_type = "text/plain"}, "slow down\n")
end
"#;

fn with_groups(config: LatchConfig) -> LatchConfig {
    config
        .ip_group(IpGroup::new("metered", ["203.0.113.2", "198.51.100.0/24"]))
        .rate_limiter(RateLimiter::new("per-client", 3, Duration::from_secs(60)))
        .rate_limiter(RateLimiter::new("profile", 2, Duration::from_secs(60)))
}

fn service(vip: SocketAddr) -> VirtualService {
    VirtualService::http("shop", vip, "web")
        .rate_limit("profile")
        .datascript(DataScript::request(SCRIPT))
}

/// The config the namespace test writes parses, without root.
#[test]
fn the_groups_config_parses() -> TestResult {
    let vip = SocketAddr::from(([203, 0, 113, 10], 80));
    let servers = [SocketAddr::from(([198, 51, 100, 10], HTTP_PORT))];
    let text = with_groups(LatchConfig::new(AgentSettings::new(&["lo".to_string()])))
        .pool(Pool::new("web", servers))
        .virtual_service(service(vip))
        .to_toml()?;
    let config =
        latch::config::parse(&text, "built.toml".as_ref()).map_err(|e| format!("{e}\n{text}"))?;
    assert!(config.groups.ip["metered"].contains("203.0.113.2".parse()?));
    assert_eq!(config.rate_limiters.len(), 2);
    assert!(config.virtual_services[0].rate_limit.is_some());
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn an_ip_group_is_metered_and_answered_429_beyond_the_count() -> TestResult {
    let topo = Topology::builder()
        .backends(2)
        .client_addresses(2)
        .build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let _agent = start_agent(&topo, |agent| {
        with_groups(lb_agent(&topo, agent))
            .pool(web_pool(&topo))
            .virtual_service(service(SocketAddr::from((topo.vip(), 80))))
    })?;
    let vip = SocketAddr::from((topo.vip(), 80));
    let [metered, free] = [0, 1].map(|i| IpAddr::V4(topo.client_addrs()[i]));

    topo.client().run(|| -> Result<(), String> {
        let get = |from: IpAddr, path: &str| {
            http_get_from(from, vip, path)
                .map(|r| r.status)
                .map_err(|e| e.to_string())
        };
        let metered_statuses: Vec<u16> = (0..5)
            .map(|_| get(metered, "/"))
            .collect::<Result<_, _>>()?;
        if metered_statuses != [200, 200, 200, 429, 429] {
            return Err(format!("metered client got {metered_statuses:?}"));
        }
        let free_statuses: Vec<u16> = (0..5).map(|_| get(free, "/")).collect::<Result<_, _>>()?;
        if free_statuses != [200; 5] {
            return Err(format!("client outside the group got {free_statuses:?}"));
        }
        let profile: Vec<u16> = [free, metered, free]
            .iter()
            .map(|from| get(*from, "/profile"))
            .collect::<Result<_, _>>()?;
        if profile != [200, 200, 429] {
            return Err(format!(
                "/profile through avi.vs.rate_limit got {profile:?}"
            ));
        }
        Ok(())
    })?;
    Ok(())
}
