//! Mount points as the kernel lists them (`/proc/self/mountinfo`), for
//! telling whether a path is mounted and for taking down what a killed
//! process left mounted inside a directory that is about to be deleted.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;

/// Every mount point of this process's mount namespace, in mount order.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    Ok(text
        .split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(digits) => {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Whether `path` is itself a mount point.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    Ok(mount_points()?.iter().any(|p| p == path))
}

/// The mount points at or below `dir`, deepest (latest) first.
pub fn mounted_beneath(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    // Later mounts may sit on earlier ones: take them down in reverse.
    found.reverse();
    Ok(found)
}

/// Detaches every mount at or below `dir` (what a process killed while it
/// held mounts there left), so the directory can be deleted.
pub fn unmount_beneath(dir: &Path) -> io::Result<usize> {
    let mut count = 0;
    for point in mounted_beneath(dir)? {
        match rustix::mount::unmount(&point, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
            Ok(()) => count += 1,
            // Someone else took it down first.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(count)
}

/// Makes the mount `spec` describes on `target`, as containerd's mount
/// helper does for a snapshotter's mounts: `bind` (or a `bind`/`rbind`
/// option) binds `source`, then remounts the bind with its flags (a bind
/// takes `ro` and `nodev` only on a remount); any other kind is mounted with
/// its flag options as flags and the rest (`lowerdir=...`) as data.
///
/// Used by the conformance suite and the snapshotter's tests to perform what
/// a driver's `describe_mount` says, the way containerd would.
pub fn perform(spec: &strata_plugin_abi::MountSpec, target: &Path) -> io::Result<()> {
    use rustix::mount::MountFlags;
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    let mut bind = spec.kind == "bind";
    let mut recursive = false;
    for option in &spec.options {
        match option.as_str() {
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                recursive = true;
            }
            "rw" | "defaults" => {}
            "ro" => flags |= MountFlags::RDONLY,
            "nodev" => flags |= MountFlags::NODEV,
            "nosuid" => flags |= MountFlags::NOSUID,
            "noexec" => flags |= MountFlags::NOEXEC,
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            other => data.push(other),
        }
    }
    if bind {
        if !data.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a bind mount takes no filesystem options ({})",
                    data.join(",")
                ),
            ));
        }
        if recursive {
            rustix::mount::mount_bind_recursive(spec.source.as_str(), target)?;
        } else {
            rustix::mount::mount_bind(spec.source.as_str(), target)?;
        }
        if !flags.is_empty()
            && let Err(e) = rustix::mount::mount_remount(target, flags | MountFlags::BIND, c"")
        {
            let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
            return Err(e.into());
        }
        return Ok(());
    }
    let data = std::ffi::CString::new(data.join(",")).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a mount option holds a NUL byte",
        )
    })?;
    rustix::mount::mount(
        spec.source.as_str(),
        target,
        spec.kind.as_str(),
        flags,
        Some(data.as_c_str()),
    )?;
    Ok(())
}

/// Whether mount options `options` for layer `id` ask for a read-only tree:
/// `ro` and `rw` are understood, the last one given winning (as for
/// mount(8)); anything else is refused by name (options a driver honours
/// itself belong in its configuration).
pub fn read_only_asked(id: &str, options: &[String]) -> strata_plugin_abi::Result<bool> {
    let mut read_only = false;
    for option in options {
        match option.as_str() {
            "ro" => read_only = true,
            "rw" => read_only = false,
            other => {
                return Err(strata_plugin_abi::DriverError::invalid_input(format!(
                    "mount layer {id}: unknown mount option '{other}' (ro or rw)"
                )));
            }
        }
    }
    Ok(read_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(unescape(br"/a\040b\011c\134d"), b"/a b\tc\\d");
        assert_eq!(unescape(br"/trailing\04"), br"/trailing\04");
    }

    #[test]
    fn proc_is_a_mount_point_and_its_subdirectory_is_not() {
        assert!(is_mount_point(Path::new("/proc")).unwrap());
        assert!(!is_mount_point(Path::new("/proc/self")).unwrap());
    }

    #[test]
    fn only_ro_and_rw_are_understood() {
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!super::read_only_asked("a", &opts(&[])).unwrap());
        assert!(!super::read_only_asked("a", &opts(&["rw"])).unwrap());
        assert!(super::read_only_asked("a", &opts(&["rw", "ro"])).unwrap());
        assert!(!super::read_only_asked("a", &opts(&["ro", "rw"])).unwrap());
        let err = super::read_only_asked("a", &opts(&["nodev"])).unwrap_err();
        assert!(
            err.message().contains("'nodev'") && err.message().contains("layer a"),
            "{err}"
        );
    }
}
