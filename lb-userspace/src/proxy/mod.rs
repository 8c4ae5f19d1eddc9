//! HTTP termination and upstream connection pools (tokio + hyper).

pub mod hooks;
