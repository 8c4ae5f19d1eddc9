//! The client subcommands against a fake agent on 127.0.0.1 (no root): the formatter through
//! `execute`, and the built `latch` binary end to end.

use std::net::SocketAddr;
use std::process::Output;

use crate::api_support::RunningApi;
use latch::api::cli::{ClientCommand, ClientOptions, execute};
use latch::api::model::TableListView;
use latch_tests::{AgentSettings, LatchConfig, Pool, VirtualService};

fn opts(api: &RunningApi, token: Option<&str>, json: bool) -> ClientOptions {
    ClientOptions {
        admin: api.addr,
        token: token.map(str::to_owned),
        json,
    }
}

fn list(vs: &str) -> ClientCommand {
    ClientCommand::TableList {
        vs: vs.into(),
        table: None,
        prefix: None,
        limit: None,
    }
}

#[tokio::test]
async fn table_list_prints_an_aligned_table() {
    let api = RunningApi::start(None).await;
    let out = execute(&opts(&api, None, false), &list("shop"))
        .await
        .expect("list");
    assert!(out.success);
    let lines: Vec<&str> = out.text.lines().collect();
    assert_eq!(
        lines,
        [
            "TABLE      KEY                   VALUE            EXPIRES IN",
            "(default)  odd/key with space+%  192.0.2.11:8080         30s",
            "(default)  sess-a                192.0.2.11:8080       1200s",
            "(default)  sess-b                192.0.2.12:8080        600s",
            "carts      c1                    192.0.2.12:8080         60s",
            "4 entries",
        ]
    );

    let cut = ClientCommand::TableList {
        vs: "shop".into(),
        table: None,
        prefix: Some("sess".into()),
        limit: Some(1),
    };
    let out = execute(&opts(&api, None, false), &cut).await.expect("list");
    assert!(
        out.text
            .ends_with("1 entry shown; more match (raise --limit or narrow with --prefix)\n")
    );
}

#[tokio::test]
async fn json_output_is_the_api_document() {
    let api = RunningApi::start(None).await;
    let out = execute(&opts(&api, None, true), &list("shop"))
        .await
        .expect("list");
    let doc: TableListView = serde_json::from_str(&out.text).expect("TableListView JSON");
    assert_eq!(doc.entries.len(), 4);
    let status = execute(&opts(&api, None, true), &ClientCommand::Status)
        .await
        .expect("status");
    let v: serde_json::Value = serde_json::from_str(&status.text).expect("json");
    assert_eq!(v["status"]["pid"], 4242);
    assert_eq!(v["pools"][0]["servers"][1]["up"], false);
}

#[tokio::test]
async fn status_and_stats_for_people() {
    let api = RunningApi::start(None).await;
    let status = execute(&opts(&api, None, false), &ClientCommand::Status)
        .await
        .expect("status")
        .text;
    assert!(
        status.starts_with("latch 0.1.0  pid 4242  up 2h03m  config /etc/latch/latch.toml\n"),
        "{status}"
    );
    assert!(status.contains("servers up: 1/2"), "{status}");
    assert!(
        status.contains(
            "table entries NOT in the kernel mirror (lost on kill -9):\n  shop: 123 (mirror full 120, too large 3, refused 0)\n"
        ),
        "{status}"
    );
    let down = status
        .lines()
        .find(|l| l.contains("192.0.2.12:8080"))
        .expect("server row");
    assert!(down.starts_with("web   192.0.2.12:8080  DOWN"), "{down}");
    assert!(down.ends_with("status 503, expected 200-399"), "{down}");

    let stats = execute(&opts(&api, None, false), &ClientCommand::Stats)
        .await
        .expect("stats")
        .text;
    let shop = stats
        .lines()
        .find(|l| l.starts_with("shop"))
        .expect("shop row");
    let cells: Vec<&str> = shop.split_whitespace().collect();
    assert_eq!(
        &cells[..8],
        [
            "shop",
            "http",
            "198.51.100.10:80",
            "1234",
            "1200",
            "4",
            "20",
            "10"
        ]
    );
    assert!(shop.contains("3.0 MiB"), "{shop}");
    let dns = stats
        .lines()
        .find(|l| l.starts_with("dns"))
        .expect("dns row");
    assert!(dns.contains(" 99 ") && dns.contains(" 33 "), "{dns}");
}

#[tokio::test]
async fn reload_refusal_fails_the_command() {
    let api = RunningApi::start(None).await;
    api.backend
        .refuse_reload
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let out = execute(&opts(&api, None, false), &ClientCommand::Reload)
        .await
        .expect("an answer");
    assert!(!out.success);
    assert!(out.text.contains("reload refused"), "{}", out.text);
    assert!(out.text.contains("unknown pool"), "{}", out.text);
}

#[tokio::test]
async fn server_commands_set_states_and_weights() {
    let api = RunningApi::start(None).await;
    let admin = api.addr.to_string();
    let out = latch(&[
        "server",
        "drain",
        "web",
        "192.0.2.11:8080",
        "--admin",
        &admin,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "pool web server 192.0.2.11:8080: drain, weight 1, health up, 2 requests in flight\n"
    );
    let out = latch(&[
        "server",
        "weight",
        "web",
        "192.0.2.12:8080",
        "3",
        "--admin",
        &admin,
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        (v["weight"].as_u64(), v["state"].as_str()),
        (Some(3), Some("ready"))
    );
    // `latch status` shows both.
    let out = execute(&opts(&api, None, false), &ClientCommand::Status)
        .await
        .expect("status");
    assert!(out.text.contains("HEALTH"), "{}", out.text);
    let out = latch(&["server", "maint", "web", "192.0.2.99:80", "--admin", &admin]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("has no server \"192.0.2.99:80\" (HTTP 404)"),
        "{}",
        text(&out.stderr)
    );
    let out = latch(&[
        "server",
        "ready",
        "nope",
        "192.0.2.11:8080",
        "--admin",
        &admin,
    ])
    .await;
    assert!(
        text(&out.stderr).contains("no pool named"),
        "{}",
        text(&out.stderr)
    );
}

async fn latch(args: &[&str]) -> Output {
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_latch"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("latch exits in time")
    .expect("run latch")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn binary_talks_to_the_agent_with_the_config_token() {
    let api = RunningApi::start(Some("s3cret")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), "s3cret\n").expect("token");
    let config = dir.path().join("latch.toml");
    let settings = AgentSettings::new(&["lb0".to_string()])
        .admin_listen(api.addr)
        .admin_token_file("token".as_ref());
    let toml = LatchConfig::new(settings)
        .pool(Pool::new(
            "web",
            [SocketAddr::from(([192, 0, 2, 11], 8080))],
        ))
        .virtual_service(VirtualService::http(
            "shop",
            SocketAddr::from(([198, 51, 100, 10], 80)),
            "web",
        ))
        .to_toml()
        .expect("config serializes");
    std::fs::write(&config, toml).expect("config");
    let config = config.to_str().expect("utf-8 path");

    // Address and token both come from -c FILE.
    let out = latch(&["table", "list", "shop", "--table", "carts", "-c", config]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "TABLE  KEY  VALUE            EXPIRES IN\ncarts  c1   192.0.2.12:8080         60s\n1 entry\n"
    );

    let admin = api.addr.to_string();
    let out = latch(&[
        "table", "get", "shop", "missing", "--admin", &admin, "-c", config,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("no key \"missing\" in the default table of \"shop\" (HTTP 404)"),
        "{}",
        text(&out.stderr)
    );

    let out = latch(&["table", "delete", "shop", "sess-a", "-c", config, "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["key"], "sess-a");
    assert_eq!(api.backend.tables.lock().len(), 3);

    // Without the token the agent refuses, and says why.
    let out = latch(&["table", "flush", "shop", "--admin", &admin]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("HTTP 401"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(api.backend.tables.lock().len(), 3);

    let token = dir.path().join("token");
    let out = latch(&[
        "table",
        "flush",
        "shop",
        "--admin",
        &admin,
        "--token-file",
        token.to_str().expect("path"),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "removed 3 entries from all tables of shop\n"
    );
}

#[tokio::test]
async fn binary_without_agent_says_so() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let out = latch(&["status", "--admin", &free]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "latch: no latch agent answers on {free}: is `latch run` running?"
        )),
        "{err}"
    );
}

#[test]
fn options_come_from_the_config_even_while_it_is_being_edited() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tok"), "abc\n").expect("token");
    let config = dir.path().join("latch.toml");
    // A pool that does not exist: `latch check` refuses this file, the CLI still finds the agent.
    std::fs::write(
        &config,
        "[agent]\nadmin_listen = \"127.0.0.1:9999\"\nadmin_token_file = \"tok\"\n\n[[virtual_service]]\nname = \"x\"\npool = \"missing\"\n",
    )
    .expect("config");
    let o = ClientOptions::resolve(None, Some(&config), None, false).expect("resolve");
    assert_eq!(o.admin.to_string(), "127.0.0.1:9999");
    assert_eq!(o.token.as_deref(), Some("abc"));

    let flag: std::net::SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let o = ClientOptions::resolve(Some(flag), Some(&config), None, true).expect("resolve");
    assert_eq!(o.admin, flag, "--admin wins over the config");

    let o = ClientOptions::resolve(None, None, None, false).expect("resolve");
    assert_eq!(o.admin.to_string(), "127.0.0.1:9180");
    assert_eq!(o.token, None);

    std::fs::write(&config, "[agent]\nadmin_listen = \"nowhere\"\n").expect("config");
    let err = ClientOptions::resolve(None, Some(&config), None, false).expect_err("bad address");
    assert!(err.to_string().contains("agent.admin_listen"), "{err}");
}
