//! What a layer changed against its parent: by comparing the two trees, or by
//! reading a diff directory (an overlay upper, say), which holds exactly the
//! changes in its whiteout format.

use std::cmp::Ordering;
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::whiteout::WhiteoutFormat;

pub use crate::change::{Change, ChangeKind};

fn sorted_names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names: Vec<OsString> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn capability(path: &Path) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    rustix::fs::lgetxattr(path, "security.capability", &mut buf[..])
        .ok()
        .map(|n| buf[..n].to_vec())
}

/// Whether `a` (in the parent) and `b` (in the layer) differ in what a layer
/// diff carries: type and mode, owner, device number; for non-directories
/// size and modification time; a symlink's target; the file capability.
fn differs(a_path: &Path, a: &Metadata, b_path: &Path, b: &Metadata) -> io::Result<bool> {
    if a.mode() != b.mode() || a.uid() != b.uid() || a.gid() != b.gid() || a.rdev() != b.rdev() {
        return Ok(true);
    }
    if !b.is_dir()
        && (a.size() != b.size() || a.mtime() != b.mtime() || a.mtime_nsec() != b.mtime_nsec())
    {
        return Ok(true);
    }
    if b.file_type().is_symlink() && fs::read_link(a_path)? != fs::read_link(b_path)? {
        return Ok(true);
    }
    Ok(capability(a_path) != capability(b_path))
}

/// Byte order of paths: every directory before what it holds, and the same
/// order every time (export relies on both).
fn sort_by_path(changes: &mut [Change]) {
    changes.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
}

/// The changes of the tree at `layer` against the tree at `parent` (none: an
/// empty parent), sorted by path so parents come before their children.
pub fn changes(layer: &Path, parent: Option<&Path>) -> io::Result<Vec<Change>> {
    let mut out = Vec::new();
    // The root's own metadata (mode, owner) is a change too; it is exported
    // as `./`.
    let root_changed = match parent {
        Some(parent) => differs(
            parent,
            &fs::symlink_metadata(parent)?,
            layer,
            &fs::symlink_metadata(layer)?,
        )?,
        None => true,
    };
    walk(layer, parent, Path::new(""), &mut out)?;
    // The root is the parent of every change, so any change lists it too.
    if root_changed || !out.is_empty() {
        out.push(Change::new(PathBuf::new(), ChangeKind::Modify));
    }
    add_parent_directories(layer, &mut out)?;
    sort_by_path(&mut out);
    Ok(out)
}

fn walk(layer: &Path, parent: Option<&Path>, rel: &Path, out: &mut Vec<Change>) -> io::Result<()> {
    let here = layer.join(rel);
    let names = sorted_names(&here)?;
    let parent_dir = parent.map(|p| p.join(rel));
    let parent_names = match &parent_dir {
        Some(dir) if dir.is_dir() => sorted_names(dir)?,
        _ => Vec::new(),
    };
    let (mut i, mut j) = (0, 0);
    while i < names.len() || j < parent_names.len() {
        let order = match (names.get(i), parent_names.get(j)) {
            (Some(a), Some(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Greater => {
                // Only in the parent: deleted (its subtree goes with it).
                out.push(Change::new(rel.join(&parent_names[j]), ChangeKind::Delete));
                j += 1;
            }
            Ordering::Less => {
                added(layer, &rel.join(&names[i]), out)?;
                i += 1;
            }
            Ordering::Equal => {
                let child = rel.join(&names[i]);
                let b_path = layer.join(&child);
                let a_path = parent_dir
                    .as_ref()
                    .expect("names in the parent")
                    .join(&names[i]);
                let (a, b) = (
                    fs::symlink_metadata(&a_path)?,
                    fs::symlink_metadata(&b_path)?,
                );
                if a.is_dir() && b.is_dir() {
                    if differs(&a_path, &a, &b_path, &b)? {
                        out.push(Change::new(child.clone(), ChangeKind::Modify));
                    }
                    walk(layer, parent, &child, out)?;
                } else if a.is_dir() != b.is_dir() {
                    // A directory turned into a file or the other way round:
                    // the old one is deleted, the new one added whole.
                    out.push(Change::new(child.clone(), ChangeKind::Delete));
                    added(layer, &child, out)?;
                } else if differs(&a_path, &a, &b_path, &b)? {
                    out.push(Change::new(child, ChangeKind::Modify));
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

/// `rel` and, for a directory, everything under it, as added.
fn added(layer: &Path, rel: &Path, out: &mut Vec<Change>) -> io::Result<()> {
    out.push(Change::new(rel.to_path_buf(), ChangeKind::Add));
    let path = layer.join(rel);
    if fs::symlink_metadata(&path)?.is_dir() {
        for name in sorted_names(&path)? {
            added(layer, &rel.join(name), out)?;
        }
    }
    Ok(())
}

/// Every directory above a change is itself reported (as Modify unless it is
/// added), so an exported diff carries its parents' metadata.
fn add_parent_directories(layer: &Path, out: &mut Vec<Change>) -> io::Result<()> {
    let mut listed: std::collections::HashSet<PathBuf> =
        out.iter().map(|c| c.path.clone()).collect();
    let mut extra = Vec::new();
    for change in out.iter() {
        let mut dir = change.path.parent();
        while let Some(d) = dir {
            if d.as_os_str().is_empty() {
                break;
            }
            if listed.insert(d.to_path_buf()) && layer.join(d).is_dir() {
                extra.push(Change::new(d.to_path_buf(), ChangeKind::Modify));
            }
            dir = d.parent();
        }
    }
    out.extend(extra);
    Ok(())
}

/// The changes a diff directory holds, its deletions kept in `format`:
/// whiteouts are deletions, an opaque mark makes an opaque directory,
/// everything else is added or modified (modified when `lower`, the layer's
/// parent as mounted, has the path).
pub fn diff_dir_changes(
    diff: &Path,
    lower: Option<&Path>,
    format: WhiteoutFormat,
) -> io::Result<Vec<Change>> {
    // The diff directory's root carries the merged root's metadata.
    let mut out = vec![Change::new(PathBuf::new(), ChangeKind::Modify)];
    diff_dir_walk(diff, lower, format, Path::new(""), &mut out)?;
    sort_by_path(&mut out);
    Ok(out)
}

/// The changes an overlay upper directory holds: [`diff_dir_changes`] in
/// overlay's whiteout format.
pub fn overlay_changes(upper: &Path, lower: Option<&Path>) -> io::Result<Vec<Change>> {
    diff_dir_changes(upper, lower, WhiteoutFormat::Overlay)
}

fn diff_dir_walk(
    upper: &Path,
    lower: Option<&Path>,
    format: WhiteoutFormat,
    rel: &Path,
    out: &mut Vec<Change>,
) -> io::Result<()> {
    for name in sorted_names(&upper.join(rel))? {
        let child = rel.join(&name);
        let path = upper.join(&child);
        let meta = fs::symlink_metadata(&path)?;
        if format.is_whiteout_metadata(&meta) {
            out.push(Change::new(child, ChangeKind::Delete));
            continue;
        }
        let in_lower = lower.is_some_and(|l| fs::symlink_metadata(l.join(&child)).is_ok());
        let kind = if in_lower {
            ChangeKind::Modify
        } else {
            ChangeKind::Add
        };
        let mut change = Change::new(child.clone(), kind);
        if meta.is_dir() {
            change.opaque = format.is_opaque(&path);
            out.push(change);
            diff_dir_walk(upper, lower, format, &child, out)?;
        } else {
            out.push(change);
        }
    }
    Ok(())
}

/// The changes a layer stream describes (a driver that owns its layer
/// format hands out such a stream): a whiteout member is a deletion, an
/// opaque marker makes its directory opaque, every other member is added or
/// modified (modified when `lower`, the parent as mounted, has the path).
/// Only the members' names are read, never their data.
pub fn stream_changes(stream: impl io::Read, lower: Option<&Path>) -> io::Result<Vec<Change>> {
    use std::collections::BTreeMap;
    let mut found: BTreeMap<PathBuf, Change> = BTreeMap::new();
    let kind_at = |path: &Path| {
        if lower.is_some_and(|l| fs::symlink_metadata(l.join(path)).is_ok()) {
            ChangeKind::Modify
        } else {
            ChangeKind::Add
        }
    };
    let mut archive = tar::Archive::new(stream);
    for entry in archive.entries()? {
        let entry = entry?;
        let raw = entry.path_bytes();
        let path = relative(&raw).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "member {:?} leaves the layer's root",
                    String::from_utf8_lossy(&raw)
                ),
            )
        })?;
        let name = path.file_name().map(|n| n.as_bytes().to_vec());
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        match name.as_deref() {
            Some(b".wh..wh..opq") => {
                let kind = kind_at(&dir);
                let change = found
                    .entry(dir.clone())
                    .or_insert_with(|| Change::new(dir, kind));
                change.opaque = true;
            }
            Some(name) if name.starts_with(b".wh..wh.") => {}
            Some(name) if name.starts_with(b".wh.") => {
                let target = dir.join(OsStr::from_bytes(&name[4..]));
                found.insert(target.clone(), Change::new(target, ChangeKind::Delete));
            }
            _ => {
                let kind = kind_at(&path);
                found.insert(path.clone(), Change::new(path, kind));
            }
        }
    }
    let mut out: Vec<Change> = found.into_values().collect();
    sort_by_path(&mut out);
    Ok(out)
}

/// A member's name as a path relative to the layer's root (`./` and `/`
/// taken off), or `None` if it would leave the root.
fn relative(raw: &[u8]) -> Option<PathBuf> {
    let mut path = PathBuf::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            part => path.push(OsStr::from_bytes(part)),
        }
    }
    Some(path)
}

/// The name of a change for messages.
pub fn shown(path: &Path) -> String {
    String::from_utf8_lossy(OsStr::as_bytes(path.as_os_str())).into_owned()
}
