//! Where snapshots are kept: a small trait ([`StateStore`]) and its implementation on the
//! `object_store` crate, which serves a local directory and S3-compatible object stores (and
//! the other schemes it knows) alike, so partitions that move between hosts can find their
//! snapshots.
//!
//! A local directory is written atomically (a staging file renamed into place), so a reader
//! never sees half a snapshot; object stores make a PUT visible whole. Neither fsyncs: a
//! snapshot lost to a power cut is found missing or refused by its checksum, and the restore
//! falls back to an older one or to a full replay.

use std::sync::mpsc;
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// A failed store operation, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("state store {store}: {what}: {message}")]
pub struct StoreError {
    pub store: String,
    pub what: String,
    pub message: String,
}

/// A flat namespace of named blobs. Names are `/`-separated paths.
pub trait StateStore: Send + Sync {
    /// Stores `bytes` under `name`, replacing what was there; readers see the old or the new
    /// blob whole, never a part.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// The blob stored under `name`, `None` if there is none.
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The names under `prefix` (a directory-like path), sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// Removes `name` (no error if it is absent).
    fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// Where the store is, for logs.
    fn describe(&self) -> String;
}

/// A [`StateStore`] on an `object_store` backend. Its async calls run on a small runtime of
/// its own, so any thread (the consumer's, a worker, a tokio task's blocking section) can call
/// it.
pub struct ObjectStateStore {
    store: Arc<dyn ObjectStore>,
    root: ObjPath,
    describe: String,
    /// Always `Some` until dropped (then shut down in the background, which is allowed from
    /// any context, where dropping a runtime inside async code is not).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ObjectStateStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl ObjectStateStore {
    /// A store in local directory `dir` (created if absent).
    pub fn local(dir: &std::path::Path) -> Result<ObjectStateStore, StoreError> {
        let describe = dir.display().to_string();
        let err = |what: &str, e: String| StoreError {
            store: describe.clone(),
            what: what.into(),
            message: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| err("creating the directory", e.to_string()))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| err("opening", e.to_string()))?;
        Self::with(Arc::new(fs), ObjPath::default(), describe)
    }

    /// A store at `url`: `s3://bucket/prefix` (credentials and endpoint from the usual `AWS_*`
    /// variables, e.g. `AWS_ENDPOINT` for an S3-compatible server), `file:///dir`, or
    /// `memory://` (in-process, for tests).
    pub fn from_url(url: &str) -> Result<ObjectStateStore, StoreError> {
        let err = |what: &str, e: String| StoreError {
            store: url.to_string(),
            what: what.into(),
            message: e,
        };
        let parsed = url::Url::parse(url).map_err(|e| err("parsing the URL", e.to_string()))?;
        if parsed.scheme() == "file" {
            let dir = parsed
                .to_file_path()
                .map_err(|()| err("parsing the URL", "not a local path".into()))?;
            return Self::local(&dir);
        }
        let (store, root) = object_store::parse_url_opts(&parsed, std::env::vars())
            .map_err(|e| err("opening", e.to_string()))?;
        Self::with(Arc::from(store), root, url.to_string())
    }

    fn with(
        store: Arc<dyn ObjectStore>,
        root: ObjPath,
        describe: String,
    ) -> Result<ObjectStateStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vigil-state-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError {
                store: describe.clone(),
                what: "starting its runtime".into(),
                message: e.to_string(),
            })?;
        Ok(ObjectStateStore {
            store,
            root,
            describe,
            runtime: Some(runtime),
        })
    }

    fn path(&self, name: &str) -> ObjPath {
        name.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.root.clone(), |p, part| p.join(part))
    }

    /// Runs `fut` on the store's runtime and waits for it from any thread.
    fn run<T: Send + 'static>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, object_store::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let err = |message: String| StoreError {
            store: self.describe.clone(),
            what: what.into(),
            message,
        };
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| err("the store is closed".into()))?;
        let (tx, rx) = mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| err("the store's runtime stopped".into()))?
            .map_err(|e| err(e.to_string()))
    }
}

impl StateStore for ObjectStateStore {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let (store, path) = (Arc::clone(&self.store), self.path(name));
        let bytes = bytes::Bytes::copy_from_slice(bytes);
        self.run(&format!("writing {name}"), async move {
            store.put(&path, PutPayload::from(bytes)).await.map(|_| ())
        })
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (store, path) = (Arc::clone(&self.store), self.path(name));
        self.run(&format!("reading {name}"), async move {
            match store.get(&path).await {
                Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let (store, path) = (Arc::clone(&self.store), self.path(prefix));
        let root = self.root.clone();
        self.run(&format!("listing {prefix}"), async move {
            let mut names = Vec::new();
            let mut stream = store.list(Some(&path));
            while let Some(meta) = stream.next().await {
                let location = meta?.location;
                let rel: Vec<String> = match location.prefix_match(&root) {
                    Some(parts) => parts.map(|p| p.as_ref().to_string()).collect(),
                    None => location.parts().map(|p| p.as_ref().to_string()).collect(),
                };
                names.push(rel.join("/"));
            }
            names.sort();
            Ok(names)
        })
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let (store, path) = (Arc::clone(&self.store), self.path(name));
        self.run(&format!("deleting {name}"), async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
