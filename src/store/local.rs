//! The store in a data directory that belongs to one server (the default).
//!
//! Content files and pointers are laid out as in [`super`]: `modules/<name>.json`,
//! `blobs/<sha256>.wasm`, `blobs/<sha256>.names.json`, `blobs/<sha256>.functions.json`,
//! `compiled/<sha256>-<engine>.cwasm`.
//! Every file is written under a temporary name, flushed and renamed into place, so a crash
//! leaves the previous value or the new one, never a partial file that is read; what
//! interrupted writes left is removed when the store is opened. A pointer's tag is a hash of its
//! bytes; swaps are serialized by a lock of this process. Leases are not kept: the directory's
//! one server passes its own holdings to every collection.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{
    ContentKey, Expect, ListedContent, ListedPointer, Pointer, Pointers, Store, StoreError, Swap,
    Tag,
};

/// A data directory.
#[derive(Debug)]
pub struct LocalStore {
    dir: PathBuf,
    /// Serializes pointer swaps.
    swaps: Mutex<()>,
}

/// Runs blocking file work without holding up the async threads.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

impl LocalStore {
    /// Opens `dir`, creating its layout, and removes what interrupted writes left (nothing
    /// writes to it before it is open).
    ///
    /// # Errors
    ///
    /// If the directories cannot be created or listed.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        for sub in ["modules", "blobs", "compiled"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                if is_temporary(&entry.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(LocalStore {
            dir: dir.to_path_buf(),
            swaps: Mutex::new(()),
        })
    }

    fn pointer_path(&self, name: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{name}.json"))
    }

    fn read_pointer(&self, name: &str) -> Result<Option<Pointer>, StoreError> {
        let path = self.pointer_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(Pointer {
                tag: tag_of(&bytes),
                value: Some(bytes.into()),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!(e)
                .context(format!("reading {}", path.display()))
                .into()),
        }
    }
}

/// The tag of a pointer's bytes.
fn tag_of(bytes: &[u8]) -> Tag {
    Tag(hex::encode(&Sha256::digest(bytes)[..16]))
}

fn modified(metadata: &std::fs::Metadata) -> SystemTime {
    metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

#[async_trait]
impl Store for LocalStore {
    fn location(&self) -> String {
        format!("data directory {}", self.dir.display())
    }

    fn shared(&self) -> bool {
        false
    }

    fn local_path(&self, key: &ContentKey) -> Option<PathBuf> {
        Some(self.dir.join(key.path()))
    }

    async fn put(&self, key: &ContentKey, file: &Path) -> Result<(), StoreError> {
        let to = self.dir.join(key.path());
        blocking(|| {
            if to.exists() {
                return Ok(());
            }
            std::fs::File::open(file)
                .and_then(|f| f.sync_all())
                .and_then(|()| std::fs::rename(file, &to))
                .and_then(|()| sync_parent(&to))
                .with_context(|| format!("storing {}", to.display()))
        })?;
        Ok(())
    }

    async fn get(&self, key: &ContentKey, to: &Path) -> Result<bool, StoreError> {
        let from = self.dir.join(key.path());
        blocking(|| match std::fs::read(&from) {
            Ok(bytes) => write_atomic(to, &bytes).map(|()| true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(anyhow!(e).context(format!("reading {}", from.display()))),
        })
        .map_err(StoreError::Other)
    }

    async fn exists(&self, key: &ContentKey) -> Result<bool, StoreError> {
        Ok(self.dir.join(key.path()).exists())
    }

    async fn contents(&self) -> Result<Vec<ListedContent>, StoreError> {
        blocking(|| {
            let mut listed = Vec::new();
            for sub in ["blobs", "compiled"] {
                let dir = self.dir.join(sub);
                let entries = std::fs::read_dir(&dir)
                    .with_context(|| format!("listing {}", dir.display()))?;
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    let Some(key) = ContentKey::parse(&format!("{sub}/{}", name.to_string_lossy()))
                    else {
                        continue;
                    };
                    let metadata = entry.metadata()?;
                    listed.push(ListedContent {
                        key,
                        size: metadata.len(),
                        modified: modified(&metadata),
                    });
                }
            }
            Ok::<_, anyhow::Error>(listed)
        })
        .map_err(StoreError::Other)
    }

    async fn delete(&self, key: &ContentKey) -> Result<(), StoreError> {
        let path = self.dir.join(key.path());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow!(e)
                .context(format!("removing {}", path.display()))
                .into()),
            _ => Ok(()),
        }
    }

    async fn read(&self, kind: Pointers, name: &str) -> Result<Option<Pointer>, StoreError> {
        match kind {
            Pointers::Modules => blocking(|| self.read_pointer(name)),
            Pointers::Leases => Ok(None),
        }
    }

    async fn swap(
        &self,
        kind: Pointers,
        name: &str,
        expected: Expect<'_>,
        value: Option<Bytes>,
    ) -> Result<Swap, StoreError> {
        if kind == Pointers::Leases {
            return Ok(Swap::Done(None));
        }
        blocking(|| {
            let _swap = self.swaps.lock().unwrap_or_else(|e| e.into_inner());
            let current = self.read_pointer(name)?.map(|p| p.tag);
            let matches = match expected {
                Expect::Absent => current.is_none(),
                Expect::Tag(tag) => current.as_ref() == Some(tag),
                Expect::Any => true,
            };
            if !matches {
                return Ok(Swap::Conflict);
            }
            let path = self.pointer_path(name);
            match value {
                Some(bytes) => {
                    write_atomic(&path, &bytes)?;
                    Ok(Swap::Done(Some(tag_of(&bytes))))
                }
                None => {
                    if current.is_some() {
                        std::fs::remove_file(&path)
                            .and_then(|()| sync_parent(&path))
                            .with_context(|| format!("removing {}", path.display()))?;
                    }
                    Ok(Swap::Done(None))
                }
            }
        })
    }

    async fn pointers(&self, kind: Pointers) -> Result<Vec<ListedPointer>, StoreError> {
        if kind == Pointers::Leases {
            return Ok(Vec::new());
        }
        blocking(|| {
            let dir = self.dir.join("modules");
            let mut listed = Vec::new();
            let entries =
                std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
            for entry in entries {
                let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
                let file = entry.file_name();
                let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                    continue;
                };
                if is_temporary(name) {
                    continue;
                }
                // Removed since it was listed: it has no value, as if not listed.
                if let Some(pointer) = self.read_pointer(name)? {
                    listed.push(ListedPointer {
                        name: name.to_string(),
                        tag: pointer.tag,
                        modified: entry
                            .metadata()
                            .map_or(SystemTime::UNIX_EPOCH, |m| modified(&m)),
                    });
                }
            }
            listed.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(listed)
        })
    }
}

/// A name written by [`write_atomic`] before its rename: `<name>.tmp<digits>`.
pub fn is_temporary(name: &str) -> bool {
    name.rsplit_once(".tmp")
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
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
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = temporary_beside(path);
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

/// A temporary name beside `path`, which [`LocalStore::open`] and the cache clean up.
pub fn temporary_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", rand::random::<u32>()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("iota-local-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn temporary_names_are_recognized() {
        let tmp = temporary_beside(Path::new("/x/blobs/ab12.wasm"));
        assert!(is_temporary(&tmp.file_name().unwrap().to_string_lossy()));
        assert!(
            ContentKey::parse(&format!(
                "blobs/{}",
                tmp.file_name().unwrap().to_string_lossy()
            ))
            .is_none()
        );
        assert!(!is_temporary("m.json"));
        assert!(!is_temporary("x.tmp5.json"), "a module may be named x.tmp5");
    }

    #[tokio::test]
    async fn pointers_swap_only_from_the_value_read() {
        let dir = temp_dir("swap");
        let store = LocalStore::open(&dir).unwrap();
        let m = Pointers::Modules;
        assert!(store.read(m, "a").await.unwrap().is_none());
        let one = Bytes::from_static(b"{\"v\": 1}");
        let Swap::Done(Some(tag1)) = store
            .swap(m, "a", Expect::Absent, Some(one.clone()))
            .await
            .unwrap()
        else {
            panic!("created");
        };
        assert_eq!(
            store.swap(m, "a", Expect::Absent, Some(one)).await.unwrap(),
            Swap::Conflict
        );
        let read = store.read(m, "a").await.unwrap().unwrap();
        assert_eq!(read.tag, tag1);
        let two = Bytes::from_static(b"{\"v\": 2}");
        let Swap::Done(Some(tag2)) = store
            .swap(m, "a", Expect::Tag(&tag1), Some(two.clone()))
            .await
            .unwrap()
        else {
            panic!("swapped");
        };
        assert_eq!(
            store.swap(m, "a", Expect::Tag(&tag1), None).await.unwrap(),
            Swap::Conflict,
            "a stale tag changes nothing"
        );
        let listed = store.pointers(m).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].name.as_str(), &listed[0].tag), ("a", &tag2));
        assert_eq!(
            store.swap(m, "a", Expect::Tag(&tag2), None).await.unwrap(),
            Swap::Done(None)
        );
        assert!(store.pointers(m).await.unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn content_is_listed_by_key_and_leftovers_are_removed_at_open() {
        let dir = temp_dir("content");
        let store = LocalStore::open(&dir).unwrap();
        let scratch = dir.join("upload.wasm");
        std::fs::write(&scratch, b"\0asm").unwrap();
        let key = ContentKey::Wasm("ab12".into());
        store.put(&key, &scratch).await.unwrap();
        assert!(!scratch.exists(), "moved into place");
        assert!(store.exists(&key).await.unwrap());
        std::fs::write(dir.join("blobs/cd34.wasm.tmp7"), b"half").unwrap();
        std::fs::write(dir.join("modules/m.json.tmp8"), b"{").unwrap();
        let listed = store.contents().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].key.clone(), listed[0].size), (key.clone(), 4));
        let copy = dir.join("copy.wasm");
        assert!(store.get(&key, &copy).await.unwrap());
        assert_eq!(std::fs::read(&copy).unwrap(), b"\0asm");
        assert!(
            !store
                .get(&ContentKey::Wasm("ff".into()), &copy)
                .await
                .unwrap()
        );

        let store = LocalStore::open(&dir).unwrap();
        assert!(!dir.join("blobs/cd34.wasm.tmp7").exists());
        assert!(!dir.join("modules/m.json.tmp8").exists());
        store.delete(&key).await.unwrap();
        store.delete(&key).await.unwrap();
        assert!(store.contents().await.unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
