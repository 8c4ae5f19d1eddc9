//! Table replication between load-balancer hosts through Redis (`[replication]`).
//!
//! Every table change made on this host (script, admin API, expiry) reaches [`Replicator`]
//! through the tables' replicator slot ([`crate::tables::TableStore::set_replicator`]). The
//! request thread only enqueues it on a bounded queue (never waits on Redis; a full queue
//! drops and counts). A background thread with its own runtime drains the queue into Redis
//! and applies other hosts' changes, received over Pub/Sub, to the local tables with
//! `apply_remote_*`, which reaches the local mirrors (kernel map, fast-path pins) but not the
//! replicator, so nothing echoes.
//!
//! Redis holds one key per entry ([`codec::encode_key`]) with the remaining lifetime as its
//! expiry. An upsert runs one Lua script, atomically: store the value if the key is absent or
//! holds the same value (refresh), publishing the change; if the key holds another value, the
//! first write won: the script returns it and this host adopts it. So two hosts inserting the
//! same key at once end with the first value written to Redis, everywhere.
//!
//! On every (re)connection the worker sends what was queued, then reconciles: it loads every
//! entry Redis holds (SCAN) into the local tables and pushes local entries Redis lacks.

mod coalesce;
pub mod codec;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::ReplicationConfig;
use crate::tables::{Clock, Mirror, RemoveReason, TableStore};

pub use coalesce::{Coalescer, Decision};

/// Changes waiting for Redis; beyond this they are dropped (and counted) and the next
/// reconcile repairs what they carried.
pub const QUEUE_CAPACITY: usize = 100_000;
/// A key whose expiry only moves is written to Redis at most once per this window.
pub const COALESCE_NS: u64 = 1_000_000_000;
/// How much longer than the connect timeout the agent waits for the first load at start.
pub const STARTUP_GRACE: Duration = Duration::from_secs(5);

/// Why replication cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The Redis URL is not valid.
    #[error("redis_url {url:?}: {source}")]
    Url {
        /// The URL.
        url: String,
        /// The client's complaint.
        #[source]
        source: redis::RedisError,
    },
    /// The replication thread could not be started.
    #[error("starting the replication thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// One local change on its way to Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Upsert {
        vs: String,
        table: String,
        key: String,
        value: String,
        expires_ns: u64,
    },
    Remove {
        vs: String,
        table: String,
        key: String,
    },
    Expire {
        vs: String,
        table: String,
        key: String,
    },
}

/// Replication counters (monotonic except `connected`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicationStats {
    /// Local changes queued for Redis.
    pub queued: u64,
    /// Local extensions folded into a later write ([`COALESCE_NS`]).
    pub coalesced: u64,
    /// Local changes dropped because the queue was full.
    pub dropped: u64,
    /// Local changes written to Redis.
    pub sent: u64,
    /// Other hosts' changes applied here (messages and reconcile loads).
    pub applied: u64,
    /// Local inserts that lost to a value already in Redis and adopted it.
    pub adopted: u64,
    /// Successful reconnections after the first connection.
    pub reconnects: u64,
    /// Redis errors (each ends a connection, which is then retried).
    pub errors: u64,
    /// Whether Redis is connected now.
    pub connected: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub queued: AtomicU64,
    pub coalesced: AtomicU64,
    pub dropped: AtomicU64,
    pub sent: AtomicU64,
    pub applied: AtomicU64,
    pub adopted: AtomicU64,
    pub reconnects: AtomicU64,
    pub errors: AtomicU64,
    pub connected: AtomicBool,
}

pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The tables' replicator: turns local changes into queued [`Op`]s. Request threads call it.
pub struct Replicator {
    tx: mpsc::Sender<Op>,
    clock: Arc<dyn Clock>,
    coalescer: Coalescer,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("queued", &self.counters.queued)
            .finish_non_exhaustive()
    }
}

impl Replicator {
    fn enqueue(&self, op: Op) {
        match self.tx.try_send(op) {
            Ok(()) => bump(&self.counters.queued, 1),
            Err(_) => bump(&self.counters.dropped, 1),
        }
    }
}

impl Mirror for Replicator {
    fn upsert(&self, vs: &str, table: &str, key: &str, value: &str, expires_ns: u64) {
        let rkey = codec::encode_key(vs, table, key);
        match self
            .coalescer
            .upsert(&rkey, value, expires_ns, self.clock.now_ns())
        {
            Decision::Send => self.enqueue(Op::Upsert {
                vs: vs.to_string(),
                table: table.to_string(),
                key: key.to_string(),
                value: value.to_string(),
                expires_ns,
            }),
            Decision::Defer => bump(&self.counters.coalesced, 1),
        }
    }

    fn remove(&self, vs: &str, table: &str, key: &str, reason: RemoveReason) {
        self.coalescer.removed(&codec::encode_key(vs, table, key));
        let (vs, table, key) = (vs.to_string(), table.to_string(), key.to_string());
        self.enqueue(match reason {
            RemoveReason::Removed => Op::Remove { vs, table, key },
            RemoveReason::Expired => Op::Expire { vs, table, key },
        });
    }
}

/// A running replication: the replicator installed on the tables and the worker thread.
pub struct Replication {
    replicator: Arc<Replicator>,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Replication {
    /// Installs the replicator on `tables` and starts the worker; returns once the entries
    /// Redis holds are loaded, or after `connect_timeout` + [`STARTUP_GRACE`] with a warning
    /// (Redis down: the host serves from its own tables and reconciles when Redis is back).
    /// Call before the proxy serves, so a joining host answers with the cluster's entries.
    pub fn start(
        config: &ReplicationConfig,
        tables: Arc<TableStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ReplicationError> {
        let client = redis::Client::open(config.redis_url.as_str()).map_err(|source| {
            ReplicationError::Url {
                url: config.redis_url.clone(),
                source,
            }
        })?;
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let replicator = Arc::new(Replicator {
            tx,
            clock: Arc::clone(&clock),
            coalescer: Coalescer::new(COALESCE_NS),
            counters: Arc::clone(&counters),
        });
        tables.set_replicator(Arc::clone(&replicator) as Arc<dyn Mirror>);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let worker = worker::Worker {
            client,
            node_id: config.node_id.clone(),
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
            tables,
            clock,
            replicator: Arc::clone(&replicator),
            counters: Arc::clone(&counters),
            rx,
            shutdown: shutdown_rx,
            ready: Some(ready_tx),
            upsert_sha: String::new(),
        };
        let thread = std::thread::Builder::new()
            .name("latch-replication".into())
            .spawn(move || worker.run_thread())
            .map_err(ReplicationError::Thread)?;
        let bound = config.connect_timeout + STARTUP_GRACE;
        match ready_rx.recv_timeout(bound) {
            Ok(loaded) => tracing::info!(
                loaded,
                redis = %config.redis_url,
                node = %config.node_id,
                "replication: entries loaded from Redis"
            ),
            Err(_) => tracing::warn!(
                redis = %config.redis_url,
                waited = ?bound,
                "replication: Redis not reachable; serving from local tables, will reconcile when it is"
            ),
        }
        Ok(Self {
            replicator,
            counters,
            shutdown,
            thread: Some(thread),
        })
    }

    /// Counters.
    pub fn stats(&self) -> ReplicationStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReplicationStats {
            queued: l(&c.queued),
            coalesced: l(&c.coalesced),
            dropped: l(&c.dropped),
            sent: l(&c.sent),
            applied: l(&c.applied),
            adopted: l(&c.adopted),
            reconnects: l(&c.reconnects),
            errors: l(&c.errors),
            connected: c.connected.load(Ordering::Relaxed),
        }
    }

    /// The replicator installed on the tables.
    pub fn replicator(&self) -> Arc<Replicator> {
        Arc::clone(&self.replicator)
    }

    /// Stops the worker (what is still queued is not sent: the next start reconciles).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("replication thread panicked");
        }
    }
}

impl Drop for Replication {
    fn drop(&mut self) {
        self.halt();
    }
}
