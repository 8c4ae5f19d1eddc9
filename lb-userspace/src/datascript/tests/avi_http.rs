//! avi.http, avi.vs and avi.pool against the contract's types and values (DATASCRIPT-API.md).

use std::time::Duration;

use super::*;

/// Runs `script` in HTTP_RESP after a forwarded request, with the server answering `status`
/// and `headers`; returns the hooks (for their log) and the response head.
fn eval_resp(
    script: &str,
    status: u16,
    headers: &[(&str, &str)],
) -> (Box<dyn TxnHooks>, http::response::Parts) {
    let f = fx("", script);
    let (mut t, v, _) = run_req(&f, "/", &[]);
    forward(v);
    let mut r = resp(status, headers);
    t.on_response(&mut r, sa(S1));
    (t, r)
}

/// The request as HTTP_REQ scripts left it.
fn rewritten(script: &str, uri: &str) -> http::request::Parts {
    let f = fx(script, "");
    let (_, v, r) = run_req(&f, uri, &[]);
    forward(v);
    r
}

#[test]
fn ports_are_strings() {
    let log = eval_req(
        r#"avi.vs.log(type(avi.vs.port()), avi.vs.port(), type(avi.vs.client_port()),
              avi.vs.client_port(), avi.vs.port() ~= "443", avi.vs.port() == "80")"#,
        "/",
        &[],
    );
    assert_eq!(log, "string 80 string 40000 true true");
}

#[test]
fn get_query_returns_one_argument_encoded_unless_asked_to_decode() {
    let log = eval_req(
        r#"avi.vs.log(avi.http.get_query("intro"), avi.http.get_query("intro", "true"),
              avi.http.get_query("intro", true), avi.http.get_query("intro", "false"),
              type(avi.http.get_query("bare")), avi.http.get_query("bare") == "",
              avi.http.get_query("c"), tostring(avi.http.get_query("none")))
           avi.vs.log(avi.http.get_query(), avi.http.get_query(avi.QUERY_STRING))
           avi.vs.log(avi.http.get_query(nil, "true"))"#,
        "/p?intro=hello%20world&bare&empty=&c=1&c=2",
        &[],
    );
    assert_eq!(
        log,
        "hello%20world hello world hello world hello%20world string true 1 nil\n\
         intro=hello%20world&bare&empty=&c=1&c=2 intro=hello%20world&bare&empty=&c=1&c=2\n\
         intro=hello world&bare&empty=&c=1&c=2"
    );
}

#[test]
fn query_table_has_true_for_bare_keys_and_arrays_for_repeats() {
    let log = eval_req(
        r#"local q = avi.http.get_query(avi.QUERY_TABLE)
           avi.vs.log(type(q.bare), q.bare, type(q.empty), q.empty == "", type(q.c), q.c[1],
              q.c[2], q["sp ace"], q.intro)"#,
        "/p?bare&empty=&c=1&c=2&sp+ace=a%2Bb&intro=hello%20world",
        &[],
    );
    assert_eq!(log, "boolean true string true table 1 2 a+b hello world");
    let log = eval_req(
        r#"avi.vs.log(avi.http.get_query() == "", next(avi.http.get_query(avi.QUERY_TABLE)))"#,
        "/p",
        &[],
    );
    assert_eq!(log, "true nil");
}

#[test]
fn path_and_uri_are_decoded_unless_passed_false() {
    let log = eval_req(
        r#"avi.vs.log(avi.http.get_path(), avi.http.get_path(false), avi.http.get_path(true))
           avi.vs.log(avi.http.get_uri(), avi.http.get_uri(false))"#,
        "/a%20b/c%2Fd+e?x=%41",
        &[],
    );
    assert_eq!(
        log,
        "/a b/c/d+e /a%20b/c%2Fd+e /a b/c/d+e\n/a b/c/d+e?x=A /a%20b/c%2Fd+e?x=%41"
    );
}

#[test]
fn header_table_has_lower_case_keys_and_arrays_for_repeats() {
    let log = eval_req(
        r#"local all = avi.http.get_header()
           avi.vs.log(type(all["x-rep"]), #all["x-rep"], all["x-rep"][1], all["x-rep"][2],
              type(all["x-mixed"]), all["x-mixed"], tostring(all["X-Mixed"]),
              avi.http.get_header("X-MIXED"))"#,
        "/",
        &[("x-rep", "1"), ("X-Mixed", "m"), ("x-rep", "2")],
    );
    assert_eq!(log, "table 2 1 2 string m nil m");
}

#[test]
fn response_takes_documented_statuses_as_numbers_or_strings() {
    let f = fx(
        r#"local p = avi.http.get_path()
           if p == "/s" then avi.http.response("404", {content_type = "text/html"}, "<p>no</p>") end
           if p == "/n" then avi.http.response(avi.HTTP_OK or 200, nil, "ok") end
           if p == "/h" then avi.http.response(429, {["Content-type"] = "application/json", ["x-a"] = 1}) end
           if p == "/bad" then
             avi.vs.log(pcall(avi.http.response, 418))
             avi.vs.log((pcall(avi.http.response, "abc")))
           end"#,
        "",
    );
    let r = responded(run_req(&f, "/s", &[]).1);
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "text/html");
    assert_eq!(r.body().as_ref(), b"<p>no</p>");
    let r = responded(run_req(&f, "/n", &[]).1);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain");
    let r = responded(run_req(&f, "/h", &[]).1);
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers().get_all("content-type").iter().count(), 1);
    assert_eq!(r.headers()["x-a"], "1");
    let (t, v, _) = run_req(&f, "/bad", &[]);
    forward(v);
    let log = t.log_output().unwrap_or_default();
    assert!(
        log.starts_with("false ") && log.contains("'response' (status expected"),
        "{log}"
    );
    assert!(log.ends_with("\nfalse"), "{log}");
}

#[test]
fn redirect_takes_a_status_number_or_string() {
    let f = fx(
        r#"if avi.http.get_path() == "/s" then avi.http.redirect("/n", "301") end
           avi.http.redirect("https://shop.example/", avi.HTTP_TEMPORARY_REDIRECT or 307)"#,
        "",
    );
    let r = responded(run_req(&f, "/s", &[]).1);
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "/n");
    assert!(r.headers().get("content-type").is_none());
    let r = responded(run_req(&f, "/", &[]).1);
    assert_eq!(r.status(), 307);
}

#[test]
fn status_and_internal_status_are_strings_in_http_resp() {
    let (t, _) = eval_resp(
        r#"avi.vs.log(type(avi.http.status()), avi.http.status(), avi.http.status() == "404",
              type(avi.http.internal_status()), avi.http.internal_status())"#,
        404,
        &[],
    );
    assert_eq!(
        t.log_output().as_deref(),
        Some("string 404 true string 404")
    );
    // Written as a lookup by name: `latch check` refuses `avi.http.status` in HTTP_REQ at load,
    // and this is the run-time guard behind it.
    let log = eval_req("avi.vs.log((pcall(avi.http['status'])))", "/", &[]);
    assert_eq!(log, "false");
}

#[test]
fn hostname_strips_the_port_and_is_nil_without_a_host() {
    let log = eval_req(
        "avi.vs.log(avi.http.hostname())",
        "/",
        &[("host", "www.example.com:8080")],
    );
    assert_eq!(log, "www.example.com");
    let log = eval_req("avi.vs.log(avi.http.hostname() == nil)", "/", &[]);
    assert_eq!(log, "true");
}

#[test]
fn path_tokens_follow_the_contract_examples() {
    let log = eval_req(
        r#"local t = avi.http.get_path_tokens()
           avi.vs.log(type(t), #t, t[1], t[5])
           avi.vs.log(avi.http.get_path_tokens(1), avi.http.get_path_tokens(3),
              avi.http.get_path_tokens(2, 3), tostring(avi.http.get_path_tokens(7)),
              avi.http.get_path_tokens(4, 9), tostring(avi.http.get_path_tokens(3, 2)))"#,
        "/a/b/c/d/e.htm",
        &[],
    );
    assert_eq!(
        log,
        "table 5 a e.htm\na/b/c/d/e.htm c/d/e.htm b/c nil d/e.htm nil"
    );
}

#[test]
fn host_tokens_follow_the_contract_examples() {
    let log = eval_req(
        r#"local t = avi.http.get_host_tokens()
           avi.vs.log(type(t), #t, t[1], t[3])
           avi.vs.log(avi.http.get_host_tokens(1), avi.http.get_host_tokens(2, 2),
              tostring(avi.http.get_host_tokens(6)), avi.http.get_host_tokens(2, 3))"#,
        "/",
        &[("host", "www.avinetworks.com")],
    );
    assert_eq!(
        log,
        "table 3 www com\nwww.avinetworks.com avinetworks nil avinetworks.com"
    );
}

#[test]
fn set_path_set_uri_and_set_query_rewrite_the_request() {
    let r = rewritten(r#"avi.http.set_path("/new path")"#, "/old?q=1");
    assert_eq!(r.uri, "/new%20path?q=1");
    let r = rewritten(
        r#"avi.http.set_path(avi.http.get_path() .. "/x")"#,
        "/a%20b",
    );
    assert_eq!(r.uri, "/a%20b/x");
    let r = rewritten(r#"avi.http.set_uri("/x?y=1")"#, "/old?q=1");
    assert_eq!(r.uri, "/x?y=1");
    let r = rewritten(r#"avi.http.set_query("a=1&b")"#, "/p?q=1");
    assert_eq!(r.uri, "/p?a=1&b");
    let r = rewritten(r#"avi.http.set_query(5)"#, "/p");
    assert_eq!(r.uri, "/p?5");
    let r = rewritten(
        r#"avi.http.set_query({b = "2 3", a = true, c = {"1", "&"}, off = false})"#,
        "/p?q=1",
    );
    assert_eq!(r.uri, "/p?a&b=2%203&c=1&c=%26");
    let r = rewritten(r#"avi.http.set_query("")"#, "/p?q=1");
    assert_eq!(r.uri, "/p");
    let r = rewritten(r#"avi.http.set_path("/n")"#, "http://shop.example/o?q");
    assert_eq!(r.uri, "http://shop.example/n?q");
    let log = eval_req(
        r#"avi.vs.log(pcall(avi.http.set_path, "relative"))
           avi.vs.log(pcall(avi.http.set_query, {}))"#,
        "/",
        &[],
    );
    assert!(
        log.starts_with("false ") && log.contains("does not start with '/'"),
        "{log}"
    );
    // By name, past the load-time check (see status above).
    let (t, _) = eval_resp(r#"avi.vs.log(pcall(avi.http["set_uri"], "/x"))"#, 200, &[]);
    let log = t.log_output().unwrap_or_default();
    assert!(log.contains("only allowed in HTTP_REQ"), "{log}");
}

#[test]
fn cookie_names_are_two_values() {
    let log = eval_req(
        r#"local names, n = avi.http.get_cookie_names()
           avi.vs.log(type(names), type(n), n, names[1], names[2], names[3])"#,
        "/",
        &[("cookie", "a=1; b=2; a=3")],
    );
    assert_eq!(log, "table number 2 a b nil");
    let log = eval_req(
        r#"local names, n = avi.http.get_cookie_names() avi.vs.log(#names, n)"#,
        "/",
        &[],
    );
    assert_eq!(log, "0 0");
    let (t, _) = eval_resp(
        r#"avi.vs.log(select(2, avi.http.get_cookie_names()),
              select(2, avi.http.get_cookie_names(avi.HTTP_REQUEST)))"#,
        200,
        &[("set-cookie", "s=1; Path=/")],
    );
    assert_eq!(t.log_output().as_deref(), Some("1 0"));
}

#[test]
fn update_cookie_changes_attributes_and_value_in_place() {
    let (_, r) = eval_resp(
        r#"avi.http.update_cookie("name1", "path", "/dummy1")
           avi.http.update_cookie("name2", "domain", "www.example.com", "httponly", true, "path", "/p")
           avi.http.update_cookie("name3", "value", "new", "secure", false)
           avi.http.update_cookie("absent", "path", "/")
           avi.http.update_cookie("name1", "samesite", avi.http.Strict)"#,
        200,
        &[
            ("set-cookie", "name1=value1; path=/dummy"),
            ("set-cookie", "name2=value2; path=/dummy"),
            ("set-cookie", "name3=old; Secure; Max-Age=60"),
        ],
    );
    let sc: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    assert_eq!(
        sc,
        [
            "name1=value1; Path=/dummy1; SameSite=Strict",
            "name2=value2; Path=/p; Domain=www.example.com; HttpOnly",
            "name3=new; Max-Age=60",
        ]
    );
    let r = rewritten(r#"avi.http.update_cookie("b", "value", "9")"#, "/");
    assert!(r.headers.get("cookie").is_none());
    let f = fx(
        r#"avi.http.update_cookie("b", "value", "9")
           avi.vs.log((pcall(avi.http.update_cookie, "b", "path", "/")))
           avi.vs.log((pcall(avi.http.update_cookie, "b", "path")))"#,
        "",
    );
    let (t, _, r) = run_req(&f, "/", &[("cookie", "a=1; b=2")]);
    assert_eq!(r.headers["cookie"], "a=1; b=9");
    assert_eq!(t.log_output().as_deref(), Some("false\nfalse"));
}

#[test]
fn userid_defaults_to_the_basic_auth_user_and_reaches_the_log() {
    // "alice:secret"
    let basic = [("authorization", "Basic YWxpY2U6c2VjcmV0")];
    let f = fx(
        r#"avi.vs.log(avi.http.get_userid())
           if avi.http.get_path() == "/set" then avi.http.set_userid("bob") end"#,
        "avi.vs.log(avi.http.get_userid())",
    );
    let (mut t, _, _) = run_req(&f, "/", &basic);
    let mut r = resp(200, &[]);
    t.on_response(&mut r, sa(S1));
    assert_eq!(t.log_output().as_deref(), Some("alice\nalice"));
    assert_eq!(
        t.user_id(),
        None,
        "the proxy logs the Basic-Auth user itself"
    );
    let (mut t, _, _) = run_req(&f, "/set", &basic);
    t.on_response(&mut r, sa(S1));
    assert_eq!(t.log_output().as_deref(), Some("alice\nbob"));
    assert_eq!(t.user_id().as_deref(), Some("bob"));
    let log = eval_req("avi.vs.log(avi.http.get_userid() == nil)", "/", &[]);
    assert_eq!(log, "true");
}

#[test]
fn request_id_protocol_scheme_and_secure() {
    let log = eval_req(
        r#"avi.vs.log(type(avi.http.get_request_id()), avi.http.get_request_id(),
              avi.http.protocol(), avi.http.scheme(), avi.http.secure() == nil)"#,
        "/",
        &[],
    );
    assert_eq!(log, "string 000000000000002a http http:// true");
}

#[test]
fn reqvar_functions_share_avi_vs_reqvar() {
    let f = fx(
        r#"avi.http.set_reqvar("user", "u1") avi.vs.reqvar.n = 5"#,
        r#"avi.vs.log(avi.vs.reqvar.user, avi.http.get_reqvar("n"), type(avi.http.get_reqvar("n")),
              tostring(avi.http.get_reqvar("none")))"#,
    );
    let (mut t, _, _) = run_req(&f, "/", &[]);
    let mut r = resp(200, &[]);
    t.on_response(&mut r, sa(S1));
    assert_eq!(t.log_output().as_deref(), Some("u1 5 number nil"));
}

#[test]
fn server_timeout_and_chash_go_into_the_selection() {
    let f = fx(
        r#"avi.http.set_server_timeout(600000) avi.pool.chash("user-" .. 42)"#,
        "",
    );
    let sel = forward(run_req(&f, "/", &[]).1);
    assert_eq!(sel.response_timeout, Some(Duration::from_secs(600)));
    assert_eq!(sel.hash_key.as_deref(), Some("user-42"));
    let f = fx("avi.http.set_server_timeout(1e300)", "");
    let sel = forward(run_req(&f, "/", &[]).1);
    assert_eq!(sel.response_timeout, Some(Duration::from_secs(86_400)));
    let log = eval_req(
        r#"avi.vs.log(pcall(avi.http.set_server_timeout, 0))
           avi.vs.log((pcall(avi.pool.chash)))"#,
        "/",
        &[],
    );
    assert!(log.contains("'set_server_timeout' (milliseconds"), "{log}");
    assert!(log.ends_with("\nfalse"), "{log}");
}
