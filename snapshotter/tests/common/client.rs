//! The Snapshots calls containerd makes, as plain async functions over the
//! gRPC client (what containerd's snapshot proxy does).

use std::collections::HashMap;

use containerd_snapshots::api::snapshots::v1::{
    CleanupRequest, CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, MountsRequest,
    PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest,
    UsageRequest, UsageResponse, ViewSnapshotRequest,
};
use containerd_snapshots::api::types::Mount;
use tonic::Status;

use super::Client;

pub const SNAPSHOTTER: &str = "strata";

pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub struct Snap(pub Client);

impl Snap {
    pub async fn prepare(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>, Status> {
        self.prepare_labelled(key, parent, labels(&[("containerd.io/gc.root", "test")]))
            .await
    }

    pub async fn prepare_labelled(
        &mut self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let request = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
            parent: parent.into(),
            labels,
        };
        Ok(self.0.prepare(request).await?.into_inner().mounts)
    }

    pub async fn view(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>, Status> {
        let request = ViewSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        Ok(self.0.view(request).await?.into_inner().mounts)
    }

    pub async fn mounts(&mut self, key: &str) -> Result<Vec<Mount>, Status> {
        let request = MountsRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        };
        Ok(self.0.mounts(request).await?.into_inner().mounts)
    }

    pub async fn commit(&mut self, name: &str, key: &str) -> Result<(), Status> {
        self.commit_labelled(name, key, HashMap::new()).await
    }

    pub async fn commit_labelled(
        &mut self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        let request = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: name.into(),
            key: key.into(),
            labels,
        };
        self.0.commit(request).await.map(|_| ())
    }

    pub async fn remove(&mut self, key: &str) -> Result<(), Status> {
        let request = RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        };
        self.0.remove(request).await.map(|_| ())
    }

    pub async fn stat(&mut self, key: &str) -> Result<Info, Status> {
        let request = StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        };
        Ok(self
            .0
            .stat(request)
            .await?
            .into_inner()
            .info
            .expect("stat answers an info"))
    }

    pub async fn update(&mut self, info: Info, paths: &[&str]) -> Result<Info, Status> {
        let request = UpdateSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            info: Some(info),
            update_mask: (!paths.is_empty()).then(|| prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        };
        Ok(self
            .0
            .update(request)
            .await?
            .into_inner()
            .info
            .expect("update answers an info"))
    }

    pub async fn list(&mut self, filters: &[&str]) -> Result<Vec<Info>, Status> {
        let request = ListSnapshotsRequest {
            snapshotter: SNAPSHOTTER.into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        let mut stream = self.0.list(request).await?.into_inner();
        let mut infos = Vec::new();
        while let Some(batch) = stream.message().await? {
            infos.extend(batch.info);
        }
        Ok(infos)
    }

    pub async fn usage(&mut self, key: &str) -> Result<UsageResponse, Status> {
        let request = UsageRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        };
        Ok(self.0.usage(request).await?.into_inner())
    }

    pub async fn cleanup(&mut self) -> Result<(), Status> {
        let request = CleanupRequest {
            snapshotter: SNAPSHOTTER.into(),
        };
        self.0.cleanup(request).await.map(|_| ())
    }
}

pub fn kind(info: &Info) -> Kind {
    Kind::from_i32(info.kind).unwrap_or(Kind::Unknown)
}
