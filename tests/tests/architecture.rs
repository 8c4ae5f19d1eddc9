//! The architecture as written is the architecture as built.
//!
//! `docs/ARCHITECTURE.md` documents which top-level modules of the agent library may use which
//! (a fenced block tagged `layering`) and which of them are pure logic. These tests read that
//! block and the agent's source, and fail when they disagree: an edge the code has and the
//! document does not (a layering break), an edge the document lists that the code no longer has
//! (a stale document), a cycle, or an I/O crate in a pure module. A second test checks that
//! every repository path the README, the docs and the code comments mention exists.
//!
//! Source is read as text on purpose: a compiler-level check would need the whole agent to
//! build inside a test, and `use crate::x` edges are plain enough to read.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Crates that do I/O, run scripts or own a runtime; pure modules name none of them. (libc is
/// allowed: `tables` reads CLOCK_MONOTONIC, the clock the XDP program shares.)
const IO_CRATES: [&str; 8] = [
    "tokio",
    "mlua",
    "hyper",
    "hyper_util",
    "aya",
    "axum",
    "redis",
    "socket2",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file below `dir` (recursively) whose name ends in one of `exts`.
fn files_below(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files_below(&path, exts, out);
            }
        } else if exts.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

/// The documented graph and the set of pure modules, from `docs/ARCHITECTURE.md`.
struct Documented {
    edges: BTreeMap<String, BTreeSet<String>>,
    pure: BTreeSet<String>,
}

/// Parses the ```` ```layering ```` block: lines `module -> a, b, c` (or `module ->` for none),
/// and one line `pure: x, y, z`.
fn documented() -> Documented {
    let doc = read(&repo_root().join("docs/ARCHITECTURE.md"));
    let block = doc
        .split("```layering")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/ARCHITECTURE.md has a ```layering block");
    let mut edges = BTreeMap::new();
    let mut pure = BTreeSet::new();
    let list = |s: &str| -> BTreeSet<String> {
        s.split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect()
    };
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("pure:") {
            pure = list(rest);
        } else if let Some((from, to)) = line.split_once("->") {
            edges.insert(from.trim().to_string(), list(to));
        } else {
            panic!("layering block: cannot read line {line:?}");
        }
    }
    Documented { edges, pure }
}

/// Source text without comments, so that doc links and prose are not counted as edges.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") {
                ""
            } else {
                // A `//` after code starts a comment unless it sits in a string literal;
                // counting quotes before it is enough for this codebase's style.
                match line.find("//") {
                    Some(i) if line[..i].matches('"').count() % 2 == 0 => &line[..i],
                    _ => line,
                }
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level modules named after `crate::` in `code`, including `crate::{a, b::c}` groups.
fn crate_edges(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before_ok = i == 0
            || !rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[i + "crate::".len()..];
        if !before_ok {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                if let Some(m) = ident(item.trim()) {
                    out.insert(m);
                }
            }
        } else if let Some(m) = ident(rest) {
            out.insert(m);
        }
    }
    out
}

fn ident(s: &str) -> Option<String> {
    let id: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!id.is_empty() && id != "self").then_some(id)
}

/// External crates of `IO_CRATES` named in `code` as a path root.
fn io_crates_used(code: &str) -> BTreeSet<&'static str> {
    IO_CRATES
        .iter()
        .copied()
        .filter(|krate| {
            code.match_indices(&format!("{krate}::")).any(|(i, _)| {
                !code[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            })
        })
        .collect()
}

/// The agent library's top-level modules and the code of each (its folder or its file).
fn modules() -> BTreeMap<String, String> {
    let src = repo_root().join("lb-userspace/src");
    let lib = read(&src.join("lib.rs"));
    let mut out = BTreeMap::new();
    for line in code_only(&lib).lines() {
        let Some(name) = line
            .trim()
            .strip_prefix("pub mod ")
            .or_else(|| line.trim().strip_prefix("mod "))
        else {
            continue;
        };
        let name = name.trim_end_matches(';').trim().to_string();
        let mut files = Vec::new();
        files_below(&src.join(&name), &[".rs"], &mut files);
        let single = src.join(format!("{name}.rs"));
        if single.is_file() {
            files.push(single);
        }
        assert!(!files.is_empty(), "module {name} has no source");
        let code = files
            .iter()
            .map(|f| code_only(&read(f)))
            .collect::<Vec<_>>()
            .join("\n");
        out.insert(name, code);
    }
    out
}

#[test]
fn module_edges_match_the_documented_layering() {
    let doc = documented();
    let modules = modules();
    let names: BTreeSet<_> = modules.keys().cloned().collect();
    let documented_names: BTreeSet<_> = doc.edges.keys().cloned().collect();
    assert_eq!(
        names, documented_names,
        "docs/ARCHITECTURE.md's layering block must list every top-level module of lb-userspace/src/lib.rs"
    );

    let mut problems = Vec::new();
    for (module, code) in &modules {
        let actual: BTreeSet<String> = crate_edges(code)
            .into_iter()
            .filter(|m| m != module && names.contains(m))
            .collect();
        let allowed = &doc.edges[module];
        for m in actual.difference(allowed) {
            problems.push(format!(
                "{module} uses crate::{m}, which the layering does not allow"
            ));
        }
        for m in allowed.difference(&actual) {
            problems.push(format!(
                "the layering lists {module} -> {m}, but {module} no longer uses it: remove it from docs/ARCHITECTURE.md"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_documented_layering_has_no_cycle() {
    let doc = documented();
    // Kahn's algorithm: repeatedly remove modules with no remaining outgoing edge.
    let mut remaining = doc.edges.clone();
    loop {
        let leaves: Vec<String> = remaining
            .iter()
            .filter(|(_, to)| to.iter().all(|m| !remaining.contains_key(m)))
            .map(|(m, _)| m.clone())
            .collect();
        if leaves.is_empty() {
            break;
        }
        for leaf in leaves {
            remaining.remove(&leaf);
        }
    }
    assert!(
        remaining.is_empty(),
        "modules in a cycle: {:?}",
        remaining.keys().collect::<Vec<_>>()
    );
}

#[test]
fn pure_modules_do_no_io() {
    let doc = documented();
    let modules = modules();
    assert!(
        !doc.pure.is_empty(),
        "the layering block names the pure modules"
    );
    let mut problems = Vec::new();
    for module in &doc.pure {
        let code = modules
            .get(module)
            .unwrap_or_else(|| panic!("pure module {module} does not exist"));
        for krate in io_crates_used(code) {
            problems.push(format!("pure module {module} uses {krate}"));
        }
        // A pure module may only build on other pure modules.
        for dep in &doc.edges[module] {
            if !doc.pure.contains(dep) {
                problems.push(format!(
                    "pure module {module} depends on {dep}, which is not pure"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_edge_reader_sees_grouped_and_inline_paths() {
    let code =
        "use crate::{config::Config, tables};\nlet x = crate::proxy::f();\nfoo_crate::bar::baz();";
    let edges: Vec<_> = crate_edges(code).into_iter().collect();
    assert_eq!(edges, ["config", "proxy", "tables"]);
    assert_eq!(
        code_only("let a = 1; // crate::agent\n/// crate::api\nlet s = \"http://x\";"),
        "let a = 1; \n\nlet s = \"http://x\";"
    );
    assert_eq!(
        io_crates_used("use tokio::net; my_hyper::y; my_aya::z; std::aya::q"),
        BTreeSet::from(["tokio"])
    );
}

/// Path-like tokens: `proxy/conn.rs`, `lb-userspace/src`, `docs/ARCHITECTURE.md`.
fn mentioned_paths(text: &str) -> Vec<String> {
    const TOP: [&str; 9] = [
        "lb-ebpf/",
        "lb-userspace/",
        "lb-common/",
        "xtask/",
        "tests/",
        "docs/",
        "examples/",
        "packaging/",
        ".ci/",
    ];
    const EXTS: [&str; 5] = [".rs", ".lua", ".toml", ".md", ".sh"];
    let mut out = Vec::new();
    let is_path_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
    for token in text.split(|c: char| !is_path_char(c)) {
        let token = token.trim_end_matches(['.', '/']);
        // Absolute paths are the host's (/etc/latch/...), target/ holds build output, and
        // ../ leaves the repository: none of them is the repository's to keep.
        let outside =
            token.starts_with('/') || token.starts_with("target/") || token.starts_with("../");
        if token.contains("//") || outside || token.is_empty() {
            continue;
        }
        let rooted = TOP.iter().any(|t| token.starts_with(t));
        let file_like = token.contains('/') && EXTS.iter().any(|e| token.ends_with(e));
        if rooted || file_like || token == "ARCHITECTURE.md" {
            out.push(token.to_string());
        }
    }
    out
}

fn without_toml_blocks(markdown: &str) -> String {
    let mut in_toml = false;
    let mut out = String::new();
    for line in markdown.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match fence {
            Some(lang) if !in_toml && lang.trim() == "toml" => in_toml = true,
            Some(_) if in_toml => in_toml = false,
            _ if !in_toml => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// Where a path mentioned in `file` may be relative to.
fn resolves(root: &Path, file: &Path, mentioned: &str) -> bool {
    let bases = [
        root.to_path_buf(),
        root.join("docs"),
        file.parent().map(Path::to_path_buf).unwrap_or_default(),
        root.join("lb-userspace/src"),
        root.join("lb-userspace"),
        root.join("lb-ebpf/src"),
        root.join("lb-common/src"),
        root.join("tests/src"),
        root.join("xtask/src"),
        root.join("xtask"),
    ];
    bases.iter().any(|b| b.join(mentioned).exists())
}

#[test]
fn every_path_the_docs_and_code_mention_exists() {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    files_below(&root.join("docs"), &[".md"], &mut files);
    for dir in [
        "lb-ebpf",
        "lb-userspace",
        "lb-common",
        "xtask",
        "tests",
        "examples",
        "packaging",
    ] {
        files_below(
            &root.join(dir),
            &[".rs", ".toml", ".lua", ".md"],
            &mut files,
        );
    }
    let mut missing = Vec::new();
    for file in &files {
        let text = read(file);
        // In source, only comments speak of paths; string literals are test data.
        let prose: String = if file.extension().is_some_and(|e| e == "rs" || e == "lua") {
            text.lines()
                .filter_map(|l| {
                    let t = l.trim_start();
                    (t.starts_with("//") || t.starts_with("--")).then_some(t)
                })
                .collect::<Vec<_>>()
                .join("\n")
        } else if file.extension().is_some_and(|e| e == "toml") {
            text.lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            // Fenced ```toml blocks in Markdown are example configs: their paths are the
            // user's files, relative to the user's config.
            without_toml_blocks(&text)
        };
        for path in mentioned_paths(&prose) {
            if !resolves(&root, file, &path) {
                let shown = file.strip_prefix(&root).unwrap_or(file);
                missing.push(format!(
                    "{}: mentions {path}, which does not exist",
                    shown.display()
                ));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_path_reader_finds_paths_in_prose() {
    assert_eq!(
        mentioned_paths(
            "see `datascript/api.rs`, lb-ebpf/src/main.rs. and https://x/y.md and ../shared/A.md"
        ),
        ["datascript/api.rs", "lb-ebpf/src/main.rs"]
    );
    let md = "see docs/A.md\n```toml\nfile = \"scripts/x.lua\"\n```\nand xtask/src/main.rs\n";
    assert_eq!(
        mentioned_paths(&without_toml_blocks(md)),
        ["docs/A.md", "xtask/src/main.rs"]
    );
}
