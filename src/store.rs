//! The data directory: module versions, content-addressed blobs and compiled code, written
//! crash-safely and collected when no version refers to them.
//!
//! ```text
//! modules/<name>.json                  the name's current version; replacing it is the switch
//! blobs/<sha256>.wasm                  original and runnable modules, by content
//! blobs/<sha256>.names.json            function names by hook id, of a runnable module
//! compiled/<sha256>-<engine>.cwasm     precompiled code, by content and engine compatibility
//! scratch/                             compile workers' directories (emptied at startup)
//! ```
//!
//! Every file is written under a temporary name (or in `scratch/`), flushed and renamed into
//! place, so a crash leaves the previous version or the new one, never a partial file that is
//! read. Content files are only ever added or removed whole.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// What a collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Files removed.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// The content a stored version refers to.
#[derive(Debug, Deserialize)]
struct VersionRefs {
    sha256: String,
    runnable_sha256: String,
}

/// A data directory.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    engine_key: String,
}

impl DiskStore {
    /// Opens `dir`, creating its layout, for an engine whose artifacts are named `engine_key`.
    ///
    /// # Errors
    ///
    /// If the directories cannot be created.
    pub fn open(dir: &Path, engine_key: String) -> Result<Self> {
        for sub in ["modules", "blobs", "compiled", "scratch"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        Ok(DiskStore {
            dir: dir.to_path_buf(),
            engine_key,
        })
    }

    /// Where compile workers write.
    pub fn scratch(&self) -> PathBuf {
        self.dir.join("scratch")
    }

    /// The file of a version.
    pub fn version(&self, name: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{name}.json"))
    }

    /// The files of every stored version.
    ///
    /// # Errors
    ///
    /// If the directory cannot be listed.
    pub fn versions(&self) -> Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("modules"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                paths.push(path);
            }
        }
        paths.sort();
        Ok(paths)
    }

    /// A content file: `blobs/<sha>.<kind>`.
    pub fn blob(&self, sha: &str, kind: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{sha}.{kind}"))
    }

    /// The code of module `sha` compiled for this engine.
    pub fn artifact(&self, sha: &str) -> PathBuf {
        self.dir
            .join("compiled")
            .join(format!("{sha}-{}.cwasm", self.engine_key))
    }

    /// Moves the finished file `from` to the content path `to` (same file system), flushed.
    /// Content is keyed by its hash, so an existing `to` already holds these bytes.
    ///
    /// # Errors
    ///
    /// If the file cannot be flushed or renamed.
    pub fn install(&self, from: &Path, to: &Path) -> Result<()> {
        if to.exists() {
            return Ok(());
        }
        std::fs::File::open(from)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(from, to))
            .and_then(|()| sync_parent(to))
            .with_context(|| format!("storing {}", to.display()))
    }

    /// Removes every content file that no stored version refers to and whose hash is not in
    /// `in_use`, and temporary files left by interrupted writes when `leftovers_too` (only safe
    /// when no write is in progress: at startup).
    ///
    /// # Errors
    ///
    /// If a version cannot be read: nothing is removed then, as its content may be in use.
    pub fn collect(&self, in_use: &HashSet<String>, leftovers_too: bool) -> Result<Collected> {
        let mut referenced = in_use.clone();
        for path in self.versions()? {
            let refs: VersionRefs = std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(serde_json::from_slice(&bytes)?))
                .with_context(|| format!("reading {}: nothing collected", path.display()))?;
            referenced.insert(refs.sha256);
            referenced.insert(refs.runnable_sha256);
        }
        let mut collected = Collected::default();
        for sub in ["blobs", "compiled", "modules"] {
            for entry in std::fs::read_dir(self.dir.join(sub))? {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let remove = if is_temporary(&name) {
                    leftovers_too
                } else {
                    sub != "modules" && !referenced.contains(content_hash(&name))
                };
                if remove {
                    let bytes = entry.metadata().map_or(0, |m| m.len());
                    std::fs::remove_file(entry.path())
                        .with_context(|| format!("removing {}", entry.path().display()))?;
                    collected.files += 1;
                    collected.bytes += bytes;
                }
            }
        }
        if leftovers_too {
            for entry in std::fs::read_dir(self.scratch())? {
                let path = entry?.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
        Ok(collected)
    }

    /// Bytes of every file in the data directory.
    pub fn bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(m) if m.is_dir() => walk(&entry.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir)
    }
}

/// A name written by [`write_atomic`] before its rename.
fn is_temporary(name: &str) -> bool {
    name.contains(".tmp")
}

/// The hash a content file is named by: `<sha>.wasm`, `<sha>.names.json`, `<sha>-<engine>.cwasm`.
fn content_hash(name: &str) -> &str {
    let end = name.find(['.', '-']).unwrap_or(name.len());
    &name[..end]
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk and renames it over
/// `path`.
///
/// # Errors
///
/// If any step fails; the temporary file is removed then.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u32>()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_files_are_named_by_their_hash() {
        assert_eq!(content_hash("ab12.wasm"), "ab12");
        assert_eq!(content_hash("ab12.names.json"), "ab12");
        assert_eq!(content_hash("ab12-00ff.cwasm"), "ab12");
        assert!(is_temporary("ab12.tmp123"));
        assert!(is_temporary("m.tmp9"));
        assert!(!is_temporary("m.json"));
    }

    #[test]
    fn collection_keeps_what_versions_and_runs_refer_to() {
        let dir = std::env::temp_dir().join(format!("iota-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = DiskStore::open(&dir, "e1".into()).unwrap();
        let version = r#"{"sha256": "aa", "runnable_sha256": "bb"}"#;
        std::fs::write(store.version("m"), version).unwrap();
        for file in [
            store.blob("aa", "wasm"),
            store.blob("bb", "wasm"),
            store.blob("bb", "names.json"),
            store.artifact("bb"),
            store.blob("cc", "wasm"),
            store.artifact("cc"),
            store.blob("dd", "wasm"),
            dir.join("blobs/ee.tmp42"),
        ] {
            std::fs::write(file, b"x").unwrap();
        }
        let in_use = HashSet::from(["dd".to_string()]);
        let collected = store.collect(&in_use, false).unwrap();
        assert_eq!(collected, Collected { files: 2, bytes: 2 });
        assert!(!store.blob("cc", "wasm").exists() && !store.artifact("cc").exists());
        assert!(store.blob("dd", "wasm").exists() && store.artifact("bb").exists());
        assert!(
            dir.join("blobs/ee.tmp42").exists(),
            "a write may be in progress"
        );
        assert_eq!(store.collect(&in_use, true).unwrap().files, 1);

        std::fs::write(store.version("broken"), b"{").unwrap();
        assert!(store.collect(&HashSet::new(), false).is_err());
        assert!(store.blob("aa", "wasm").exists() && store.blob("dd", "wasm").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
