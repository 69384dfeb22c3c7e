//! The store in an S3-compatible object store shared by several servers (`--store
//! s3://bucket/prefix`), through Apache Arrow's `object_store`.
//!
//! The connection comes from the standard `AWS_*` variables: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`),
//! `AWS_ENDPOINT` (or `AWS_ENDPOINT_URL`) for a store other than AWS, and `AWS_ALLOW_HTTP=true`
//! for one without TLS. Pointers are swapped with conditional writes: `If-Match` on the ETag read,
//! `If-None-Match: *` to create one; a deleted module's pointer becomes an empty object (a
//! tombstone), so a deletion is a conditional write too. Every object is written whole by one
//! `PUT`: nothing half-written is ever visible.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig, UpdateVersion,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::local::temporary_beside;
use super::{
    ContentKey, Expect, ListedContent, ListedPointer, Pointer, Pointers, Store, StoreError, Swap,
    Tag,
};

/// Content up to this size is written by one request; larger content by parts of this size.
const PART_BYTES: usize = 16 << 20;

/// A bucket and a prefix in an S3-compatible store.
#[derive(Debug)]
pub struct S3Store {
    client: Arc<AmazonS3>,
    url: String,
    /// Prefix of every key, with its trailing `/` (empty for the bucket's root).
    prefix: String,
}

impl S3Store {
    /// Connects to `url` (`s3://bucket` or `s3://bucket/prefix`), configured by the `AWS_*`
    /// variables. Each request gets `timeout`; failures that may pass are retried within it.
    ///
    /// # Errors
    ///
    /// If the URL or the variables are malformed. Nothing is requested yet.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            anyhow!("--store {url:?}: expected s3://bucket or s3://bucket/prefix")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if bucket.is_empty() {
            anyhow::bail!("--store {url:?}: no bucket name");
        }
        if prefix.split('/').any(|part| {
            part.is_empty() || part == "." || part == ".." || part.contains(['\\', '*', '?'])
        }) && !prefix.is_empty()
        {
            anyhow::bail!("--store {url:?}: the prefix must be plain path segments");
        }
        // TLS to the store goes through rustls with ring, as the OTLP exporter's does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let millis = format!("{}ms", timeout.as_millis().max(1));
        let client = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                millis.clone(),
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                millis,
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: timeout,
            })
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .build()
            .with_context(|| format!("configuring the S3 store {url}"))?;
        Ok(S3Store {
            client: Arc::new(client),
            url: url.trim_end_matches('/').to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    fn path(&self, relative: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{relative}", self.prefix))
    }

    fn pointer_path(&self, kind: Pointers, name: &str) -> ObjectPath {
        self.path(&format!("{}/{name}.json", kind.dir()))
    }

    /// Every object under `dir/`, paths relative to the prefix.
    async fn list(&self, dir: &str) -> Result<Vec<(String, ObjectMeta)>, StoreError> {
        let root = self.path(dir);
        let mut listing = self.client.list(Some(&root));
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    StoreError::Refused(format!("{}: bucket not found: {e}", self.url))
                }
                e => classify(&format!("listing {dir}/"), e),
            })?;
            let location = meta.location.to_string();
            if let Some(relative) = location.strip_prefix(&self.prefix) {
                found.push((relative.to_string(), meta));
            }
        }
        Ok(found)
    }
}

/// The tag of an ETag: without quotes or weakness mark, as listings and headers differ.
fn tag(e_tag: &str) -> Tag {
    Tag(e_tag.trim_start_matches("W/").trim_matches('"').to_string())
}

fn modified(meta: &ObjectMeta) -> SystemTime {
    SystemTime::from(meta.last_modified)
}

/// The reason in an `object_store` error's text, without the request's URL: the transport
/// error, or the status with the S3 error code and message (not the whole XML body).
fn brief(text: &str) -> String {
    let reason = text
        .rsplit_once(" - ")
        .map_or(text, |(_, reason)| reason)
        .trim();
    let between = |open: &str, close: &str| {
        let start = reason.find(open)? + open.len();
        let end = reason[start..].find(close)? + start;
        Some(&reason[start..end])
    };
    let reason = match (between("<Code>", "</Code>"), reason.find(": <")) {
        (Some(code), Some(body)) => match between("<Message>", "</Message>") {
            Some(message) => format!("{}: {code}: {message}", &reason[..body]),
            None => format!("{}: {code}", &reason[..body]),
        },
        _ => reason.to_string(),
    };
    reason.chars().take(300).collect()
}

/// The HTTP status an `object_store` error's text reports, if any.
fn status_in(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// Sorts a failure of the request `what`: refused (fix the configuration: credentials,
/// permissions, the bucket) or unavailable (try again). The message keeps the reason, not the
/// request's URL (it is logged at debug).
fn classify(what: &str, error: object_store::Error) -> StoreError {
    tracing::debug!("store request failed: {what}: {error}");
    let text = error.to_string();
    let message = format!("{what}: {}", brief(&text));
    let refused = match error {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => true,
        // Listings report their status in the text only.
        _ => status_in(&text).is_some_and(|status| {
            (400..500).contains(&status) && ![408, 409, 429].contains(&status)
        }),
    };
    if refused {
        StoreError::Refused(message)
    } else {
        StoreError::Unavailable(message)
    }
}

#[async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        self.url.clone()
    }

    fn shared(&self) -> bool {
        true
    }

    async fn put(&self, key: &ContentKey, file: &Path) -> Result<(), StoreError> {
        let mut source = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("reading {}", file.display()))?;
        // One `PUT` up to a part's size; larger content goes in parts, and appears whole when
        // the upload completes.
        let client: Arc<dyn ObjectStore> = self.client.clone();
        let mut writer = BufWriter::with_capacity(client, self.path(&key.path()), PART_BYTES)
            .with_max_concurrency(4);
        let written = match tokio::io::copy(&mut source, &mut writer).await {
            Ok(_) => writer.shutdown().await,
            Err(err) => {
                // Cleans up the parts written so far (a writer that failed to complete its
                // upload cannot be aborted; a bucket lifecycle rule removes what is left).
                let _ = writer.abort().await;
                Err(err)
            }
        };
        if let Err(err) = written {
            tracing::debug!("store request failed: writing {}: {err}", key.path());
            return Err(StoreError::Unavailable(format!(
                "writing {}: {}",
                key.path(),
                brief(&err.to_string())
            )));
        }
        Ok(())
    }

    async fn get(&self, key: &ContentKey, to: &Path) -> Result<bool, StoreError> {
        let what = format!("reading {}", key.path());
        let result = match self.client.get(&self.path(&key.path())).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(classify(&what, e)),
        };
        let tmp = temporary_beside(to);
        let written = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut hasher = Sha256::new();
            let mut stream = result.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| classify(&what, e))?;
                hasher.update(&chunk);
                file.write_all(&chunk).await.context("writing the cache")?;
            }
            file.flush().await.context("writing the cache")?;
            if let ContentKey::Wasm(sha) = key {
                let actual = hex::encode(hasher.finalize());
                if &actual != sha {
                    return Err(StoreError::Other(anyhow!(
                        "{}{}: content has SHA-256 {actual}, not the one it is named by",
                        self.prefix,
                        key.path()
                    )));
                }
            }
            tokio::fs::rename(&tmp, to)
                .await
                .with_context(|| format!("renaming to {}", to.display()))?;
            Ok(())
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        written.map(|()| true)
    }

    async fn exists(&self, key: &ContentKey) -> Result<bool, StoreError> {
        match self.client.head(&self.path(&key.path())).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(classify(&format!("checking {}", key.path()), e)),
        }
    }

    async fn contents(&self) -> Result<Vec<ListedContent>, StoreError> {
        let mut listed = Vec::new();
        for dir in ["blobs", "compiled"] {
            for (relative, meta) in self.list(dir).await? {
                if let Some(key) = ContentKey::parse(&relative) {
                    listed.push(ListedContent {
                        key,
                        size: meta.size,
                        modified: modified(&meta),
                    });
                }
            }
        }
        Ok(listed)
    }

    async fn delete(&self, key: &ContentKey) -> Result<(), StoreError> {
        match self.client.delete(&self.path(&key.path())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(classify(&format!("deleting {}", key.path()), e)),
        }
    }

    async fn read(&self, kind: Pointers, name: &str) -> Result<Option<Pointer>, StoreError> {
        let what = format!("reading {}/{name}.json", kind.dir());
        let result = match self.client.get(&self.pointer_path(kind, name)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(classify(&what, e)),
        };
        let e_tag = result.meta.e_tag.clone().ok_or_else(|| {
            StoreError::Other(anyhow!(
                "{}: the store gave no ETag; conditional writes need one",
                self.url
            ))
        })?;
        let bytes = result.bytes().await.map_err(|e| classify(&what, e))?;
        Ok(Some(Pointer {
            value: (!bytes.is_empty()).then_some(bytes),
            tag: tag(&e_tag),
        }))
    }

    async fn swap(
        &self,
        kind: Pointers,
        name: &str,
        expected: Expect<'_>,
        value: Option<Bytes>,
    ) -> Result<Swap, StoreError> {
        let path = self.pointer_path(kind, name);
        let what = format!("writing {}/{name}.json", kind.dir());
        let mode = match expected {
            Expect::Absent => PutMode::Create,
            Expect::Tag(Tag(e_tag)) => PutMode::Update(UpdateVersion {
                e_tag: Some(format!("\"{e_tag}\"")),
                version: None,
            }),
            Expect::Any => {
                if value.is_none() {
                    return match self.client.delete(&path).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(Swap::Done(None)),
                        Err(e) => Err(classify(&what, e)),
                    };
                }
                PutMode::Overwrite
            }
        };
        let tombstone = value.is_none();
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .client
            .put_opts(&path, PutPayload::from(value.unwrap_or_default()), options)
            .await
        {
            Ok(result) if tombstone => {
                let _ = result;
                Ok(Swap::Done(None))
            }
            Ok(result) => Ok(Swap::Done(result.e_tag.as_deref().map(tag))),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => Ok(Swap::Conflict),
            Err(e) => Err(classify(&what, e)),
        }
    }

    async fn pointers(&self, kind: Pointers) -> Result<Vec<ListedPointer>, StoreError> {
        let mut listed = Vec::new();
        for (relative, meta) in self.list(kind.dir()).await? {
            let Some(name) = relative
                .strip_prefix(kind.dir())
                .and_then(|r| r.strip_prefix('/'))
                .and_then(|r| r.strip_suffix(".json"))
            else {
                continue;
            };
            // A tombstone: the name has no version.
            if meta.size == 0 || name.contains('/') {
                continue;
            }
            let Some(e_tag) = meta.e_tag.as_deref() else {
                return Err(StoreError::Other(anyhow!(
                    "{}: the store lists no ETags; conditional writes need them",
                    self.url
                )));
            };
            listed.push(ListedPointer {
                name: name.to_string(),
                tag: tag(e_tag),
                modified: modified(&meta),
            });
        }
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_prefix() {
        let store = S3Store::new("s3://bucket/some/prefix/", Duration::from_secs(1)).unwrap();
        assert_eq!(store.prefix, "some/prefix/");
        assert_eq!(
            store
                .path(&ContentKey::Wasm("ab".into()).path())
                .to_string(),
            "some/prefix/blobs/ab.wasm"
        );
        let store = S3Store::new("s3://bucket", Duration::from_secs(1)).unwrap();
        assert_eq!(store.prefix, "");
        assert_eq!(
            store.pointer_path(Pointers::Modules, "m").to_string(),
            "modules/m.json"
        );
        for bad in [
            "bucket",
            "http://bucket",
            "s3://",
            "s3:///x",
            "s3://b/a//c",
            "s3://b/../x",
        ] {
            assert!(S3Store::new(bad, Duration::from_secs(1)).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_keep_the_reason_without_the_url() {
        let text = "Generic S3 error: Error performing list request: Error performing GET \
                    http://127.0.0.1:1/b?list-type=2 in 5ms - Server returned non-2xx status \
                    code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>AccessDenied</Code>\
                    <Message>Access Denied.</Message></Error>";
        assert_eq!(
            brief(text),
            "Server returned non-2xx status code: 403 Forbidden: AccessDenied: Access Denied."
        );
        assert_eq!(status_in(text), Some(403));
        let text = "Generic S3 error: Error performing PUT http://127.0.0.1:1/b/k in 1s - HTTP \
                    error: error sending request";
        assert_eq!(brief(text), "HTTP error: error sending request");
        assert_eq!(status_in(text), None);
    }

    #[test]
    fn tags_ignore_quotes() {
        assert_eq!(tag("\"abc\""), Tag("abc".into()));
        assert_eq!(tag("W/\"abc\""), Tag("abc".into()));
        assert_eq!(tag("abc"), Tag("abc".into()));
    }
}
