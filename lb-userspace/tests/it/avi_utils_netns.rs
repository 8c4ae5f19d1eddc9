//! avi.utils and avi.crypto through `latch run` in the LB namespace: the geo database named in
//! the config reaches the scripts and every reload reads it again (a broken file is refused
//! and the running one kept), and an AES-encrypted cookie keeps a client on its server, as
//! examples/encrypted_cookie.toml does. Needs root: `#[ignore]`d, run with
//! `--include-ignored`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use latch_tests::mmdb::{country, ipv4_database};
use latch_tests::{DataScript, LatchAgent, Response, Topology, http_get};

use crate::netns_config::{HTTP_PORT, TestResult, lb_agent, shop, web_pool};

/// `/geo` answers with the client's country; a valid `LB` cookie selects the server it
/// carries; a response to a client without one sets it.
fn scripts() -> [DataScript; 2] {
    const KEY: &str = "0123456789abcdef0123456789abcdef";
    [
        DataScript::request(&format!(
            r#"if avi.http.get_path() == "/geo" then
  avi.http.response(200, nil, avi.utils.get_geo_from_ip(avi.vs.client_ip()) or "none")
end
local sealed = avi.http.get_cookie("LB")
if sealed then
  local raw = avi.utils.base64_decode(avi.utils.uri_decode(sealed))
  local server = raw and avi.crypto.decrypt(raw, "{KEY}")
  if server then avi.pool.select("web", server) end
end
"#
        )),
        DataScript::response(&format!(
            r#"if not avi.http.cookie_exists("LB", avi.HTTP_REQUEST) then
  local sealed = avi.utils.base64_encode(avi.crypto.encrypt(avi.pool.server_ip(), "{KEY}"))
  avi.http.add_header("Set-Cookie", "LB=" .. avi.utils.uri_encode(sealed) .. "; Path=/")
end
"#
        )),
    ]
}

/// The client (203.0.113.2) is in the United States, or in `iso_code` after a rewrite.
fn write_geo(path: &Path, iso_code: &'static str) -> std::io::Result<()> {
    std::fs::write(
        path,
        ipv4_database(&[("203.0.113.0/24", country(iso_code, iso_code))]),
    )
}

fn get(topo: &Topology, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    http_get(SocketAddr::from((topo.vip(), 80)), path, headers).map_err(|e| e.to_string())
}

fn geo_answer(topo: &Topology) -> Result<String, String> {
    topo.client()
        .run(|| get(topo, "/geo", &[]))
        .map(|r| r.body_text())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn geo_database_and_encrypted_cookie_through_the_proxy() -> TestResult {
    let topo = Topology::builder().backends(2).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let mut agent = LatchAgent::prepare(crate::LATCH.as_ref(), topo.lb())?;
    let geo = agent.dir().join("geo.mmdb");
    write_geo(&geo, "US")?;
    // The geo database path is relative to the config file.
    let config = lb_agent(&topo, &agent)
        .pool(web_pool(&topo))
        .virtual_service(shop(&topo).datascripts(scripts()))
        .to_toml()?
        + "\n[agent.datascript]\ngeo_database = \"geo.mmdb\"\n";
    agent.write_config(&config)?;
    agent.start()?;

    assert_eq!(geo_answer(&topo)?, "US");

    topo.client().run(|| -> Result<(), String> {
        let first = get(&topo, "/", &[])?;
        let sealed = first
            .set_cookie("LB")
            .ok_or("the response script set no LB cookie")?;
        let owner = first.backend.ok_or("no X-Backend")?;
        let cookie = format!("LB={sealed}");
        for _ in 0..8 {
            let r = get(&topo, "/", &[("cookie", cookie.as_str())])?;
            if r.backend.as_deref() != Some(owner.as_str()) {
                return Err(format!("cookie for {owner} answered by {:?}", r.backend));
            }
            if r.set_cookie("LB").is_some() {
                return Err("a client with the cookie got a new one".into());
            }
        }
        // Without the cookie the pool balances: both servers answer.
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            seen.insert(get(&topo, "/", &[])?.backend.ok_or("no X-Backend")?);
        }
        if seen.len() != 2 {
            return Err(format!("cookie-less requests did not rotate: {seen:?}"));
        }
        // A forged cookie does not decrypt: balanced, and no 500.
        let forged = get(&topo, "/", &[("cookie", "LB=bm90IGEgY2lwaGVydGV4dA%3D%3D")])?;
        if forged.status != 200 {
            return Err(format!("forged cookie answered {}", forged.status));
        }
        Ok(())
    })?;

    // A reload reads the file again.
    write_geo(&geo, "DE")?;
    let log = agent.reload()?;
    assert!(log.contains("configuration reloaded"), "{log}");
    assert_eq!(geo_answer(&topo)?, "DE");

    // A file that is no MaxMind database is refused; the running config keeps its copy.
    std::fs::write(&geo, b"not a database")?;
    let log = agent.reload()?;
    assert!(
        log.contains("reload refused") && log.contains("is not a MaxMind DB file"),
        "{log}"
    );
    assert_eq!(geo_answer(&topo)?, "DE");
    Ok(())
}
