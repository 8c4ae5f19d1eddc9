//! Values the config refuses although they parse: servers that cannot be servers, workers
//! far beyond the CPUs, durations beyond sane maxima, a file that is not UTF-8.

use super::*;

#[test]
fn servers_that_cannot_be_servers_are_refused_where_written() {
    let text = BASE.replace(
        r#"servers = ["192.0.2.11:8080", "192.0.2.12:8080"]"#,
        r#"servers = ["0.0.0.0:80", "255.255.255.255:80", "224.0.0.5:80", { addr = "[ff02::1]:80" }, "[::]:80", "192.0.2.11:8080"]"#,
    );
    let e = errors(&text);
    assert_eq!(e.len(), 5, "{e:#?}");
    for (err, (col, what)) in e.iter().zip([
        (12, "0.0.0.0:80 is the unspecified address"),
        (26, "255.255.255.255:80 is the broadcast address"),
        (48, "224.0.0.5:80 is a multicast address"),
        (73, "[ff02::1]:80 is a multicast address"),
        (91, "[::]:80 is the unspecified address"),
    ]) {
        assert!(
            err.starts_with(&format!("{CFG}:6:{col}: server address {what}")),
            "{err}"
        );
    }
}

#[test]
fn a_server_on_the_listen_address_is_refused() {
    let text = format!(
        "{BASE}\n[[pool]]\nname = \"other\"\nservers = [\"198.51.100.10:80\", \"198.51.100.10:8080\"]\n"
    );
    let e = errors(&text);
    assert_eq!(
        e,
        [format!(
            "{CFG}:16:12: server 198.51.100.10:80 is the listen address of virtual service `shop`: requests to it would loop back into latch"
        )]
    );
    // A server on the VIP at another port is fine for HTTP (latch is a local proxy there)...
    // ...but not for a service XDP forwards.
    let l4 = text
        .replace("type = \"http\"", "type = \"tcp\"")
        .replace("pool = \"web\"", "pool = \"other\"");
    let e = errors(&l4);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[1].contains(
            "server 198.51.100.10:8080 is on the VIP of virtual service `shop`, which XDP forwards"
        ),
        "{e:#?}"
    );
}

#[test]
fn workers_beyond_four_per_cpu_are_refused() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let max = cpus * 4;
    let at = |n: usize| BASE.replace("[agent]\n", &format!("[agent]\nworkers = {n}\n"));
    assert_eq!(ok(&at(max)).agent.workers, Some(max));
    let e = errors(&at(max + 1));
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with(&format!(
            "{CFG}:2:11: workers = {} is more than 4 per CPU (this host has {cpus}): at most {max}",
            max + 1
        )),
        "{e:#?}"
    );
}

#[test]
fn durations_beyond_their_maximum_are_refused() {
    let text = format!(
        "{BASE}[agent.http]\nidle_timeout = \"25h\"\nheader_read_timeout = \"24h\"\n[agent.datascript]\nmax_event_time = \"11s\"\n"
    );
    let e = errors(&text);
    assert_eq!(
        e,
        [
            format!("{CFG}:14:16: duration `25h` is longer than the maximum of 1day"),
            format!("{CFG}:17:18: duration `11s` is longer than the maximum of 10s"),
        ]
    );
}

#[test]
fn a_file_that_is_not_utf8_is_refused_at_its_first_bad_byte() {
    let dir = std::env::temp_dir().join(format!("latch-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("latch.toml");
    let mut bytes = BASE.as_bytes().to_vec();
    // Line 9 is `name = "shop"`: put a Latin-1 byte after `sh`.
    let at = BASE.find("\"shop\"").expect("name") + 3;
    bytes.insert(at, 0xe9);
    std::fs::write(&path, &bytes).expect("write");
    let e = load(&path).expect_err("not UTF-8");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:9:11: the file is not UTF-8 (invalid byte 0xe9); save it as UTF-8",
            path.display()
        )
    );
}
