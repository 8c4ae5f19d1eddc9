//! What a reload has to do: the difference between the running config and a new one.

use super::model::{Config, HttpLimits, PoolConfig, VirtualServiceConfig};

/// Differences between two configurations, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// Pools only in the new config.
    pub pools_added: Vec<String>,
    /// Pools only in the old config.
    pub pools_removed: Vec<String>,
    /// Pools in both whose algorithm, servers or health monitor differ.
    pub pools_changed: Vec<String>,
    /// Virtual services only in the new config.
    pub services_added: Vec<String>,
    /// Virtual services only in the old config.
    pub services_removed: Vec<String>,
    /// Virtual services in both with any difference (listener, pool, forwarding, scripts, ...).
    pub services_changed: Vec<String>,
    /// Agent settings that only take effect on restart and differ (`interfaces`, `bpffs_dir`,
    /// `ephemeral_pins`, `state_file`, `admin_listen`, `workers`); a reload keeps the old values and warns.
    pub restart_required: Vec<&'static str>,
    /// Agent settings that a reload applies (proxy and DataScript limits, log format, token).
    pub agent_changed: bool,
    /// `[replication]` differs.
    pub replication_changed: bool,
    /// String groups, IP groups or rate limiters differ (the scripts get the new ones).
    pub script_objects_changed: bool,
}

impl ConfigDiff {
    /// True when the two configs are equivalent.
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

fn find<'a, T>(list: &[(&str, &'a T)], name: &str) -> Option<&'a T> {
    list.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
}

fn pools(c: &Config) -> Vec<(&str, &PoolConfig)> {
    c.pools.iter().map(|p| (p.name.as_str(), p)).collect()
}

fn services(c: &Config) -> Vec<(&str, &VirtualServiceConfig)> {
    c.virtual_services
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect()
}

/// Names in `old` and `new` sorted into (added, removed, changed).
fn by_name<T: PartialEq>(
    old: &[(&str, &T)],
    new: &[(&str, &T)],
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for &(name, n) in new {
        match find(old, name) {
            None => added.push(name.to_string()),
            Some(o) if o != n => changed.push(name.to_string()),
            Some(_) => {}
        }
    }
    let removed = old
        .iter()
        .filter(|(name, _)| find(new, name).is_none())
        .map(|(name, _)| name.to_string())
        .collect();
    (added, removed, changed)
}

/// What changed from `old` to `new`.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let (pools_added, pools_removed, pools_changed) = by_name(&pools(old), &pools(new));
    let (services_added, services_removed, services_changed) =
        by_name(&services(old), &services(new));
    let (o, n) = (&old.agent, &new.agent);
    let mut restart_required = Vec::new();
    if o.interfaces != n.interfaces {
        restart_required.push("interfaces");
    }
    if o.tc_interfaces != n.tc_interfaces {
        restart_required.push("attach");
    }
    if o.bpffs_dir != n.bpffs_dir {
        restart_required.push("bpffs_dir");
    }
    if o.ephemeral_pins != n.ephemeral_pins {
        restart_required.push("ephemeral_pins");
    }
    if o.state_file != n.state_file {
        restart_required.push("state_file");
    }
    if o.admin_listen != n.admin_listen {
        restart_required.push("admin_listen");
    }
    if o.workers != n.workers {
        restart_required.push("workers");
    }
    if o.capacity != n.capacity {
        restart_required.push("capacity");
    }
    // The proxy's timeouts and limits are fixed for its life; only the drain's bound is read
    // when a drain starts.
    let http_but_drain = |h: &HttpLimits| HttpLimits {
        drain_timeout: std::time::Duration::ZERO,
        ..h.clone()
    };
    if http_but_drain(&o.http) != http_but_drain(&n.http) {
        restart_required.push("[agent.http]");
    }
    if o.datascript.table_max_entries != n.datascript.table_max_entries {
        restart_required.push("table_max_entries");
    }
    let agent_changed = o.http != n.http
        || o.datascript != n.datascript
        || o.log_format != n.log_format
        || o.admin_token_file != n.admin_token_file
        || o.tunnel_source_ipv4 != n.tunnel_source_ipv4
        || o.tunnel_source_ipv6 != n.tunnel_source_ipv6;
    ConfigDiff {
        pools_added,
        pools_removed,
        pools_changed,
        services_added,
        services_removed,
        services_changed,
        restart_required,
        agent_changed,
        replication_changed: old.replication != new.replication,
        script_objects_changed: old.groups != new.groups || old.rate_limiters != new.rate_limiters,
    }
}
