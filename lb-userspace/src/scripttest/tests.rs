use std::path::Path;

use super::cases::{Case, parse};
use super::check::compare;
use super::run::{Happened, Service};

fn run_all(text: &str) -> Vec<(String, Happened, Vec<super::check::Mismatch>)> {
    let file = parse(text, Path::new("cases.toml")).expect("cases parse");
    let service = Service::build(&file).expect("service builds");
    file.cases
        .iter()
        .map(|c: &Case| {
            let got = service.run(c).expect("case runs");
            let m = compare(&c.expect, &got);
            (c.name.clone(), got, m)
        })
        .collect()
}

const PERSIST: &str = r#"
[[script]]
event = "HTTP_REQ"
script = '''
local s = avi.vs.table_lookup("s", avi.http.get_cookie("sid") or "", 0)
if s then avi.pool.select("web", s) end
avi.http.add_header("X-Seen", "1")
'''
[[script]]
event = "HTTP_RESP"
script = '''
local sid = avi.http.get_cookie("sid", avi.HTTP_RESPONSE)
if sid then avi.vs.table_insert("s", sid, avi.pool.server_ip(), 60) end
'''
[[case]]
name = "stored"
response = { headers = { "Set-Cookie" = "sid=a" } }
[[case]]
name = "followed"
advance = 10
request = { cookies = { sid = "a" } }
[case.expect]
server = "192.0.2.12:8080"
table_ops = []
tables_after = [{ table = "s", key = "a", value = "192.0.2.12", lifetime = 60 }]
"#;

#[test]
fn a_case_runs_request_choice_and_response_as_the_proxy_does() {
    let results = run_all(PERSIST);
    let (_, first, m) = &results[0];
    assert!(m.is_empty(), "{m:?}");
    assert_eq!(first.pool.as_deref(), Some("web"));
    let server = first.server.expect("forwarded").to_string();
    assert_eq!(server, "192.0.2.11:8080");
    assert_eq!(first.status, 200);
    assert!(!first.local);
    let req = first.request.as_ref().expect("request");
    assert_eq!(
        req.headers.get("x-seen").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(first.table_ops, vec!["upsert [s] a=192.0.2.11 60s"]);
    assert_eq!(first.request_changes, vec!["+ x-seen: 1"]);
    assert!(first.response_changes.is_empty());
    // The expectation names .12, the entry says .11: the diff shows both, field by field.
    let (_, second, m) = &results[1];
    assert_eq!(
        second.server.map(|s| s.to_string()).as_deref(),
        Some("192.0.2.11:8080")
    );
    let fields: Vec<&str> = m.iter().map(|x| x.field.as_str()).collect();
    assert_eq!(fields, ["server", "table entry[1]"], "{m:?}");
    assert_eq!(m[0].expected, "192.0.2.12:8080");
    assert_eq!(m[0].got, "192.0.2.11:8080");
    assert_eq!(m[1].got, "\"[s] a=192.0.2.11 50s\"");
}

#[test]
fn a_script_error_is_a_500_with_file_and_line_and_fails_an_unexpecting_case() {
    let text = "[[script]]\nevent = \"HTTP_REQ\"\nscript = '''\nlocal x = nil\nx.y = 1\n'''\n[[case]]\nname = \"e\"\n";
    let results = run_all(text);
    let (_, got, m) = &results[0];
    assert_eq!(got.status, 500);
    assert!(got.local);
    let err = got.error.as_deref().unwrap_or_default();
    assert!(err.contains("cases.toml:5:"), "{err}");
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].field, "error");
}

#[test]
fn the_proxy_answers_when_no_server_is_up() {
    let text = "[[case]]\nname = \"down\"\ndown = [\"192.0.2.11:8080\", \"192.0.2.12:8080\", \"192.0.2.13:8080\"]\n[case.expect]\nstatus = 503\nlocal = true\nserver = false\n";
    let results = run_all(text);
    let (_, got, m) = &results[0];
    assert!(m.is_empty(), "{m:?}");
    assert_eq!(got.proxy_reason, Some("no server up"));
}

#[test]
fn a_service_name_that_does_not_exist_is_refused_with_the_names_there_are() {
    let text = "virtual_service = \"nope\"\n[[case]]\nname = \"x\"\n";
    let file = parse(text, Path::new("cases.toml")).expect("parses");
    let err = Service::build(&file).err().expect("refused").to_string();
    assert!(err.contains("`nope`") && err.contains("test"), "{err}");
}

#[test]
fn a_script_that_does_not_compile_is_refused_at_its_line() {
    let text =
        "[[script]]\nevent = \"HTTP_REQ\"\nscript = '''\nif then\n'''\n[[case]]\nname = \"x\"\n";
    let file = parse(text, Path::new("cases.toml")).expect("parses");
    let err = Service::build(&file).err().expect("refused").to_string();
    assert!(err.starts_with("cases.toml:4"), "{err}");
}
