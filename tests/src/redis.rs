//! redis-server as a child process (Debian's package), for the replication tests, the
//! replication benchmark and the soak.

use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::netns::ChildGuard;

/// How long redis-server may take to say it is ready.
pub const REDIS_READY: Duration = Duration::from_secs(10);

/// Starts `cmd` (a redis-server command line, in a namespace or not) and waits for its ready
/// line; the guard stops it by PID when dropped.
pub fn start_redis(cmd: &mut Command) -> Result<ChildGuard> {
    let mut redis = ChildGuard::spawn(cmd, "redis-server")?;
    redis.wait_for_line(
        |l| {
            l.to_ascii_lowercase()
                .contains("ready to accept connections")
        },
        REDIS_READY,
    )?;
    Ok(redis)
}
