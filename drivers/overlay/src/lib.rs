//! # strata-driver-overlay
//!
//! Layers on kernel overlayfs. Each layer keeps only its own changes in
//! `diff/`, which is therefore its native diff (overlay whiteouts: 0:0
//! character devices and `trusted.overlay.opaque`); mounting stacks the diff
//! directories of the layer's ancestors under it.
//!
//! ```text
//! <home>/layers/<id>/diff/      this layer's changes (the upper directory)
//! <home>/layers/<id>/work/      overlay's work directory (read-write layers)
//! <home>/layers/<id>/merged/    where the layer is mounted
//! <home>/layers/<id>/link       its short link name
//! <home>/layers/<id>/lower      the short links of its ancestors, nearest first
//! <home>/layers/<id>/parent     its parent's id
//! <home>/l/<short>              -> ../layers/<id>/diff, for mount(2) options that fit a page
//! <home>/empty/                 the lower of a layer without ancestors
//! ```
//!
//! Layers are placed and removed by the driver kit's [`LayerHome`] (whole or
//! not at all, safe with many processes and kills anywhere). A short link is
//! made after its layer is in place and removed before it goes, so a link
//! never points at a layer being built; a link lost to a kill in between is
//! made again from the layer's `link` file when a mount needs it.
//!
//! Mounts are counted by the host, not here (see `GraphDriver::get`): `get`
//! of a layer already mounted returns the mount as it is, `put` unmounts.
//!
//! Mounts use the new mount API (one `lowerdir+` per layer, Linux 6.8+) so a
//! stack is bounded only by the kernel's 500 lower layers; older kernels get
//! mount(2) with short link names, as deep as one page of options allows.
//! Mounts are made with redirect_dir, metacopy and index off, so `diff/` is
//! always exact.

#![forbid(unsafe_code)]

mod mount;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::MountAttrFlags;
use strata_driver_kit::mounts::read_only_asked;
use strata_driver_kit::{DriverOptions, LayerHome, fs_type, home::set_mode, xattr};
use strata_plugin_abi::{
    Capabilities, CreateOptions, DriverError, DriverPlugin, GraphDriver, InitArgs, KeyValues,
    MountOptions, MountSpec, NativeDiff, Result, WhiteoutFormat,
};

pub use mount::Method;

pub struct OverlayDriver {
    home: PathBuf,
    layers: LayerHome,
    method: Method,
    /// Mount attributes from the `mountopt` option.
    attrs: MountAttrFlags,
    mountopt: String,
}

fn io_err(context: impl std::fmt::Display) -> impl FnOnce(io::Error) -> DriverError {
    move |e| DriverError::io(context, &e)
}

/// The mount attributes overlay layers get from `mountopt`.
fn mount_attrs(names: &[&str]) -> MountAttrFlags {
    names.iter().fold(MountAttrFlags::empty(), |attrs, name| {
        attrs
            | match *name {
                "nodev" => MountAttrFlags::MOUNT_ATTR_NODEV,
                "nosuid" => MountAttrFlags::MOUNT_ATTR_NOSUID,
                "noexec" => MountAttrFlags::MOUNT_ATTR_NOEXEC,
                _ => MountAttrFlags::empty(),
            }
    })
}

/// Why overlay cannot work at all here, if it cannot: asked before anything
/// is written in the home.
fn kernel_and_home_can_overlay(home: &Path) -> std::result::Result<(), String> {
    // overlayfs unescapes backslashes in its directory options, and mount(2)
    // splits them at ',' and ':': such a home would fail at every mount.
    let text = home.as_os_str().as_encoded_bytes();
    if let Some(bad) = [b'\\', b',', b':'].iter().find(|c| text.contains(c)) {
        return Err(format!(
            "the home {} contains '{}', which overlay's mount options cannot carry",
            home.display(),
            *bad as char
        ));
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("\toverlay") || l.trim() == "nodev\toverlay")
    {
        return Err("the kernel has no overlay filesystem (not in /proc/filesystems)".into());
    }
    if fs_type::of(home).map_err(|e| format!("statfs {}: {e}", home.display()))?
        == fs_type::FsType::Overlay
    {
        return Err(format!(
            "{} is itself on overlayfs, which cannot hold an upper directory",
            home.display()
        ));
    }
    Ok(())
}

/// Why overlay cannot work on the home's filesystem, if it cannot: checked
/// before the driver is offered, so automatic selection moves on with the
/// reason. The scratch space is the kit's, so a probe killed half way is
/// collected.
fn probe(home: &Path) -> std::result::Result<(), String> {
    let scratch = strata_driver_kit::home::scratch_in(home).map_err(|e| e.to_string())?;
    let scratch = scratch.path();
    fs::create_dir_all(scratch.join("d"))
        .map_err(|e| format!("create {}: {e}", scratch.display()))?;
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
}

/// Refuses a home laid out by strata before the driver kit (layers directly
/// in the home): starting on it would make them silently invisible.
fn refuse_old_layout(home: &Path) -> Result<()> {
    let old = fs::read_dir(home)
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| e.file_name() != "layers" && e.path().join("diff").is_dir());
    if let Some(old) = old {
        return Err(DriverError::invalid_input(format!(
            "init overlay: {} is a layer in the layout of strata 0.1 before the driver kit \
             (<home>/<id>); this version keeps layers in <home>/layers/<id>. Re-import the \
             images into a new graph root",
            old.path().display()
        )));
    }
    Ok(())
}

impl DriverPlugin for OverlayDriver {
    const NAME: &'static str = "overlay";
    const DESCRIPTION: &'static str = "kernel overlayfs: a layer's diff/ is its native diff; deep stacks through the new mount API";

    fn init(args: &InitArgs) -> Result<Self> {
        let options = DriverOptions::new(
            "overlay driver option",
            &args.options,
            &["mountopt", "mount_method"],
        )?;
        let mountopt = options.list("mountopt", &["nodev", "nosuid", "noexec"], "nodev")?;
        let attrs = mount_attrs(&mountopt);
        let mount_method = options.choice("mount_method", &["auto", "new", "legacy"], "auto")?;
        refuse_old_layout(&args.home)?;
        fs::create_dir_all(&args.home).map_err(io_err(format!(
            "init overlay: create {}",
            args.home.display()
        )))?;
        kernel_and_home_can_overlay(&args.home)
            .map_err(|why| DriverError::not_supported(format!("overlay: {why}")))?;
        // Probed in a scratch directory of the home before anything else is
        // laid out there, so a refusal leaves the home as it was; a probe
        // killed half way is collected by the next start.
        probe(&args.home).map_err(|why| DriverError::not_supported(format!("overlay: {why}")))?;
        let layers = LayerHome::open(&args.home)?;
        for dir in [args.home.join("l"), args.home.join("empty")] {
            fs::create_dir_all(&dir)
                .map_err(io_err(format!("init overlay: create {}", dir.display())))?;
        }
        let new_api = {
            let scratch = layers.scratch()?;
            mount::new_api_works(scratch.path())
        };
        let method = match mount_method {
            "auto" if new_api => Method::NewMountApi,
            "auto" | "legacy" => Method::LegacyShortLinks,
            _ if new_api => Method::NewMountApi,
            _ => {
                return Err(DriverError::not_supported(
                    "overlay: mount_method=new, but this kernel's overlay refuses lowerdir+ (Linux 6.8 and later)",
                ));
            }
        };
        let driver = OverlayDriver {
            home: args.home.clone(),
            layers,
            method,
            attrs,
            mountopt: mountopt.join(","),
        };
        driver.remove_dangling_links();
        tracing::debug!(home = %driver.home.display(), ?method, "overlay driver ready");
        Ok(driver)
    }
}

impl OverlayDriver {
    /// The ancestors' diff directories, nearest first, from the `lower` file.
    fn lowers(&self, id: &str, dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        let text = match fs::read_to_string(dir.join("lower")) {
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
            // The link is a symlink to ../layers/<ancestor>/diff; resolve it to
            // the real path for the new mount API, and heal it if it is missing.
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
        let owner = self
            .layers
            .list()?
            .into_iter()
            .find(|candidate| {
                fs::read_to_string(self.layers.layers_dir().join(candidate).join("link"))
                    .is_ok_and(|l| l.trim() == short)
            })
            .ok_or_else(|| {
                DriverError::other(format!(
                    "mount layer {id}: lower link {short} is missing and no layer claims it"
                ))
            })?;
        let target = link_target(&owner);
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
            // Each lower costs "<home>/l/<16 chars>:" in one page.
            Method::LegacyShortLinks => (mount::PAGE - 200) / (self.home.as_os_str().len() + 20),
        }
        .min(mount::KERNEL_MAX_LOWERS)
    }

    /// Short links whose layer is gone (a remove killed after taking the
    /// layer away). Links are made only after their layer is in place, so a
    /// dangling one never belongs to a layer being built.
    fn remove_dangling_links(&self) {
        if let Ok(links) = fs::read_dir(self.home.join("l")) {
            for link in links.flatten() {
                if fs::metadata(link.path()).is_err() {
                    let _ = fs::remove_file(link.path());
                }
            }
        }
    }

    /// The directories a mount of layer `id` stacks: one place for `get`'s
    /// mount and for the description `describe_mount` gives, so both show
    /// the same tree.
    fn layout(&self, id: &str, dir: &Path, read_only: bool) -> Result<mount::Layout> {
        let (mut lowers, mut short_lowers) = self.lowers(id, dir)?;
        let diff = dir.join("diff");
        let upper = if read_only {
            // A read-only layer is one more lower, on top.
            // Without an upper, overlay needs two lowers; a layer without
            // ancestors has the empty directory as its second.
            lowers.insert(0, diff.clone());
            short_lowers.insert(0, diff);
            None
        } else {
            Some((diff, dir.join("work")))
        };
        Ok(mount::Layout {
            lowers,
            short_lowers,
            upper,
        })
    }

    fn mount_layer(&self, id: &str, dir: &Path, read_only: bool) -> Result<()> {
        let merged = dir.join("merged");
        // Self-healing: a lost mount point is made again (only inside a layer
        // directory that is there: the caller holds its lock).
        match fs::create_dir(&merged) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(DriverError::io(
                    format!("mount layer {id}: create {}", merged.display()),
                    &e,
                ));
            }
        }
        let layout = self.layout(id, dir, read_only)?;
        let spec = mount::Spec {
            lowers: &layout.lowers,
            short_lowers: &layout.short_lowers,
            upper: layout
                .upper
                .as_ref()
                .map(|(upper, work)| (upper.as_path(), work.as_path())),
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
                    layout.lowers.len(),
                    self.method
                ),
                &e,
            )
        })
    }
}

/// Whether a layer's mount point has a mount on it.
fn is_mounted(merged: &Path) -> Result<bool> {
    strata_driver_kit::mounts::is_mount_point(merged)
        .map_err(|e| DriverError::io("read /proc/self/mountinfo", &e))
}

/// Where a layer's short link points, relative to `<home>/l`.
fn link_target(id: &str) -> String {
    format!("../layers/{id}/diff")
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
        status.push(strata_plugin_abi::NATIVE_DIFF_WHITEOUTS_KEY, "overlay");
        status.push("mountopt", self.mountopt.clone());
        status
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::READ_ONLY_LAYERS | Capabilities::NATIVE_DIFF
    }

    fn metadata(&self, id: &str) -> Result<KeyValues> {
        let dir = self.layers.existing(id, "metadata of")?;
        Ok([
            ("diff", dir.join("diff").display().to_string()),
            ("merged", dir.join("merged").display().to_string()),
        ]
        .into_iter()
        .collect())
    }

    fn create(&self, id: &str, parent: Option<&str>, options: &CreateOptions) -> Result<()> {
        let op = format!("create layer {id}");
        self.layers.path_of(id, "create")?;
        if options.storage_opts.get("size").is_some() {
            return Err(DriverError::not_supported(format!(
                "{op}: the overlay driver cannot limit a layer's size (storage option 'size')"
            )));
        }
        DriverOptions::new("overlay storage option", &options.storage_opts, &[])
            .map_err(|e| e.context(&op))?;
        if self.layers.exists(id) {
            return Err(DriverError::already_exists(format!("{op}: layer exists")));
        }
        let (lower, parent_diff) = match parent {
            None => (String::new(), None),
            Some(parent) => {
                let parent_dir = self
                    .layers
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
                (chain, Some(parent_dir.join("diff")))
            }
        };
        let staging = self.layers.stage(id, "create")?;
        // Short, unique, stable for the layer's life.
        let short = strata_driver_kit::home::random_hex();
        let built = (|| -> io::Result<()> {
            let dir = staging.path();
            fs::create_dir(dir.join("diff"))?;
            set_mode(&dir.join("diff"), 0o755)?;
            // Only a read-write layer gets a work directory; its absence
            // marks a read-only one, mounted without an upper.
            if options.read_write {
                fs::create_dir(dir.join("work"))?;
            }
            fs::create_dir(dir.join("merged"))?;
            fs::write(dir.join("link"), &short)?;
            if !lower.is_empty() {
                fs::write(dir.join("lower"), &lower)?;
            }
            // A child's root starts as its parent's root: the upper directory's
            // own metadata is what the merged root shows.
            if let Some(parent_diff) = &parent_diff {
                xattr::copy_root_metadata(parent_diff, &dir.join("diff"), |name| {
                    name.starts_with(b"trusted.overlay.")
                })?;
            }
            Ok(())
        })();
        built.map_err(io_err(&op))?;
        self.layers.place(staging, id, parent, "create")?;
        // After the layer is in place, so a link never dangles for a live
        // layer; lost to a kill here, it is made again at the first mount.
        if let Err(e) =
            std::os::unix::fs::symlink(link_target(id), self.home.join("l").join(&short))
        {
            // The layer is whole without it; the first mount that needs the
            // link makes it again from the layer's `link` file.
            tracing::warn!(layer = id, error = %e, "could not make a layer's short link; it is made again when needed");
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<()> {
        self.layers.remove(id, "remove", |dir| {
            let merged = dir.join("merged");
            if is_mounted(&merged)? {
                mount::unmount(&merged).map_err(io_err(format!("remove layer {id}: unmount")))?;
            }
            if let Ok(link) = fs::read_to_string(dir.join("link")) {
                let _ = fs::remove_file(self.home.join("l").join(link.trim()));
            }
            Ok(())
        })
    }

    fn get(&self, id: &str, options: &MountOptions) -> Result<PathBuf> {
        let dir = self.layers.existing(id, "mount")?;
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
        // Layers made read-only have no work directory; mount them so.
        let read_only = read_only || !dir.join("work").is_dir();
        let merged = dir.join("merged");
        let _layer = self.layers.lock_layer(id, "mount")?;
        // The host counts mounts and calls this only for a layer's first
        // user: a mount already there was left by a process that died. It
        // is kept if it is what is asked for, and made again if not (a
        // read-only request never gets a writable tree, nor the reverse).
        if is_mounted(&merged)? {
            let mounted_read_only = rustix::fs::statvfs(&merged)
                .map_err(|e| DriverError::io(format!("mount layer {id}: statvfs"), &e.into()))?
                .f_flag
                .contains(rustix::fs::StatVfsMountFlags::RDONLY);
            if mounted_read_only == read_only {
                return Ok(merged);
            }
            mount::unmount(&merged)
                .map_err(io_err(format!("mount layer {id}: take down the old mount")))?;
        }
        self.mount_layer(id, &dir, read_only)?;
        Ok(merged)
    }

    fn put(&self, id: &str) -> Result<()> {
        let dir = self.layers.existing(id, "unmount")?;
        let merged = dir.join("merged");
        let _layer = self.layers.lock_layer(id, "unmount")?;
        if is_mounted(&merged)? {
            mount::unmount(&merged).map_err(io_err(format!("unmount layer {id}")))?;
        }
        Ok(())
    }

    fn describe_mount(&self, id: &str, options: &MountOptions) -> Result<Vec<MountSpec>> {
        let dir = self.layers.existing(id, "describe the mount of")?;
        // As `get`: a layer made read-only has no work directory.
        let read_only = read_only_asked(id, &options.options)? || !dir.join("work").is_dir();
        let layout = self.layout(id, &dir, read_only)?;
        let mut options: Vec<String> = self
            .mountopt
            .split(',')
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect();
        options.push(if read_only { "ro" } else { "rw" }.into());
        // The short link names keep the options within mount(2)'s page, as
        // the legacy mount does; containerd's helper passes them as data.
        options.extend(mount::data_options(
            &layout.short_lowers,
            layout.upper.as_ref(),
        ));
        Ok(vec![MountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }])
    }

    fn exists(&self, id: &str) -> Result<bool> {
        Ok(self.layers.exists(id))
    }

    fn list(&self) -> Result<Vec<String>> {
        self.layers.list()
    }

    fn cleanup(&self) -> Result<()> {
        // Mounts belong to the host's counts, which other processes share:
        // shutting down this instance takes none of them away. What is left
        // is what killed processes left.
        self.layers.collect_leftovers();
        self.remove_dangling_links();
        Ok(())
    }

    fn native_diff(&self, id: &str) -> Result<Option<NativeDiff>> {
        let dir = self.layers.existing(id, "native diff of")?;
        Ok(Some(NativeDiff {
            path: dir.join("diff"),
            whiteouts: WhiteoutFormat::Overlay,
        }))
    }
}

strata_plugin_abi::export_driver!(OverlayDriver);
