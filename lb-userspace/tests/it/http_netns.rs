//! HTTP virtual services with DataScripts, with real traffic through `latch run` in the LB
//! namespace. Needs root: `#[ignore]`d, run with `--include-ignored`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use latch_tests::{DataScript, LatchAgent, RequestBody, Topology, http_get, http_request};

use crate::netns_config::{
    HTTP_PORT, TestResult, lb_agent, peak_rss_kb, shop, start_agent, web_pool,
};

/// Sessions live 2 s, so the expiry test is quick.
fn jsession_scripts() -> [DataScript; 2] {
    latch_tests::jsession_scripts(2)
}

/// Pool `web` of every backend and the HTTP virtual service `shop` on VIP:80 with `scripts`.
fn start(
    topo: &Topology,
    scripts: impl IntoIterator<Item = DataScript>,
) -> Result<LatchAgent, Box<dyn std::error::Error>> {
    start_agent(topo, |agent| {
        lb_agent(topo, agent)
            .pool(web_pool(topo))
            .virtual_service(shop(topo).datascripts(scripts))
    })
}

fn vip(topo: &Topology) -> SocketAddr {
    SocketAddr::from((topo.vip(), 80))
}

fn get_with_cookie(
    topo: &Topology,
    path: &str,
    cookie: &str,
) -> Result<latch_tests::Response, String> {
    let header = format!("JSESSIONID={cookie}");
    http_get(vip(topo), path, &[("cookie", header.as_str())]).map_err(|e| e.to_string())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn jsessionid_sticks_while_cookieless_requests_rotate_and_expiry_and_remove_release() -> TestResult
{
    let topo = Topology::builder().backends(3).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let _agent = start(&topo, jsession_scripts())?;

    topo.client().run(|| -> Result<(), String> {
        let login = http_get(vip(&topo), "/login", &[]).map_err(|e| e.to_string())?;
        let cookie = login.set_cookie("JSESSIONID").ok_or("no JSESSIONID")?;
        let owner = login.backend.ok_or("no X-Backend")?;
        // The proxy adds X-Forwarded-For; the backend sees the LB's address as peer.
        for _ in 0..12 {
            let r = get_with_cookie(&topo, "/", &cookie)?;
            if r.backend.as_deref() != Some(owner.as_str()) {
                return Err(format!(
                    "session {cookie} moved from {owner} to {:?}",
                    r.backend
                ));
            }
            if r.header("x-persist") != Some("true") {
                return Err(format!(
                    "expected a table hit, got {:?}",
                    r.header("x-persist")
                ));
            }
        }
        let mut rotated = BTreeSet::new();
        for _ in 0..9 {
            let r = http_get(vip(&topo), "/", &[]).map_err(|e| e.to_string())?;
            rotated.insert(r.backend.ok_or("no X-Backend")?);
        }
        if rotated.len() != 3 {
            return Err(format!("cookie-less requests did not rotate: {rotated:?}"));
        }

        // Expiry: the entry lives 2 s and lookups do not extend it (extension 0).
        std::thread::sleep(Duration::from_millis(2600));
        let r = get_with_cookie(&topo, "/", &cookie)?;
        if r.header("x-persist") != Some("false") {
            return Err(format!(
                "expired session still hit: {:?}",
                r.header("x-persist")
            ));
        }
        // table_remove through /logout releases a fresh session.
        let login = http_get(vip(&topo), "/login", &[]).map_err(|e| e.to_string())?;
        let cookie = login.set_cookie("JSESSIONID").ok_or("no JSESSIONID")?;
        if get_with_cookie(&topo, "/", &cookie)?.header("x-persist") != Some("true") {
            return Err("new session not learned".into());
        }
        get_with_cookie(&topo, "/logout", &cookie)?;
        let r = get_with_cookie(&topo, "/", &cookie)?;
        if r.header("x-persist") != Some("false") {
            return Err(format!(
                "removed session still hit: {:?}",
                r.header("x-persist")
            ));
        }
        Ok(())
    })?;
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn concurrent_sessions_each_stick_to_their_server() -> TestResult {
    let topo = Topology::builder().backends(3).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let _agent = start(&topo, jsession_scripts())?;
    let failures = topo.client().run(|| {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| -> Result<(), String> {
                        let login =
                            http_get(vip(&topo), "/login", &[]).map_err(|e| e.to_string())?;
                        let cookie = login.set_cookie("JSESSIONID").ok_or("no cookie")?;
                        let owner = login.backend.ok_or("no X-Backend")?;
                        for _ in 0..10 {
                            let r = get_with_cookie(&topo, "/", &cookie)?;
                            if r.backend.as_deref() != Some(owner.as_str()) {
                                return Err(format!("{cookie} moved to {:?}", r.backend));
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .filter_map(|w| match w.join() {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some("client thread panicked".to_string()),
                })
                .collect::<Vec<_>>()
        })
    });
    assert!(failures.is_empty(), "{failures:?}");
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn runtime_error_and_runaway_script_answer_500_and_others_go_on() -> TestResult {
    let topo = Topology::builder().backends(2).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let script = DataScript::request(
        r#"local path = avi.http.get_path()
if path == "/boom" then
  error("boom on purpose")
elseif path == "/loop" then
  while true do end
end
"#,
    );
    let agent = start(&topo, [script])?;
    topo.client().run(|| -> Result<(), String> {
        for _ in 0..3 {
            let boom = http_get(vip(&topo), "/boom", &[]).map_err(|e| e.to_string())?;
            let looped = http_get(vip(&topo), "/loop", &[]).map_err(|e| e.to_string())?;
            let fine = http_get(vip(&topo), "/", &[]).map_err(|e| e.to_string())?;
            if (boom.status, looped.status, fine.status) != (500, 500, 200) {
                return Err(format!(
                    "statuses {} {} {}",
                    boom.status, looped.status, fine.status
                ));
            }
        }
        Ok(())
    })?;
    // stderr is read on its own thread: wait for the line rather than race it.
    let _ = crate::netns_config::wait_for("the script error line", Duration::from_secs(10), || {
        Ok(agent.log().contains("boom on purpose"))
    });
    let log = agent.log();
    assert!(
        log.contains("boom on purpose"),
        "runtime error logged: {log}"
    );
    assert!(log.contains("shop"), "log names the virtual service");
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn hundred_megabytes_stream_both_ways_with_bounded_agent_memory() -> TestResult {
    let topo = Topology::builder().backends(1).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let agent = start(&topo, [])?;
    let pid = agent.pid().ok_or("agent not running")?;
    let rss = || peak_rss_kb(pid);
    let before = rss()?;
    const SIZE: u64 = 100 * 1024 * 1024;
    let (down, up) = topo.client().run(|| -> Result<(u64, u64), String> {
        let down = latch_tests::http_download(vip(&topo), SIZE, Duration::from_secs(60))
            .map_err(|e| e.to_string())?;
        let up = latch_tests::http_upload(vip(&topo), SIZE, Duration::from_secs(60))
            .map_err(|e| e.to_string())?;
        Ok((down, up))
    })?;
    assert_eq!(down, SIZE);
    assert_eq!(up, SIZE);
    let grown_kb = rss()?.saturating_sub(before);
    assert!(
        grown_kb < 32 * 1024,
        "agent peak memory grew by {grown_kb} kB while streaming 2 x 100 MB"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn avi_http_functions_work_through_the_agent() -> TestResult {
    let topo = Topology::builder().backends(1).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    // Avi's documented HTTP-to-HTTPS redirect relies on the port being a string.
    let request = DataScript::request(
        r#"local path = avi.http.get_path()
if avi.vs.port() ~= "443" and path == "/secure" then
  avi.http.redirect("https://" .. avi.http.hostname() .. avi.http.get_uri(false), 301)
elseif path == "/rewrite" then
  avi.http.set_path("/headers")
elseif path == "/old-slow" then
  avi.http.set_path("/slow")
  avi.http.set_query({ms = 3000})
  avi.http.set_server_timeout(300)
elseif path == "/user" then
  avi.http.set_userid("carol")
end
"#,
    );
    let response = DataScript::response(
        r#"avi.http.add_header("x-request-id", avi.http.get_request_id())
avi.http.add_header("x-status", type(avi.http.status()) .. " " .. avi.http.status())
"#,
    );
    let agent = start(&topo, [request, response])?;
    let id = topo.client().run(|| -> Result<String, String> {
        let get = |path: &str| {
            http_get(vip(&topo), path, &[("host", "shop.example:80")]).map_err(|e| e.to_string())
        };
        let header = |r: &latch_tests::Response, name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let moved = get("/secure?a=1")?;
        let location = header(&moved, "location");
        if moved.status != 301 || location.as_deref() != Some("https://shop.example/secure?a=1") {
            return Err(format!("redirect: {} {location:?}", moved.status));
        }
        let rewritten = get("/rewrite")?;
        if !String::from_utf8_lossy(&rewritten.body).contains("host: shop.example:80") {
            return Err(format!("set_path did not reach /headers: {rewritten:?}"));
        }
        if header(&rewritten, "x-status").as_deref() != Some("string 200") {
            return Err(format!("status(): {rewritten:?}"));
        }
        let started = std::time::Instant::now();
        let slow = get("/old-slow")?;
        let waited = started.elapsed();
        if slow.status != 504 || waited > Duration::from_millis(2500) {
            return Err(format!("server timeout: {} after {waited:?}", slow.status));
        }
        let user = get("/user")?;
        header(&user, "x-request-id").ok_or_else(|| "no x-request-id".to_string())
    })?;
    // The access line is written when the response body ends, after the client has it.
    let wanted = format!("request_id={id}");
    crate::netns_config::wait_for("the access log line", Duration::from_secs(5), || {
        Ok(latch_tests::strip_ansi(&agent.log()).contains(&wanted))
    })?;
    let log = latch_tests::strip_ansi(&agent.log());
    let line = log
        .lines()
        .find(|l| l.contains(&wanted))
        .ok_or_else(|| format!("no access log line with {wanted}: {log}"))?;
    assert!(
        line.contains("user=\"carol\"") || line.contains("user=carol"),
        "{line}"
    );
    Ok(())
}

/// Sends raw bytes and returns the status line of the answer.
fn raw_status(addr: SocketAddr, request: &[u8]) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream.write_all(request).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 512];
    let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    Ok(text.lines().next().unwrap_or_default().to_string())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn malformed_requests_are_refused_without_reaching_a_backend() -> TestResult {
    let topo = Topology::builder().backends(1).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let _agent = start(&topo, [])?;
    let server = topo.server("b1").ok_or("no b1")?;
    let before = server.requests();
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let statuses = topo.client().run(|| -> Result<Vec<String>, String> {
        Ok(vec![
            raw_status(vip(&topo), b"GARBAGE\r\n\r\n")?,
            raw_status(vip(&topo), b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n")?,
            raw_status(vip(&topo), huge.as_bytes())?,
            raw_status(
                vip(&topo),
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc",
            )?,
            raw_status(
                vip(&topo),
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )?,
            raw_status(
                vip(&topo),
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            )?,
        ])
    })?;
    assert!(
        statuses[0].contains(" 400"),
        "bad request line: {statuses:?}"
    );
    assert!(statuses[1].contains(" 400"), "bad target: {statuses:?}");
    assert!(
        statuses[2].contains(" 431"),
        "oversize headers: {statuses:?}"
    );
    assert!(
        statuses[3].contains(" 400"),
        "conflicting lengths: {statuses:?}"
    );
    assert!(
        statuses[4].contains(" 400"),
        "Content-Length then Transfer-Encoding: {statuses:?}"
    );
    assert!(
        statuses[5].contains(" 400"),
        "Transfer-Encoding then Content-Length: {statuses:?}"
    );
    // A good request still works, and only it reached the backend.
    let ok = topo.client().run(|| {
        http_request(
            vip(&topo),
            "GET",
            "/",
            &[],
            RequestBody::Empty,
            Duration::from_secs(5),
        )
    })?;
    assert_eq!(ok.status, 200);
    assert_eq!(server.requests(), before + 1);
    Ok(())
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn body_failure_and_lb_events_run_through_the_agent() -> TestResult {
    use latch_tests::Event;
    let topo = Topology::builder().backends(1).build()?;
    topo.start_backends(HTTP_PORT, None)?;
    let scripts = [
        DataScript::request(
            r#"if avi.http.get_path() == "/slow" then avi.http.set_server_timeout(300) end"#,
        ),
        DataScript::new(
            Event::HttpReqData,
            r#"local body = avi.http.get_req_body()
if body:find("forbidden", 1, true) then
  avi.http.response(403, {content_type = "text/plain"}, "body refused")
end
avi.http.add_header("x-req-body-len", #body)
"#,
        ),
        DataScript::new(
            Event::HttpLbDone,
            r#"local ip, port = avi.pool.get_server_info()
chosen = ip .. ":" .. port
"#,
        ),
        DataScript::new(
            Event::HttpRespData,
            r#"avi.http.add_header("x-resp-body-len", #avi.http.get_response_body())
avi.http.add_header("x-chosen", chosen)
"#,
        ),
        DataScript::new(
            Event::HttpRespFailed,
            r#"avi.http.response(503, {content_type = "text/plain"}, "down: " .. avi.http.internal_status())"#,
        ),
    ];
    let _agent = start(&topo, scripts)?;
    let server = topo.server("b1").ok_or("no b1")?;
    let backend = SocketAddr::from((topo.backend_addrs()[0], HTTP_PORT));
    topo.client().run(|| -> Result<(), String> {
        let header = |r: &latch_tests::Response, name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let post = |path: &str, body: &'static [u8]| {
            http_request(
                vip(&topo),
                "POST",
                path,
                &[],
                RequestBody::Bytes(body.into()),
                Duration::from_secs(5),
            )
            .map_err(|e| e.to_string())
        };
        let echoed = post("/headers", b"twelve bytes")?;
        let text = String::from_utf8_lossy(&echoed.body).into_owned();
        if echoed.status != 200 || !text.contains("x-req-body-len: 12\n") {
            return Err(format!("HTTP_REQ_DATA header: {echoed:?}"));
        }
        let chosen = header(&echoed, "x-chosen");
        if chosen.as_deref() != Some(backend.to_string().as_str()) {
            return Err(format!("HTTP_LB_DONE saw {chosen:?}, not {backend}"));
        }
        let length = header(&echoed, "x-resp-body-len");
        if length != Some(echoed.body.len().to_string()) {
            return Err(format!("HTTP_RESP_DATA length {length:?}: {echoed:?}"));
        }
        let refused = post("/upload", b"a forbidden body")?;
        if refused.status != 403 || refused.body.as_ref() != b"body refused" {
            return Err(format!("HTTP_REQ_DATA response: {refused:?}"));
        }
        // A timeout before the response head: HTTP_RESP_FAILED answers instead of the 504.
        let slow = http_get(vip(&topo), "/slow?ms=3000", &[]).map_err(|e| e.to_string())?;
        if slow.status != 503 || slow.body.as_ref() != b"down: 504" {
            return Err(format!("HTTP_RESP_FAILED: {slow:?}"));
        }
        // Beyond the default max_body_buffer (4 MiB): 502 for a response, 413 for a request
        // (refused from its Content-Length, before its body is read).
        let big = http_get(vip(&topo), &format!("/download?bytes={}", 5 << 20), &[])
            .map_err(|e| e.to_string())?;
        if big.status != 502 {
            return Err(format!("oversize response: {}", big.status));
        }
        let status = raw_status(
            vip(&topo),
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                5 << 20
            )
            .as_bytes(),
        )?;
        if !status.contains(" 413") {
            return Err(format!("oversize request: {status}"));
        }
        Ok(())
    })?;
    // /headers, /slow and /download reached the backend; the refused bodies did not.
    assert_eq!(server.requests(), 3);
    Ok(())
}
