use std::net::SocketAddr;
use std::time::Duration;

/// Everything the harness can fail at. Fields name the command, address or step so that a
/// failing integration test says what was being set up, not only that something failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {after:?}: {what}")]
    Timeout { what: String, after: Duration },
    #[error("HTTP with {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("bad response from {addr}: {what}")]
    Protocol { addr: SocketAddr, what: String },
    #[error("invalid topology: {what}")]
    Topology { what: String },
    #[error("config does not serialize: {what}")]
    Config { what: String },
    #[error("thread {name} panicked")]
    ThreadPanicked { name: String },
    #[error("test certificates: {what}")]
    Certificates { what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
