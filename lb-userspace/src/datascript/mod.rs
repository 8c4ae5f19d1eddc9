//! DataScript engine: Lua VMs, the avi.* API, sandbox and limits.
