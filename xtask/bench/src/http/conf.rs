//! Configuration texts of the backends and of every load balancer under test: pure functions,
//! so the rules each peer runs are visible (and tested) in one place.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

/// A backend as the load balancers know it.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// `b1`, `b2`, ...: the server name in every LB's config and the backend's X-Backend.
    pub name: String,
    pub addr: SocketAddrV4,
}

/// nginx paths that would otherwise default to /var/lib/nginx and /var/log/nginx.
fn nginx_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n"
    )
}

fn nginx_head(dir: &Path, workers: usize, modules: &str) -> String {
    let d = dir.display();
    format!(
        "{modules}worker_processes {workers};\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nworker_rlimit_nofile 16384;\n\
         events {{\n  worker_connections 8192;\n}}\n"
    )
}

/// A backend: one nginx worker answering every path with a small body. `/login` starts a
/// session (`Set-Cookie: JSESSIONID=<name>-<request id>`); every other response carrying a
/// session echoes it back in Set-Cookie, so the LBs' response rules (the seed's
/// `table_insert` on Set-Cookie, HAProxy's `stick store-response`, nginx's header filter)
/// refresh the entry on every request, as the seed's comment describes ("update timer if
/// entry already exists"). X-Seen-Client tells who connected: the LB, or the client itself when the
/// fast path forwards in XDP.
pub fn backend_nginx(dir: &Path, up: &Upstream) -> String {
    let name = &up.name;
    let headers = format!(
        "      add_header X-Backend {name} always;\n      add_header X-Seen-Client $remote_addr:$remote_port always;\n"
    );
    format!(
        "{head}http {{\n  access_log off;\n{paths}  keepalive_requests 1000000;\n  \
         keepalive_timeout 60s;\n  default_type text/plain;\n  \
         map $cookie_JSESSIONID $echo_session {{\n    \"\" \"\";\n    \
         default \"JSESSIONID=$cookie_JSESSIONID; Path=/\";\n  }}\n  \
         server {{\n    listen {addr} backlog=4096;\n    \
         location = /login {{\n{headers}      \
         add_header Set-Cookie \"JSESSIONID={name}-$request_id; Path=/\" always;\n      \
         return 200 \"welcome to {name}\\n\";\n    }}\n    \
         location / {{\n{headers}      add_header Set-Cookie $echo_session always;\n      \
         return 200 \"hello from {name}, a small body of about sixty-four bytes\\n\";\n    }}\n  \
         }}\n}}\n",
        head = nginx_head(dir, 1, ""),
        paths = nginx_paths(dir),
        addr = up.addr,
    )
}

/// HAProxy with a stick table learning JSESSIONID from responses and matching it on requests.
/// `http-reuse always` lets it share idle server connections across client connections, as
/// latch's per-worker upstream pool and nginx's `keepalive` do (HAProxy's default, `safe`,
/// opens a server connection for the first request of every client connection).
pub fn haproxy(listen: SocketAddrV4, threads: usize, ups: &[Upstream]) -> String {
    haproxy_with(
        &listen.to_string(),
        threads,
        ups,
        "  stick-table type string len 64 size 100k expire 20m\n  \
         stick store-response res.cook(JSESSIONID)\n  stick match req.cook(JSESSIONID)\n",
    )
}

/// HAProxy with `bind <bind>` (an address, then any bind options) round-robin over `ups` with
/// `http-reuse always`, plus the backend lines `rules`.
pub fn haproxy_with(bind: &str, threads: usize, ups: &[Upstream], rules: &str) -> String {
    let servers: String = ups
        .iter()
        .map(|u| format!("  server {} {}\n", u.name, u.addr))
        .collect();
    format!(
        "global\n  nbthread {threads}\n  maxconn 4000\n\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  \
         timeout server 30s\n  timeout http-keep-alive 30s\n\n\
         frontend fe\n  bind {bind}\n  default_backend web\n\n\
         backend web\n  balance roundrobin\n  http-reuse always\n{rules}{servers}"
    )
}

/// nginx with the Lua module: a shared dict maps JSESSIONID to the name of a one-server
/// upstream. The header filter learns `Set-Cookie: JSESSIONID` against `$upstream_addr`;
/// the access handler routes a known cookie by setting `$target`, which `proxy_pass` resolves
/// to that upstream group (so upstream keepalive still applies); unknown sessions go to the
/// round-robin group `web`.
pub fn nginx_lua(dir: &Path, listen: SocketAddrV4, workers: usize, ups: &[Upstream]) -> String {
    let modules = "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n\
                   load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n";
    let mut upstreams = String::from("  upstream web {\n");
    for u in ups {
        upstreams.push_str(&format!("    server {};\n", u.addr));
    }
    upstreams.push_str("    keepalive 64;\n  }\n");
    for u in ups {
        upstreams.push_str(&format!(
            "  upstream {} {{\n    server {};\n    keepalive 64;\n  }}\n",
            u.name, u.addr
        ));
    }
    let names: String = ups
        .iter()
        .map(|u| format!("[\"{}\"] = \"{}\", ", u.addr, u.name))
        .collect();
    format!(
        "{head}http {{\n  access_log off;\n{paths}  keepalive_requests 1000000;\n  \
         keepalive_timeout 60s;\n  lua_shared_dict sessions 32m;\n\
         {upstreams}  \
         init_by_lua_block {{\n    upstream_names = {{ {names}}}\n  }}\n  \
         server {{\n    listen {listen} backlog=4096 reuseport;\n    location / {{\n      \
         set $target web;\n      \
         access_by_lua_block {{\n        local id = ngx.var.cookie_JSESSIONID\n        \
         if id then\n          local name = ngx.shared.sessions:get(id)\n          \
         if name then ngx.var.target = name end\n        end\n      }}\n      \
         proxy_pass http://$target;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n      \
         header_filter_by_lua_block {{\n        local sc = ngx.header[\"Set-Cookie\"]\n        \
         if type(sc) == \"table\" then sc = table.concat(sc, \"\\n\") end\n        \
         if sc then\n          local id = string.match(sc, \"JSESSIONID=([^;]+)\")\n          \
         local name = upstream_names[ngx.var.upstream_addr]\n          \
         if id and name then ngx.shared.sessions:set(id, name, 1200) end\n        end\n      \
         }}\n    }}\n  }}\n}}\n",
        head = nginx_head(dir, workers, modules),
        paths = nginx_paths(dir),
    )
}

/// The seed's JSESSIONID DataScripts (examples/jsession.toml): the response script inserts
/// the session's server for 20 minutes, the request script routes a known cookie to it.
pub const SEED_SCRIPTS: &str = r#"
[[virtual_service.datascript]]
event = "HTTP_RESP"
script = '''
if avi.http.get_cookie("JSESSIONID") then
  avi.vs.table_insert(avi.http.get_cookie("JSESSIONID"), avi.pool.server_ip(), 1200)
end
'''

[[virtual_service.datascript]]
event = "HTTP_REQ"
script = '''
if avi.http.get_cookie("JSESSIONID") then
  avi.pool.select("web", avi.vs.table_lookup(avi.http.get_cookie("JSESSIONID")))
end
'''
"#;

/// A latch config: `agent_section` comes from `latch_tests::agent_section` (interfaces, pin
/// directory, admin address), `workers` is added to it.
pub fn latch(
    agent_section: &str,
    workers: usize,
    listen: SocketAddrV4,
    ups: &[Upstream],
    scripts: bool,
    fast_path: bool,
) -> String {
    let servers: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    format!(
        "{agent_section}workers = {workers}\n\n[[pool]]\nname = \"web\"\n\
         algorithm = \"round_robin\"\nservers = [{}]\n\n[[virtual_service]]\nname = \"shop\"\n\
         listen = \"{listen}\"\ntype = \"http\"\npool = \"web\"\n{}{}",
        servers.join(", "),
        if fast_path {
            "fast_path = \"client_ip\"\n"
        } else {
            ""
        },
        if scripts { SEED_SCRIPTS } else { "" }
    )
}

/// The address the scenario with `index` listens on (one VIP per scenario, each reached from
/// its own client address, so connection-per-request runs never share TIME_WAIT state).
pub fn scenario_vip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 20 + u8::try_from(index).unwrap_or(200))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups() -> Vec<Upstream> {
        (1..=2)
            .map(|i| Upstream {
                name: format!("b{i}"),
                addr: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10 + i), 8080),
            })
            .collect()
    }

    fn vip() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 20), 80)
    }

    #[test]
    fn haproxy_learns_and_matches_jsessionid_on_every_server() {
        let c = haproxy(vip(), 2, &ups());
        assert!(c.contains("nbthread 2\n"));
        assert!(c.contains("bind 198.51.100.20:80\n"));
        assert!(c.contains("stick-table type string len 64 size 100k expire 20m"));
        assert!(c.contains("stick store-response res.cook(JSESSIONID)"));
        assert!(c.contains("stick match req.cook(JSESSIONID)"));
        assert!(c.contains("server b1 192.0.2.11:8080\n  server b2 192.0.2.12:8080\n"));
    }

    #[test]
    fn nginx_lua_routes_through_named_upstreams() {
        let c = nginx_lua(Path::new("/tmp/x"), vip(), 2, &ups());
        assert!(c.starts_with("load_module /usr/lib/nginx/modules/ndk_http_module.so;"));
        assert!(c.contains("worker_processes 2;"));
        assert!(c.contains("upstream b2 {\n    server 192.0.2.12:8080;\n    keepalive 64;"));
        assert!(c.contains("[\"192.0.2.11:8080\"] = \"b1\""));
        assert!(c.contains("proxy_pass http://$target;"));
        assert!(c.contains("pid /tmp/x/nginx.pid;"));
        // Braces balance (nginx refuses the file otherwise).
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn backend_issues_and_echoes_the_session() {
        let c = backend_nginx(Path::new("/tmp/b"), &ups()[0]);
        assert!(c.contains("worker_processes 1;"));
        assert!(c.contains("listen 192.0.2.11:8080"));
        assert!(c.contains("JSESSIONID=b1-$request_id"));
        assert!(c.contains("add_header Set-Cookie $echo_session always;"));
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }

    #[test]
    fn latch_config_variants() {
        let agent = "[agent]\ninterfaces = [\"vclient\"]\n";
        let plain = latch(agent, 1, vip(), &ups(), false, false);
        assert!(plain.starts_with("[agent]\ninterfaces = [\"vclient\"]\nworkers = 1\n"));
        assert!(!plain.contains("datascript"));
        assert!(!plain.contains("fast_path"));
        let ds = latch(agent, 2, vip(), &ups(), true, true);
        assert!(ds.contains("workers = 2\n"));
        assert!(ds.contains("fast_path = \"client_ip\"\n"));
        assert!(ds.contains("avi.vs.table_insert(avi.http.get_cookie(\"JSESSIONID\")"));
        assert!(ds.contains("servers = [\"192.0.2.11:8080\", \"192.0.2.12:8080\"]"));
    }

    #[test]
    fn scenario_vips_are_in_the_documentation_range() {
        assert_eq!(scenario_vip(0), Ipv4Addr::new(198, 51, 100, 20));
        assert_eq!(scenario_vip(9), Ipv4Addr::new(198, 51, 100, 29));
    }
}
