//! The agent lock: one agent per pin directory, and a second `latch run` that waits for a
//! draining one instead of fighting it for the maps and the XDP links.
//!
//! Two flocks, both on directories (bpffs holds no regular files, but a directory can be
//! locked, and the kernel drops the lock with the process, kill -9 included):
//! - the pin directory itself, held for the agent's whole life;
//! - `<pin dir>/serving`, held while the agent serves and let go when SIGTERM starts its
//!   drain ([`AgentLock::draining`]).
//!
//! A second agent that finds the first lock taken looks at the second: free means the holder
//! is draining, so it waits (bounded) for it to exit, then adopts what it left; taken means
//! the holder serves, and the newcomer is refused at once, naming the holder's pid.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::DataplaneError;

/// Name of the directory whose lock says "serving" (see the module doc).
const SERVING_DIR: &str = "serving";

/// How often a waiting agent tries the lock again.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Held by the running agent; dropped with it.
#[derive(Debug)]
pub(crate) struct AgentLock {
    _life: File,
    serving: Option<File>,
}

impl AgentLock {
    /// Takes the lock on `dir` (which exists). An agent draining there is waited for, up to
    /// `wait_for_drain`; a serving one is refused.
    pub fn acquire(dir: &Path, wait_for_drain: Duration) -> Result<Self, DataplaneError> {
        let life = open_dir(dir)?;
        if !try_flock(&life, libc::LOCK_EX, dir)? {
            let holder = lock_holder(dir);
            if !holder_is_draining(dir)? {
                return Err(DataplaneError::AlreadyRunning {
                    dir: dir.to_owned(),
                    holder: pid_text(holder),
                });
            }
            tracing::warn!(
                dir = %dir.display(),
                holder = %pid_text(holder),
                "another latch agent is draining on this pin directory; waiting up to {wait_for_drain:?} for it to exit"
            );
            let deadline = Instant::now() + wait_for_drain;
            loop {
                if try_flock(&life, libc::LOCK_EX, dir)? {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(DataplaneError::StillDraining {
                        dir: dir.to_owned(),
                        holder: pid_text(holder),
                        waited: wait_for_drain,
                    });
                }
                std::thread::sleep(RETRY_EVERY);
            }
        }
        let serving_path = dir.join(SERVING_DIR);
        std::fs::create_dir_all(&serving_path)
            .map_err(|e| DataplaneError::io("creating", &serving_path, e))?;
        let serving = open_dir(&serving_path)?;
        if !try_flock(&serving, libc::LOCK_EX, &serving_path)? {
            // Only a process that is not a latch agent of this version holds it without the
            // life lock: refuse rather than share the maps with it.
            return Err(DataplaneError::AlreadyRunning {
                dir: dir.to_owned(),
                holder: pid_text(lock_holder(&serving_path)),
            });
        }
        Ok(Self {
            _life: life,
            serving: Some(serving),
        })
    }

    /// The agent stops serving and drains: a new agent may now wait for it.
    pub fn draining(&mut self) {
        self.serving = None;
    }
}

/// Whether the agent holding `dir`'s life lock has let go of its serving lock. A missing
/// serving directory means the holder never took one: treated as serving.
fn holder_is_draining(dir: &Path) -> Result<bool, DataplaneError> {
    let path = dir.join(SERVING_DIR);
    let serving = match open_dir(&path) {
        Ok(f) => f,
        Err(DataplaneError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    // A shared lock is granted only while nobody holds it exclusively; it goes with `serving`.
    try_flock(&serving, libc::LOCK_SH, &path)
}

fn open_dir(dir: &Path) -> Result<File, DataplaneError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| DataplaneError::io("opening", dir, e))
}

/// Non-blocking flock: false when another open file description holds a conflicting lock.
fn try_flock(f: &File, how: libc::c_int, path: &Path) -> Result<bool, DataplaneError> {
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(DataplaneError::io("locking", path, e))
}

/// The pid holding a flock on `path`, from /proc/locks (best effort: None when unreadable).
fn lock_holder(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(
        &locks,
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino(),
    )
}

/// Parses /proc/locks lines such as `3: FLOCK  ADVISORY  WRITE 1234 00:2d:17 0 EOF`
/// (waiters carry a `->` before the type) for a lock on device `major:minor` (hex), inode
/// `ino`.
fn holder_in(locks: &str, major: u32, minor: u32, ino: u64) -> Option<u32> {
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().filter(|f| *f != "->").collect();
        let [_, kind, _, _, pid, file, ..] = fields.as_slice() else {
            return None;
        };
        if *kind != "FLOCK" {
            return None;
        }
        let mut parts = file.split(':');
        let maj = u32::from_str_radix(parts.next()?, 16).ok()?;
        let min = u32::from_str_radix(parts.next()?, 16).ok()?;
        let inode: u64 = parts.next()?.parse().ok()?;
        (maj == major && min == minor && inode == ino).then(|| pid.parse().ok())?
    })
}

/// " (pid N)" for messages, or nothing when unknown.
fn pid_text(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let locks = "1: FLOCK  ADVISORY  WRITE 4242 00:2d:17 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 777 00:2d:17 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 99 00:2d:18 0 EOF\n\
                     3: FLOCK  ADVISORY  READ 555 fd:01:18 0 EOF\n";
        assert_eq!(holder_in(locks, 0, 0x2d, 17), Some(4242));
        assert_eq!(holder_in(locks, 0xfd, 1, 18), Some(555));
        assert_eq!(
            holder_in(locks, 0, 0x2d, 18),
            None,
            "POSIX locks are not ours"
        );
        assert_eq!(holder_in("garbage\n\n", 0, 0, 1), None);
    }

    #[test]
    fn a_draining_agent_is_waited_for_and_a_serving_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut first = AgentLock::acquire(dir.path(), Duration::ZERO).expect("first");
        let refused = AgentLock::acquire(dir.path(), Duration::from_secs(5))
            .expect_err("a second agent while the first serves");
        assert!(
            matches!(refused, DataplaneError::AlreadyRunning { .. }),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .contains(&format!("(pid {})", std::process::id())),
            "names the holder: {refused}"
        );
        first.draining();
        let timed_out = AgentLock::acquire(dir.path(), Duration::from_millis(300))
            .expect_err("the first still drains");
        assert!(
            matches!(timed_out, DataplaneError::StillDraining { .. }),
            "{timed_out}"
        );
        let waiter = std::thread::spawn({
            let dir = dir.path().to_owned();
            move || AgentLock::acquire(&dir, Duration::from_secs(10))
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!waiter.is_finished(), "took the lock of a live agent");
        drop(first);
        let second = waiter
            .join()
            .expect("join")
            .expect("taken once the first exited");
        drop(second);
    }
}
