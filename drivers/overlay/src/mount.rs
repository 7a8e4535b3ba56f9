//! Mounting an overlay: with the new mount API, one `lowerdir+` per layer, so
//! depth is bounded by the kernel's own stack limit and not by a page of
//! mount options; or, on kernels before 6.8, with mount(2) and short link
//! names that must fit in one page.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::CWD;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

/// overlayfs stacks at most this many lower layers (OVL_MAX_STACK).
pub const KERNEL_MAX_LOWERS: usize = 500;
/// mount(2) takes its options in one page.
pub const PAGE: usize = 4096;

/// How mounts are made here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// fsopen/fsconfig(lowerdir+)/fsmount/move_mount (Linux 6.8 and later).
    NewMountApi,
    /// mount(2) with `lowerdir=l/a:l/b:...` short link names.
    LegacyShortLinks,
}

/// What one mount needs.
pub struct Spec<'a> {
    /// Nearest first.
    pub lowers: &'a [PathBuf],
    /// Short-link form of the same lowers, for the legacy method.
    pub short_lowers: &'a [PathBuf],
    /// Upper and work directories, for a read-write mount.
    pub upper: Option<(&'a Path, &'a Path)>,
    pub target: &'a Path,
    /// Mount attributes from configuration (nodev, nosuid, noexec, ro).
    pub attrs: MountAttrFlags,
}

/// The directories one mount of a layer stacks.
pub struct Layout {
    /// Nearest first, the layer's own diff on top when it is mounted read-only.
    pub lowers: Vec<PathBuf>,
    /// The same, as short link names.
    pub short_lowers: Vec<PathBuf>,
    /// Upper and work directories, for a read-write mount.
    pub upper: Option<(PathBuf, PathBuf)>,
}

/// Options that keep a layer's diff/ exactly its changes: no directory
/// redirects, no metadata-only copy-ups, no index.
const EXACT_DIFF_OPTIONS: [(&str, &str); 3] = [
    ("redirect_dir", "off"),
    ("metacopy", "off"),
    ("index", "off"),
];

pub fn mount(method: Method, spec: &Spec) -> io::Result<()> {
    match method {
        Method::NewMountApi => mount_new_api(spec),
        Method::LegacyShortLinks => mount_legacy(spec),
    }
}

fn mount_new_api(spec: &Spec) -> io::Result<()> {
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    rustix::mount::fsconfig_set_string(&fs, "source", "strata")?;
    for (key, value) in EXACT_DIFF_OPTIONS {
        rustix::mount::fsconfig_set_string(&fs, key, value)?;
    }
    for lower in spec.lowers {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", lower.as_os_str())?;
    }
    if let Some((upper, work)) = spec.upper {
        rustix::mount::fsconfig_set_string(&fs, "upperdir", upper.as_os_str())?;
        rustix::mount::fsconfig_set_string(&fs, "workdir", work.as_os_str())?;
    }
    rustix::mount::fsconfig_create(&fs)?;
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, spec.attrs)?;
    rustix::mount::move_mount(
        &mnt,
        c"",
        CWD,
        spec.target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// The overlay data options of a mount of `lowers` (nearest first) under
/// `upper`: what mount(2) gets as data, and what a described mount carries.
pub fn data_options<P: AsRef<Path>>(lowers: &[PathBuf], upper: Option<&(P, P)>) -> Vec<String> {
    let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    let mut data = vec![format!("lowerdir={}", lowers.join(":"))];
    if let Some((upper, work)) = upper {
        data.push(format!("upperdir={}", upper.as_ref().display()));
        data.push(format!("workdir={}", work.as_ref().display()));
    }
    for (key, value) in EXACT_DIFF_OPTIONS {
        data.push(format!("{key}={value}"));
    }
    data
}

/// The option string for mount(2); `None` when it does not fit in a page.
pub fn legacy_options(spec: &Spec) -> Option<String> {
    let data = data_options(spec.short_lowers, spec.upper.as_ref()).join(",");
    (data.len() < PAGE).then_some(data)
}

fn mount_legacy(spec: &Spec) -> io::Result<()> {
    let data = legacy_options(spec).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the lower directories do not fit in one page of mount options",
        )
    })?;
    let mut flags = MountFlags::empty();
    for (attr, flag) in [
        (MountAttrFlags::MOUNT_ATTR_RDONLY, MountFlags::RDONLY),
        (MountAttrFlags::MOUNT_ATTR_NODEV, MountFlags::NODEV),
        (MountAttrFlags::MOUNT_ATTR_NOSUID, MountFlags::NOSUID),
        (MountAttrFlags::MOUNT_ATTR_NOEXEC, MountFlags::NOEXEC),
    ] {
        if spec.attrs.contains(attr) {
            flags |= flag;
        }
    }
    let data = CString::new(data)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in options"))?;
    rustix::mount::mount(
        "strata",
        spec.target,
        "overlay",
        flags,
        Some(data.as_c_str()),
    )?;
    Ok(())
}

pub fn unmount(target: &Path) -> io::Result<()> {
    rustix::mount::unmount(target, UnmountFlags::empty())?;
    Ok(())
}

/// Whether the new mount API's `lowerdir+` works here: tried on a scratch
/// overlay in `scratch`.
pub fn new_api_works(scratch: &Path) -> bool {
    let lower = scratch.join("lower");
    let lower2 = scratch.join("lower2");
    let target = scratch.join("merged");
    let ok = [&lower, &lower2, &target]
        .iter()
        .all(|d| std::fs::create_dir_all(d).is_ok());
    let lowers = [lower.clone(), lower2.clone()];
    let spec = Spec {
        lowers: &lowers,
        short_lowers: &lowers,
        upper: None,
        target: &target,
        attrs: MountAttrFlags::empty(),
    };
    let mounted = ok && mount_new_api(&spec).is_ok();
    if mounted {
        let _ = unmount(&target);
    }
    mounted
}
