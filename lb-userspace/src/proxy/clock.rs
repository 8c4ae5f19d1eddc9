//! The clock the proxy's timers run on: client header and idle timeouts, upstream connect,
//! response and idle timeouts, drain deadlines.
//!
//! In production it is tokio's clock. A test hands the proxy a [`ManualClock`] instead and
//! moves it by hand, so a timeout fires exactly when the test says and never because a
//! loaded machine was slow.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// A timer ran out before the operation it bounded finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out")]
pub struct TimedOut;

/// A sleep that owns what it needs (see [`ProxyClock::sleep_owned`]).
pub type OwnedSleep = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// The proxy's time source: tokio's clock (the default) or a [`ManualClock`].
#[derive(Clone, Default)]
pub struct ProxyClock {
    manual: Option<Arc<ManualClock>>,
}

impl ProxyClock {
    /// A clock that moves only when `clock` is advanced.
    pub fn manual(clock: Arc<ManualClock>) -> Self {
        Self {
            manual: Some(clock),
        }
    }

    /// The current time.
    pub fn now(&self) -> Instant {
        match &self.manual {
            None => Instant::now(),
            Some(m) => m.now(),
        }
    }

    /// Waits until `deadline`.
    pub async fn sleep_until(&self, deadline: Instant) {
        match &self.manual {
            None => tokio::time::sleep_until(deadline).await,
            Some(m) => m.sleep_until(deadline).await,
        }
    }

    /// A sleep until `deadline` that owns what it needs, for timers kept inside a body
    /// between polls.
    pub fn sleep_owned(
        &self,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        match &self.manual {
            None => Box::pin(tokio::time::sleep_until(deadline)),
            Some(m) => {
                let m = Arc::clone(m);
                Box::pin(async move { m.sleep_until(deadline).await })
            }
        }
    }

    /// Runs `fut` until `deadline`.
    pub async fn timeout_at<F: Future>(
        &self,
        deadline: Instant,
        fut: F,
    ) -> Result<F::Output, TimedOut> {
        // The operation first, as tokio's own timeout does: a result ready at the deadline
        // counts.
        tokio::select! {
            biased;
            out = fut => Ok(out),
            () = self.sleep_until(deadline) => Err(TimedOut),
        }
    }

    /// Runs `fut` for at most `limit` from now (the call, not the first poll).
    pub fn timeout<'a, F: Future + 'a>(
        &'a self,
        limit: Duration,
        fut: F,
    ) -> impl Future<Output = Result<F::Output, TimedOut>> + 'a {
        self.timeout_at(self.now() + limit, fut)
    }
}

impl fmt::Debug for ProxyClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.manual {
            None => f.write_str("ProxyClock(tokio)"),
            Some(m) => write!(f, "ProxyClock(manual, +{:?})", m.elapsed()),
        }
    }
}

/// Two clocks are equal when they are the same time source.
impl PartialEq for ProxyClock {
    fn eq(&self, other: &Self) -> bool {
        match (&self.manual, &other.manual) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for ProxyClock {}

/// A clock that stands still until [`ManualClock::advance`] moves it; sleepers on any thread
/// wake when it passes their deadline.
#[derive(Debug)]
pub struct ManualClock {
    origin: Instant,
    elapsed: watch::Sender<Duration>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock reading the current time, standing still.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            elapsed: watch::Sender::new(Duration::ZERO),
        }
    }

    /// How far the clock was moved since it was made.
    pub fn elapsed(&self) -> Duration {
        *self.elapsed.borrow()
    }

    /// The clock's time.
    pub fn now(&self) -> Instant {
        self.origin + self.elapsed()
    }

    /// Moves the clock forward by `by`, waking the sleepers whose deadline it passes.
    pub fn advance(&self, by: Duration) {
        self.elapsed.send_modify(|elapsed| *elapsed += by);
    }

    async fn sleep_until(&self, deadline: Instant) {
        let mut elapsed = self.elapsed.subscribe();
        loop {
            if self.origin + *elapsed.borrow_and_update() >= deadline {
                return;
            }
            if elapsed.changed().await.is_err() {
                // Unreachable while `self` lives: the sender is ours.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_sleepers_wake_exactly_at_their_deadline() {
        let manual = Arc::new(ManualClock::new());
        let clock = ProxyClock::manual(manual.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let deadline = clock.now() + Duration::from_millis(300);
            let sleeper = tokio::spawn({
                let clock = clock.clone();
                async move { clock.sleep_until(deadline).await }
            });
            let bounded = clock.timeout(Duration::from_millis(100), std::future::pending::<()>());
            tokio::pin!(bounded);
            tokio::task::yield_now().await;
            manual.advance(Duration::from_millis(99));
            tokio::task::yield_now().await;
            assert!(futures_util::poll!(&mut bounded).is_pending());
            assert!(!sleeper.is_finished());
            manual.advance(Duration::from_millis(1));
            assert_eq!(bounded.await, Err(TimedOut));
            manual.advance(Duration::from_millis(199));
            tokio::task::yield_now().await;
            assert!(!sleeper.is_finished());
            manual.advance(Duration::from_millis(1));
            sleeper.await.expect("sleeper");
        });
        assert_eq!(clock, clock.clone());
        assert_ne!(clock, ProxyClock::default());
    }
}
