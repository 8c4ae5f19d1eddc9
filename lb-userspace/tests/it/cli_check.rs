//! `latch check` on every shipped example: all valid ones pass, the seed's verbatim script is
//! refused at the line of its syntax error.

use std::path::Path;
use std::process::Command;

use crate::LATCH;

fn check(example: &str) -> (bool, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(example);
    let out = Command::new(LATCH)
        .args(["check", "-c"])
        .arg(&path)
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
    ] {
        let (ok, out) = check(example);
        assert!(ok, "{example}: {out}");
        assert!(out.contains("OK"), "{example}: {out}");
    }
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
