//! Collecting content that nothing refers to, safely when several servers share the store.
//!
//! Content may be removed only when all of these hold:
//!
//! 1. no module's pointer refers to it (a version refers to its original and runnable module
//!    by hash; names and artifacts belong to the runnable module);
//! 2. no live lease lists it: each server publishes `nodes/<instance>.json`, the hashes of the
//!    versions it holds (current ones, older ones still held by runs, uploads in progress),
//!    rewritten when that changes and at least every [`LEASE_REFRESH`]; a lease not rewritten
//!    for [`LEASE_TTL`] is a server gone, and is ignored (and removed after ten times that);
//! 3. it was last written more than the grace period ago, by the store's clock.
//!
//! A pass lists the content first, then takes the server's own holdings, then reads the
//! pointers and leases, and stops deleting once it is older than its pass limit (a quarter of
//! the grace, at most 30 s). An upload writes all of its content (again, if it exists: that
//! makes it young), then swaps the pointer within the grace minus the pass limit of its first
//! write, or gives up. What remains is a pass that listed the content just before an upload
//! rewrote an old object, read the pointers just before the upload's swap, and deletes that
//! object after the rewrite: so, a pass limit after its swap, the uploader checks that its
//! content is still there and writes again what is missing (it keeps its files until then).
//!
//! A store that belongs to one server (a data directory) has no grace, no leases and no pass
//! limit: the server's holdings are all there is.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Pointers, Store, StoreError, Tag};

/// How often a server rewrites its lease at least.
pub const LEASE_REFRESH: Duration = Duration::from_secs(30);
/// How long a lease counts after it was last written.
pub const LEASE_TTL: Duration = Duration::from_secs(120);
/// The longest a pass may take to list and decide before its deletions stop.
const MAX_PASS: Duration = Duration::from_secs(30);

/// The timing rules of collection for one store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Content younger than this is kept.
    pub grace: Duration,
    /// A pass stops deleting once it is this old (`None`: no limit).
    pub pass_limit: Option<Duration>,
    /// How long after its swap an upload checks that its content is still there.
    pub verify_after: Duration,
    /// How often a server runs a pass besides the one after each of its replacements and
    /// deletions (`None`: only then and at startup).
    pub every: Option<Duration>,
}

impl Policy {
    /// The rules for a store that belongs to one server.
    pub fn single_server() -> Self {
        Policy {
            grace: Duration::ZERO,
            pass_limit: None,
            verify_after: Duration::ZERO,
            every: None,
        }
    }

    /// The rules for a store shared by several servers, with `grace` and store requests that
    /// take at most `request_timeout`.
    pub fn shared(grace: Duration, request_timeout: Duration) -> Self {
        let pass_limit = (grace / 4).min(MAX_PASS);
        Policy {
            grace,
            pass_limit: Some(pass_limit),
            verify_after: pass_limit + request_timeout,
            every: Some((grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(300))),
        }
    }

    /// The rules for `store`.
    pub fn for_store(store: &dyn Store, grace: Duration, request_timeout: Duration) -> Self {
        if store.shared() {
            Policy::shared(grace, request_timeout)
        } else {
            Policy::single_server()
        }
    }

    /// The longest an upload may take from its first content write to its swap (`None`: no
    /// limit).
    pub fn upload_budget(&self) -> Option<Duration> {
        self.pass_limit
            .map(|limit| self.grace.saturating_sub(limit))
    }
}

/// The content a version refers to: what a pointer's JSON names.
#[derive(Debug, Clone, Deserialize)]
pub struct VersionRefs {
    /// SHA-256 of the upload.
    pub sha256: String,
    /// SHA-256 of the module that runs.
    pub runnable_sha256: String,
}

/// A server's lease: the hashes of the modules it holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    /// The server's `service.instance.id`.
    pub instance: String,
    /// Hashes of every module it holds, sorted.
    pub modules: Vec<String>,
    /// When it was written, seconds since the Unix epoch, by the server's clock (for people:
    /// the store's own time of the write is what counts).
    pub written_at: u64,
}

impl Lease {
    /// The lease of `instance` holding `modules`, as stored.
    pub fn encode(instance: &str, modules: &HashSet<String>) -> Bytes {
        let mut modules: Vec<String> = modules.iter().cloned().collect();
        modules.sort();
        let lease = Lease {
            instance: instance.to_string(),
            modules,
            written_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        serde_json::to_vec(&lease).unwrap_or_default().into()
    }
}

/// What a pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Objects removed.
    pub objects: usize,
    /// Their bytes.
    pub bytes: u64,
    /// The pass ran out of time; what is left goes at the next one.
    pub stopped: bool,
}

/// One pass over `store`: removes content no pointer and no live lease refers to, that is
/// older than the grace and not among the server's own `holdings` (taken after the content is
/// listed). `known` gives the content of pointer values the server has read, by tag, so only
/// pointers that changed are read again.
///
/// # Errors
///
/// If the store fails, or a pointer or lease cannot be read: nothing more is removed then, as
/// its content may be in use.
pub async fn collect(
    store: &dyn Store,
    policy: &Policy,
    holdings: impl FnOnce() -> HashSet<String>,
    known: &HashMap<Tag, VersionRefs>,
) -> Result<Collected, StoreError> {
    let start = Instant::now();
    let now = SystemTime::now();
    let contents = store.contents().await?;
    let mut referenced = holdings();
    for pointer in store.pointers(Pointers::Modules).await? {
        let refs = match known.get(&pointer.tag) {
            Some(refs) => refs.clone(),
            None => {
                let Some(value) = store
                    .read(Pointers::Modules, &pointer.name)
                    .await?
                    .and_then(|p| p.value)
                else {
                    continue;
                };
                serde_json::from_slice::<VersionRefs>(&value).map_err(|e| {
                    anyhow!(
                        "module {}: unreadable version ({e}): nothing collected",
                        pointer.name
                    )
                })?
            }
        };
        referenced.insert(refs.sha256);
        referenced.insert(refs.runnable_sha256);
    }
    for lease in store.pointers(Pointers::Leases).await? {
        let age = now.duration_since(lease.modified).unwrap_or_default();
        if age > LEASE_TTL {
            if age > LEASE_TTL * 10 {
                let _ = store
                    .swap(Pointers::Leases, &lease.name, super::Expect::Any, None)
                    .await;
            }
            continue;
        }
        let Some(value) = store
            .read(Pointers::Leases, &lease.name)
            .await?
            .and_then(|p| p.value)
        else {
            continue;
        };
        let lease: Lease = serde_json::from_slice(&value)
            .map_err(|e| anyhow!("lease {}: unreadable ({e}): nothing collected", lease.name))?;
        referenced.extend(lease.modules);
    }
    let mut collected = Collected::default();
    for content in contents {
        if referenced.contains(content.key.sha()) {
            continue;
        }
        // A time in the future (clocks apart) is young.
        let age = now.duration_since(content.modified).unwrap_or_default();
        if age < policy.grace {
            continue;
        }
        if policy
            .pass_limit
            .is_some_and(|limit| start.elapsed() > limit)
        {
            collected.stopped = true;
            break;
        }
        store.delete(&content.key).await?;
        collected.objects += 1;
        collected.bytes += content.size;
    }
    Ok(collected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;
    use crate::store::{ContentKey, Expect};

    #[test]
    fn shared_stores_wait_and_limit_their_passes() {
        let policy = Policy::shared(Duration::from_secs(600), Duration::from_secs(10));
        assert_eq!(policy.pass_limit, Some(Duration::from_secs(30)));
        assert_eq!(policy.verify_after, Duration::from_secs(40));
        assert_eq!(policy.upload_budget(), Some(Duration::from_secs(570)));
        let short = Policy::shared(Duration::from_secs(4), Duration::from_secs(2));
        assert_eq!(short.pass_limit, Some(Duration::from_secs(1)));
        assert_eq!(Policy::single_server().upload_budget(), None);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn collection_keeps_what_versions_and_holdings_refer_to() {
        let dir = std::env::temp_dir().join(format!("iota-collect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LocalStore::open(&dir).unwrap();
        let version = Bytes::from_static(br#"{"sha256": "aa", "runnable_sha256": "bb"}"#);
        store
            .swap(Pointers::Modules, "m", Expect::Absent, Some(version))
            .await
            .unwrap();
        let artifact = |sha: &str| ContentKey::Artifact {
            sha: sha.into(),
            engine: "01".into(),
        };
        for key in [
            ContentKey::Wasm("aa".into()),
            ContentKey::Wasm("bb".into()),
            ContentKey::Names("bb".into()),
            artifact("bb"),
            ContentKey::Wasm("cc".into()),
            artifact("cc"),
            ContentKey::Wasm("dd".into()),
        ] {
            std::fs::write(dir.join(key.path()), b"x").unwrap();
        }
        let policy = Policy::single_server();
        let holdings = || HashSet::from(["dd".to_string()]);
        let collected = collect(&store, &policy, holdings, &HashMap::new())
            .await
            .unwrap();
        assert_eq!((collected.objects, collected.bytes), (2, 2));
        let left: HashSet<String> = store
            .contents()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.key.path())
            .collect();
        assert_eq!(left.len(), 5);
        assert!(!left.contains(&artifact("cc").path()));

        let young = Policy::shared(Duration::from_secs(3600), Duration::from_secs(1));
        std::fs::write(dir.join(ContentKey::Wasm("ee".into()).path()), b"x").unwrap();
        let collected = collect(&store, &young, HashSet::new, &HashMap::new())
            .await
            .unwrap();
        assert_eq!(collected.objects, 0, "young content waits for its grace");

        std::fs::write(dir.join("modules/broken.json"), b"{").unwrap();
        assert!(
            collect(&store, &policy, HashSet::new, &HashMap::new())
                .await
                .is_err()
        );
        assert_eq!(store.contents().await.unwrap().len(), 6, "nothing removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
