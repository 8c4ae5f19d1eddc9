//! Admin REST API and Prometheus /metrics.
