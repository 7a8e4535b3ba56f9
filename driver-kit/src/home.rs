//! Where a driver's layers live, and how they appear and disappear so that
//! any number of processes may share the home and any of them may be killed
//! at any instruction.
//!
//! ```text
//! <home>/layers/<id>/                  a layer: whatever the driver keeps for it
//! <home>/layers/<id>/parent            its parent's id, for a layer that has one
//! <home>/layers/<id>/.children/<child> a mark for each child made on it
//! <home>/layers/.staging/.new-<id>-<random>/    a layer being built
//! <home>/layers/.staging/.gone-<id>-<random>/   a layer being deleted
//! <home>/layers/.staging/.scratch-<random>/     a driver's scratch space (probes)
//! <home>/.scratch-<random>/            scratch made before the layers directory
//! <home>/layers/.lock                  the home lock
//! ```
//!
//! Staging has a directory of its own, inside the layers directory (so on
//! its filesystem: placing is a rename): every open looks there for what
//! killed processes left, and a home of ten thousand layers would make that
//! a read of ten thousand entries on every start. Homes made before kept
//! staging directories among the layers; the open that makes `.staging/`
//! looks there once.
//!
//! The rules, and why a kill anywhere is safe:
//!
//! * **A staging directory is owned by a lock, not a pid.** Its maker holds
//!   an exclusive flock on the directory itself from the moment it exists
//!   until it is renamed into place or deleted. The kernel drops the lock
//!   when the maker dies, in any pid namespace. Whoever finds a staging
//!   directory it can lock (and that still has the name it opened) owns a dead
//!   process's leftover and deletes it; one it cannot lock is a live
//!   process's work and is left alone; a second collector finds the first one
//!   holding the lock and moves on.
//! * **A layer appears whole.** It is built under a staging name, its parent
//!   record written inside it, and renamed into place (never replacing) in
//!   one step, under the home lock and after checking again that the parent
//!   is still there. A kill before the rename leaves a leftover, after it a
//!   whole layer.
//! * **A layer disappears whole.** Under the home lock, with no children and
//!   holding the layer's own lock (which a driver holds while it mounts or
//!   unmounts it), it is taken down, renamed to a `.gone-` name and deleted
//!   outside the home lock. A kill after the rename leaves a leftover that
//!   nobody lists. Nothing is ever deleted through a mount: what is mounted
//!   below a layer is taken down first, or the removal is refused.
//! * **Children are marked in their parent.** A layer is placed with an
//!   empty `.children/` of its own, and placing a child writes a mark in its
//!   parent's, under the home lock, before the rename: so removal finds a
//!   layer's children without reading every layer's parent record. A mark
//!   whose child does not exist, or does not name this parent, is a killed
//!   placement's or a removed child's and is ignored (and deleted). A layer
//!   placed by an earlier kit has no `.children/`; its children are found by
//!   reading every parent record, as before.
//! * **The home lock** (`.lock`, flock) is held only for those checks and
//!   renames, so a parent can never be removed between its child's check and
//!   the child's appearance, whichever processes do the two.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Mode, RenameFlags};
use strata_plugin_abi::{DriverError, Result, is_valid_layer_id, validate_layer_id};

use crate::lock::{self, Held};
use crate::{delete, mounts};

/// Prefixes of the staging directories the kit makes in the layers
/// directory; nothing else there starts with them.
const STAGING_PREFIXES: [&str; 3] = [".new-", ".gone-", ".scratch-"];

/// The prefix of scratch directories.
const SCRATCH_PREFIX: &str = ".scratch-";

/// The file holding a layer's parent id, inside the layer's directory.
pub const PARENT_RECORD: &str = "parent";

/// The directory of marks of a layer's children, inside the layer's
/// directory.
pub const CHILDREN_DIR: &str = ".children";

/// Mode of a layer's directory: others may pass through to the tree inside
/// (a container's processes need to), but not list the driver's bookkeeping.
const LAYER_DIR_MODE: u32 = 0o711;

/// A driver's layers on disk; see the module documentation for the rules.
#[derive(Debug)]
pub struct LayerHome {
    home: PathBuf,
    layers: PathBuf,
    staging: PathBuf,
    lock_path: PathBuf,
}

/// The staging directory's name, inside the layers directory.
const STAGING_DIR: &str = ".staging";

/// A directory being built (or scratch space), owned by the flock this value
/// holds. Dropped without being placed, it is deleted.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    lock: Option<Held>,
}

impl Staging {
    /// Where to build.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.lock.is_none() {
            return; // placed
        }
        // Deleted while still locked, so no collector can start on it too.
        // What a killed process left mounted inside is taken down first, and
        // the delete never crosses into another filesystem, so a mount that
        // could not be taken down keeps its data.
        if let Err(e) = mounts::unmount_beneath(&self.path) {
            tracing::debug!(path = %self.path.display(), error = %e, "could not take down mounts beneath a staging directory");
        }
        if let Err(e) = delete::remove_tree(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not delete a staging directory; the next start tries again");
        }
        self.lock = None;
    }
}

fn io_error(context: impl std::fmt::Display) -> impl FnOnce(io::Error) -> DriverError {
    move |e| DriverError::io(context, &e)
}

/// 16 hex digits of randomness (64 bits): a name no other process will pick.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => {
                // No getrandom: time and pid are unique enough among makers
                // that also hold a lock on what they name.
                let seed = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
                    ^ (u64::from(std::process::id()) << 32);
                bytes = seed.to_le_bytes();
                break;
            }
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl LayerHome {
    /// Opens (creating if needed) the layers directory of `home` and collects
    /// what killed processes left there.
    pub fn open(home: &Path) -> Result<LayerHome> {
        let layers = home.join("layers");
        fs::create_dir_all(&layers).map_err(io_error(format!("create {}", layers.display())))?;
        // Resolved once: mount points are listed by their real paths.
        let layers =
            fs::canonicalize(&layers).map_err(io_error(format!("resolve {}", layers.display())))?;
        let staging = layers.join(STAGING_DIR);
        let home = LayerHome {
            home: layers.parent().unwrap_or(&layers).to_path_buf(),
            lock_path: layers.join(".lock"),
            staging,
            layers,
        };
        // Made now, not at the first create: a home's layout is fixed from
        // its first start.
        drop(home.lock()?);
        let first = match fs::create_dir(&home.staging) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                return Err(DriverError::io(
                    format!("create {}", home.staging.display()),
                    &e,
                ));
            }
        };
        if first {
            // Staging an earlier kit left among the layers, looked for once.
            home.collect_in(&home.layers, &STAGING_PREFIXES);
        }
        home.collect_leftovers();
        Ok(home)
    }

    /// The directory holding the layers (and the staging directories).
    pub fn layers_dir(&self) -> &Path {
        &self.layers
    }

    /// The directory of layer `id`, whether or not it exists; an invalid id is
    /// refused (InvalidInput) naming `operation`.
    pub fn path_of(&self, id: &str, operation: &str) -> Result<PathBuf> {
        validate_layer_id(id).map_err(|e| e.context(format!("{operation} layer {id:?}")))?;
        Ok(self.layers.join(id))
    }

    /// The directory of an existing layer: InvalidInput for a bad id,
    /// NotFound for a missing layer.
    pub fn existing(&self, id: &str, operation: &str) -> Result<PathBuf> {
        let dir = self.path_of(id, operation)?;
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => Ok(dir),
            Ok(_) => Err(DriverError::other(format!(
                "{operation} layer {id}: {} is not a directory",
                dir.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DriverError::not_found(format!(
                "{operation} layer {id}: no such layer"
            ))),
            Err(e) => Err(DriverError::io(format!("{operation} layer {id}"), &e)),
        }
    }

    /// Whether layer `id` exists; false for an invalid id.
    pub fn exists(&self, id: &str) -> bool {
        is_valid_layer_id(id) && self.layers.join(id).is_dir()
    }

    /// Every layer, in no particular order.
    pub fn list(&self) -> Result<Vec<String>> {
        let entries = fs::read_dir(&self.layers).map_err(io_error(format!(
            "list layers in {}",
            self.layers.display()
        )))?;
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("list layers"))?;
            if let Some(name) = entry.file_name().to_str()
                && is_valid_layer_id(name)
                && entry.file_type().is_ok_and(|t| t.is_dir())
            {
                ids.push(name.to_string());
            }
        }
        Ok(ids)
    }

    /// The parent recorded for layer `id` (which must exist).
    pub fn parent_of(&self, id: &str) -> Result<Option<String>> {
        let dir = self.existing(id, "read the parent of")?;
        match fs::read_to_string(dir.join(PARENT_RECORD)) {
            Ok(parent) => Ok(Some(parent)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DriverError::io(
                format!("read the parent of layer {id}"),
                &e,
            )),
        }
    }

    /// The layers whose parent is `id`, sorted: from its marks of its
    /// children (each checked against the child's own parent record, and
    /// deleted if stale), or, for a layer an earlier kit placed, by reading
    /// every layer's parent record.
    pub fn children_of(&self, id: &str) -> Result<Vec<String>> {
        let names_parent = |child: &str| {
            fs::read_to_string(self.layers.join(child).join(PARENT_RECORD))
                .is_ok_and(|parent| parent == id)
        };
        let marks_dir = self.path_of(id, "list the children of")?.join(CHILDREN_DIR);
        let mut children: Vec<String> = match fs::read_dir(&marks_dir) {
            Ok(marks) => {
                let mut children = Vec::new();
                for mark in marks {
                    let mark =
                        mark.map_err(io_error(format!("list the children of layer {id}")))?;
                    let Some(child) = mark.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    if is_valid_layer_id(&child) && names_parent(&child) {
                        children.push(child);
                    } else {
                        // A killed placement's, or a removed child's.
                        let _ = fs::remove_file(mark.path());
                    }
                }
                children
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self
                .list()?
                .into_iter()
                .filter(|child| names_parent(child))
                .collect(),
            Err(e) => {
                return Err(DriverError::io(
                    format!("list the children of layer {id}"),
                    &e,
                ));
            }
        };
        children.sort();
        Ok(children)
    }

    /// The home lock, for a driver that must serialise something of its own
    /// across processes. Held briefly: every create and remove waits for it.
    pub fn lock(&self) -> Result<Held> {
        lock::exclusive_file(&self.lock_path)
            .map_err(io_error(format!("lock {}", self.lock_path.display())))
    }

    /// Locks layer `id`'s own directory (flock), waiting for other holders:
    /// what a driver holds while it mounts or unmounts the layer, and what
    /// removal holds while it takes the layer away, so neither sees the other
    /// half done. NotFound if the layer is gone, or goes while we wait.
    pub fn lock_layer(&self, id: &str, operation: &str) -> Result<Held> {
        let dir = self.existing(id, operation)?;
        let gone = || DriverError::not_found(format!("{operation} layer {id}: no such layer"));
        let fd = match lock::open_dir(&dir) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(gone()),
            Err(e) => return Err(DriverError::io(format!("{operation} layer {id}"), &e)),
        };
        let held = lock::exclusive_dir(fd).map_err(io_error(format!("{operation} layer {id}")))?;
        // Removed (renamed away) while we waited for it.
        if still_named(&held, &dir) {
            Ok(held)
        } else {
            Err(gone())
        }
    }

    /// A new, empty, locked staging directory to build layer `id` in; place
    /// it with [`LayerHome::place`]. Its mode is the layer directory's.
    pub fn stage(&self, id: &str, operation: &str) -> Result<Staging> {
        validate_layer_id(id).map_err(|e| e.context(format!("{operation} layer {id:?}")))?;
        make_staging(&self.staging, &format!(".new-{id}-{}", random_hex()))
            .map_err(|e| e.context(format!("{operation} layer {id}")))
    }

    /// Scratch space for a driver's own use (a probe), deleted when dropped,
    /// and collected if its process dies first.
    pub fn scratch(&self) -> Result<Staging> {
        scratch_in(&self.staging)
    }

    /// Where staging directories are made.
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// Puts a built layer into place as `id`, with its parent recorded inside
    /// it. The parent is checked again under the home lock (it may have gone
    /// while the layer was built). An existing `id` is AlreadyExists; the
    /// staging directory is deleted on any failure.
    pub fn place(
        &self,
        mut staging: Staging,
        id: &str,
        parent: Option<&str>,
        operation: &str,
    ) -> Result<PathBuf> {
        let target = self.path_of(id, operation)?;
        let op = || format!("{operation} layer {id}");
        // Inside the staging directory, so they appear with the layer.
        match fs::create_dir(staging.path.join(CHILDREN_DIR)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(DriverError::io(
                    format!("{}: make its children's marks", op()),
                    &e,
                ));
            }
        }
        if let Some(parent) = parent {
            validate_layer_id(parent).map_err(|e| e.context(format!("{}: parent", op())))?;
            fs::write(staging.path.join(PARENT_RECORD), parent)
                .map_err(io_error(format!("{}: record its parent", op())))?;
        }
        let _home = self.lock().map_err(|e| e.context(op()))?;
        if let Some(parent) = parent {
            let parent_dir = self
                .existing(parent, operation)
                .map_err(|e| e.context(format!("{}: parent {parent}", op())))?;
            // Marked before the rename: a kill between leaves a mark of no
            // child, which is ignored; the reverse order could leave a child
            // its parent does not know.
            let marks = parent_dir.join(CHILDREN_DIR);
            if marks.is_dir() {
                fs::write(marks.join(id), b"")
                    .map_err(io_error(format!("{}: mark it in its parent", op())))?;
            }
        }
        rename_noreplace(&staging.path, &target).map_err(|e| match e {
            rustix::io::Errno::EXIST | rustix::io::Errno::NOTEMPTY => {
                DriverError::already_exists(format!("{}: layer exists", op()))
            }
            e => DriverError::io(format!("{}: move into place", op()), &e.into()),
        })?;
        // Placed: the lock goes with the value, nothing is deleted.
        staging.lock = None;
        Ok(target)
    }

    /// Removes layer `id`: NotFound if missing, Busy while it has children
    /// or something not taken down is mounted beneath it. `take_down` runs
    /// under the home lock and the layer's own lock just before the layer is
    /// renamed away (to unmount it, say); if it fails, nothing is removed.
    pub fn remove(
        &self,
        id: &str,
        operation: &str,
        take_down: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        self.path_of(id, operation)?;
        let op = || format!("{operation} layer {id}");
        let doomed = self.staging.join(format!(".gone-{id}-{}", random_hex()));
        let held = {
            let _home = self.lock().map_err(|e| e.context(op()))?;
            let dir = self.existing(id, operation)?;
            let children = self.children_of(id)?;
            if !children.is_empty() {
                return Err(DriverError::busy(format!(
                    "{}: layers {} are its children",
                    op(),
                    children.join(", ")
                )));
            }
            // Held from before the take-down to the end of the delete: a
            // mount made in between would be deleted under its user, and the
            // `.gone-` directory is never seen unlocked while we delete it.
            let held = self.lock_layer(id, operation)?;
            take_down(&dir)?;
            // Someone else's mount inside (a runtime's bind mount): the layer
            // stays, rather than lose what is mounted there.
            let mounted = mounts::mounted_beneath(&dir).map_err(io_error(op()))?;
            if !mounted.is_empty() {
                let shown: Vec<String> = mounted.iter().map(|p| p.display().to_string()).collect();
                return Err(DriverError::busy(format!(
                    "{}: still mounted beneath it: {}",
                    op(),
                    shown.join(", ")
                )));
            }
            rename_noreplace(&dir, &doomed).map_err(|e| DriverError::io(op(), &e.into()))?;
            // Its mark in its parent goes too (one left behind is ignored).
            if let Ok(parent) = fs::read_to_string(doomed.join(PARENT_RECORD))
                && is_valid_layer_id(&parent)
            {
                let _ = fs::remove_file(self.layers.join(&parent).join(CHILDREN_DIR).join(id));
            }
            held
        };
        // The layer is gone for everyone; deleting its files may take a while
        // and needs no lock but its own.
        drop(Staging {
            path: doomed,
            lock: Some(held),
        });
        Ok(())
    }

    /// Deletes what killed processes left: staging directories nobody holds.
    /// Returns how many it deleted. Never fails: what it cannot delete is
    /// logged and tried again next time.
    pub fn collect_leftovers(&self) -> usize {
        // Probes run before the layers directory existed scratch in the home.
        self.collect_in(&self.staging, &STAGING_PREFIXES)
            + self.collect_in(&self.home, &[SCRATCH_PREFIX])
    }

    /// Collects the staging directories with one of `prefixes` in `dir`.
    fn collect_in(&self, dir: &Path, prefixes: &[&str]) -> usize {
        let mut collected = 0;
        let Ok(entries) = fs::read_dir(dir) else {
            return 0;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !prefixes.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            match collect_one(&entry.path()) {
                Ok(true) => collected += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "could not collect a leftover staging directory");
                }
            }
        }
        collected
    }
}

/// Scratch space in `dir` (a probe run before a driver lays out its home),
/// deleted when dropped; `LayerHome::open` on that home collects it if its
/// process dies first.
pub fn scratch_in(dir: &Path) -> Result<Staging> {
    make_staging(dir, &format!("{SCRATCH_PREFIX}{}", random_hex()))
}

/// Makes and locks a staging directory `name` in `dir`.
fn make_staging(dir: &Path, name: &str) -> Result<Staging> {
    // A collector may find the directory between our mkdir and our lock,
    // lock it first and delete it (it only deletes what it can lock): then
    // we start again under another name. Three collectors in a row winning
    // that instant is not going to happen; a fourth attempt failing means
    // something else is wrong.
    for attempt in 1..=4 {
        let path = dir.join(if attempt == 1 {
            name.to_string()
        } else {
            format!("{name}-{}", random_hex())
        });
        let what = || format!("create staging directory {}", path.display());
        rustix::fs::mkdirat(CWD, &path, Mode::from_raw_mode(0o700))
            .map_err(|e| DriverError::io(what(), &e.into()))?;
        let held = match lock::open_dir(&path) {
            Ok(fd) => lock::try_exclusive(fd).map_err(io_error(what()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                let _ = fs::remove_dir(&path);
                return Err(DriverError::io(what(), &e));
            }
        };
        // Locked, but perhaps only after a collector deleted it.
        let Some(held) = held.filter(|held| still_named(held, &path)) else {
            continue;
        };
        // umask must not decide the mode.
        let mode = rustix::fs::fchmod(held.fd(), Mode::from_raw_mode(LAYER_DIR_MODE))
            .map_err(|e| DriverError::io(what(), &e.into()));
        let staging = Staging {
            path,
            lock: Some(held),
        };
        // On failure the staging directory goes with the value.
        mode?;
        return Ok(staging);
    }
    Err(DriverError::other(format!(
        "create staging directory {name} in {}: taken by another process each time",
        dir.display()
    )))
}

/// Deletes one staging directory if its owner is gone.
fn collect_one(path: &Path) -> io::Result<bool> {
    let fd = match lock::open_dir(path) {
        Ok(fd) => fd,
        // Placed or deleted by its owner since we listed it.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    let Some(held) = lock::try_exclusive(fd)? else {
        return Ok(false); // a live process is working in it
    };
    // The owner may have renamed it into place and let go between our
    // open and our lock: then the name is gone, or names something else.
    if !still_named(&held, path) {
        return Ok(false);
    }
    tracing::info!(path = %path.display(), "collecting what an interrupted create, remove or probe left");
    // Deleted while holding the lock: a second collector skips it.
    drop(Staging {
        path: path.to_path_buf(),
        lock: Some(held),
    });
    Ok(!path.exists())
}

/// Renames `from` to `to`, failing with EEXIST if `to` exists. Called only
/// under the home lock: where the filesystem has no RENAME_NOREPLACE (FUSE
/// filesystems such as zfs-fuse answer EINVAL), the check and the plain
/// rename that replace it cannot race with another placement, since every
/// placement holds that lock.
fn rename_noreplace(from: &Path, to: &Path) -> rustix::io::Result<()> {
    match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            match rustix::fs::lstat(to) {
                Ok(_) => return Err(rustix::io::Errno::EXIST),
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
            rustix::fs::renameat(CWD, from, CWD, to)
        }
        other => other,
    }
}

/// Whether `path` still names the directory `held` locks.
fn still_named(held: &Held, path: &Path) -> bool {
    match (rustix::fs::fstat(held.fd()), rustix::fs::lstat(path)) {
        (Ok(locked), Ok(now)) => now.st_dev == locked.st_dev && now.st_ino == locked.st_ino,
        _ => false,
    }
}

/// Sets a directory's mode exactly, whatever the umask was when it was made.
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use strata_plugin_abi::ErrorKind;

    fn home() -> (tempfile::TempDir, LayerHome) {
        let dir = tempfile::tempdir().unwrap();
        let home = LayerHome::open(dir.path()).unwrap();
        (dir, home)
    }

    fn leftovers(home: &LayerHome) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(home.layers_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".lock" && n != STAGING_DIR && !is_valid_layer_id(n))
            .collect();
        names.extend(
            fs::read_dir(home.staging_dir())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
        names
    }

    #[test]
    fn a_layer_appears_with_its_parent_record_and_goes_whole() {
        let (_dir, home) = home();
        let base = home.stage("base", "create").unwrap();
        home.place(base, "base", None, "create").unwrap();
        let child = home.stage("child", "create").unwrap();
        fs::write(child.path().join("data"), b"x").unwrap();
        let placed = home.place(child, "child", Some("base"), "create").unwrap();
        assert_eq!(fs::read(placed.join("data")).unwrap(), b"x");
        assert_eq!(home.parent_of("child").unwrap().as_deref(), Some("base"));
        assert_eq!(home.children_of("base").unwrap(), ["child"]);
        let err = home.remove("base", "remove", |_| Ok(())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        home.remove("child", "remove", |_| Ok(())).unwrap();
        home.remove("base", "remove", |_| Ok(())).unwrap();
        assert!(home.list().unwrap().is_empty());
        assert!(leftovers(&home).is_empty(), "{:?}", leftovers(&home));
    }

    #[test]
    fn children_are_found_by_their_marks_and_stale_marks_are_ignored() {
        let (_dir, home) = home();
        home.place(
            home.stage("base", "create").unwrap(),
            "base",
            None,
            "create",
        )
        .unwrap();
        home.place(
            home.stage("kid", "create").unwrap(),
            "kid",
            Some("base"),
            "create",
        )
        .unwrap();
        let marks = home.layers_dir().join("base").join(CHILDREN_DIR);
        assert!(marks.join("kid").exists());
        // A placement killed after its mark, and a mark naming a layer of
        // another parent: neither is a child.
        fs::write(marks.join("never-placed"), b"").unwrap();
        home.place(
            home.stage("other", "create").unwrap(),
            "other",
            None,
            "create",
        )
        .unwrap();
        fs::write(marks.join("other"), b"").unwrap();
        assert_eq!(home.children_of("base").unwrap(), ["kid"]);
        assert!(
            !marks.join("never-placed").exists(),
            "a stale mark is deleted"
        );
        home.remove("kid", "remove", |_| Ok(())).unwrap();
        assert!(!marks.join("kid").exists());
        home.remove("base", "remove", |_| Ok(())).unwrap();
        // A parent an earlier kit placed (no marks): its children are found
        // by reading the parent records.
        home.place(home.stage("old", "create").unwrap(), "old", None, "create")
            .unwrap();
        fs::remove_dir(home.layers_dir().join("old").join(CHILDREN_DIR)).unwrap();
        home.place(
            home.stage("young", "create").unwrap(),
            "young",
            Some("old"),
            "create",
        )
        .unwrap();
        assert_eq!(home.children_of("old").unwrap(), ["young"]);
        let err = home.remove("old", "remove", |_| Ok(())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
    }

    #[test]
    fn taken_ids_missing_parents_and_bad_ids_are_refused_leaving_nothing() {
        let (_dir, home) = home();
        home.place(home.stage("a", "create").unwrap(), "a", None, "create")
            .unwrap();
        let again = home.stage("a", "create").unwrap();
        let err = home.place(again, "a", None, "create").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        let orphan = home.stage("b", "create").unwrap();
        let err = home.place(orphan, "b", Some("nope"), "create").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        for bad in ["", "..", "../x", "a/b", ".new-a"] {
            assert_eq!(
                home.existing(bad, "mount").unwrap_err().kind(),
                ErrorKind::InvalidInput
            );
            assert_eq!(
                home.stage(bad, "create").unwrap_err().kind(),
                ErrorKind::InvalidInput
            );
            assert!(!home.exists(bad));
        }
        assert_eq!(home.list().unwrap(), ["a"]);
        assert!(leftovers(&home).is_empty(), "{:?}", leftovers(&home));
    }

    #[test]
    fn a_live_makers_staging_survives_collection_and_a_dead_ones_does_not() {
        let (dir, home) = home();
        let live = home.stage("live", "create").unwrap();
        fs::write(live.path().join("f"), b"building").unwrap();
        // What a killed process leaves: staging directories nobody locks.
        for dead in [".new-dead-0123", ".gone-old-4567", ".scratch-89ab"] {
            fs::create_dir_all(home.staging_dir().join(dead).join("sub")).unwrap();
        }
        // Another process starting on the same home.
        let other = LayerHome::open(dir.path()).unwrap();
        assert_eq!(
            other.collect_leftovers(),
            0,
            "the first open collected them"
        );
        assert!(
            live.path().join("f").exists(),
            "a live maker's staging was touched"
        );
        let names = leftovers(&home);
        assert_eq!(names.len(), 1, "{names:?}");
        home.place(live, "live", None, "create").unwrap();
        assert!(home.layers_dir().join("live/f").exists());
    }

    #[test]
    fn staging_an_earlier_kit_left_among_the_layers_is_collected_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("layers/.new-old-0123/sub")).unwrap();
        fs::create_dir_all(dir.path().join("layers/kept")).unwrap();
        let home = LayerHome::open(dir.path()).unwrap();
        assert!(!dir.path().join("layers/.new-old-0123").exists());
        assert!(home.staging_dir().is_dir());
        assert_eq!(home.list().unwrap(), ["kept"]);
        // Only the open that made `.staging/` looks among the layers.
        fs::create_dir_all(dir.path().join("layers/.gone-late-4567")).unwrap();
        drop(LayerHome::open(dir.path()).unwrap());
        assert!(dir.path().join("layers/.gone-late-4567").exists());
    }

    #[test]
    fn a_lock_held_by_another_process_protects_its_staging() {
        // The lock, not the pid, is what counts: flock(1) in a child process
        // holds the directory while we collect.
        let (_dir, home) = home();
        let staged = home.staging_dir().join(".new-x-feed");
        fs::create_dir(&staged).unwrap();
        // -o: the lock stays with flock(1) itself, not with its command.
        let mut holder = Command::new("flock")
            .arg("-o")
            .arg(&staged)
            .args(["sleep", "30"])
            .stdin(Stdio::null())
            .spawn()
            .expect("flock(1) from util-linux");
        // Wait until the child holds it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let fd = lock::open_dir(&staged).unwrap();
            if lock::try_exclusive(fd).unwrap().is_none() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "flock(1) never took the lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(home.collect_leftovers(), 0);
        assert!(staged.exists());
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert_eq!(home.collect_leftovers(), 1);
        assert!(!staged.exists());
    }

    #[test]
    fn a_dead_probes_scratch_is_collected_with_the_mount_it_left() {
        // What overlay's start-up probe leaves when killed inside it: a
        // scratch directory with a live mount in it.
        if !strata_testkit::skip::is_root() {
            strata_testkit::skip::cannot_run(
                "collecting a dead probe's scratch with its mount",
                "mounting the tmpfs this test needs takes root",
            );
            return;
        }
        let (_dir, home) = home();
        let scratch = home.staging_dir().join(".scratch-0badc0de");
        let target = scratch.join("merged");
        fs::create_dir_all(&target).unwrap();
        rustix::mount::mount(
            "strata-test",
            &target,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .expect("mount tmpfs (needs root)");
        fs::write(target.join("inside"), b"x").unwrap();
        assert_eq!(home.collect_leftovers(), 1);
        assert!(!scratch.exists());
        assert!(!mounts::is_mount_point(&target).unwrap());
    }

    #[test]
    fn staging_is_made_with_its_mode_whatever_the_umask() {
        let (_dir, home) = home();
        let old = rustix::process::umask(Mode::from_raw_mode(0o777));
        let staging = home.stage("m", "create");
        rustix::process::umask(old);
        let staging = staging.unwrap();
        let mode = fs::metadata(staging.path()).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, LAYER_DIR_MODE);
    }
}
