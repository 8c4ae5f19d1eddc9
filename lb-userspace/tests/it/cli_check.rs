//! `latch check` on every shipped example: all valid ones pass, the seed's verbatim script is
//! refused at the line of its syntax error.

use std::path::Path;
use std::process::Command;

use crate::LATCH;

fn check(example: &str) -> (bool, String) {
    check_file(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(example),
    )
}

/// `latch check -c path`: whether it passed, and what it printed.
fn check_file(path: &Path) -> (bool, String) {
    let out = Command::new(LATCH)
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running latch check: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn shipped_examples_pass_check() {
    for example in [
        "l4.toml",
        "jsession.toml",
        "header_persist.toml",
        "query_persist.toml",
        "groups.toml",
    ] {
        let (ok, out) = check(example);
        assert!(ok, "{example}: {out}");
        assert!(out.contains("OK"), "{example}: {out}");
    }
}

#[test]
fn check_tells_the_kernel_memory_of_the_configured_capacities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cap.toml");
    let config = "[agent]\ninterfaces = [\"eth0\"]\n[agent.capacity]\nconnections = 1048576\n\
                  [[pool]]\nname = \"web\"\nservers = [\"192.0.2.11:80\"]\n\
                  [[virtual_service]]\nname = \"l4\"\nlisten = \"198.51.100.10:80\"\n\
                  type = \"tcp\"\npool = \"web\"\n";
    std::fs::write(&path, config).expect("write");
    let (ok, out) = check_file(&path);
    assert!(ok, "{out}");
    assert!(out.contains("kernel maps ([agent.capacity]"), "{out}");
    // 1 M connections of 96 B plus 16 B of bucket: 112 MiB.
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("LATCH_CONNTRACK"))
        .unwrap_or_else(|| panic!("no connection table line: {out}"));
    assert!(
        line.contains("1048576 entries") && line.contains("112.0 MiB"),
        "{line}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("LATCH_DS_TABLE") && l.contains("+ 256 B per entry present")),
        "{out}"
    );
}

#[test]
fn seed_verbatim_request_script_is_refused_at_its_line() {
    let (ok, out) = check("seed_verbatim.toml");
    assert!(!ok);
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed_verbatim.toml"),
    )
    .unwrap_or_default();
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with("avi.pool.select(,"))
        .map(|i| i + 1)
        .unwrap_or(0);
    assert!(
        out.contains(&format!("seed_verbatim.toml:{line}: ")),
        "expected the error at line {line}: {out}"
    );
}

#[test]
fn scripts_naming_what_avi_does_not_have_are_refused_where_they_say_it()
-> Result<(), Box<dyn std::error::Error>> {
    use std::net::SocketAddr;

    use latch_tests::config::{AgentSettings, DataScript, LatchConfig, Pool, VirtualService};

    let server: SocketAddr = "192.0.2.11:8080".parse()?;
    let listen: SocketAddr = "198.51.100.10:80".parse()?;
    let request = "local c = avi.http.get_cookie(\"a\")\nif c then avi.http.get_cokie(\"b\") end\n";
    let response = "avi.http.redirect(\"/elsewhere\")\n";
    let toml = LatchConfig::new(AgentSettings::new(&["eth0".to_string()]))
        .pool(Pool::new("web", [server]))
        .virtual_service(
            VirtualService::http("shop", listen, "web")
                .datascripts([DataScript::request(request), DataScript::response(response)]),
        )
        .to_toml()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("latch.toml");
    std::fs::write(&path, &toml)?;
    let out = Command::new(LATCH)
        .args(["check", "-c"])
        .arg(&path)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    // Where the calls are in the file as written: an unknown name is shown at the member
    // that does not exist, a misplaced call at its start.
    let at = |needle: &str| {
        toml.lines().enumerate().find_map(|(i, l)| {
            l.find(needle)
                .map(|c| format!("latch.toml:{}:{}: ", i + 1, c + 1))
        })
    };
    let misspelt = at("get_cokie").ok_or("script line not in the config")?;
    let redirect = at("avi.http.redirect").ok_or("script line not in the config")?;
    assert!(
        stdout.contains(&format!(
            "{misspelt}avi.http.get_cokie does not exist; did you mean avi.http.get_cookie?"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{redirect}avi.http.redirect is not allowed in HTTP_RESP scripts"
        )),
        "{stdout}"
    );
    Ok(())
}

#[test]
fn encrypted_cookie_example_passes_check() {
    let (ok, out) = check("encrypted_cookie.toml");
    assert!(ok && out.contains("OK"), "{out}");
}

#[test]
fn unreadable_geo_database_is_refused_at_its_location() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("geo.toml");
    std::fs::write(
        &config,
        "[agent]\ninterfaces = []\n\n[agent.datascript]\ngeo_database = \"absent.mmdb\"\n",
    )
    .expect("write config");
    let out = Command::new(LATCH)
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap_or_else(|e| panic!("running latch check: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("geo.toml:5:16: cannot read geo database ")
            && stdout.contains("absent.mmdb"),
        "{stdout}"
    );
}

#[test]
fn literal_pools_servers_groups_and_limiters_that_do_not_exist_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("refs.toml");
    let text = r#"[agent]
interfaces = []

[[pool]]
name = "web"
servers = ["192.0.2.11:8080"]

[[ip_group]]
name = "office"
entries = ["192.0.2.0/24"]

[[virtual_service]]
name = "shop"
listen = "198.51.100.10:80"
type = "http"
pool = "web"

[[virtual_service.datascript]]
event = "HTTP_REQ"
script = '''
if avi.ipgroup.contains("offices", avi.vs.client_ip()) then
  avi.pool.select("web", "192.0.2.12")
end
'''
"#;
    std::fs::write(&config, text).expect("write config");
    let (ok, stdout) = check_file(&config);
    assert!(!ok, "{stdout}");
    for expected in [
        "refs.toml:21:25: avi.ipgroup.contains: unknown ip group `offices` (known ip groups: `office`)",
        "refs.toml:22:26: avi.pool.select: server `192.0.2.12` is not in pool `web` (its servers: 192.0.2.11:8080)",
    ] {
        assert!(stdout.contains(expected), "expected {expected}\n{stdout}");
    }
}

#[test]
fn latch_check_refuses_bad_certificates_and_fast_path_with_tls() {
    use latch_tests::{KeyAlg, KeyForm, TestCa};

    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(dir.path(), "ca").expect("ca");
    let a = ca
        .server(
            dir.path(),
            "a",
            &["a.example.com"],
            KeyAlg::EcdsaP256,
            KeyForm::Pkcs8,
        )
        .expect("a");
    let b = ca
        .server(
            dir.path(),
            "b",
            &["b.example.com"],
            KeyAlg::Rsa2048,
            KeyForm::Traditional,
        )
        .expect("b");
    let config = dir.path().join("tls.toml");
    let vs = |extra: &str, cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[agent]\ninterfaces = [\"lo\"]\n\n[[pool]]\nname = \"web\"\nservers = [\"192.0.2.11:8080\"]\n\n\
             [[virtual_service]]\nname = \"shop\"\nlisten = \"198.51.100.10:443\"\ntype = \"http\"\npool = \"web\"\n{extra}\
             tls = {{ certificates = [{{ cert = {:?}, key = {:?} }}] }}\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    let check = |text: &str| {
        std::fs::write(&config, text).expect("write config");
        check_file(&config)
    };
    let (ok, out) = check(&vs("", &a.cert, &a.key));
    assert!(ok && out.contains("OK"), "{out}");
    // A key that is not the certificate's.
    let (ok, out) = check(&vs("", &a.cert, &b.key));
    assert!(!ok, "{out}");
    assert!(
        out.contains("tls.toml:13:")
            && out.contains(&format!(
                "key {} does not match certificate {}",
                b.key.display(),
                a.cert.display()
            )),
        "{out}"
    );
    // A missing file.
    let missing = dir.path().join("missing.pem");
    let (ok, out) = check(&vs("", &missing, &a.key));
    assert!(
        !ok && out.contains("cannot read certificate file")
            && out.contains(&missing.display().to_string()),
        "{out}"
    );
    // fast_path with TLS.
    let (ok, out) = check(&vs("fast_path = \"client_ip\"\n", &a.cert, &a.key));
    assert!(
        !ok && out.contains("fast_path cannot be used with tls"),
        "{out}"
    );
}
