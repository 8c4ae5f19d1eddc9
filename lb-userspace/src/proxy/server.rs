//! Worker threads, listeners, reload and drain.
//!
//! Each worker is an OS thread with a current-thread tokio runtime and its own SO_REUSEPORT
//! socket per listener (the nginx/HAProxy model): the kernel spreads new connections over the
//! workers and a connection stays on one thread for its life, with that thread's upstream pool.
//! The control side (this struct) binds sockets itself, so a bind error is reported by
//! `start`/`reload` before anything changes, and hands them to the workers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::conn::serve_conn;
use super::error::ProxyError;
use super::handler::WorkerCtx;
use super::route::RoutingTable;
use super::settings::{ProxyConfig, ProxySettings};
use super::stats::{ProxyStats, StatsRegistry};
use super::upstream::UpstreamPool;

/// Pause after a failed accept (EMFILE and friends) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

enum WorkerCmd {
    Listen {
        key: SocketAddr,
        listener: std::net::TcpListener,
    },
    /// Stop accepting on `key`; close its connections still busy at `deadline`.
    Unlisten { key: SocketAddr, deadline: Instant },
    /// Stop every listener; close connections still busy at `deadline`.
    Shutdown {
        deadline: Instant,
        done: Option<oneshot::Sender<usize>>,
    },
}

/// The address a listener group is bound to and one socket per worker.
type BoundGroup = (SocketAddr, Vec<std::net::TcpListener>);

struct Worker {
    tx: mpsc::UnboundedSender<WorkerCmd>,
    thread: Option<JoinHandle<()>>,
}

/// What a drain left behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Client connections still busy at the deadline, closed by force.
    pub aborted_connections: usize,
}

/// The HTTP reverse proxy for every `type = "http"` virtual service.
pub struct HttpProxy {
    settings: Arc<ProxySettings>,
    table: Arc<ArcSwap<RoutingTable>>,
    stats: Arc<StatsRegistry>,
    workers: Vec<Worker>,
    /// Configured VIP:port -> bound address (they differ only for port 0).
    listeners: Mutex<HashMap<SocketAddr, SocketAddr>>,
}

impl HttpProxy {
    /// Binds every virtual service's listener and starts the workers.
    pub fn start(settings: ProxySettings, config: ProxyConfig) -> Result<Self, ProxyError> {
        let settings = Arc::new(settings);
        let stats = Arc::new(StatsRegistry::default());
        let table = Arc::new(ArcSwap::from_pointee(RoutingTable::build(&config, &stats)?));
        let n = settings.effective_workers();
        let mut workers = Vec::with_capacity(n);
        for id in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = Arc::new(WorkerCtx {
                table: table.clone(),
                upstream: Arc::new(UpstreamPool::new(stats.clone(), &settings)),
                settings: settings.clone(),
                stats: stats.clone(),
            });
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| ProxyError::Worker { worker: id, source })?;
            let thread = std::thread::Builder::new()
                .name(format!("latch-http-{id}"))
                .spawn(move || runtime.block_on(worker_main(rx, ctx)))
                .map_err(|source| ProxyError::Worker { worker: id, source })?;
            workers.push(Worker {
                tx,
                thread: Some(thread),
            });
        }
        let proxy = Self {
            settings,
            table,
            stats,
            workers,
            listeners: Mutex::new(HashMap::new()),
        };
        proxy.open_listeners(&proxy.table.load())?;
        Ok(proxy)
    }

    /// Replaces the virtual services, pools and hooks. Listeners on unchanged VIP:ports stay
    /// open with their connections; new ones are opened before the swap; removed ones stop
    /// accepting and their connections drain for `drain_timeout`. On error nothing changed.
    pub fn reload(&self, config: ProxyConfig) -> Result<(), ProxyError> {
        let table = RoutingTable::build(&config, &self.stats)?;
        let mut listeners = self.listeners.lock();
        let fresh: Vec<SocketAddr> = table
            .listeners()
            .filter(|key| !listeners.contains_key(key))
            .collect();
        let opened = self.bind_groups(fresh)?;
        let removed: Vec<SocketAddr> = listeners
            .keys()
            .filter(|k| table.vs(**k).is_none())
            .copied()
            .collect();
        let names = table
            .vs_names()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>();
        let servers = table.servers();
        self.table.store(Arc::new(table));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.stats.retain(&names, &servers);
        self.hand_out_groups(&mut listeners, opened)?;
        let deadline = self.settings.clock.now() + self.settings.drain_timeout;
        for key in removed {
            listeners.remove(&key);
            for w in &self.workers {
                w.tx.send(WorkerCmd::Unlisten { key, deadline })
                    .map_err(|_| ProxyError::Stopped)?;
            }
        }
        Ok(())
    }

    /// The address actually bound for the virtual service configured on `listen` (differs
    /// from it when port 0 was asked for).
    pub fn local_addr(&self, listen: SocketAddr) -> Option<SocketAddr> {
        self.listeners.lock().get(&listen).copied()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        self.stats.snapshot()
    }

    /// The settings in force.
    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// Stops accepting on every listener, lets in-flight requests finish (idle keep-alive
    /// connections close at once), and `drain` after this call closes what is left. The
    /// workers are told at once; the returned future waits for them.
    pub fn shutdown(mut self, drain: Duration) -> impl Future<Output = DrainReport> {
        let deadline = self.settings.clock.now() + drain;
        let mut waits = Vec::new();
        for w in &self.workers {
            let (done, wait) = oneshot::channel();
            if w.tx
                .send(WorkerCmd::Shutdown {
                    deadline,
                    done: Some(done),
                })
                .is_ok()
            {
                waits.push(wait);
            }
        }
        async move { self.join_workers(waits).await }
    }

    /// Waits for the workers' drain reports, then for their threads.
    async fn join_workers(&mut self, waits: Vec<oneshot::Receiver<usize>>) -> DrainReport {
        let mut report = DrainReport::default();
        for wait in waits {
            report.aborted_connections += wait.await.unwrap_or(0);
        }
        let threads: Vec<JoinHandle<()>> = self
            .workers
            .iter_mut()
            .filter_map(|w| w.thread.take())
            .collect();
        // The workers have answered, so their threads are about to return.
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        report
    }

    fn open_listeners(&self, table: &RoutingTable) -> Result<(), ProxyError> {
        let mut listeners = self.listeners.lock();
        let opened = self.bind_groups(table.listeners())?;
        self.hand_out_groups(&mut listeners, opened)
    }

    /// Binds a socket group for each of `keys`, all or none.
    fn bind_groups(
        &self,
        keys: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<(SocketAddr, BoundGroup)>, ProxyError> {
        keys.into_iter()
            .map(|key| Ok((key, self.bind_group(key)?)))
            .collect()
    }

    /// Hands bound groups to the workers and records them as open.
    fn hand_out_groups(
        &self,
        listeners: &mut HashMap<SocketAddr, SocketAddr>,
        opened: Vec<(SocketAddr, BoundGroup)>,
    ) -> Result<(), ProxyError> {
        for (key, (bound, sockets)) in opened {
            self.hand_out(key, sockets)?;
            listeners.insert(key, bound);
        }
        Ok(())
    }

    /// One SO_REUSEPORT socket per worker, all on the same address.
    fn bind_group(&self, key: SocketAddr) -> Result<BoundGroup, ProxyError> {
        let first = bind_one(key, self.settings.listen_backlog)?;
        let bound = first
            .local_addr()
            .map_err(|source| ProxyError::Bind { addr: key, source })?;
        let mut sockets = vec![first];
        for _ in 1..self.workers.len() {
            sockets.push(bind_one(bound, self.settings.listen_backlog)?);
        }
        Ok((bound, sockets))
    }

    fn hand_out(
        &self,
        key: SocketAddr,
        sockets: Vec<std::net::TcpListener>,
    ) -> Result<(), ProxyError> {
        for (w, listener) in self.workers.iter().zip(sockets) {
            w.tx.send(WorkerCmd::Listen { key, listener })
                .map_err(|_| ProxyError::Stopped)?;
        }
        Ok(())
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        let now = self.settings.clock.now();
        for w in &self.workers {
            if w.thread.is_some() {
                let _ = w.tx.send(WorkerCmd::Shutdown {
                    deadline: now,
                    done: None,
                });
            }
        }
    }
}

/// Runs the proxy until `signal` completes, then drains for at most `drain`.
pub async fn serve(
    settings: ProxySettings,
    config: ProxyConfig,
    signal: impl Future<Output = ()>,
    drain: Duration,
) -> Result<DrainReport, ProxyError> {
    let proxy = HttpProxy::start(settings, config)?;
    signal.await;
    Ok(proxy.shutdown(drain).await)
}

fn bind_one(addr: SocketAddr, backlog: u32) -> Result<std::net::TcpListener, ProxyError> {
    let err = |source| ProxyError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    // The VIP may not be on an interface yet (XDP hands its packets to the stack).
    if addr.is_ipv4() {
        socket.set_freebind_v4(true).map_err(err)?;
    } else {
        socket.set_freebind_v6(true).map_err(err)?;
    }
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket
        .listen(i32::try_from(backlog).unwrap_or(i32::MAX))
        .map_err(err)?;
    Ok(socket.into())
}

struct ListenerTask {
    /// The drain deadline, once the listener must stop.
    stop: watch::Sender<Option<Instant>>,
}

async fn worker_main(mut rx: mpsc::UnboundedReceiver<WorkerCmd>, ctx: Arc<WorkerCtx>) {
    let mut listeners: HashMap<SocketAddr, ListenerTask> = HashMap::new();
    let mut tasks: JoinSet<usize> = JoinSet::new();
    let sweep_every = (ctx.settings.upstream_idle_timeout / 2).max(Duration::from_secs(1));
    let sweeper = {
        let upstream = ctx.upstream.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep_every);
            loop {
                tick.tick().await;
                upstream.sweep();
            }
        })
    };
    let clock = &ctx.settings.clock;
    let (deadline, done) = loop {
        let cmd = tokio::select! {
            cmd = rx.recv() => cmd,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        match cmd {
            Some(WorkerCmd::Listen { key, listener }) => {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(listen = %key, error = %e, "cannot register listener");
                        continue;
                    }
                };
                let (stop, stopped) = watch::channel(None);
                tasks.spawn(accept_loop(listener, key, ctx.clone(), stopped));
                if let Some(old) = listeners.insert(key, ListenerTask { stop }) {
                    let _ = old
                        .stop
                        .send(Some(clock.now() + ctx.settings.drain_timeout));
                }
            }
            Some(WorkerCmd::Unlisten { key, deadline }) => {
                if let Some(task) = listeners.remove(&key) {
                    let _ = task.stop.send(Some(deadline));
                }
            }
            Some(WorkerCmd::Shutdown { deadline, done }) => break (deadline, done),
            None => break (clock.now(), None),
        }
    };
    for task in listeners.values() {
        let _ = task.stop.send(Some(deadline));
    }
    let mut aborted = 0;
    // Listeners removed earlier may still be draining with a longer deadline: this one wins.
    match clock
        .timeout_at(deadline + Duration::from_millis(100), async {
            while let Some(r) = tasks.join_next().await {
                aborted += r.unwrap_or(0);
            }
        })
        .await
    {
        Ok(()) => {}
        Err(_) => {
            aborted += tasks.len();
            tasks.abort_all();
        }
    }
    sweeper.abort();
    if let Some(done) = done {
        let _ = done.send(aborted);
    }
}

/// Accepts until told to stop, then drains this listener's connections; returns how many
/// had to be closed by force.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    key: SocketAddr,
    ctx: Arc<WorkerCtx>,
    mut stop: watch::Receiver<Option<Instant>>,
) -> usize {
    // Tells every connection to finish its request in flight and close (hyper's graceful
    // shutdown, also for connections that may upgrade).
    let (drain, draining) = watch::channel(false);
    let mut conns = JoinSet::new();
    let clock = &ctx.settings.clock;
    let deadline = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    conns.spawn(serve_conn(stream, client, key, ctx.clone(), draining.clone()));
                }
                Err(e) => {
                    tracing::warn!(listen = %key, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            changed = stop.changed() => match changed {
                Ok(()) => {
                    if let Some(d) = *stop.borrow() {
                        break d;
                    }
                }
                Err(_) => break clock.now(),
            },
        }
    };
    drop(listener);
    let drained = clock
        .timeout_at(deadline, async {
            let _ = drain.send(true);
            while conns.join_next().await.is_some() {}
        })
        .await;
    let aborted = if drained.is_ok() { 0 } else { conns.len() };
    conns.abort_all();
    if aborted > 0 {
        tracing::info!(listen = %key, aborted, "closed connections still busy after the drain deadline");
    }
    aborted
}
