//! The phase of a client connection (idle, reading a request head, busy with a request) and
//! when it began: what the connection's watchdog in `conn` reads to know which timeout runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::clock::ProxyClock;

pub(super) const IDLE: u64 = 0;
pub(super) const HEAD: u64 = 1;
pub(super) const BUSY: u64 = 2;

/// Phase of a connection and when it began, packed in one atomic: `(millis << 2) | phase`.
#[derive(Debug)]
pub(crate) struct ConnClock {
    clock: ProxyClock,
    epoch: Instant,
    state: AtomicU64,
}

impl ConnClock {
    /// A new connection, reading its first request head from now on `clock`.
    pub(super) fn new(clock: ProxyClock) -> Self {
        Self {
            epoch: clock.now(),
            clock,
            state: AtomicU64::new(HEAD),
        }
    }

    fn now_ms(&self) -> u64 {
        let elapsed = self.clock.now().saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX >> 2)
    }

    fn set(&self, phase: u64) {
        self.state
            .store((self.now_ms() << 2) | phase, Ordering::Relaxed);
    }

    /// A request head was parsed: no client timer until its response is done.
    pub fn busy(&self) {
        self.set(BUSY);
    }

    /// The response is done: the keep-alive idle timer starts.
    pub fn idle(&self) {
        self.set(IDLE);
    }

    /// Bytes arrived: if idle, a new request head has begun.
    pub(super) fn on_read(&self) {
        let cur = self.state.load(Ordering::Relaxed);
        if cur & 3 == IDLE {
            let next = (self.now_ms() << 2) | HEAD;
            let _ = self
                .state
                .compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    pub(super) fn snapshot(&self) -> u64 {
        self.state.load(Ordering::Relaxed)
    }

    /// When the phase in `snap` expires; `None` while busy.
    pub(super) fn deadline(&self, snap: u64, idle: Duration, head: Duration) -> Option<Instant> {
        let since = self.epoch + Duration::from_millis(snap >> 2);
        match snap & 3 {
            IDLE => Some(since + idle),
            HEAD => Some(since + head),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proxy::clock::ManualClock;

    #[test]
    fn clock_phases() {
        let manual = Arc::new(ManualClock::new());
        let c = ConnClock::new(ProxyClock::manual(manual.clone()));
        let idle = Duration::from_secs(60);
        let head = Duration::from_secs(10);
        let s = c.snapshot();
        assert_eq!(s & 3, HEAD);
        assert_eq!(c.deadline(s, idle, head), Some(c.epoch + head));
        manual.advance(Duration::from_millis(1500));
        c.busy();
        assert_eq!(c.deadline(c.snapshot(), idle, head), None);
        c.on_read();
        assert_eq!(c.snapshot() & 3, BUSY, "reads while busy are body bytes");
        manual.advance(Duration::from_millis(500));
        c.idle();
        let idle_since = c.epoch + Duration::from_secs(2);
        assert_eq!(
            c.deadline(c.snapshot(), idle, head),
            Some(idle_since + idle)
        );
        manual.advance(Duration::from_secs(59));
        c.on_read();
        assert_eq!(c.snapshot() & 3, HEAD);
        assert_eq!(
            c.deadline(c.snapshot(), idle, head),
            Some(idle_since + Duration::from_secs(59) + head)
        );
    }
}
