//! The module store: content-addressed objects and one version pointer per module name, behind
//! one small trait with two backends.
//!
//! ```text
//! modules/<name>.json                  the name's current version (its pointer); swapping it is the switch
//! blobs/<sha256>.wasm                  original and runnable modules, by content
//! blobs/<sha256>.names.json            function names by hook id, of a runnable module
//! blobs/<sha256>.functions.json        the function map of a runnable module
//! compiled/<sha256>-<engine>.cwasm     precompiled code, by runnable module and engine compatibility
//! nodes/<instance>.json                a server's lease: the content its loaded versions use
//! ```
//!
//! - [`local::LocalStore`]: a data directory that belongs to one server (the default).
//! - [`s3::S3Store`]: any S3-compatible object store shared by several servers.
//!
//! Content is immutable: a key names its bytes. Pointers change only by compare-and-swap
//! against the tag of the value last read, so two servers switching one name at once never
//! interleave. [`cache::Cache`] gives content as local files; [`collect`] removes content that
//! nothing refers to, safely with several servers.

pub mod cache;
pub mod collect;
pub mod local;
pub mod s3;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

/// A content object: its kind and the hash of the module it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContentKey {
    /// A module's bytes (`blobs/<sha>.wasm`), keyed by their own SHA-256.
    Wasm(String),
    /// Function names by hook id of runnable module `sha` (`blobs/<sha>.names.json`).
    Names(String),
    /// The function map of runnable module `sha` (`blobs/<sha>.functions.json`).
    Functions(String),
    /// Runnable module `sha` compiled for engine `engine` (`compiled/<sha>-<engine>.cwasm`).
    Artifact {
        /// SHA-256 of the runnable module.
        sha: String,
        /// The engine's compatibility key.
        engine: String,
    },
}

impl ContentKey {
    /// The key's path under the store's root.
    pub fn path(&self) -> String {
        match self {
            ContentKey::Wasm(sha) => format!("blobs/{sha}.wasm"),
            ContentKey::Names(sha) => format!("blobs/{sha}.names.json"),
            ContentKey::Functions(sha) => format!("blobs/{sha}.functions.json"),
            ContentKey::Artifact { sha, engine } => format!("compiled/{sha}-{engine}.cwasm"),
        }
    }

    /// The key a path names, if it names one (listings hold other things too).
    pub fn parse(path: &str) -> Option<ContentKey> {
        let (dir, file) = path.split_once('/')?;
        let key = match dir {
            "blobs" => {
                if let Some(sha) = file.strip_suffix(".names.json") {
                    ContentKey::Names(sha.to_string())
                } else if let Some(sha) = file.strip_suffix(".functions.json") {
                    ContentKey::Functions(sha.to_string())
                } else {
                    ContentKey::Wasm(file.strip_suffix(".wasm")?.to_string())
                }
            }
            "compiled" => {
                let (sha, engine) = file.strip_suffix(".cwasm")?.split_once('-')?;
                if !is_hex(engine) {
                    return None;
                }
                ContentKey::Artifact {
                    sha: sha.to_string(),
                    engine: engine.to_string(),
                }
            }
            _ => return None,
        };
        is_hex(key.sha()).then_some(key)
    }

    /// The hash of the module the content belongs to: what versions refer to.
    pub fn sha(&self) -> &str {
        match self {
            ContentKey::Wasm(sha) | ContentKey::Names(sha) | ContentKey::Functions(sha) => sha,
            ContentKey::Artifact { sha, .. } => sha,
        }
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Which pointers: module versions, or servers' leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pointers {
    /// `modules/<name>.json`: a module's current version.
    Modules,
    /// `nodes/<instance>.json`: what a server's loaded versions use.
    Leases,
}

impl Pointers {
    /// The directory of these pointers under the store's root.
    pub fn dir(self) -> &'static str {
        match self {
            Pointers::Modules => "modules",
            Pointers::Leases => "nodes",
        }
    }
}

/// The identity of a pointer's value: its ETag (S3) or a hash of its bytes (directory).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(pub String);

/// A pointer as read.
#[derive(Debug, Clone)]
pub struct Pointer {
    /// Its value; `None` for a name whose version was deleted (a tombstone).
    pub value: Option<Bytes>,
    /// The tag to swap it against.
    pub tag: Tag,
}

/// A pointer in a listing.
#[derive(Debug, Clone)]
pub struct ListedPointer {
    /// The name it is the pointer of.
    pub name: String,
    /// Its value's tag.
    pub tag: Tag,
    /// When its value was written, by the store's clock.
    pub modified: SystemTime,
}

/// A content object in a listing.
#[derive(Debug, Clone)]
pub struct ListedContent {
    /// Its key.
    pub key: ContentKey,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, by the store's clock.
    pub modified: SystemTime,
}

/// What a swap expects the pointer to be.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// No pointer was ever written.
    Absent,
    /// The value with this tag.
    Tag(&'a Tag),
    /// Anything: an unconditional write (a server's own lease).
    Any,
}

/// The outcome of a swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// Written; the new value's tag (`None`: no pointer is left).
    Done(Option<Tag>),
    /// The pointer was not what was expected: someone else changed it. Nothing was written.
    Conflict,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached, is too slow, or failed to answer. Retrying later may work.
    #[error("module store unavailable: {0}")]
    Unavailable(String),
    /// The store refuses this server: credentials, permissions, a missing bucket.
    #[error("module store refused the request: {0}")]
    Refused(String),
    /// Something else: a local file, a malformed object.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Where modules are kept: content by key, and one pointer per name changed by compare-and-swap.
///
/// A store holds bytes; it does not know what a module is. The registry above it decides what
/// a version is, loads and caches them.
#[async_trait]
pub trait Store: Send + Sync {
    /// Where the store is, for messages: a directory or an `s3://` URL.
    fn location(&self) -> String;

    /// Whether other servers may write to this store at the same time (then collection waits
    /// a grace period and honours their leases).
    fn shared(&self) -> bool;

    /// Content this store keeps as a file on this machine, readable in place. `None` when the
    /// content is elsewhere (then [`cache::Cache`] keeps local copies).
    fn local_path(&self, _key: &ContentKey) -> Option<PathBuf> {
        None
    }

    /// Stores the bytes of `file` as `key`. The store may take the file (rename it). Storing a
    /// key again is harmless: it names the same bytes.
    async fn put(&self, key: &ContentKey, file: &Path) -> Result<(), StoreError>;

    /// Writes the content of `key` to the file `to` (whole or not at all); `false` if the store
    /// does not hold it.
    async fn get(&self, key: &ContentKey, to: &Path) -> Result<bool, StoreError>;

    /// Whether the store holds `key`.
    async fn exists(&self, key: &ContentKey) -> Result<bool, StoreError>;

    /// Every content object.
    async fn contents(&self) -> Result<Vec<ListedContent>, StoreError>;

    /// Removes the content of `key` (already gone is no error).
    async fn delete(&self, key: &ContentKey) -> Result<(), StoreError>;

    /// The pointer `name` of `kind`, or `None` if none was ever written.
    async fn read(&self, kind: Pointers, name: &str) -> Result<Option<Pointer>, StoreError>;

    /// Sets the pointer `name` of `kind` to `value` if it is still what `expected` says.
    /// `None` removes the value: a deleted module's pointer may stay as a tombstone (so the
    /// deletion is a swap too); with [`Expect::Any`] the pointer is simply removed.
    async fn swap(
        &self,
        kind: Pointers,
        name: &str,
        expected: Expect<'_>,
        value: Option<Bytes>,
    ) -> Result<Swap, StoreError>;

    /// Every pointer of `kind` that holds a value (deleted names are left out).
    async fn pointers(&self, kind: Pointers) -> Result<Vec<ListedPointer>, StoreError>;
}

/// Bytes of every file under `dir`, each counted once (hard links too).
pub fn dir_bytes(dir: &Path) -> u64 {
    fn walk(dir: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(m) if m.is_dir() => walk(&entry.path(), seen),
                Ok(m) if seen.insert((m.dev(), m.ino())) => m.len(),
                _ => 0,
            })
            .sum()
    }
    walk(dir, &mut std::collections::HashSet::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_keys_round_trip_through_their_paths() {
        for key in [
            ContentKey::Wasm("ab12".into()),
            ContentKey::Names("ab12".into()),
            ContentKey::Functions("ab12".into()),
            ContentKey::Artifact {
                sha: "ab12".into(),
                engine: "00ff".into(),
            },
        ] {
            assert_eq!(ContentKey::parse(&key.path()), Some(key.clone()));
            assert_eq!(key.sha(), "ab12");
        }
        for other in [
            "blobs/ab12.tmp42",
            "blobs/x.wasm",
            "compiled/ab12.cwasm",
            "compiled/ab12-zz.cwasm",
            "modules/m.json",
            "ab12.wasm",
        ] {
            assert_eq!(ContentKey::parse(other), None, "{other}");
        }
    }
}
