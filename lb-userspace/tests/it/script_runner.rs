//! `latch script test` on every cases file under examples/scripts/ (no root, no network):
//! each passes; the deliberately failing one under examples/scripts/failing/ exits non-zero
//! with an expected-vs-got line per wrong field.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::LATCH;

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scripts")
}

fn script_test(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(LATCH)
        .args(["script", "test"])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("running latch script test: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn cases_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(scripts_dir())
        .unwrap_or_else(|e| panic!("reading examples/scripts: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_script_passes_its_cases() {
    let files = cases_files();
    let mut scripts = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        scripts += text.matches("[[script]]").count();
        if text.lines().any(|l| l.starts_with("config = ")) {
            scripts += 1;
        }
        let (ok, out) = script_test(std::slice::from_ref(file));
        assert!(ok, "{}:\n{out}", file.display());
        assert!(out.contains(" 0 failed"), "{}:\n{out}", file.display());
    }
    assert!(
        scripts >= 40,
        "only {scripts} scripts under examples/scripts"
    );
}

#[test]
fn a_failed_expectation_exits_non_zero_with_a_readable_diff() {
    let file = scripts_dir().join("failing/wrong_expectations.toml");
    let (ok, out) = script_test(&[file]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL redirect expected to be a 301"), "{out}");
    assert!(out.contains("- status"), "{out}");
    assert!(out.contains("expected 301"), "{out}");
    assert!(out.contains("got      302"), "{out}");
    assert!(
        out.contains("response header Location")
            && out.contains("expected \"https://shop.example/elsewhere\""),
        "{out}"
    );
    assert!(out.contains("ok   the right expectation passes"), "{out}");
    assert!(out.contains("1 passed, 1 failed"), "{out}");
}

#[test]
fn a_bad_cases_file_is_reported_at_its_line_and_column() {
    let dir = std::env::temp_dir().join(format!("latch-script-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("temp dir: {e}"));
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[[case]]\nname = \"x\"\n[case.expect]\nstatus = \"two hundred\"\n",
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
    let (ok, out) = script_test(std::slice::from_ref(&file));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "{out}");
    assert!(out.contains("bad.toml:4:10: "), "{out}");
}

#[test]
fn a_script_error_names_its_file_and_line() {
    let file = scripts_dir().join("failing/script_error.toml");
    let (ok, out) = script_test(&[file]);
    assert!(!ok, "{out}");
    assert!(out.contains("script_error.toml:7: "), "{out}");
    assert!(out.contains("answer 500 (script)"), "{out}");
}
