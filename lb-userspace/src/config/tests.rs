use std::path::{Path, PathBuf};

use super::*;

const CFG: &str = "/etc/latch/latch.toml";

fn errors(text: &str) -> Vec<String> {
    match parse(text, Path::new(CFG)) {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn explore() {
    let text = r#"
[agent]
interfaces = ["eth0"]
bogus = 1

[[pool]]
name = "web"
servers = ["192.0.2.11:80"]
algorithm = "roundrobin"

[[pool]]
name = "web2"
servers = 3

[[virtual_service]]
name = "a"
listen = "198.51.100.10:80"
type = "http"
pool = "web"
extra = true
"#;
    for e in errors(text) {
        println!("{e}");
    }
    panic!();
}
