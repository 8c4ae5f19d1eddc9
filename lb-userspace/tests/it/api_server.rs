//! The admin API against a fake agent on 127.0.0.1 (no root): every endpoint, errors, tokens.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::api_support::{RunningApi, server_addr};
use http::{Method, StatusCode};
use latch::api::client::{AdminClient, ClientError, RawResponse};
use latch::api::model::*;
use latch::api::{AdminServer, ApiError};

const T: Duration = Duration::from_secs(10);

async fn raw(c: &AdminClient, method: Method, path: &str) -> RawResponse {
    c.request(method, path, T).await.expect("request")
}

fn error_of(r: &RawResponse) -> String {
    serde_json::from_slice::<ErrorView>(&r.body)
        .unwrap_or_else(|e| panic!("not an error document ({e}): {:?}", r.body))
        .error
}

fn api_status(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Api { status, message } => (status, message),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn read_endpoints_round_trip() {
    let api = RunningApi::start(None).await;
    let c = AdminClient::new(api.addr, None);
    assert_eq!(c.status().await.expect("status"), api.backend_status());
    let vs = c.virtual_services().await.expect("vs");
    assert_eq!(vs.len(), 2);
    assert_eq!(vs[0].http.map(|h| h.responses.c5xx), Some(10));
    assert_eq!(vs[1].l4.map(|l| l.new_flows), Some(33));
    let pools = c.pools().await.expect("pools");
    assert_eq!(pools[0].servers.len(), 2);
    assert!(!pools[0].servers[1].up);
    assert_eq!(
        pools[0].servers[1].last_error.as_deref(),
        Some("status 503, expected 200-399")
    );
    api.shutdown().await.expect("clean shutdown");
}

impl RunningApi {
    fn backend_status(&self) -> StatusView {
        latch::api::AdminBackend::status(self.backend.as_ref())
    }
}

#[tokio::test]
async fn table_listing_filters_limits_and_reports_truncation() {
    let api = RunningApi::start(None).await;
    let c = AdminClient::new(api.addr, None);

    let all = c.table_list("shop", None, None, None).await.expect("list");
    assert_eq!(all.entries.len(), 4);
    assert!(!all.truncated);
    assert_eq!(all.vs, "shop");

    let carts = c
        .table_list("shop", Some("carts"), None, None)
        .await
        .expect("list");
    assert_eq!(carts.table.as_deref(), Some("carts"));
    assert_eq!(
        carts
            .entries
            .iter()
            .map(|e| e.key.as_str())
            .collect::<Vec<_>>(),
        ["c1"]
    );

    let sess = c
        .table_list("shop", None, Some("sess-"), Some(1))
        .await
        .expect("list");
    assert_eq!(sess.entries.len(), 1);
    assert_eq!(sess.entries[0].key, "sess-a");
    assert!(sess.truncated, "two keys match a limit of one");

    let exact = c
        .table_list("shop", None, Some("sess-"), Some(2))
        .await
        .expect("list");
    assert!(!exact.truncated);
}

#[tokio::test]
async fn single_entries_get_and_delete_with_awkward_keys() {
    let api = RunningApi::start(None).await;
    let c = AdminClient::new(api.addr, None);
    let key = "odd/key with space+%";
    let e = c.table_get("shop", key, None).await.expect("get");
    assert_eq!((e.key.as_str(), e.table.as_str()), (key, DEFAULT_TABLE));
    assert_eq!(e.expires_in_seconds, 30);

    let got = c.table_get("shop", "c1", Some("carts")).await.expect("get");
    assert_eq!(got.value, "192.0.2.12:8080");
    let (status, msg) = api_status(
        c.table_get("shop", "c1", None)
            .await
            .expect_err("wrong table"),
    );
    assert_eq!(status, 404);
    assert!(msg.contains("default table"), "{msg}");

    let d = c.table_delete("shop", key, None).await.expect("delete");
    assert_eq!(d.key, key);
    assert!(
        !api.backend
            .tables
            .lock()
            .contains_key(&(String::new(), key.to_owned()))
    );
    let (status, msg) = api_status(c.table_delete("shop", key, None).await.expect_err("gone"));
    assert_eq!(status, 404);
    assert!(msg.contains("no key"), "{msg}");
}

#[tokio::test]
async fn flush_one_table_then_all() {
    let api = RunningApi::start(None).await;
    let c = AdminClient::new(api.addr, None);
    let f = c.table_flush("shop", Some("carts")).await.expect("flush");
    assert_eq!((f.table.as_deref(), f.removed), (Some("carts"), 1));
    assert_eq!(api.backend.tables.lock().len(), 3);
    let f = c.table_flush("shop", None).await.expect("flush");
    assert_eq!((f.table, f.removed), (None, 3));
    assert!(api.backend.tables.lock().is_empty());
}

#[tokio::test]
async fn unknown_things_are_404_and_bad_queries_400() {
    let api = RunningApi::start(None).await;
    let c = AdminClient::new(api.addr, None);
    for (path, method, status, needle) in [
        (
            "/api/v1/tables/nope",
            Method::GET,
            404,
            "no virtual service named \"nope\"",
        ),
        ("/api/v1/tables/dns", Method::GET, 404, "has no tables"),
        (
            "/api/v1/tables/nope/entries/k",
            Method::GET,
            404,
            "no virtual service",
        ),
        (
            "/api/v1/tables/nope/entries/k",
            Method::DELETE,
            404,
            "no virtual service",
        ),
        (
            "/api/v1/tables/nope",
            Method::DELETE,
            404,
            "no virtual service",
        ),
        (
            "/api/v1/tables/shop/entries/absent",
            Method::GET,
            404,
            "no key \"absent\"",
        ),
        ("/api/v1/nothing", Method::GET, 404, "no such endpoint"),
        ("/api/v1/tables/shop?limit=abc", Method::GET, 400, "limit"),
        (
            "/api/v1/tables/shop?limit=0",
            Method::GET,
            400,
            "limit must be between",
        ),
        ("/api/v1/tables/shop?tabel=x", Method::GET, 400, "tabel"),
        (
            "/api/v1/tables/shop/entries/k?x=1",
            Method::DELETE,
            400,
            "x",
        ),
        ("/api/v1/status", Method::POST, 405, "method not allowed"),
        ("/api/v1/reload", Method::GET, 405, "method not allowed"),
    ] {
        let r = raw(&c, method.clone(), path).await;
        assert_eq!(r.status.as_u16(), status, "{method} {path}");
        let msg = error_of(&r);
        assert!(msg.contains(needle), "{method} {path}: {msg}");
    }
    assert_eq!(api.backend.tables.lock().len(), 4, "nothing was removed");
}

#[tokio::test]
async fn reload_applied_and_refused() {
    let api = RunningApi::start(None).await;
    let c = AdminClient::new(api.addr, None);
    let r = raw(&c, Method::POST, "/api/v1/reload").await;
    assert_eq!(r.status, StatusCode::OK);
    let applied: ReloadView = serde_json::from_slice(&r.body).expect("reload view");
    assert!(applied.applied);
    assert_eq!(applied.warnings, ["interfaces change only on restart"]);
    assert_eq!(api.backend.reloads.load(Ordering::SeqCst), 1);

    api.backend.refuse_reload.store(true, Ordering::SeqCst);
    let r = raw(&c, Method::POST, "/api/v1/reload").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let refused = c.reload().await.expect("a refusal is an answer");
    assert!(!refused.applied);
    assert!(refused.diagnostics[0].contains("unknown pool"));
    assert_eq!(api.backend.reloads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reload_channel_reaches_the_event_loop() {
    let (requester, mut requests) = latch::api::reload_channel();
    let agent = tokio::spawn(async move {
        let req = requests.recv().await.expect("a request");
        req.respond(ReloadView {
            applied: true,
            ..ReloadView::default()
        });
    });
    assert!(requester.request().await.applied);
    agent.await.expect("agent loop");
    // The loop is gone: callers get a refusal, not a hang.
    let gone = requester.request().await;
    assert!(!gone.applied);
    assert!(gone.diagnostics[0].contains("shutting down"));
}

#[tokio::test]
async fn metrics_endpoint_serves_openmetrics() {
    let api = RunningApi::start(None).await;
    let c = AdminClient::new(api.addr, None);
    let r = raw(&c, Method::GET, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
        Some(latch::api::metrics::CONTENT_TYPE.as_bytes())
    );
    let text = String::from_utf8(r.body.to_vec()).expect("utf-8");
    assert!(
        text.contains("# TYPE latch_xdp_packets counter\n"),
        "{text}"
    );
    assert!(text.contains("latch_xdp_packets_total{path=\"new_flow_maglev\"} 33\n"));
    assert!(text.contains("latch_table_entries{vs=\"shop\"} 4\n"));
    assert!(
        text.contains("latch_server_up{pool=\"web\",server=\"192.0.2.12:8080\"} 0\n"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
    assert_eq!(c.metrics().await.expect("metrics"), text);
}

#[tokio::test]
async fn token_is_required_on_every_endpoint_when_set() {
    let api = RunningApi::start(Some("s3cret")).await;
    let anonymous = AdminClient::new(api.addr, None);
    let wrong = AdminClient::new(api.addr, Some("s3cres".into()));
    let right = AdminClient::new(api.addr, Some("s3cret".into()));
    for (method, path) in [
        (Method::GET, "/api/v1/status"),
        (Method::GET, "/api/v1/tables/shop"),
        (Method::DELETE, "/api/v1/tables/shop"),
        (Method::POST, "/api/v1/reload"),
        (Method::GET, "/metrics"),
    ] {
        for c in [&anonymous, &wrong] {
            let r = raw(c, method.clone(), path).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert!(error_of(&r).contains("bearer token"));
        }
    }
    let r = raw(&anonymous, Method::GET, "/api/v1/status").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers
            .get(http::header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_eq!(
        api.backend.tables.lock().len(),
        4,
        "refused calls changed nothing"
    );
    assert_eq!(api.backend.reloads.load(Ordering::SeqCst), 0);
    assert_eq!(right.status().await.expect("status").pid, 4242);
    let (status, _) = api_status(wrong.pools().await.expect_err("refused"));
    assert_eq!(status, 401);
}

#[tokio::test]
async fn non_loopback_listener_without_token_is_refused_before_binding() {
    let err = AdminServer::bind(server_addr("0.0.0.0:0"), None)
        .await
        .expect_err("refused");
    assert!(matches!(err, ApiError::TokenRequired { .. }), "{err}");
    assert!(err.to_string().contains("admin_token_file"));
}

#[tokio::test]
async fn no_agent_is_a_clear_error() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let c = AdminClient::new(free, None);
    let err = c.status().await.expect_err("nobody listens");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "no latch agent answers on {free}: is `latch run` running?"
        )),
        "{msg}"
    );
}
