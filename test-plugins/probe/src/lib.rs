//! The boundary probe: a plugin whose only job is to exercise the ABI from the
//! far side. It keeps layer ids in memory; it stores nothing. Tests use it to
//! prove that panics, errors, streams and log events cross correctly.
//!
//! Behaviour keyed on layer ids:
//! * `create` of an id starting with `panic` panics.
//! * `diff` of an id starting with `broken` fails after 1000 bytes.
//! * `init` with option `refuse=true` answers "not supported".

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Mutex;

use strata_plugin_abi::*;

pub struct Probe {
    home: PathBuf,
    layers: Mutex<BTreeSet<String>>,
}

impl DriverPlugin for Probe {
    const NAME: &'static str = "probe";
    const DESCRIPTION: &'static str = "exercises the ABI boundary for tests; stores nothing";

    fn init(args: &InitArgs) -> Result<Self> {
        args.options.reject_unknown("probe option", &["refuse"])?;
        if args.options.get_bool("probe option", "refuse")? == Some(true) {
            return Err(DriverError::not_supported(
                "probe: told to refuse (refuse=true)",
            ));
        }
        tracing::info!(home = %args.home.display(), marker = "probe-init", "probe driver starting");
        tracing::trace!(
            marker = "probe-trace",
            "a trace event the host may filter out"
        );
        Ok(Probe {
            home: args.home.clone(),
            layers: Mutex::new(BTreeSet::new()),
        })
    }
}

impl Probe {
    fn known(&self, id: &str, op: &str) -> Result<()> {
        if self.layers.lock().unwrap().contains(id) {
            Ok(())
        } else {
            Err(DriverError::not_found(format!(
                "{op} layer {id}: no such layer"
            )))
        }
    }
}

impl GraphDriver for Probe {
    fn name(&self) -> String {
        Self::NAME.into()
    }

    fn status(&self) -> KeyValues {
        [("home", self.home.display().to_string())]
            .into_iter()
            .collect()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NATIVE_DIFF
            | Capabilities::OWNS_DIFF_FORMAT
            | Capabilities::from_bits(1 << 40)
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        self.known(id, "metadata of")?;
        Ok([("id", id)].into_iter().collect())
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        if id.starts_with("panic") {
            panic!("probe was told to panic creating {id}");
        }
        if let Some(parent) = parent {
            self.known(parent, "create")?;
        }
        tracing::info!(
            layer = id,
            read_write = options.read_write,
            marker = "probe-create",
            "creating"
        );
        if !self.layers.lock().unwrap().insert(id.to_string()) {
            return Err(DriverError::already_exists(format!(
                "create layer {id}: layer exists"
            )));
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<()> {
        self.known(id, "remove")?;
        self.layers.lock().unwrap().remove(id);
        Ok(())
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        self.known(id, "mount")?;
        tracing::debug!(layer = id, options = ?options.options, "mount");
        Ok(self.home.join(id))
    }

    fn put(&self, id: &str) -> Result<()> {
        self.known(id, "unmount")
    }

    fn exists(&self, id: &str) -> Result<bool> {
        Ok(self.layers.lock().unwrap().contains(id))
    }

    fn list(&self) -> Result<Vec<String>> {
        Ok(self.layers.lock().unwrap().iter().cloned().collect())
    }

    fn cleanup(&self) -> Result<()> {
        Ok(())
    }

    fn native_diff(&self, id: &str) -> Result<Option<NativeDiff>> {
        self.known(id, "native diff of")?;
        Ok(Some(NativeDiff {
            path: self.home.join(id).join("diff"),
            whiteouts: WhiteoutFormat::Overlay,
        }))
    }

    fn diff(&self, id: &str, _parent: Option<&str>) -> Result<Box<dyn Read + Send>> {
        self.known(id, "diff of")?;
        let content: Vec<u8> = id.bytes().cycle().take(100_000).collect();
        let fail_at = id.starts_with("broken").then_some(1000);
        Ok(Box::new(PatternReader {
            content,
            pos: 0,
            fail_at,
        }))
    }

    fn apply_diff(
        &self,
        id: &str,
        _parent: Option<&str>,
        diff: &mut (dyn Read + Send),
    ) -> Result<u64> {
        self.known(id, "apply diff to")?;
        io::copy(diff, &mut io::sink())
            .map_err(|e| DriverError::io(format!("apply diff to layer {id}"), &e))
    }

    fn diff_size(&self, id: &str, _parent: Option<&str>) -> Result<u64> {
        self.known(id, "diff size of")?;
        Ok(100_000)
    }
}

struct PatternReader {
    content: Vec<u8>,
    pos: usize,
    fail_at: Option<usize>,
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let end = self.fail_at.unwrap_or(self.content.len());
        if self.pos >= end && self.fail_at.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "probe stream broke on purpose",
            ));
        }
        let n = buf.len().min(end - self.pos);
        buf[..n].copy_from_slice(&self.content[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

export_driver!(Probe);
