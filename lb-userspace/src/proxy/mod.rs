//! HTTP termination and upstream connection pools (tokio + hyper).
