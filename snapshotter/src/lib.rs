//! # strata-snapshotter
//!
//! containerd's Snapshots API (`containerd.services.snapshots.v1`), served
//! over a strata store, so containerd can use any strata driver — ours or a
//! third party's — as a proxy snapshotter plugin:
//!
//! ```toml
//! # containerd's config.toml
//! [proxy_plugins.strata]
//!   type = "snapshot"
//!   address = "/run/strata-snapshotter/snapshotter.sock"
//! ```
//!
//! Each snapshot is a layer of the store (see [`record`]); mounts are what
//! the driver describes (`GraphDriver::describe_mount`), or a bind of the
//! store's mount of the layer for a driver that describes none. The
//! snapshotter is one more process on the store: the `strata` command can
//! work on the same store at the same time.

pub mod error;
pub mod filter;
pub mod record;
pub mod service;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::{Info, Snapshotter, Usage};

pub use error::SnapshotError;
pub use service::Snapshots;

/// The Snapshots service: each call runs the store's blocking work on
/// tokio's blocking threads.
#[derive(Clone)]
pub struct StrataSnapshotter {
    snapshots: Arc<Snapshots>,
}

impl StrataSnapshotter {
    /// Serves `snapshots`.
    pub fn new(snapshots: Snapshots) -> StrataSnapshotter {
        StrataSnapshotter {
            snapshots: Arc::new(snapshots),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Snapshots) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, SnapshotError> {
        let snapshots = self.snapshots.clone();
        tokio::task::spawn_blocking(move || work(&snapshots))
            .await
            .unwrap_or_else(|e| {
                Err(SnapshotError::Internal(format!(
                    "the snapshot operation did not finish: {e}"
                )))
            })
    }
}

fn sorted(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

#[tonic::async_trait]
impl Snapshotter for StrataSnapshotter {
    type Error = SnapshotError;

    async fn stat(&self, key: String) -> Result<Info, Self::Error> {
        self.run(move |s| s.stat(&key)).await
    }

    async fn update(
        &self,
        info: Info,
        fieldpaths: Option<Vec<String>>,
    ) -> Result<Info, Self::Error> {
        self.run(move |s| s.update(info, fieldpaths)).await
    }

    async fn usage(&self, key: String) -> Result<Usage, Self::Error> {
        self.run(move |s| s.usage(&key)).await
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Self::Error> {
        self.run(move |s| s.mounts(&key)).await
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        self.run(move |s| s.create(record::SnapshotKind::Active, &key, &parent, sorted(labels)))
            .await
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Self::Error> {
        self.run(move |s| s.create(record::SnapshotKind::View, &key, &parent, sorted(labels)))
            .await
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Self::Error> {
        self.run(move |s| s.commit(&name, &key, sorted(labels)))
            .await
    }

    async fn remove(&self, key: String) -> Result<(), Self::Error> {
        self.run(move |s| s.remove(&key)).await
    }

    async fn clear(&self) -> Result<(), Self::Error> {
        self.run(|s| s.cleanup()).await
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, SnapshotError>>>;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Self::Error> {
        let infos = self.run(move |s| s.list(&filters)).await?;
        Ok(tokio_stream::iter(
            infos.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }
}
