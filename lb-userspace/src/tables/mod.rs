//! Persistence tables with lifetimes (the store behind avi.vs.table_*).
