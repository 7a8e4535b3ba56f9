//! Container records: a read-write layer on top of an image's top layer.
//!
//! On disk, `<graphroot>/<driver>-containers/containers.json`. A container's
//! layer has the container's id.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::records::{RecordFile, found, lookup, take_names};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The image it was made from.
    pub image: String,
    /// Its read-write layer.
    pub layer: String,
    /// Seconds since the epoch.
    pub created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct Records {
    containers: BTreeMap<String, ContainerRecord>,
}

pub struct ContainerStore {
    records: RecordFile,
}

impl ContainerStore {
    pub fn open(graphroot: &Path, driver_name: &str) -> Result<ContainerStore> {
        Ok(ContainerStore {
            records: RecordFile::open(
                graphroot.join(format!("{driver_name}-containers")),
                "containers.json",
            )?,
        })
    }

    /// Records a container; its names move here from any container that had
    /// them.
    pub fn create(&self, record: &ContainerRecord) -> Result<()> {
        let _lock = self.records.lock()?;
        let mut records: Records = self.records.load()?;
        if records.containers.contains_key(&record.id) {
            return Err(strata_plugin_abi::DriverError::already_exists(format!(
                "create container {}: container exists",
                record.id
            ))
            .into());
        }
        take_names(
            records.containers.values_mut().map(|r| &mut r.names),
            &record.names,
        );
        records.containers.insert(record.id.clone(), record.clone());
        self.records.save(&records)
    }

    pub fn get(&self, id: &str) -> Result<Option<ContainerRecord>> {
        Ok(self.records.read::<Records>()?.containers.get(id).cloned())
    }

    pub fn list(&self) -> Result<Vec<ContainerRecord>> {
        Ok(self
            .records
            .read::<Records>()?
            .containers
            .into_values()
            .collect())
    }

    /// The id of the container `reference` names: id, name or unique prefix.
    pub fn resolve(&self, reference: &str) -> Result<String> {
        let containers = self.list()?;
        let entries = containers
            .iter()
            .map(|r| (r.id.as_str(), r.names.as_slice()));
        found("container", reference, lookup(entries, reference))
    }

    pub fn delete(&self, id: &str) -> Result<ContainerRecord> {
        let _lock = self.records.lock()?;
        let mut records: Records = self.records.load()?;
        let record = records.containers.remove(id).ok_or_else(|| {
            CoreError::from(strata_plugin_abi::DriverError::not_found(format!(
                "delete container {id}: no such container"
            )))
        })?;
        self.records.save(&records)?;
        Ok(record)
    }
}
