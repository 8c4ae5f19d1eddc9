//! The running agent: ties config, data plane, proxy and tables together; reload and signals.
