//! Keeping in step with the store: loading what other servers changed, publishing this
//! server's lease, checking recent uploads, collecting unreferenced content, trimming the cache.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures_util::StreamExt;

use iota_instrument::FunctionEntry;

use super::{
    Current, Failure, Link, LoadedModule, ModuleInfo, Registry, Seen, StoredName, Unverified,
    is_sha256, learned_ids, lock, read_json, split_names, validate_name,
};
use crate::runtime::Counters;
use crate::runtime::component::{Kind, Program};
use crate::store::collect::{self, Collected, LEASE_REFRESH, Lease, VersionRefs};
use crate::store::{ContentKey, Expect, Pointers, StoreError, Tag};

/// Versions loaded from the store at once.
const LOADS_AT_ONCE: usize = 8;
/// A version that failed to load is tried again after this, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait before a version that failed to load is tried again.
const RETRY_MAX: Duration = Duration::from_secs(60);

impl Registry {
    /// Loads what changed in the store since the last look: new and replaced versions, and
    /// names deleted. Versions that fail to load are logged and tried again later.
    ///
    /// # Errors
    ///
    /// If the store cannot be listed.
    pub(super) async fn sync(&self) -> Result<(), StoreError> {
        let listed = self.health(self.store.pointers(Pointers::Modules).await)?;
        let seen: HashMap<String, Option<Tag>> = self
            .modules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, current)| (name.clone(), current.tag.clone()))
            .collect();
        let mut changed = Vec::new();
        let mut listed_names = HashSet::new();
        for pointer in listed {
            if validate_name(&pointer.name).is_err() {
                continue;
            }
            listed_names.insert(pointer.name.clone());
            let was = seen.get(&pointer.name).cloned();
            if was.as_ref() == Some(&Some(pointer.tag.clone()))
                || self.waiting(&pointer.name, &pointer.tag)
            {
                continue;
            }
            changed.push((pointer.name, was));
        }
        let loads = futures_util::stream::iter(changed)
            .map(|(name, was)| self.refresh(name, was))
            .buffer_unordered(LOADS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        for (name, tag) in seen {
            if !listed_names.contains(&name) {
                self.remove_if(&name, &Some(tag)).await;
            }
        }
        lock(&self.failures).retain(|name, _| listed_names.contains(name));
        if loads.iter().any(|loaded| *loaded) {
            self.cache_changed.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether `name` at `tag` failed to load and waits before the next try.
    fn waiting(&self, name: &str, tag: &Tag) -> bool {
        lock(&self.failures)
            .get(name)
            .is_some_and(|f| &f.tag == tag && Instant::now() < f.retry_at)
    }

    /// Reads `name`'s pointer and loads its version (or drops the name if it has none), unless
    /// this server changed the name meanwhile. Returns whether a version was loaded.
    async fn refresh(&self, name: String, was: Seen) -> bool {
        let pointer = match self.health(self.store.read(Pointers::Modules, &name).await) {
            Ok(pointer) => pointer,
            Err(err) => {
                tracing::debug!(module = name, "reading the module's version: {err}");
                return false;
            }
        };
        let Some((value, tag)) = pointer.and_then(|p| p.value.map(|v| (v, p.tag))) else {
            self.remove_if(&name, &was).await;
            return false;
        };
        match self.load(&name, &value).await {
            Ok(module) => {
                lock(&self.failures).remove(&name);
                let installed = self.install_if(&name, &was, module, Some(tag)).await;
                if installed {
                    self.counters
                        .versions_loaded
                        .fetch_add(1, Ordering::Relaxed);
                }
                installed
            }
            Err(err) => {
                let err = self.failed(err);
                let mut failures = lock(&self.failures);
                let wait = match failures.get(&name) {
                    Some(f) if f.tag == tag => (f.wait * 2).min(RETRY_MAX),
                    _ => {
                        tracing::error!(module = name, "cannot load the stored version: {err:#}");
                        RETRY_FIRST
                    }
                };
                failures.insert(
                    name,
                    Failure {
                        tag,
                        retry_at: Instant::now() + wait,
                        wait,
                    },
                );
                false
            }
        }
    }

    /// Makes `module` the version of `name` if the name is still as this server saw it
    /// before reading the store (an upload or delete of this server may have come first).
    async fn install_if(
        &self,
        name: &str,
        was: &Seen,
        module: LoadedModule,
        tag: Option<Tag>,
    ) -> bool {
        let _switch = self.switch.lock().await;
        let mut modules = self.modules.write().unwrap_or_else(|e| e.into_inner());
        if modules.get(name).map(|c| c.tag.clone()) != *was {
            return false;
        }
        let module = Arc::new(module);
        lock(&self.loaded).push(Arc::downgrade(&module));
        modules.insert(name.to_string(), Current { module, tag });
        true
    }

    /// Drops `name` if it is still as this server saw it.
    async fn remove_if(&self, name: &str, was: &Seen) {
        let _switch = self.switch.lock().await;
        let mut modules = self.modules.write().unwrap_or_else(|e| e.into_inner());
        if modules.get(name).map(|c| c.tag.clone()) == *was {
            modules.remove(name);
        }
    }

    /// The functions a learned version `info` counts because runs showed them short, from its
    /// stored function map; where that cannot be read, those with a switch (all of them,
    /// unless the version was compiled without).
    async fn stored_learned_ids(&self, info: &ModuleInfo, counters: &Counters) -> Vec<u32> {
        let key = ContentKey::Functions(info.runnable_sha256.clone());
        let map = match self.cache.file(self.store.as_ref(), &key).await {
            Ok(Some(file)) => read_json::<Vec<FunctionEntry>>(&file).ok(),
            _ => None,
        };
        match map {
            Some(functions) => learned_ids(&functions),
            None => counters.switches.iter().map(|(id, _)| *id).collect(),
        }
    }

    /// Loads the version `value` of `name`: its names and its code for this engine.
    async fn load(&self, name: &str, value: &[u8]) -> Result<LoadedModule, StoreError> {
        let mut info: ModuleInfo = serde_json::from_slice(value)
            .map_err(|e| anyhow!("module {name}: unreadable version: {e}"))?;
        if info.name != name || !is_sha256(&info.sha256) || !is_sha256(&info.runnable_sha256) {
            return Err(anyhow!(
                "module {name}: its version names another module or malformed hashes"
            )
            .into());
        }
        let names_key = ContentKey::Names(info.runnable_sha256.clone());
        let names_file = self
            .cache
            .file(self.store.as_ref(), &names_key)
            .await?
            .ok_or_else(|| anyhow!("{} is missing from the store", names_key.path()))?;
        let names: Vec<Option<StoredName>> = read_json(&names_file)?;
        let (names, locations) = split_names(names);
        let program = self.compiled(&info.runnable_sha256, info.kind).await?;
        let host_spans = info.host_spans && self.runtime.host_spans();
        let Link {
            pre,
            entry,
            counters,
        } = self
            .link(&program, info.trap_unknown_imports, host_spans)?
            .map_err(anyhow::Error::msg)?;
        info.entry = entry;
        let learned = if info.generation > 0 {
            self.stored_learned_ids(&info, &counters).await
        } else {
            Vec::new()
        };
        Ok(LoadedModule {
            learning: self.learning_for(&info, learned),
            info,
            pre,
            names,
            locations,
            host_spans,
            counters,
            warm: AtomicBool::new(false),
            inline_credit: AtomicU8::new(0),
        })
    }

    /// The stored runnable module `sha` compiled for this engine: its artifact from the store,
    /// or compiled here (by a worker, as uploads are) and stored for the other servers.
    async fn compiled(&self, sha: &str, kind: Kind) -> Result<Program, StoreError> {
        let key = ContentKey::Artifact {
            sha: sha.to_string(),
            engine: self.engine_key.clone(),
        };
        if let Some(path) = self.cache.file(self.store.as_ref(), &key).await? {
            match self.deserialize(&path, kind) {
                Ok(module) => {
                    self.counters
                        .artifacts_fetched
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(module);
                }
                Err(err) => tracing::warn!(path = %path.display(), "recompiling: {err:#}"),
            }
        }
        let wasm_key = ContentKey::Wasm(sha.to_string());
        let wasm_file = self
            .cache
            .file(self.store.as_ref(), &wasm_key)
            .await?
            .ok_or_else(|| anyhow!("{} is missing from the store", wasm_key.path()))?;
        let wasm = std::fs::read(&wasm_file)
            .with_context(|| format!("reading {}", wasm_file.display()))?;
        let compiled = self
            .compiler
            .precompile(&wasm)
            .await
            .map_err(|e| anyhow!("compiling stored module {sha}: {e}"))?;
        let module = self.deserialize(&compiled.artifact, compiled.kind)?;
        self.cache
            .put(self.store.as_ref(), &key, &compiled.artifact)
            .await?;
        self.counters
            .artifacts_compiled
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            module = sha,
            "compiled for this engine and stored the artifact"
        );
        Ok(module)
    }

    /// Hashes of every module this server holds: loaded versions (runs may hold older ones),
    /// uploads being stored, and recent uploads not yet checked.
    fn holdings(&self) -> HashSet<String> {
        let mut held: HashSet<String> = lock(&self.installing).keys().cloned().collect();
        lock(&self.loaded).retain(|version| match version.upgrade() {
            Some(module) => {
                held.insert(module.info.sha256.clone());
                held.insert(module.info.runnable_sha256.clone());
                true
            }
            None => false,
        });
        for upload in lock(&self.unverified).iter() {
            held.extend(upload.keys.iter().map(|k| k.sha().to_string()));
        }
        held
    }

    /// One collection pass (see [`collect`]); failures are logged and the next pass retries.
    pub(super) async fn collect_garbage(&self) {
        let known: HashMap<Tag, VersionRefs> = self
            .modules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|current| {
                let info = &current.module.info;
                Some((
                    current.tag.clone()?,
                    VersionRefs {
                        sha256: info.sha256.clone(),
                        runnable_sha256: info.runnable_sha256.clone(),
                    },
                ))
            })
            .collect();
        *lock(&self.last_collection) = Instant::now();
        let result = collect::collect(
            self.store.as_ref(),
            &self.policy,
            || self.holdings(),
            &known,
        )
        .await;
        match self.health(result) {
            Ok(Collected { objects: 0, .. }) => {}
            Ok(collected) => {
                self.counters
                    .collected
                    .fetch_add(collected.objects as u64, Ordering::Relaxed);
                tracing::info!(
                    objects = collected.objects,
                    bytes = collected.bytes,
                    "removed unreferenced content"
                );
            }
            // The store going away is logged once, by `health`.
            Err(err @ StoreError::Unavailable(_)) => {
                tracing::debug!("collecting unreferenced content: {err}")
            }
            Err(err) => tracing::error!("collecting unreferenced content: {err:#}"),
        }
    }

    /// Publishes this server's holdings when they changed or the lease is due.
    pub(super) async fn refresh_lease(&self) {
        let mut lease = self.lease.lock().await;
        let holdings = self.holdings();
        let due = match &*lease {
            Some((published, at)) => *published != holdings || at.elapsed() >= LEASE_REFRESH,
            None => true,
        };
        if !due {
            return;
        }
        let value = Lease::encode(&self.settings.instance, &holdings);
        let written = self
            .store
            .swap(
                Pointers::Leases,
                &self.settings.instance,
                Expect::Any,
                Some(value),
            )
            .await;
        match self.health(written) {
            Ok(_) => *lease = Some((holdings, Instant::now())),
            Err(err) => tracing::debug!("publishing the lease: {err}"),
        }
    }

    /// Checks the content of uploads whose check is due, writing again what a collection
    /// pass removed.
    async fn verify_uploads(&self) {
        let now = Instant::now();
        let due: Vec<Unverified> = {
            let mut unverified = lock(&self.unverified);
            let (due, later) = unverified.drain(..).partition(|u| u.due <= now);
            *unverified = later;
            due
        };
        for upload in due {
            if let Err(err) = self.verify(&upload.keys).await {
                tracing::debug!("checking an upload's content, retrying: {err}");
                lock(&self.unverified).push(upload);
            }
        }
    }

    async fn verify(&self, keys: &[ContentKey]) -> Result<(), StoreError> {
        for key in keys {
            if self.health(self.store.exists(key).await)? {
                continue;
            }
            match self.cache.holds(self.store.as_ref(), key) {
                Some(file) => {
                    tracing::warn!(
                        key = key.path(),
                        "content removed by a collection racing the upload: stored again"
                    );
                    self.health(self.store.put(key, &file).await)?;
                }
                None => tracing::error!(
                    key = key.path(),
                    "content removed by a collection racing the upload, and no local copy is left"
                ),
            }
        }
        Ok(())
    }

    /// One round of maintenance: load what changed, publish the lease, check recent uploads,
    /// collect when due, trim the cache.
    pub async fn tick(&self) {
        if let Err(err) = self.sync().await {
            tracing::debug!("reading the store: {err}");
        }
        self.refresh_lease().await;
        self.verify_uploads().await;
        if let Some(every) = self.policy.every
            && lock(&self.last_collection).elapsed() >= every
        {
            self.collect_garbage().await;
        }
        if self.cache_changed.swap(false, Ordering::Relaxed) {
            let mut in_use: HashSet<String> = self
                .modules
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .map(|c| c.module.info.runnable_sha256.clone())
                .collect();
            in_use.extend(lock(&self.installing).keys().cloned());
            for upload in lock(&self.unverified).iter() {
                in_use.extend(upload.keys.iter().map(|k| k.sha().to_string()));
            }
            let trimmed = tokio::task::block_in_place(|| self.cache.trim(&in_use));
            if trimmed.files > 0 {
                tracing::debug!(
                    files = trimmed.files,
                    bytes = trimmed.bytes,
                    "trimmed the cache"
                );
            }
        }
    }

    /// Runs [`Registry::tick`] every poll interval, for ever.
    pub async fn maintain(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.settings.poll);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            self.tick().await;
        }
    }
}
