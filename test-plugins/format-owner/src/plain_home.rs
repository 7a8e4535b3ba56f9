//! Where the test plugin keeps its layers on Windows, where the driver kit
//! (flock on directories, openat) does not build: `<home>/layers/<id>/`
//! with a `parent` file, made under a staging name and renamed into place.
//! A test plugin's home, not a driver's: a killed create leaves a
//! `.new-` directory that the next open deletes, and nothing more is
//! promised (no other process is expected on it).

use std::fs;
use std::path::{Path, PathBuf};

use strata_plugin_abi::{DriverError, Result, is_valid_layer_id, validate_layer_id};

pub struct LayerHome {
    layers: PathBuf,
}

pub struct Staging(PathBuf);

impl Staging {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> DriverError {
    move |e| DriverError::io(context, &e)
}

impl LayerHome {
    pub fn open(home: &Path) -> Result<LayerHome> {
        let layers = home.join("layers");
        fs::create_dir_all(&layers).map_err(io(format!("create {}", layers.display())))?;
        let home = LayerHome { layers };
        home.collect_leftovers();
        Ok(home)
    }

    fn path_of(&self, id: &str, operation: &str) -> Result<PathBuf> {
        validate_layer_id(id).map_err(|e| e.context(format!("{operation} layer {id:?}")))?;
        Ok(self.layers.join(id))
    }

    pub fn existing(&self, id: &str, operation: &str) -> Result<PathBuf> {
        let dir = self.path_of(id, operation)?;
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(DriverError::not_found(format!(
                "{operation} layer {id}: no such layer"
            )))
        }
    }

    pub fn exists(&self, id: &str) -> bool {
        is_valid_layer_id(id) && self.layers.join(id).is_dir()
    }

    pub fn stage(&self, id: &str, operation: &str) -> Result<Staging> {
        self.path_of(id, operation)?;
        let path = self
            .layers
            .join(format!(".new-{id}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).map_err(io(format!("{operation} layer {id}")))?;
        Ok(Staging(path))
    }

    pub fn place(
        &self,
        staging: Staging,
        id: &str,
        parent: Option<&str>,
        operation: &str,
    ) -> Result<PathBuf> {
        if let Some(parent) = parent {
            fs::write(staging.0.join("parent"), parent)
                .map_err(io(format!("{operation} layer {id}")))?;
        }
        let dir = self.path_of(id, operation)?;
        fs::rename(&staging.0, &dir).map_err(io(format!("{operation} layer {id}")))?;
        Ok(dir)
    }

    pub fn remove(
        &self,
        id: &str,
        operation: &str,
        _take_down: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let dir = self.existing(id, operation)?;
        let children = self
            .list()?
            .into_iter()
            .filter(|other| {
                fs::read_to_string(self.layers.join(other).join("parent")).is_ok_and(|p| p == id)
            })
            .count();
        if children > 0 {
            return Err(DriverError::busy(format!(
                "{operation} layer {id}: it has children"
            )));
        }
        fs::remove_dir_all(&dir).map_err(io(format!("{operation} layer {id}")))
    }

    pub fn list(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.layers).map_err(io("list layers".into()))? {
            let entry = entry.map_err(io("list layers".into()))?;
            if let Some(name) = entry.file_name().to_str()
                && is_valid_layer_id(name)
                && entry.path().is_dir()
            {
                ids.push(name.to_string());
            }
        }
        Ok(ids)
    }

    pub fn collect_leftovers(&self) -> usize {
        let Ok(entries) = fs::read_dir(&self.layers) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".new-"))
            .filter(|e| fs::remove_dir_all(e.path()).is_ok())
            .count()
    }
}
