//! A fake agent behind the admin API: fixed status, two services, an in-memory table store.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use latch::api::metrics::{MetricsSnapshot, ServerHealthMetrics, TableMetrics, XdpPathMetric};
use latch::api::model::*;
use latch::api::{AdminBackend, AdminServer, BackendError, ReloadFuture};
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// (table, key) -> (value, seconds left).
type Store = BTreeMap<(String, String), (String, u64)>;

pub struct FakeBackend {
    pub tables: Mutex<Store>,
    /// Levers of pool `web`'s servers, by address.
    pub levers: Mutex<BTreeMap<SocketAddr, ServerLeversView>>,
    pub refuse_reload: AtomicBool,
    pub reloads: AtomicU64,
}

pub fn server_addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

impl FakeBackend {
    pub fn new() -> Self {
        let mut store = Store::new();
        for (table, key, value, ttl) in [
            ("", "sess-a", "192.0.2.11:8080", 1200),
            ("", "sess-b", "192.0.2.12:8080", 600),
            ("", "odd/key with space+%", "192.0.2.11:8080", 30),
            ("carts", "c1", "192.0.2.12:8080", 60),
        ] {
            store.insert((table.into(), key.into()), (value.into(), ttl));
        }
        let levers = ["192.0.2.11:8080", "192.0.2.12:8080"]
            .map(|a| (server_addr(a), ServerLeversView::default()))
            .into();
        Self {
            tables: Mutex::new(store),
            levers: Mutex::new(levers),
            refuse_reload: AtomicBool::new(false),
            reloads: AtomicU64::new(0),
        }
    }

    fn check_vs(vs: &str) -> Result<(), BackendError> {
        match vs {
            "shop" => Ok(()),
            "dns" => Err(BackendError::NoTables { vs: vs.into() }),
            _ => Err(BackendError::UnknownVs { vs: vs.into() }),
        }
    }

    fn view(table: &str, key: &str, value: &str, ttl: u64) -> TableEntryView {
        TableEntryView {
            table: table.into(),
            key: key.into(),
            value: value.into(),
            expires_in_seconds: ttl,
        }
    }
}

impl AdminBackend for FakeBackend {
    fn set_server(
        &self,
        pool: &str,
        server: &str,
        change: &ServerChangeRequest,
    ) -> Result<ServerChangeView, BackendError> {
        let not_found = |message: String| BackendError::NotFound { message };
        if pool != "web" {
            return Err(not_found(format!("no pool named {pool:?}")));
        }
        let addr: SocketAddr = server
            .parse()
            .map_err(|_| not_found(format!("pool \"web\" has no server {server:?}")))?;
        let mut levers = self.levers.lock();
        let l = levers
            .get_mut(&addr)
            .ok_or_else(|| not_found(format!("pool \"web\" has no server {server:?}")))?;
        if let Some(state) = &change.state {
            l.state = state.clone();
            l.effective_weight_percent = if state == "ready" { 100 } else { 0 };
        }
        if let Some(w) = &change.weight {
            l.weight = w.parse().map_err(|_| BackendError::BadRequest {
                message: format!("bad weight {w:?}"),
            })?;
        }
        Ok(ServerChangeView {
            pool: pool.into(),
            server: addr,
            up: true,
            active_requests: 2,
            levers: l.clone(),
        })
    }

    fn status(&self) -> StatusView {
        StatusView {
            version: "0.1.0".into(),
            pid: 4242,
            config_path: "/etc/latch/latch.toml".into(),
            started_at_unix_seconds: 1_700_000_000,
            uptime_seconds: 7_380,
            interfaces: vec!["lb-c".into(), "lb-b".into()],
            virtual_services: 2,
            pools: 1,
            servers_up: 1,
            servers_total: 2,
            reloads_applied: self.reloads.load(Ordering::SeqCst),
            reloads_refused: 0,
            last_reload_unix_seconds: None,
            tables_unmirrored: vec![(
                "shop".into(),
                latch::api::model::TableCounters {
                    unmirrored_full: 120,
                    unmirrored_too_large: 3,
                    ..Default::default()
                },
            )],
        }
    }

    fn virtual_services(&self) -> Vec<VirtualServiceView> {
        vec![
            VirtualServiceView {
                name: "shop".into(),
                kind: "http".into(),
                listen: "198.51.100.10:80".into(),
                pool: "web".into(),
                forwarding: "nat".into(),
                http: Some(HttpCounters {
                    requests: 1234,
                    responses: ResponseClasses::from_array([0, 1200, 4, 20, 10]),
                    request_bytes: 2048,
                    response_bytes: 3 * 1024 * 1024,
                    active_connections: 7,
                    ..HttpCounters::default()
                }),
                l4: None,
                tables: Some(TableCounters {
                    entries: 4,
                    ..TableCounters::default()
                }),
            },
            VirtualServiceView {
                name: "dns".into(),
                kind: "udp".into(),
                listen: "198.51.100.10:53".into(),
                pool: "web".into(),
                forwarding: "dsr".into(),
                http: None,
                l4: Some(L4Counters {
                    packets: 99,
                    bytes: 9900,
                    new_flows: 33,
                }),
                tables: None,
            },
        ]
    }

    fn pools(&self) -> Vec<PoolView> {
        vec![PoolView {
            name: "web".into(),
            algorithm: "round_robin".into(),
            monitor: Some(MonitorView {
                kind: "http".into(),
                path: Some("/healthz".into()),
                expect_status: Some("200-399".into()),
                interval_seconds: 2.0,
                timeout_seconds: 1.0,
                fall: 3,
                rise: 2,
            }),
            servers: vec![
                ServerView {
                    addr: server_addr("192.0.2.11:8080"),
                    up: true,
                    since_unix_seconds: Some(1_700_000_000),
                    last_error: None,
                    transitions: 0,
                    http: Some(ServerHttpCounters {
                        requests: 800,
                        ..ServerHttpCounters::default()
                    }),
                    l4: None,
                    levers: ServerLeversView::default(),
                },
                ServerView {
                    addr: server_addr("192.0.2.12:8080"),
                    up: false,
                    since_unix_seconds: Some(1_700_000_100),
                    last_error: Some("status 503, expected 200-399".into()),
                    transitions: 1,
                    http: None,
                    l4: None,
                    levers: ServerLeversView::default(),
                },
            ],
        }]
    }

    fn table_list(
        &self,
        vs: &str,
        table: Option<&str>,
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TableEntryView>, BackendError> {
        Self::check_vs(vs)?;
        Ok(self
            .tables
            .lock()
            .iter()
            .filter(|((t, k), _)| {
                table.is_none_or(|want| want == t) && prefix.is_none_or(|p| k.starts_with(p))
            })
            .take(limit)
            .map(|((t, k), (v, ttl))| Self::view(t, k, v, *ttl))
            .collect())
    }

    fn table_get(
        &self,
        vs: &str,
        table: &str,
        key: &str,
    ) -> Result<Option<TableEntryView>, BackendError> {
        Self::check_vs(vs)?;
        Ok(self
            .tables
            .lock()
            .get(&(table.to_owned(), key.to_owned()))
            .map(|(v, ttl)| Self::view(table, key, v, *ttl)))
    }

    fn table_delete(&self, vs: &str, table: &str, key: &str) -> Result<bool, BackendError> {
        Self::check_vs(vs)?;
        Ok(self
            .tables
            .lock()
            .remove(&(table.to_owned(), key.to_owned()))
            .is_some())
    }

    fn table_flush(&self, vs: &str, table: Option<&str>) -> Result<u64, BackendError> {
        Self::check_vs(vs)?;
        let mut store = self.tables.lock();
        let before = store.len();
        store.retain(|(t, _), _| table.is_some_and(|want| want != t));
        Ok((before - store.len()) as u64)
    }

    fn reload(&self) -> ReloadFuture {
        let refuse = self.refuse_reload.load(Ordering::SeqCst);
        if !refuse {
            self.reloads.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async move {
            if refuse {
                ReloadView {
                    applied: false,
                    diagnostics: vec!["/etc/latch/latch.toml:7:8: unknown pool \"wbe\"".into()],
                    warnings: Vec::new(),
                }
            } else {
                ReloadView {
                    applied: true,
                    diagnostics: Vec::new(),
                    warnings: vec!["interfaces change only on restart".into()],
                }
            }
        })
    }

    fn metrics_snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            start_time_seconds: 1_700_000_000,
            xdp_paths: vec![XdpPathMetric {
                path: "new_flow_maglev".into(),
                packets: 33,
            }],
            tables: vec![TableMetrics {
                vs: "shop".into(),
                counters: TableCounters {
                    entries: self.tables.lock().len() as u64,
                    ..TableCounters::default()
                },
            }],
            health: vec![ServerHealthMetrics {
                pool: "web".into(),
                server: "192.0.2.12:8080".into(),
                up: false,
                transitions: 1,
                ..ServerHealthMetrics::default()
            }],
            ..MetricsSnapshot::default()
        }
    }
}

/// A fake agent's API on 127.0.0.1:<free port>; stops (and is awaited) on drop of `stop`.
pub struct RunningApi {
    pub addr: SocketAddr,
    pub backend: Arc<FakeBackend>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), latch::api::ApiError>>>,
}

impl RunningApi {
    pub async fn start(token: Option<&str>) -> Self {
        let server = AdminServer::bind(server_addr("127.0.0.1:0"), token.map(str::to_owned))
            .await
            .expect("bind");
        let addr = server.local_addr();
        let backend = Arc::new(FakeBackend::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(backend.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            backend,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the server and returns what `run` returned.
    pub async fn shutdown(mut self) -> Result<(), latch::api::ApiError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("server stops in time")
            .expect("server task")
    }
}

impl Drop for RunningApi {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}
