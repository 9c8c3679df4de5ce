//! A temp dir for a test's config files, removed when dropped.

use std::path::{Path, PathBuf};

/// A directory under the system temp dir named after the test, unique to
/// this one (tempfile picks the suffix).
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("stickyio-{tag}-"))
            .tempdir()
            .expect("create temp dir");
        TempDir(dir)
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        self.0.path()
    }

    /// The file `name` in it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}
