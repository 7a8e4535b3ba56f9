//! What a layer deletes or hides of the lower layers. On a full tree a
//! whiteout deletes and an opaque directory loses what the lower layers had;
//! in a diff directory the deletion is written in that directory's whiteout
//! format, and directories the layer writes into are copied up from the
//! lower tree first, as the filesystem's own copy-up would.

use super::*;

impl Applier<'_> {
    /// Opens directory `rel`, making what is missing of it; in an overlay
    /// upper, a directory made there takes the lower one's metadata, and one
    /// in the place of a whiteout of this layer is made new and opaque.
    pub(super) fn dir_creating(
        &mut self,
        rel: &Path,
        shown: &str,
        operation: &'static str,
    ) -> Result<OwnedFd, ArchiveError> {
        loop {
            let mut created = Vec::new();
            let opened = self
                .root
                .dir_creating(rel, |dir| created.push(dir.to_path_buf()));
            for dir in created {
                self.adopt_created_dir(dir, shown)?;
            }
            match opened {
                Ok(fd) => return Ok(fd),
                // On a full tree a whited-out directory is simply gone; in an
                // upper its whiteout is in the way.
                Err(e)
                    if self.diff_format().is_some()
                        && e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
                {
                    if !self.dir_over_whiteout(rel, shown)? {
                        return Err(ArchiveError::entry_io(shown, operation, e));
                    }
                }
                Err(e) => return Err(ArchiveError::entry_io(shown, operation, e)),
            }
        }
    }

    /// Takes note of a directory `dir_creating` made. In an upper, one that
    /// the lower tree has (and does not hide) is a copy-up of it: it gets
    /// its metadata and is not yet the layer's own.
    pub(super) fn adopt_created_dir(
        &mut self,
        dir: PathBuf,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let lower = self.lower.filter(|_| !self.is_hidden_below(&dir));
        let copied_up = match lower {
            Some(lower) => copy_dir_meta(lower, self.root, &dir).map_err(|e| {
                ArchiveError::entry_io(shown, "copy the lower directory's metadata", e)
            })?,
            None => None,
        };
        match copied_up {
            Some(times) => {
                self.touched_seen.insert(&dir).map_err(over_budget(shown))?;
                self.touched
                    .push(DirRecord {
                        rel: dir,
                        mode: None,
                        times,
                    })
                    .map_err(|e| ArchiveError::entry_io(shown, "remember a directory", e))?;
            }
            None => mark_made(&mut self.made, &dir).map_err(over_budget(shown))?,
        }
        Ok(())
    }

    /// Whether a directory above `rel` hides what the lower tree has below it.
    pub(super) fn is_hidden_below(&self, rel: &Path) -> bool {
        !self.hidden.is_empty() && rel.ancestors().skip(1).any(|a| self.hidden.contains(a))
    }

    /// Replaces the first whiteout on the way to `rel` with a new, opaque
    /// directory (the whiteout hid the lower one, and this layer's directory
    /// must go on hiding it); says whether there was one.
    pub(super) fn dir_over_whiteout(
        &mut self,
        rel: &Path,
        shown: &str,
    ) -> Result<bool, ArchiveError> {
        let Some(format) = self.diff_format() else {
            return Ok(false);
        };
        let failed = |e: io::Error| ArchiveError::entry_io(shown, "replace a whiteout", e);
        let mut so_far = PathBuf::new();
        for part in rel.components() {
            let above = so_far.clone();
            so_far.push(part);
            match self.root.dir(&so_far) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => {}
                Err(_) => return Ok(false),
            }
            let parent = self.root.dir(&above).map_err(failed)?;
            let name = name_cstr(part.as_os_str()).map_err(failed)?;
            let stat = rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| failed(e.into()))?;
            if !format.is_whiteout(&stat) {
                return Ok(false);
            }
            self.forget_parents();
            rustix::fs::unlinkat(&parent, &name, AtFlags::empty()).map_err(|e| failed(e.into()))?;
            rustix::fs::mkdirat(&parent, &name, Mode::from_raw_mode(0o755))
                .map_err(|e| failed(e.into()))?;
            let dir = open_subdir(&parent, &name).map_err(|e| failed(e.into()))?;
            format.set_opaque(&dir).map_err(|e| failed(e.into()))?;
            self.hidden.insert(&so_far).map_err(over_budget(shown))?;
            mark_made(&mut self.made, &so_far).map_err(over_budget(shown))?;
            return Ok(true);
        }
        Ok(false)
    }

    pub(super) fn whiteout(
        &mut self,
        dir: &Path,
        target: &[u8],
        shown: &str,
    ) -> Result<(), ArchiveError> {
        self.forget_parents();
        if target == OPAQUE_MARKER {
            return self.opaque(dir, shown);
        }
        if target.starts_with(WHITEOUT_PREFIX) {
            // AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs, .wh..wh.orph):
            // never applied, nor what is below it (see `is_aufs_meta`).
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
            return Err(ArchiveError::unsafe_entry(
                shown,
                "a whiteout that names no single entry",
            ));
        }
        let target_name = OsStr::from_bytes(target);
        let cname = name_cstr(target_name).map_err(|e| ArchiveError::entry_io(shown, "name", e))?;
        let parent = self.parent(dir, shown)?;
        let rel = dir.join(target_name);
        // A whiteout hides only the lower layers' content (OCI image spec):
        // what this layer already made there stays.
        if self.made.contains(&rel) {
            match rustix::fs::statat(&parent, &cname, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => return self.hide_lower_at(&parent, &cname, &rel, &stat, shown),
                // Gone with a directory above it that a later member replaced.
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => {
                    return Err(ArchiveError::entry_io(
                        shown,
                        "stat what the whiteout names",
                        e.into(),
                    ));
                }
            }
        }
        match self.options.target {
            ApplyTarget::Tree => remove_all_at(&parent, &cname)
                .map_err(|e| ArchiveError::entry_io(shown, "delete what the whiteout names", e)),
            ApplyTarget::Diff(format) => {
                // Whatever is in the upper there is not the layer's own (a
                // copy-up holding other whiteouts): the whiteout takes its place.
                remove_all_at(&parent, &cname)
                    .map_err(|e| ArchiveError::entry_io(shown, "replace", e))?;
                // overlayfs lists a whiteout in a directory that nothing
                // lower merges with as an entry that cannot be opened: one
                // goes only where it hides something.
                if !self
                    .lower_may_have(&rel)
                    .map_err(|e| ArchiveError::entry_io(shown, "look in the lower tree", e))?
                {
                    return Ok(());
                }
                format
                    .make_whiteout(&parent, &cname)
                    .map_err(|e| ArchiveError::entry_io(shown, "create a whiteout", e.into()))
            }
        }
    }

    /// Whether the merged tree could show something of the lower tree at
    /// `rel`: not below a directory that hides the lower one, and, when the
    /// lower tree is given, there.
    pub(super) fn lower_may_have(&self, rel: &Path) -> io::Result<bool> {
        if self.is_hidden_below(rel) {
            return Ok(false);
        }
        let (Some(lower), Some((dir, name))) = (self.lower, split(rel)) else {
            return Ok(true);
        };
        let dir = match lower.dir(dir) {
            Ok(dir) => dir,
            Err(e) if gone(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        match rustix::fs::statat(&dir, &name_cstr(name)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Hides what the lower layers have at `rel` (`name` in `parent`, with
    /// `stat`) while keeping what this layer made there.
    pub(super) fn hide_lower_at(
        &mut self,
        parent: &OwnedFd,
        name: &std::ffi::CStr,
        rel: &Path,
        stat: &rustix::fs::Stat,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            // A non-directory of this layer already replaced (on a full tree)
            // or hides (in an upper) all the lower layers had at its path.
            return Ok(());
        }
        let dir = open_subdir(parent, name)
            .map_err(|e| ArchiveError::entry_io(shown, "open what the whiteout names", e.into()))?;
        match self.options.target {
            ApplyTarget::Tree => remove_lower_entries(&dir, rel, &self.made)
                .map_err(|e| ArchiveError::entry_io(shown, "delete what the whiteout names", e)),
            ApplyTarget::Diff(format) => {
                self.make_opaque(format, &dir, rel)
                    .map_err(|e| ArchiveError::entry_io(shown, "mark directory opaque", e))?;
                self.hidden.insert(rel).map_err(over_budget(shown))?;
                Ok(())
            }
        }
    }

    pub(super) fn opaque(&mut self, dir: &Path, shown: &str) -> Result<(), ArchiveError> {
        let path_fd = self.dir_creating(dir, shown, "open opaque directory")?;
        let stat = rustix::fs::fstat(&path_fd)
            .map_err(|e| ArchiveError::entry_io(shown, "stat opaque directory", e.into()))?;
        self.note_touched(dir, &stat, shown)?;
        // The directory as resolved in the root (through in-root symlinks),
        // opened for reading and xattrs.
        let fd = rustix::fs::openat(
            &path_fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ArchiveError::entry_io(shown, "open opaque directory", e.into()))?;
        match self.options.target {
            ApplyTarget::Tree => remove_lower_entries(&fd, dir, &self.made)
                .map_err(|e| ArchiveError::entry_io(shown, "clear opaque directory", e)),
            ApplyTarget::Diff(format) => {
                // Compared by inode: a name like `x/..` or a symlink can lead
                // to the root too.
                let root = rustix::fs::fstat(self.root.fd()).map_err(|e| {
                    ArchiveError::entry_io(shown, "stat the layer's root", e.into())
                })?;
                if (stat.st_dev, stat.st_ino) == (root.st_dev, root.st_ino) {
                    // The mark too, even where the merge ignores it on the
                    // root: it says what the layer meant to whoever reads
                    // the diff. What is not the layer's own goes now, as on
                    // a full tree, so that what it makes from here on is new.
                    self.make_opaque(format, &fd, dir)
                        .map_err(|e| ArchiveError::entry_io(shown, "mark directory opaque", e))?;
                    if !format.opaque_root_honoured() {
                        self.root_opaque.get_or_insert_with(|| shown.to_string());
                    }
                    self.hidden
                        .insert(Path::new(""))
                        .map_err(over_budget(shown))?;
                } else {
                    self.make_opaque(format, &fd, dir)
                        .map_err(|e| ArchiveError::entry_io(shown, "mark directory opaque", e))?;
                    self.hidden.insert(dir).map_err(over_budget(shown))?;
                }
                Ok(())
            }
        }
    }

    /// Marks the upper directory `dir` (at `rel`) opaque, and takes out of
    /// it what is not the layer's own (copy-ups that hold only whiteouts,
    /// and whiteouts): under an opaque directory nothing lower merges, so
    /// overlayfs would show them as they are.
    pub(super) fn make_opaque(
        &self,
        format: WhiteoutFormat,
        dir: &OwnedFd,
        rel: &Path,
    ) -> io::Result<()> {
        format.set_opaque(dir)?;
        remove_lower_entries(dir, rel, &self.made)
    }

    /// For an opaque root in an upper: whites out every entry of the lower
    /// root the layer did not make, and makes each directory it did make
    /// there opaque, so nothing of the lower tree shows through the mount.
    /// (Below the marker's root nothing that is not the layer's own is left:
    /// it was taken out then, and none is made after it.)
    pub(super) fn hide_lower_root(&mut self, shown: &str) -> Result<(), ArchiveError> {
        let (Some(lower), Some(format)) = (self.lower, self.diff_format()) else {
            // No lower tree given (or a full tree): nothing to hide.
            return Ok(());
        };
        self.forget_parents();
        let failed = |e: io::Error| ArchiveError::entry_io(shown, "hide the lower root", e);
        let lower_root = open_subdir(lower.fd(), c".").map_err(|e| failed(e.into()))?;
        let upper_root = open_subdir(self.root.fd(), c".").map_err(|e| failed(e.into()))?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&lower_root).map_err(|e| failed(e.into()))? {
            let entry = entry.map_err(|e| failed(e.into()))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push(name.to_owned());
            }
        }
        for name in names {
            let rel = Path::new(OsStr::from_bytes(name.to_bytes()));
            let upper = match rustix::fs::statat(&upper_root, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => Some(stat),
                Err(rustix::io::Errno::NOENT) => None,
                Err(e) => return Err(failed(e.into())),
            };
            match upper {
                Some(stat) if self.made.contains(rel) => {
                    if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                        let dir = open_subdir(&upper_root, &name).map_err(|e| failed(e.into()))?;
                        format.set_opaque(&dir).map_err(|e| failed(e.into()))?;
                    }
                }
                Some(stat) if format.is_whiteout(&stat) => {}
                // Missing (or, defensively, anything else not the layer's).
                _ => {
                    remove_all_at(&upper_root, &name).map_err(failed)?;
                    format
                        .make_whiteout(&upper_root, &name)
                        .map_err(|e| failed(e.into()))?;
                }
            }
        }
        Ok(())
    }
}

/// Gives the directory `rel` just made in `upper` the owner, mode and xattrs
/// of the same directory in `lower` (only those a layer may set: overlay's
/// bookkeeping and the host's labels left out); returns the lower one's
/// times, or `None` if `lower` has no directory there.
pub(super) fn copy_dir_meta(
    lower: &Root,
    upper: &Root,
    rel: &Path,
) -> io::Result<Option<Timestamps>> {
    let lower_dir = match lower.dir(rel) {
        Ok(fd) => fd,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let read = |fd: &OwnedFd| -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    };
    let from = read(&lower_dir)?;
    let to = read(&upper.dir(rel)?)?;
    let stat = rustix::fs::fstat(&from)?;
    rustix::fs::fchown(
        &to,
        Some(Uid::from_raw(stat.st_uid)),
        Some(Gid::from_raw(stat.st_gid)),
    )?;
    rustix::fs::fchmod(&to, Mode::from_raw_mode(stat.st_mode & 0o7777))?;
    let mut names = vec![0u8; 4096];
    let len = match rustix::fs::flistxattr(&from, &mut names) {
        Ok(len) => len,
        Err(rustix::io::Errno::RANGE) => {
            names = vec![0u8; 65536];
            rustix::fs::flistxattr(&from, &mut names)?
        }
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => return Err(e.into()),
    };
    let mut value = vec![0u8; 65536];
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        // What a layer could not set itself is not copied up either: the
        // lower tree's overlay bookkeeping and the host's labels stay there.
        if !layer_may_set_xattr(name) {
            continue;
        }
        let n = rustix::fs::fgetxattr(&from, name, &mut value)?;
        rustix::fs::fsetxattr(&to, name, &value[..n], XattrFlags::empty())?;
    }
    Ok(Some(times_of(&stat)))
}

/// Removes from the directory `fd` (at `rel`) everything this layer did not
/// make: what it made stays, and a directory it made (or merged into) keeps
/// only what it made below, since an opaque directory hides all of the lower
/// layers' contents at every depth. (In an upper directory, what the layer
/// did not make is its whiteouts and the copy-ups that hold them.)
pub(super) fn remove_lower_entries(fd: &OwnedFd, rel: &Path, made: &PathSet) -> io::Result<()> {
    let mut keep_dirs = Vec::new();
    beneath::remove_children(fd, |child| {
        let child_rel = rel.join(OsStr::from_bytes(child.to_bytes()));
        if made.contains(&child_rel) {
            keep_dirs.push((child.to_owned(), child_rel));
            false
        } else {
            true
        }
    })?;
    for (name, child_rel) in keep_dirs {
        let sub = match rustix::fs::openat(
            fd,
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(sub) => sub,
            // Not a directory (or a symlink): kept as it is.
            Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => continue,
            Err(e) => return Err(e.into()),
        };
        remove_lower_entries(&sub, &child_rel, made)?;
    }
    Ok(())
}
