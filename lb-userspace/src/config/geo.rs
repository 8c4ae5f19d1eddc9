//! `[agent.datascript] geo_database`: the MaxMind database `avi.utils.get_geo_from_ip` reads.
//!
//! The file is read and checked when the config loads (so `latch check` refuses an unreadable
//! or malformed file with its location) and the loaded copy travels with the config to the
//! scripts: one read per load or reload, never one per request.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The MMDB reader over the file's bytes.
pub type GeoReader = maxminddb::Reader<Arc<[u8]>>;

/// A MaxMind database file, loaded.
#[derive(Clone)]
pub struct GeoDatabase {
    path: PathBuf,
    bytes: Arc<[u8]>,
    reader: Arc<GeoReader>,
}

impl GeoDatabase {
    /// Reads and parses the database at `path`; the message says why it is not one.
    pub fn open(path: &Path) -> Result<GeoDatabase, String> {
        let bytes: Arc<[u8]> = std::fs::read(path)
            .map_err(|e| format!("cannot read geo database {}: {e}", path.display()))?
            .into();
        let reader = maxminddb::Reader::from_source(Arc::clone(&bytes)).map_err(|e| {
            format!(
                "geo database {} is not a MaxMind DB file: {e}",
                path.display()
            )
        })?;
        Ok(GeoDatabase {
            path: path.to_path_buf(),
            bytes,
            reader: Arc::new(reader),
        })
    }

    /// Where it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The loaded database.
    pub fn reader(&self) -> &GeoReader {
        &self.reader
    }
}

/// Two loads are the same database when path and content are (a reload of a changed file is
/// a change of the agent settings).
impl PartialEq for GeoDatabase {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && (Arc::ptr_eq(&self.bytes, &other.bytes) || self.bytes == other.bytes)
    }
}

impl Eq for GeoDatabase {}

impl std::fmt::Debug for GeoDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDatabase")
            .field("path", &self.path)
            .field("database_type", &self.reader.metadata().database_type)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}
