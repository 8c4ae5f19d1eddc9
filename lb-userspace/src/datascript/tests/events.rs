//! The events beyond HTTP_REQ and HTTP_RESP: what each runs on, what it may call, what comes
//! out of it.

use bytes::Bytes;

use super::*;

fn fx_events(scripts: &[(Event, &str)]) -> Fx {
    fixture_with(scripts.iter().map(|(e, t)| src(*e, t)).collect(), limits())
}

fn log_of(t: &dyn TxnHooks) -> String {
    t.log_output().unwrap_or_default()
}

#[test]
fn bodies_are_asked_for_only_when_their_event_has_scripts() {
    let f = fx("avi.vs.log('req')", "avi.vs.log('resp')");
    let t = f.hooks.begin(info());
    assert_eq!(t.request_body_limit(), None);
    assert_eq!(t.response_body_limit(), None);

    let f = fx_events(&[
        (Event::HttpReqData, "avi.vs.log('x')"),
        (Event::HttpRespData, "avi.vs.log('y')"),
    ]);
    let t = f.hooks.begin(info());
    let max = DsLimits::default().max_body_buffer;
    assert_eq!(t.request_body_limit(), Some(max));
    assert_eq!(t.response_body_limit(), Some(max));
}

#[test]
fn req_data_reads_the_body_whole_or_its_first_kilobytes() {
    let f = fx_events(&[(
        Event::HttpReqData,
        r#"local all = avi.http.get_req_body()
           local first = avi.http.get_req_body(1)
           avi.vs.log(type(all), #all, #first, all:sub(1, 5), avi.http.get_header("x-a"))"#,
    )]);
    let mut t = f.hooks.begin(info());
    let mut r = req("/upload", &[("x-a", "1")]);
    forward(t.on_request(&mut r));
    let body = Bytes::from(format!("hello{}", "z".repeat(2000)));
    forward(t.on_request_body(&mut r, &body));
    assert_eq!(log_of(t.as_ref()), "string 2005 1024 hello 1");
}

#[test]
fn req_data_may_answer_rewrite_and_select() {
    let f = fx_events(&[(
        Event::HttpReqData,
        r#"local b = avi.http.get_req_body()
           if b:find("attack", 1, true) then avi.http.response(403, {}, "no") end
           avi.http.add_header("x-len", tostring(#b))
           avi.pool.select("alt")"#,
    )]);
    let mut t = f.hooks.begin(info());
    let mut r = req("/", &[]);
    forward(t.on_request(&mut r));
    let sel = forward(t.on_request_body(&mut r, &Bytes::from_static(b"fine")));
    assert_eq!(sel.pool.as_deref(), Some("alt"));
    assert_eq!(r.headers["x-len"], "4");

    let mut t = f.hooks.begin(info());
    let mut r = req("/", &[]);
    forward(t.on_request(&mut r));
    let answer = responded(t.on_request_body(&mut r, &Bytes::from_static(b"an attack")));
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert_eq!(answer.body().as_ref(), b"no");
}

#[test]
fn req_data_sees_what_http_req_set() {
    let f = fx_events(&[
        (Event::HttpReq, "seen = 'yes'; avi.pool.select('alt')"),
        (Event::HttpReqData, "avi.vs.log(seen)"),
    ]);
    let mut t = f.hooks.begin(info());
    let mut r = req("/", &[]);
    forward(t.on_request(&mut r));
    let sel = forward(t.on_request_body(&mut r, &Bytes::new()));
    assert_eq!(sel.pool.as_deref(), Some("alt"));
    assert_eq!(log_of(t.as_ref()), "yes");
}

#[test]
fn body_functions_fail_outside_their_event() {
    let log = eval_req(
        r#"local ok, err = pcall(avi.http["get_req_body"])
           avi.vs.log(ok, err)"#,
        "/",
        &[],
    );
    assert!(
        log.contains("false") && log.contains("get_req_body: only allowed in HTTP_REQ_DATA"),
        "{log}"
    );
    let log = eval_req(
        r#"local ok, err = pcall(avi.http["set_response_body_buffer_size"], 10)
           avi.vs.log(ok, err)"#,
        "/",
        &[],
    );
    assert!(log.contains("only allowed in HTTP_RESP"), "{log}");
}

#[test]
fn resp_data_reads_by_kilobyte_and_offset() {
    let f = fx_events(&[(
        Event::HttpRespData,
        r#"local b = avi.http.get_response_body(1)
           local second = avi.http.get_response_body(1, 1)
           local past = avi.http.get_response_body(1, 10)
           avi.vs.log(type(b), #b, second:sub(1, 3), #second, past == "", avi.http.status(),
                      avi.http.get_header("content-type"))"#,
    )]);
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    let mut rp = resp(200, &[("content-type", "text/html")]);
    assert!(matches!(
        t.on_response(&mut rp, sa(S1)),
        ResponseVerdict::Continue
    ));
    let body = Bytes::from(format!("{}abc{}", "a".repeat(1024), "b".repeat(500)));
    assert!(matches!(
        t.on_response_body(&mut rp, &body),
        ResponseVerdict::Continue
    ));
    assert_eq!(log_of(t.as_ref()), "string 1024 abc 503 true 200 text/html");
}

#[test]
fn resp_data_may_replace_the_response_and_change_headers() {
    let f = fx_events(&[(
        Event::HttpRespData,
        r#"local b = avi.http.get_response_body()
           if b:find("secret", 1, true) then avi.http.response(404) end
           avi.http.add_header("x-body-len", #b)"#,
    )]);
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    let mut rp = resp(200, &[]);
    t.on_response(&mut rp, sa(S1));
    assert!(matches!(
        t.on_response_body(&mut rp, &Bytes::from_static(b"public")),
        ResponseVerdict::Continue
    ));
    assert_eq!(rp.headers["x-body-len"], "6");

    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    let mut rp = resp(200, &[]);
    t.on_response(&mut rp, sa(S1));
    match t.on_response_body(&mut rp, &Bytes::from_static(b"the secret")) {
        ResponseVerdict::Respond(r) => assert_eq!(r.status(), StatusCode::NOT_FOUND),
        ResponseVerdict::Continue => panic!("expected the script's 404"),
    }
}

#[test]
fn set_response_body_buffer_size_lowers_the_limit_within_range() {
    let f = fx_events(&[
        (
            Event::HttpResp,
            "avi.http.set_response_body_buffer_size(64)",
        ),
        (Event::HttpRespData, "avi.vs.log('data')"),
    ]);
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    t.on_response(&mut resp(200, &[]), sa(S1));
    assert_eq!(t.response_body_limit(), Some(64 * 1024));

    // Never above max_body_buffer.
    let small = DsLimits {
        max_body_buffer: 16 * 1024,
        ..limits()
    };
    let f = fixture_with(
        vec![
            src(
                Event::HttpResp,
                "avi.http.set_response_body_buffer_size('32768')",
            ),
            src(Event::HttpRespData, "avi.vs.log('data')"),
        ],
        small,
    );
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    t.on_response(&mut resp(200, &[]), sa(S1));
    assert_eq!(t.response_body_limit(), Some(16 * 1024));

    for bad in ["0", "32769", "'big'"] {
        let f = fx_events(&[(
            Event::HttpResp,
            &format!(
                "local ok, e = pcall(avi.http.set_response_body_buffer_size, {bad}) avi.vs.log(ok, e)"
            ),
        )]);
        let mut t = f.hooks.begin(info());
        forward(t.on_request(&mut req("/", &[])));
        t.on_response(&mut resp(200, &[]), sa(S1));
        let log = log_of(t.as_ref());
        assert!(
            log.starts_with("false") && log.contains("1 to 32768 KB"),
            "{bad}: {log}"
        );
    }
}

#[test]
fn resp_failed_runs_with_the_status_latch_would_send() {
    let f = fx_events(&[(
        Event::HttpRespFailed,
        r#"local s = avi.http.internal_status()
           avi.vs.log(type(s), s)
           if s == "504" then avi.http.response(503, {content_type = "text/plain"}, "busy") end"#,
    )]);
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    assert!(t.on_response_failed(StatusCode::BAD_GATEWAY).is_none());
    assert_eq!(log_of(t.as_ref()), "string 502");

    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    let r = t
        .on_response_failed(StatusCode::GATEWAY_TIMEOUT)
        .expect("the script's answer");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body().as_ref(), b"busy");
    assert_eq!(r.headers()["content-type"], "text/plain");
}

#[test]
fn resp_failed_may_redirect_and_nothing_else_of_avi_http() {
    let f = fx_events(&[(
        Event::HttpRespFailed,
        r#"avi.http.redirect("https://sorry.example/")"#,
    )]);
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    let r = t
        .on_response_failed(StatusCode::BAD_GATEWAY)
        .expect("redirect");
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()["location"], "https://sorry.example/");

    // Reached by name, past the load-time check: a Lua error, the proxy's own answer (500).
    let f = fx_events(&[(
        Event::HttpRespFailed,
        r#"local ok, e = pcall(avi.http["get_header"], "host")
           avi.vs.log(ok, e)
           local ok2 = pcall(avi.http["add_header"], "x", "1")
           avi.vs.log(ok2, avi.vs.name())"#,
    )]);
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    assert!(t.on_response_failed(StatusCode::BAD_GATEWAY).is_none());
    let log = log_of(t.as_ref());
    assert!(
        log.contains("false avi.http: only response, redirect and internal_status are allowed in HTTP_RESP_FAILED"),
        "{log}"
    );
    assert!(log.ends_with("false shop"), "{log}");
}

#[test]
fn resp_failed_without_scripts_leaves_the_answer_to_the_proxy() {
    let f = fx("avi.vs.log('req')", "");
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    assert!(t.on_response_failed(StatusCode::BAD_GATEWAY).is_none());
}

#[test]
fn lb_done_knows_the_server_and_may_answer() {
    let f = fx_events(&[(
        Event::HttpLbDone,
        r#"local ip, port = avi.pool.get_server_info()
           avi.vs.log(ip, type(port), port, avi.pool.server_ip(), avi.http.get_path())
           if ip == "192.0.2.12" then avi.http.response(503) end"#,
    )]);
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/cart", &[])));
    assert!(t.on_lb_done(sa(S1)).is_none());
    assert_eq!(
        log_of(t.as_ref()),
        "192.0.2.11 number 8080 192.0.2.11 /cart"
    );

    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    let r = t.on_lb_done(sa(S2)).expect("answer");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn every_event_counts_runs_and_errors() {
    let f = fx_events(&[
        (Event::HttpLbDone, "error('boom')"),
        (Event::HttpRespFailed, "avi.vs.log('failed')"),
    ]);
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    let r = t.on_lb_done(sa(S1)).expect("a script error answers 500");
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(t.on_response_failed(StatusCode::BAD_GATEWAY).is_none());
    let c = f.hooks.counters();
    assert_eq!(c.get(Event::HttpLbDone).runs, 1);
    assert_eq!(c.get(Event::HttpLbDone).errors, 1);
    assert_eq!(c.get(Event::HttpRespFailed).runs, 1);
    assert_eq!(c.get(Event::HttpReq).runs, 0);
}

#[test]
fn events_parse_in_both_of_avis_spellings() {
    for (name, event) in [
        ("HTTP_REQ", Event::HttpReq),
        ("VS_DATASCRIPT_EVT_HTTP_REQ", Event::HttpReq),
        ("HTTP_RESP", Event::HttpResp),
        ("VS_DATASCRIPT_EVT_HTTP_RESP", Event::HttpResp),
        ("HTTP_REQ_DATA", Event::HttpReqData),
        ("VS_DATASCRIPT_EVT_HTTP_REQ_DATA", Event::HttpReqData),
        ("HTTP_RESP_DATA", Event::HttpRespData),
        ("VS_DATASCRIPT_EVT_HTTP_RESP_DATA", Event::HttpRespData),
        ("HTTP_RESP_FAILED", Event::HttpRespFailed),
        ("VS_DATASCRIPT_EVT_HTTP_RESP_FAILED", Event::HttpRespFailed),
        ("HTTP_LB_DONE", Event::HttpLbDone),
        ("VS_DATASCRIPT_EVT_HTTP_LB_DONE", Event::HttpLbDone),
    ] {
        #[derive(serde::Deserialize)]
        struct One {
            event: Event,
        }
        let one: One = toml::from_str(&format!("event = \"{name}\"")).expect(name);
        assert_eq!(one.event, event, "{name}");
    }
    assert_eq!(Event::HttpRespFailed.to_string(), "HTTP_RESP_FAILED");
}
