//! Content as local files: in place for a store that keeps them on this machine, otherwise
//! copies in a cache directory bounded in bytes.
//!
//! Cached files are named as in the store (`blobs/<sha>.wasm`, `compiled/<sha>-<engine>.cwasm`,
//! ...) and written whole (a temporary name, then a rename). A file's modification time is
//! its last use; trimming removes the least recently used files first, never those of the
//! modules given as in use (their code is mapped by loaded modules).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;

use super::local::is_temporary;
use super::{ContentKey, Store, StoreError};

/// What a trim removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    /// Files removed.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes left in the cache.
    pub left: u64,
    /// Bytes of files in use, which trimming keeps whatever the budget.
    pub in_use: u64,
}

/// The cache directory.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
}

impl Cache {
    /// A cache in `dir` of at most `max_bytes` (files in use are kept even past it). Removes
    /// what interrupted writes left.
    pub fn open(dir: &Path, max_bytes: u64) -> Self {
        for sub in ["blobs", "compiled"] {
            if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
                for entry in entries.flatten() {
                    if is_temporary(&entry.file_name().to_string_lossy()) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        Cache {
            dir: dir.to_path_buf(),
            max_bytes,
        }
    }

    fn path(&self, key: &ContentKey) -> PathBuf {
        self.dir.join(key.path())
    }

    /// A local file with the content of `key`: the store's own, a cached copy, or one fetched
    /// now. `None` if the store does not hold it.
    ///
    /// # Errors
    ///
    /// If the store fails, or the file cannot be written.
    pub async fn file(
        &self,
        store: &dyn Store,
        key: &ContentKey,
    ) -> Result<Option<PathBuf>, StoreError> {
        if let Some(path) = store.local_path(key) {
            return Ok(path.exists().then_some(path));
        }
        let path = self.path(key);
        if path.exists() {
            touch(&path);
            return Ok(Some(path));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(store.get(key, &path).await?.then_some(path))
    }

    /// Whether a local file holds `key` (nothing is fetched).
    pub fn holds(&self, store: &dyn Store, key: &ContentKey) -> Option<PathBuf> {
        let path = store.local_path(key).unwrap_or_else(|| self.path(key));
        path.exists().then_some(path)
    }

    /// Stores the finished file `file` (on the cache's file system) as `key`, keeping it here
    /// when the store keeps no local file. Returns where the content is on this machine.
    ///
    /// # Errors
    ///
    /// If the store fails or the file cannot be moved.
    pub async fn put(
        &self,
        store: &dyn Store,
        key: &ContentKey,
        file: &Path,
    ) -> Result<PathBuf, StoreError> {
        if let Some(path) = store.local_path(key) {
            store.put(key, file).await?;
            return Ok(path);
        }
        let path = self.path(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            touch(&path);
        } else {
            std::fs::rename(file, &path).with_context(|| format!("caching {}", path.display()))?;
        }
        store.put(key, &path).await?;
        Ok(path)
    }

    /// Removes the least recently used files until the cache is within its budget, keeping
    /// every file of the modules in `in_use` (by hash).
    pub fn trim(&self, in_use: &HashSet<String>) -> Trimmed {
        let mut files = Vec::new();
        let mut trimmed = Trimmed::default();
        for sub in ["blobs", "compiled"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Ok(metadata) = entry.metadata() else {
                    continue;
                };
                trimmed.left += metadata.len();
                let key = ContentKey::parse(&format!("{sub}/{name}"));
                if key.as_ref().is_some_and(|k| in_use.contains(k.sha())) {
                    trimmed.in_use += metadata.len();
                    continue;
                }
                let used = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                files.push((used, metadata.len(), entry.path()));
            }
        }
        files.sort();
        for (_, size, path) in files {
            if trimmed.left <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                trimmed.files += 1;
                trimmed.bytes += size;
                trimmed.left -= size;
            }
        }
        trimmed
    }
}

/// Marks a cached file as just used.
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn trimming_keeps_what_is_in_use_and_the_most_recent() {
        let dir = std::env::temp_dir().join(format!("iota-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::create_dir_all(dir.join("compiled")).unwrap();
        std::fs::write(dir.join("blobs/ee.wasm.tmp3"), b"half").unwrap();
        let cache = Cache::open(&dir, 250);
        assert!(!dir.join("blobs/ee.wasm.tmp3").exists());
        let old = SystemTime::now() - Duration::from_secs(100);
        for (i, name) in [
            "blobs/aa.wasm",
            "blobs/bb.wasm",
            "compiled/cc-01.cwasm",
            "blobs/dd.names.json",
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.join(name);
            std::fs::write(&path, [0u8; 100]).unwrap();
            let file = std::fs::File::options().append(true).open(&path).unwrap();
            file.set_modified(old + Duration::from_secs(i as u64))
                .unwrap();
        }
        let in_use = HashSet::from(["aa".to_string()]);
        let trimmed = cache.trim(&in_use);
        assert_eq!((trimmed.files, trimmed.bytes, trimmed.left), (2, 200, 200));
        assert!(
            dir.join("blobs/aa.wasm").exists(),
            "in use, though the oldest"
        );
        assert!(!dir.join("blobs/bb.wasm").exists() && !dir.join("compiled/cc-01.cwasm").exists());
        assert!(
            dir.join("blobs/dd.names.json").exists(),
            "most recently used"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
