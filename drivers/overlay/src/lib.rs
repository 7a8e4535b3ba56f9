//! # strata-driver-overlay
//!
//! Layers on kernel overlayfs. Each layer keeps only its own changes in
//! `diff/`, which is therefore its native diff (overlay whiteouts: 0:0
//! character devices and `trusted.overlay.opaque`); mounting stacks the diff
//! directories of the layer's ancestors under it.
//!
//! ```text
//! <home>/<id>/diff/      this layer's changes (the upper directory)
//! <home>/<id>/work/      overlay's work directory (read-write layers)
//! <home>/<id>/merged/    where the layer is mounted
//! <home>/<id>/link       its short link name
//! <home>/<id>/lower      the short links of its ancestors, nearest first
//! <home>/<id>/parent     its parent's id
//! <home>/l/<short>       -> ../<id>/diff, for mount(2) options that fit a page
//! <home>/empty/          the lower of a layer without ancestors
//! ```
//!
//! Mounts use the new mount API (one `lowerdir+` per layer, Linux 6.8+) so a
//! stack is bounded only by the kernel's 500 lower layers; older kernels get
//! mount(2) with short link names, as deep as one page of options allows.
//! Mounts are made with redirect_dir, metacopy and index off, so `diff/` is
//! always exact.

mod mount;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::mount::MountAttrFlags;
use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, GraphDriver, InitArgs, KeyValues,
    MountOptions, NativeDiff, Result, WhiteoutFormat, is_valid_layer_id, validate_layer_id,
};

pub use mount::Method;

const DRIVER_OPTIONS: &[&str] = &["mountopt", "mount_method"];

pub struct OverlayDriver {
    home: PathBuf,
    method: Method,
    /// Mount attributes from the `mountopt` option.
    attrs: MountAttrFlags,
    mountopt: String,
    /// Mounts made by this driver instance, per layer.
    mounts: Mutex<HashMap<String, u32>>,
    /// Held while layers are put into place or taken away.
    placement: Mutex<()>,
    sequence: AtomicU64,
}

fn io_err(context: impl std::fmt::Display) -> impl FnOnce(io::Error) -> DriverError {
    move |e| DriverError::io(context, &e)
}

/// Parses `mountopt` (comma-separated): the mount attributes overlay layers
/// get. Anything else is refused by name.
fn parse_mountopt(text: &str) -> Result<MountAttrFlags> {
    let mut attrs = MountAttrFlags::empty();
    for opt in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        attrs |= match opt {
            "nodev" => MountAttrFlags::MOUNT_ATTR_NODEV,
            "nosuid" => MountAttrFlags::MOUNT_ATTR_NOSUID,
            "noexec" => MountAttrFlags::MOUNT_ATTR_NOEXEC,
            other => {
                return Err(DriverError::invalid_input(format!(
                    "overlay driver option 'mountopt': unknown mount option '{other}' (known: nodev, nosuid, noexec)"
                )));
            }
        };
    }
    Ok(attrs)
}

/// Why overlay cannot work on `home`, if it cannot: checked before the driver
/// is offered, so automatic selection moves on with the reason.
fn probe(home: &Path) -> std::result::Result<(), String> {
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("\toverlay") || l.trim() == "nodev\toverlay")
    {
        return Err("the kernel has no overlay filesystem (not in /proc/filesystems)".into());
    }
    let statfs = rustix::fs::statfs(home).map_err(|e| format!("statfs {}: {e}", home.display()))?;
    if statfs.f_type as u64 == 0x794C_7630 {
        return Err(format!(
            "{} is itself on overlayfs, which cannot hold an upper directory",
            home.display()
        ));
    }
    let scratch = home.join(format!(".probe-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(scratch.join("d"))
        .map_err(|e| format!("create {}: {e}", scratch.display()))?;
    let result = (|| {
        fs::write(scratch.join("d/f"), b"").map_err(|e| format!("write: {e}"))?;
        // d_type: readdir must tell file types.
        let mut dir = rustix::fs::Dir::read_from(
            rustix::fs::open(
                scratch.join("d"),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| format!("open: {e}"))?,
        )
        .map_err(|e| format!("readdir: {e}"))?;
        while let Some(Ok(entry)) = dir.read() {
            if entry.file_name() == c"f" && entry.file_type() == rustix::fs::FileType::Unknown {
                return Err(format!(
                    "the filesystem of {} does not report d_type",
                    home.display()
                ));
            }
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            scratch.join("whiteout").as_path(),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| {
            format!(
                "cannot make whiteouts (0:0 character devices) in {}: {e}",
                home.display()
            )
        })?;
        rustix::fs::setxattr(
            scratch.join("d"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(|e| format!("cannot set trusted.* xattrs in {}: {e}", home.display()))?;
        Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}

impl DriverPlugin for OverlayDriver {
    const NAME: &'static str = "overlay";
    const DESCRIPTION: &'static str = "kernel overlayfs: a layer's diff/ is its native diff; deep stacks through the new mount API";

    fn init(args: &InitArgs) -> Result<Self> {
        args.options
            .reject_unknown("overlay driver option", DRIVER_OPTIONS)?;
        let mountopt = args.options.get("mountopt").unwrap_or("nodev").to_string();
        let attrs = parse_mountopt(&mountopt)?;
        for dir in [
            args.home.clone(),
            args.home.join("l"),
            args.home.join("empty"),
        ] {
            fs::create_dir_all(&dir)
                .map_err(io_err(format!("init overlay: create {}", dir.display())))?;
        }
        probe(&args.home).map_err(|why| DriverError::not_supported(format!("overlay: {why}")))?;
        let scratch = args.home.join(format!(".probe-api-{}", std::process::id()));
        let new_api = mount::new_api_works(&scratch);
        let _ = fs::remove_dir_all(&scratch);
        let method = match args.options.get("mount_method") {
            None | Some("auto") if new_api => Method::NewMountApi,
            None | Some("auto") | Some("legacy") => Method::LegacyShortLinks,
            Some("new") if new_api => Method::NewMountApi,
            Some("new") => {
                return Err(DriverError::not_supported(
                    "overlay: mount_method=new, but this kernel's overlay refuses lowerdir+ (Linux 6.8 and later)",
                ));
            }
            Some(other) => {
                return Err(DriverError::invalid_input(format!(
                    "overlay driver option 'mount_method' must be auto, new or legacy, not '{other}'"
                )));
            }
        };
        let driver = OverlayDriver {
            home: args.home.clone(),
            method,
            attrs,
            mountopt,
            mounts: Mutex::new(HashMap::new()),
            placement: Mutex::new(()),
            sequence: AtomicU64::new(0),
        };
        driver.remove_leftovers();
        tracing::debug!(home = %driver.home.display(), ?method, "overlay driver ready");
        Ok(driver)
    }
}

impl OverlayDriver {
    fn dir(&self, id: &str) -> PathBuf {
        self.home.join(id)
    }

    fn existing(&self, id: &str, operation: &str) -> Result<PathBuf> {
        validate_layer_id(id).map_err(|e| e.context(format!("{operation} layer {id}")))?;
        let dir = self.dir(id);
        if dir.join("diff").is_dir() {
            Ok(dir)
        } else {
            Err(DriverError::not_found(format!(
                "{operation} layer {id}: no such layer"
            )))
        }
    }

    /// The ancestors' diff directories, nearest first, from the `lower` file.
    fn lowers(&self, id: &str) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        let text = match fs::read_to_string(self.dir(id).join("lower")) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(DriverError::io(
                    format!("mount layer {id}: read its lowers"),
                    &e,
                ));
            }
        };
        let mut full = Vec::new();
        let mut short = Vec::new();
        for link in text.split(':').filter(|l| !l.is_empty()) {
            let short_path = self.home.join(link);
            // The link is a symlink to ../<ancestor>/diff; resolve it to the
            // real path for the new mount API, and heal it if it is missing.
            let full_path = match fs::read_link(&short_path) {
                Ok(target) => self.home.join("l").join(target),
                Err(_) => self.heal_link(id, link)?,
            };
            full.push(full_path);
            short.push(short_path);
        }
        if full.is_empty() {
            full.push(self.home.join("empty"));
            short.push(self.home.join("empty"));
        }
        Ok((full, short))
    }

    /// Self-healing: a lost `l/<short>` entry is made again from the layer
    /// whose `link` file names it.
    fn heal_link(&self, id: &str, link: &str) -> Result<PathBuf> {
        let short = link.trim_start_matches("l/");
        let owner = fs::read_dir(&self.home)
            .map_err(io_err(format!(
                "mount layer {id}: find the layer of link {short}"
            )))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .find(|candidate| {
                is_valid_layer_id(candidate)
                    && fs::read_to_string(self.dir(candidate).join("link"))
                        .is_ok_and(|l| l.trim() == short)
            })
            .ok_or_else(|| {
                DriverError::other(format!(
                    "mount layer {id}: lower link {short} is missing and no layer claims it"
                ))
            })?;
        let target = format!("../{owner}/diff");
        std::os::unix::fs::symlink(&target, self.home.join("l").join(short))
            .or_else(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(io_err(format!("mount layer {id}: recreate link {short}")))?;
        tracing::info!(layer = id, link = short, owner = %owner, "recreated a missing short link");
        Ok(self.home.join("l").join(target))
    }

    fn depth_limit(&self) -> usize {
        match self.method {
            Method::NewMountApi => mount::KERNEL_MAX_LOWERS,
            // Each lower costs "<home>/l/<26 chars>:" in one page.
            Method::LegacyShortLinks => (mount::PAGE - 200) / (self.home.as_os_str().len() + 30),
        }
        .min(mount::KERNEL_MAX_LOWERS)
    }

    fn new_short_name(&self, id: &str) -> String {
        // Short, unique, stable for the layer's life.
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let seed = format!(
            "{id}-{}-{n}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        );
        let mut hash: u64 = 0xcbf29ce484222325;
        for b in seed.bytes() {
            hash = (hash ^ b as u64).wrapping_mul(0x100000001b3);
        }
        format!("{hash:016x}")
    }

    fn children_of(&self, id: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.home) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|child| is_valid_layer_id(child))
            .filter(|child| {
                fs::read_to_string(self.dir(child).join("parent")).is_ok_and(|p| p == id)
            })
            .collect()
    }

    fn remove_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.home) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".new-") || name.starts_with(".gone-") {
                let merged = entry.path().join("merged");
                if mount::is_mount_point(&merged) {
                    let _ = mount::unmount(&merged);
                }
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        // Short links whose layer is gone.
        if let Ok(links) = fs::read_dir(self.home.join("l")) {
            for link in links.flatten() {
                if fs::metadata(link.path()).is_err() {
                    let _ = fs::remove_file(link.path());
                }
            }
        }
    }

    fn mount_layer(&self, id: &str, dir: &Path, read_only: bool) -> Result<()> {
        let merged = dir.join("merged");
        // Self-healing: a lost mount point is made again.
        fs::create_dir_all(&merged).map_err(io_err(format!(
            "mount layer {id}: create {}",
            merged.display()
        )))?;
        let (mut lowers, mut short) = self.lowers(id)?;
        let diff = dir.join("diff");
        let work = dir.join("work");
        let upper = if read_only {
            // A read-only layer is one more lower, on top.
            // Without an upper, overlay needs two lowers; a layer without
            // ancestors has the empty directory as its second.
            lowers.insert(0, diff.clone());
            short.insert(0, diff.clone());
            None
        } else {
            Some((diff.as_path(), work.as_path()))
        };
        let spec = mount::Spec {
            lowers: &lowers,
            short_lowers: &short,
            upper,
            target: &merged,
            attrs: self.attrs
                | if read_only {
                    MountAttrFlags::MOUNT_ATTR_RDONLY
                } else {
                    MountAttrFlags::empty()
                },
        };
        mount::mount(self.method, &spec).map_err(|e| {
            DriverError::io(
                format!(
                    "mount layer {id} ({} lowers, {:?})",
                    lowers.len(),
                    self.method
                ),
                &e,
            )
        })
    }
}

impl GraphDriver for OverlayDriver {
    fn name(&self) -> String {
        Self::NAME.into()
    }

    fn status(&self) -> KeyValues {
        let mut status = KeyValues::new();
        status.push("home", self.home.display().to_string());
        status.push(
            "mount method",
            match self.method {
                Method::NewMountApi => "new mount API (fsconfig lowerdir+ per layer)",
                Method::LegacyShortLinks => "mount(2) with short link names",
            },
        );
        status.push("max stack depth", self.depth_limit().to_string());
        status.push(
            "native diff",
            "exact (redirect_dir, metacopy and index off)",
        );
        status.push("mountopt", self.mountopt.clone());
        status
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::READ_ONLY_LAYERS | Capabilities::NATIVE_DIFF
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        let dir = self.existing(id, "metadata of")?;
        Ok([
            ("diff", dir.join("diff").display().to_string()),
            ("merged", dir.join("merged").display().to_string()),
        ]
        .into_iter()
        .collect())
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        let op = format!("create layer {id}");
        validate_layer_id(id).map_err(|e| e.context(&op))?;
        if options.storage_opts.get("size").is_some() {
            return Err(DriverError::not_supported(format!(
                "{op}: the overlay driver cannot limit a layer's size (storage option 'size')"
            )));
        }
        options
            .storage_opts
            .reject_unknown("overlay storage option", &[])
            .map_err(|e| e.context(&op))?;
        let target = self.dir(id);
        if target.exists() {
            return Err(DriverError::already_exists(format!("{op}: layer exists")));
        }
        let _placing = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        let lower = match parent {
            None => String::new(),
            Some(parent) => {
                let parent_dir = self
                    .existing(parent, "create")
                    .map_err(|e| e.context(format!("{op}: parent {parent}")))?;
                let parent_link = fs::read_to_string(parent_dir.join("link"))
                    .map_err(io_err(format!("{op}: read parent {parent}'s link")))?;
                let parent_lower = fs::read_to_string(parent_dir.join("lower")).unwrap_or_default();
                let chain = if parent_lower.is_empty() {
                    format!("l/{parent_link}")
                } else {
                    format!("l/{parent_link}:{parent_lower}")
                };
                let depth = chain.split(':').count() + 1;
                if depth > self.depth_limit() {
                    return Err(DriverError::invalid_input(format!(
                        "{op}: a stack of {depth} layers is deeper than overlay allows here ({}, {:?})",
                        self.depth_limit(),
                        self.method
                    )));
                }
                chain
            }
        };
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let staging = self
            .home
            .join(format!(".new-{id}-{}-{n}", std::process::id()));
        let short = self.new_short_name(id);
        let made = (|| -> io::Result<()> {
            fs::create_dir_all(staging.join("diff"))?;
            fs::set_permissions(staging.join("diff"), fs::Permissions::from_mode(0o755))?;
            // Only a read-write layer gets a work directory; its absence
            // marks a read-only one, mounted without an upper.
            if options.read_write {
                fs::create_dir_all(staging.join("work"))?;
            }
            fs::create_dir_all(staging.join("merged"))?;
            fs::write(staging.join("link"), &short)?;
            if !lower.is_empty() {
                fs::write(staging.join("lower"), &lower)?;
            }
            if let Some(parent) = parent {
                fs::write(staging.join("parent"), parent)?;
            }
            // A child's root starts as its parent's root: the upper directory's
            // own metadata is what the merged root shows.
            if let Some(parent) = parent {
                copy_root_metadata(&self.dir(parent).join("diff"), &staging.join("diff"))?;
            }
            std::os::unix::fs::symlink(format!("../{id}/diff"), self.home.join("l").join(&short))?;
            fs::rename(&staging, &target)
        })();
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&staging);
            let _ = fs::remove_file(self.home.join("l").join(&short));
            return Err(DriverError::io(&op, &e));
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<()> {
        let dir = self.existing(id, "remove")?;
        let _placing = self.placement.lock().unwrap_or_else(|e| e.into_inner());
        let children = self.children_of(id);
        if !children.is_empty() {
            return Err(DriverError::busy(format!(
                "remove layer {id}: layers {} are its children",
                children.join(", ")
            )));
        }
        let merged = dir.join("merged");
        if mount::is_mount_point(&merged) {
            mount::unmount(&merged).map_err(io_err(format!("remove layer {id}: unmount")))?;
        }
        self.mounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let n = self.sequence.fetch_add(1, Ordering::Relaxed);
        let doomed = self
            .home
            .join(format!(".gone-{id}-{}-{n}", std::process::id()));
        fs::rename(&dir, &doomed).map_err(io_err(format!("remove layer {id}")))?;
        if let Ok(link) = fs::read_to_string(doomed.join("link")) {
            let _ = fs::remove_file(self.home.join("l").join(link.trim()));
        }
        fs::remove_dir_all(&doomed).map_err(io_err(format!("remove layer {id}: delete")))
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        let dir = self.existing(id, "mount")?;
        let mut read_only = false;
        for option in &options.options {
            match option.as_str() {
                "ro" => read_only = true,
                "rw" => {}
                other => {
                    return Err(DriverError::invalid_input(format!(
                        "mount layer {id}: unknown mount option '{other}' (ro or rw; others belong in the driver's mountopt)"
                    )));
                }
            }
        }
        // Layers made read-only have no work directory use; mount them so.
        let created_read_only = !dir.join("work").is_dir();
        let merged = dir.join("merged");
        let mut mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        let count = mounts.entry(id.to_string()).or_insert(0);
        if *count == 0 && !mount::is_mount_point(&merged) {
            self.mount_layer(id, &dir, read_only || created_read_only)?;
        }
        *count += 1;
        Ok(merged)
    }

    fn put(&self, id: &str) -> Result<()> {
        let dir = self.existing(id, "unmount")?;
        let mut mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        let count = mounts.entry(id.to_string()).or_insert(0);
        if *count > 1 {
            *count -= 1;
            return Ok(());
        }
        mounts.remove(id);
        let merged = dir.join("merged");
        if mount::is_mount_point(&merged) {
            mount::unmount(&merged).map_err(io_err(format!("unmount layer {id}")))?;
        }
        Ok(())
    }

    fn exists(&self, id: &str) -> Result<bool> {
        Ok(is_valid_layer_id(id) && self.dir(id).join("diff").is_dir())
    }

    fn list(&self) -> Result<Vec<String>> {
        let entries = fs::read_dir(&self.home).map_err(io_err("list layers"))?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| {
                is_valid_layer_id(id)
                    && id != "l"
                    && id != "empty"
                    && self.dir(id).join("diff").is_dir()
            })
            .collect())
    }

    fn cleanup(&self) -> Result<()> {
        let mut mounts = self.mounts.lock().unwrap_or_else(|e| e.into_inner());
        for id in mounts.keys() {
            let merged = self.dir(id).join("merged");
            if mount::is_mount_point(&merged)
                && let Err(e) = mount::unmount(&merged)
            {
                return Err(DriverError::io(format!("cleanup: unmount layer {id}"), &e));
            }
        }
        mounts.clear();
        Ok(())
    }

    fn native_diff(&self, id: &str) -> Result<Option<NativeDiff>> {
        let dir = self.existing(id, "native diff of")?;
        Ok(Some(NativeDiff {
            path: dir.join("diff"),
            whiteouts: WhiteoutFormat::Overlay,
        }))
    }
}

/// Gives `to` the mode, owner, times and xattrs of `from` (overlay's own
/// trusted.overlay.* bookkeeping excepted).
fn copy_root_metadata(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(from)?;
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    let mut names = vec![0u8; 64 * 1024];
    let n = rustix::fs::listxattr(from, &mut names[..]).unwrap_or(0);
    for name in names[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty() && !n.starts_with(b"trusted.overlay."))
    {
        let mut value = vec![0u8; 64 * 1024];
        let len = rustix::fs::getxattr(from, name, &mut value[..])?;
        rustix::fs::setxattr(to, name, &value[..len], rustix::fs::XattrFlags::empty())?;
    }
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, to, &times, rustix::fs::AtFlags::empty())?;
    Ok(())
}

strata_plugin_abi::export_driver!(OverlayDriver);
