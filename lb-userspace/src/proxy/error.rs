//! Errors the proxy reports to the agent (per-request failures become HTTP status codes).

use std::io;
use std::net::SocketAddr;

/// Why a proxy configuration could not be applied or the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A virtual service names a pool that is not in the configuration.
    #[error("virtual service {vs}: pool {pool:?} is not defined")]
    UnknownPool {
        /// Virtual service name.
        vs: String,
        /// The missing pool.
        pool: String,
    },
    /// Two virtual services listen on the same address.
    #[error("virtual services {first:?} and {second:?} both listen on {addr}")]
    DuplicateListener {
        /// The shared address.
        addr: SocketAddr,
        /// First service.
        first: String,
        /// Second service.
        second: String,
    },
    /// Two pools share a name.
    #[error("pool {pool:?} is defined twice")]
    DuplicatePool {
        /// The pool name.
        pool: String,
    },
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A worker thread or its runtime could not be started.
    #[error("cannot start proxy worker {worker}: {source}")]
    Worker {
        /// Worker index.
        worker: usize,
        /// The OS error.
        source: io::Error,
    },
    /// The proxy's workers have stopped.
    #[error("the HTTP proxy has stopped")]
    Stopped,
}
