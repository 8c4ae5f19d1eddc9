//! Test harness for latch: network namespaces that clean up after themselves, the standard
//! client — LB — backends topology, a test backend server, and bounded traffic helpers.
//!
//! Every namespace is created under a unique `lt-<pid>-<n>-<role>` name and deleted on drop;
//! every address lives in the RFC 5737 ranges and only inside those namespaces; nothing here
//! touches the host's interfaces, routes or sysctls.

pub mod agent;
pub mod body;
pub mod client;
pub mod config;
pub mod error;
pub mod fuzz;
pub mod mmdb;
pub mod netns;
pub mod redis;
pub mod server;
pub mod tls;
pub mod topology;

pub use agent::{LatchAgent, READY_LINE, agent_section, strip_ansi};
pub use client::{
    DEFAULT_TIMEOUT, HttpConn, RequestBody, Response, UdpReply, WsClient, http_download, http_get,
    http_get_from, http_request, http_request_async, http_upload, udp_roundtrip, udp_roundtrip_on,
};
pub use config::{
    AgentSettings, Capacity, DataScript, Event, HealthMonitor, IpGroup, LatchConfig, Pool,
    RateLimiter, Replication, Tls, VirtualService,
};
pub use error::{Error, Result};
pub use netns::{ChildGuard, Netns, list_namespaces};
pub use redis::start_redis;
pub use server::{ServeConfig, ServerHandle, ServerInfo, TestServer};
pub use tls::{CertFiles, KeyAlg, KeyForm, TestCa};
pub use topology::{Backend, Topology, TopologyBuilder};

/// The seed's JSESSIONID DataScripts, as the tests run them: HTTP_RESP stores the session a
/// server issues for `lifetime_s` seconds and reports in `X-Persist` whether the request was
/// routed by a table hit (reqvar carries that from HTTP_REQ); HTTP_REQ looks the cookie up
/// without extending it and `/logout` removes the session. For a virtual service whose pool
/// is named `web`.
pub fn jsession_scripts(lifetime_s: u32) -> [DataScript; 2] {
    [
        DataScript::request(
            r#"local id = avi.http.get_cookie("JSESSIONID")
if id then
  if avi.http.get_path() == "/logout" then
    avi.vs.table_remove(id)
  else
    local server = avi.vs.table_lookup(id, 0)
    avi.vs.reqvar.hit = server ~= nil
    if server then
      avi.pool.select("web", server)
    end
  end
end
"#,
        ),
        DataScript::response(&format!(
            r#"if avi.http.get_cookie("JSESSIONID") then
  avi.vs.table_insert(avi.http.get_cookie("JSESSIONID"), avi.pool.server_ip(), {lifetime_s})
end
avi.http.add_header("X-Persist", tostring(avi.vs.reqvar.hit))
"#
        )),
    ]
}
