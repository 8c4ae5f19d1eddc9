//! avi.pool: selecting a pool or server for the request, and the pools' servers and health.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mlua::{Lua, Table, Value, Variadic};

use super::args::{cached_ip, lua_str, name_arg, port_arg, port_number};
use super::{Args, LResult, Namespace, reg, rt, txn, with_ctx};
use crate::datascript::vm::{TxnState, VmShared};
use crate::proxy::hooks::ServerView;

pub(super) const NAMESPACE: Namespace = Namespace {
    name: "pool",
    install,
    constants: &[],
};

fn servers_of(sh: &VmShared, pool: &str) -> LResult<Vec<ServerView>> {
    sh.env()
        .pools
        .servers(pool)
        .ok_or_else(|| rt(format!("unknown pool '{pool}'")))
}

/// The server of `servers` named by `server` (`ip`, `ip:port`, `[v6]:port`) and `port`.
/// A port no server of that address uses is ignored: the public JSESSIONID example passes
/// table_lookup's second result (the remaining lifetime) there.
fn find_server(
    servers: &[ServerView],
    pool: &str,
    server: &str,
    port: Option<u16>,
) -> LResult<SocketAddr> {
    let unknown = || rt(format!("server '{server}' is not in pool '{pool}'"));
    if let Ok(sa) = server.parse::<SocketAddr>() {
        return servers
            .iter()
            .find(|s| s.addr == sa)
            .map(|s| s.addr)
            .ok_or_else(unknown);
    }
    let ip: IpAddr = server
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| unknown())?;
    let mut same_ip = servers.iter().filter(|s| s.addr.ip() == ip);
    let first = same_ip.clone().next().ok_or_else(unknown)?;
    Ok(port
        .and_then(|p| same_ip.find(|s| s.addr.port() == p))
        .unwrap_or(first)
        .addr)
}

/// The servers of the pool named by argument 1 and the one of them arguments 2 and 3 name.
fn pool_server(sh: &VmShared, args: &Args, func: &str) -> LResult<(Vec<ServerView>, SocketAddr)> {
    let pool = name_arg(args.first(), func, 1)?;
    let servers = servers_of(sh, &pool)?;
    let server = name_arg(args.get(1), func, 2)?;
    let port = port_arg(args.get(2))?;
    let addr = find_server(&servers, &pool, &server, port)?;
    Ok((servers, addr))
}

/// The server of the transaction: the one that answered (HTTP_RESP), else the one a script
/// selected.
fn chosen_server(t: &TxnState) -> Option<SocketAddr> {
    t.server.or(t.selection.server)
}

fn install(lua: &Lua, sh: &Arc<VmShared>) -> LResult<Table> {
    let pool = lua.create_table()?;
    let s = Arc::clone(sh);
    pool.raw_set(
        "select",
        lua.create_function(
            move |_, (pool, server, port): (String, Option<String>, Option<f64>)| {
                let servers = servers_of(&s, &pool)?;
                let port = port.and_then(port_number);
                let server = match server {
                    None => None,
                    Some(name) => Some(find_server(&servers, &pool, &name, port)?),
                };
                with_ctx(&s, |ctx| {
                    let t = txn(ctx)?;
                    t.selection.pool = Some(pool);
                    t.selection.server = server;
                    Ok(())
                })
            },
        )?,
    )?;
    let s = Arc::clone(sh);
    pool.raw_set(
        "server_ip",
        lua.create_function(move |l, ()| {
            let ip = with_ctx(&s, |ctx| Ok(chosen_server(txn(ctx)?).map(|a| a.ip())))?;
            ip.map(|ip| cached_ip(l, &s, ip)).transpose()
        })?,
    )?;
    reg!(lua, pool, sh, "get_server_info", |l, s, a| with_ctx(
        s,
        |ctx| {
            match chosen_server(txn(ctx)?) {
                Some(addr) => Ok(Variadic::from_iter([
                    lua_str(l, addr.ip().to_string().as_bytes())?,
                    Value::Number(f64::from(addr.port())),
                ])),
                None => Ok(Variadic::from_iter([Value::Nil])),
            }
        }
    ));
    reg!(lua, pool, sh, "get_servers", |l, s, a| {
        let pool = name_arg(a.first(), "get_servers", 1)?;
        let servers = servers_of(s, &pool)?;
        let up = servers.iter().filter(|s| s.up).count();
        Ok((up as f64, servers.len() as f64))
    });
    reg!(lua, pool, sh, "get_server_status", |l, s, a| {
        let (servers, addr) = pool_server(s, &a, "get_server_status")?;
        let up = servers.iter().any(|sv| sv.addr == addr && sv.up);
        Ok(if up { 1.0 } else { 0.0 })
    });
    // The key a consistent-hash pool hashes for this request, instead of its configured one.
    reg!(lua, pool, sh, "chash", |l, s, a| {
        let key = name_arg(a.first(), "chash", 1)?;
        with_ctx(s, |ctx| {
            txn(ctx)?.selection.hash_key = Some(key);
            Ok(())
        })
    });
    Ok(pool)
}
