//! The replication thread: one Redis connection for commands, one for Pub/Sub, reconnected
//! with backoff; each connection starts by sending what was queued and reconciling.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Value};
use tokio::sync::{mpsc, watch};

use super::codec::{self, CHANNEL, Change, ChangeOp, KEY_PATTERN};
use super::{Counters, Op, Replicator, bump};
use crate::tables::{Clock, EntryView, Mirror, RemoteOutcome, RemoveReason, TableStore};

const NS_PER_MS: u64 = 1_000_000;
/// Operations per pipeline round trip.
const BATCH: usize = 512;
/// Keys per SCAN step.
const SCAN_COUNT: usize = 1000;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often deferred extensions are flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often an idle connection is checked (a dead Redis is noticed within this plus the
/// command timeout).
const PING_EVERY: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Another host's expiry report removes the local copy only if that copy ends within this
/// much: a copy this host extended meanwhile stays (its extension is on its way to Redis).
const EXPIRY_SLACK_NS: u64 = 2_000_000_000;

/// Upsert, atomically. ARGV: value, ttl ms, channel, message, mode. Mode `set` (a local
/// change): store when absent or when the same value is there (a refresh), and publish; when
/// another value is there, change nothing and return it (the first write won). Mode `nx`
/// (reconcile): store only when absent.
const UPSERT_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and (ARGV[5] == 'nx' or cur ~= ARGV[1]) then
  return {0, cur, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {1, ARGV[1], tonumber(ARGV[2])}
";

pub(crate) struct Worker {
    pub client: redis::Client,
    pub node_id: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub tables: Arc<TableStore>,
    pub clock: Arc<dyn Clock>,
    pub replicator: Arc<Replicator>,
    pub counters: Arc<Counters>,
    pub rx: mpsc::Receiver<Op>,
    pub shutdown: watch::Receiver<bool>,
    pub ready: Option<std::sync::mpsc::SyncSender<u64>>,
    /// SHA1 of [`UPSERT_LUA`] as loaded on the current connection (SCRIPT LOAD per session:
    /// a restarted or failed-over Redis has an empty script cache).
    pub upsert_sha: String,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("the Pub/Sub connection closed")]
    Closed,
}

fn ttl_to_expiry(now_ns: u64, pttl_ms: i64) -> Option<u64> {
    match pttl_ms {
        // No expiry in Redis (written by hand): the table caps it at the maximum lifetime.
        -1 => Some(u64::MAX),
        ms if ms > 0 => Some(now_ns.saturating_add((ms as u64).saturating_mul(NS_PER_MS))),
        _ => None,
    }
}

/// Whether an upsert is a local change (`set`) or a reconcile push (`nx`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Set,
    Nx,
}

impl Worker {
    pub fn run_thread(self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(err) => {
                tracing::error!(%err, "replication: cannot start its runtime; tables stay local");
                return;
            }
        };
        rt.block_on(self.run());
    }

    async fn run(mut self) {
        let mut shutdown = self.shutdown.clone();
        let mut pending = VecDeque::new();
        let mut backoff = MIN_BACKOFF;
        let mut ever_connected = false;
        let mut failures_in_a_row = 0u32;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let mut connected = false;
            let result = tokio::select! {
                r = self.session(&mut pending, &mut connected, ever_connected) => r,
                _ = shutdown.changed() => return,
            };
            self.counters.connected.store(false, Ordering::Relaxed);
            if connected {
                ever_connected = true;
                backoff = MIN_BACKOFF;
                failures_in_a_row = 0;
            }
            if let Err(err) = result {
                bump(&self.counters.errors, 1);
                failures_in_a_row += 1;
                if failures_in_a_row == 1 {
                    tracing::warn!(%err, "replication: Redis unavailable; serving from local tables, retrying");
                } else {
                    tracing::debug!(%err, "replication: Redis still unavailable");
                }
            } else {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn timed<T, F>(&self, d: Duration, f: F) -> Result<T, SessionError>
    where
        F: std::future::Future<Output = Result<T, RedisError>>,
    {
        match tokio::time::timeout(d, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(SessionError::Timeout(d)),
        }
    }

    async fn session(
        &mut self,
        pending: &mut VecDeque<Op>,
        connected: &mut bool,
        reconnect: bool,
    ) -> Result<(), SessionError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(self.command_timeout);
        let mut conn = self
            .timed(
                self.connect_timeout,
                self.client
                    .get_multiplexed_async_connection_with_config(&cfg),
            )
            .await?;
        let mut pubsub = self
            .timed(self.connect_timeout, self.client.get_async_pubsub())
            .await?;
        self.timed(self.command_timeout, pubsub.subscribe(CHANNEL))
            .await?;
        let mut messages = pubsub.into_on_message();
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(UPSERT_LUA);
        self.upsert_sha = self
            .timed(self.command_timeout, load.query_async(&mut conn))
            .await?;
        *connected = true;
        self.counters.connected.store(true, Ordering::Relaxed);
        if reconnect {
            bump(&self.counters.reconnects, 1);
            tracing::info!("replication: reconnected to Redis");
        }

        // What was queued while Redis was away goes first, then the reconcile.
        while let Ok(op) = self.rx.try_recv() {
            pending.push_back(op);
            if pending.len() >= BATCH {
                self.send_pending(&mut conn, pending).await?;
            }
        }
        self.send_pending(&mut conn, pending).await?;
        let loaded = self.load(&mut conn).await?;
        let pushed = self.push_local(&mut conn).await?;
        tracing::info!(loaded, pushed, "replication: reconciled with Redis");
        if let Some(ready) = self.ready.take() {
            let _ = ready.try_send(loaded);
        }

        let mut flush = tokio::time::interval(FLUSH_EVERY);
        let mut ping = tokio::time::interval(PING_EVERY);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        let mut buf = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(msg) => match msg.get_payload::<String>() {
                        Ok(text) => self.on_message(&text),
                        Err(err) => tracing::debug!(%err, "replication: unreadable message"),
                    },
                    None => return Err(SessionError::Closed),
                },
                n = self.rx.recv_many(&mut buf, BATCH) => {
                    if n == 0 {
                        return Ok(());
                    }
                    pending.extend(buf.drain(..));
                    self.send_pending(&mut conn, pending).await?;
                }
                _ = flush.tick() => self.flush_deferred(),
                _ = ping.tick() => {
                    let cmd = redis::cmd("PING");
                    self.timed(self.command_timeout, cmd.query_async::<String>(&mut conn)).await?;
                }
                _ = prune.tick() => self.replicator.coalescer.prune(self.clock.now_ns()),
            }
        }
    }

    /// Sends `pending` in pipelined batches; a batch leaves `pending` only once Redis answered
    /// it, so a connection lost mid-way resends it (every operation is idempotent).
    async fn send_pending(
        &self,
        conn: &mut MultiplexedConnection,
        pending: &mut VecDeque<Op>,
    ) -> Result<(), SessionError> {
        while !pending.is_empty() {
            let n = pending.len().min(BATCH);
            let batch: Vec<Op> = pending.iter().take(n).cloned().collect();
            self.send_batch(conn, batch, Mode::Set).await?;
            pending.drain(..n);
            bump(&self.counters.sent, n as u64);
        }
        Ok(())
    }

    async fn send_batch(
        &self,
        conn: &mut MultiplexedConnection,
        batch: Vec<Op>,
        mode: Mode,
    ) -> Result<(), SessionError> {
        let now = self.clock.now_ns();
        let mut pipe = redis::pipe();
        // Per command, the upsert whose reply must be looked at (None: ignore the reply).
        let mut upserts: Vec<Option<Op>> = Vec::with_capacity(batch.len());
        for op in batch {
            let change = |op: ChangeOp, vs: &str, table: &str, key: &str| Change {
                node: self.node_id.clone(),
                op,
                vs: vs.to_string(),
                table: table.to_string(),
                key: key.to_string(),
                value: None,
                ttl_ms: None,
            };
            match &op {
                Op::Upsert {
                    vs,
                    table,
                    key,
                    value,
                    expires_ns,
                } => {
                    if *expires_ns <= now {
                        continue;
                    }
                    let ttl_ms = (expires_ns - now).div_ceil(NS_PER_MS);
                    let msg = Change {
                        value: Some(value.clone()),
                        ttl_ms: Some(ttl_ms),
                        ..change(ChangeOp::Up, vs, table, key)
                    };
                    pipe.cmd("EVALSHA")
                        .arg(&self.upsert_sha)
                        .arg(1)
                        .arg(codec::encode_key(vs, table, key))
                        .arg(value)
                        .arg(ttl_ms)
                        .arg(CHANNEL)
                        .arg(msg.encode())
                        .arg(if mode == Mode::Nx { "nx" } else { "set" });
                    upserts.push(Some(op));
                }
                Op::Remove { vs, table, key } => {
                    pipe.cmd("DEL").arg(codec::encode_key(vs, table, key));
                    upserts.push(None);
                    let msg = change(ChangeOp::Rm, vs, table, key);
                    pipe.cmd("PUBLISH").arg(CHANNEL).arg(msg.encode());
                    upserts.push(None);
                }
                Op::Expire { vs, table, key } => {
                    // Redis expires its copy by itself; the others hear of it in case
                    // their copy outlived this one.
                    let msg = change(ChangeOp::Ex, vs, table, key);
                    pipe.cmd("PUBLISH").arg(CHANNEL).arg(msg.encode());
                    upserts.push(None);
                }
            }
        }
        if upserts.is_empty() {
            return Ok(());
        }
        let replies: Vec<Value> = self
            .timed(self.command_timeout, pipe.query_async(conn))
            .await?;
        let now = self.clock.now_ns();
        for (reply, op) in replies.iter().zip(upserts) {
            if let Some(Op::Upsert {
                vs,
                table,
                key,
                value,
                ..
            }) = op
            {
                self.settle(&vs, &table, &key, &value, reply, now);
            }
        }
        Ok(())
    }

    /// An upsert that found another value in Redis adopts it.
    fn settle(&self, vs: &str, table: &str, key: &str, ours: &str, reply: &Value, now: u64) {
        let Ok((status, current, pttl)) = redis::from_redis_value::<(i64, String, i64)>(reply)
        else {
            tracing::debug!(?reply, "replication: unexpected upsert reply");
            return;
        };
        if status != 0 {
            return;
        }
        let (Some(t), Some(expires)) = (self.tables.get_vs(vs), ttl_to_expiry(now, pttl)) else {
            return;
        };
        match t.apply_remote_upsert(table, key, &current, expires, now) {
            Ok(RemoteOutcome::Unchanged) => {}
            Ok(_) => {
                if current != ours {
                    bump(&self.counters.adopted, 1);
                    tracing::debug!(
                        vs,
                        table,
                        key,
                        "replication: adopted the value already in Redis"
                    );
                }
            }
            Err(err) => tracing::debug!(%err, vs, key, "replication: cannot adopt"),
        }
    }

    /// Loads every latch entry Redis holds into the local tables; returns how many changed.
    async fn load(&self, conn: &mut MultiplexedConnection) -> Result<u64, SessionError> {
        let mut cursor: u64 = 0;
        let mut changed = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(KEY_PATTERN)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, keys): (u64, Vec<String>) = self
                .timed(self.command_timeout, scan.query_async(conn))
                .await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("GET").arg(k).cmd("PTTL").arg(k);
                }
                let values: Vec<Value> = self
                    .timed(self.command_timeout, pipe.query_async(conn))
                    .await?;
                let now = self.clock.now_ns();
                for (k, pair) in keys.iter().zip(values.chunks(2)) {
                    let [v, ttl] = pair else { continue };
                    let (Ok(Some(value)), Ok(pttl)) = (
                        redis::from_redis_value::<Option<String>>(v),
                        redis::from_redis_value::<i64>(ttl),
                    ) else {
                        continue;
                    };
                    let Ok(parts) = codec::decode_key(k) else {
                        continue;
                    };
                    let (Some(t), Some(expires)) =
                        (self.tables.get_vs(&parts.vs), ttl_to_expiry(now, pttl))
                    else {
                        continue;
                    };
                    if let Ok(RemoteOutcome::Inserted | RemoteOutcome::Replaced) =
                        t.apply_remote_upsert(&parts.table, &parts.key, &value, expires, now)
                    {
                        changed += 1;
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        bump(&self.counters.applied, changed);
        Ok(changed)
    }

    /// Stores in Redis the local entries it lacks (and adopts Redis's value where it differs).
    async fn push_local(&self, conn: &mut MultiplexedConnection) -> Result<u64, SessionError> {
        let now = self.clock.now_ns();
        let mut n = 0;
        for vs in self.tables.vs_names() {
            let Some(t) = self.tables.get_vs(&vs) else {
                continue;
            };
            let entries = t.list(None, None, usize::MAX, now);
            for chunk in entries.chunks(BATCH) {
                let ops = chunk
                    .iter()
                    .map(|e: &EntryView| Op::Upsert {
                        vs: vs.clone(),
                        table: e.table.clone(),
                        key: e.key.clone(),
                        value: e.value.clone(),
                        expires_ns: e.expires_at_mono_ns,
                    })
                    .collect();
                self.send_batch(conn, ops, Mode::Nx).await?;
                n += chunk.len() as u64;
            }
        }
        Ok(n)
    }

    fn on_message(&self, text: &str) {
        let change = match Change::decode(text) {
            Ok(c) => c,
            Err(err) => {
                tracing::debug!(%err, "replication: ignored message");
                return;
            }
        };
        if change.node == self.node_id {
            return;
        }
        let Some(t) = self.tables.get_vs(&change.vs) else {
            return;
        };
        let now = self.clock.now_ns();
        let applied = match change.op {
            ChangeOp::Up => {
                let (Some(value), Some(ttl)) = (&change.value, change.ttl_ms) else {
                    return;
                };
                let expires = now.saturating_add(ttl.saturating_mul(NS_PER_MS));
                match t.apply_remote_upsert(&change.table, &change.key, value, expires, now) {
                    Ok(o) => o != RemoteOutcome::Unchanged,
                    Err(err) => {
                        tracing::debug!(%err, key = %change.key, "replication: change refused");
                        false
                    }
                }
            }
            ChangeOp::Rm => {
                t.apply_remote_remove(&change.table, &change.key, RemoveReason::Removed, u64::MAX)
            }
            ChangeOp::Ex => t.apply_remote_remove(
                &change.table,
                &change.key,
                RemoveReason::Expired,
                now.saturating_add(EXPIRY_SLACK_NS),
            ),
        };
        if applied {
            bump(&self.counters.applied, 1);
        }
    }

    /// Sends the entries whose extensions were deferred, as they are now.
    fn flush_deferred(&self) {
        let now = self.clock.now_ns();
        for rkey in self.replicator.coalescer.due(now) {
            let Ok(p) = codec::decode_key(&rkey) else {
                continue;
            };
            let Some(t) = self.tables.get_vs(&p.vs) else {
                continue;
            };
            if let Some(e) = t.get(&p.table, &p.key, now) {
                self.replicator
                    .upsert(&p.vs, &p.table, &p.key, &e.value, e.expires_at_mono_ns);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_ttls_map_to_local_expiries() {
        assert_eq!(ttl_to_expiry(1_000, 5), Some(1_000 + 5 * NS_PER_MS));
        assert_eq!(ttl_to_expiry(1_000, -1), Some(u64::MAX));
        assert_eq!(ttl_to_expiry(1_000, -2), None);
        assert_eq!(ttl_to_expiry(1_000, 0), None);
    }
}
