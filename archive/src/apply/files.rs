//! Making one member in the tree: directories, regular files (their data,
//! sparse or not), links, devices and FIFOs, with owners, modes, times and
//! xattrs, replacing what was there.

use super::*;

impl Applier<'_> {
    /// The handle of `rel`'s parent directory, made if missing.
    pub(super) fn parent(
        &mut self,
        parent: &Path,
        shown: &str,
    ) -> Result<Rc<ParentDir>, ArchiveError> {
        if let Some(at) = self
            .parent_cache
            .iter()
            .rposition(|(cached, _)| cached == parent)
        {
            let hit = self.parent_cache.remove(at);
            let dir = hit.1.clone();
            self.parent_cache.push(hit);
            return Ok(dir);
        }
        let fd = self.dir_creating(parent, shown, "open parent directory")?;
        let stat = rustix::fs::fstat(&fd)
            .map_err(|e| ArchiveError::entry_io(shown, "stat parent directory", e.into()))?;
        self.note_touched(parent, &stat, shown)?;
        let inherited_gid = (stat.st_mode & 0o2000 != 0).then_some(stat.st_gid);
        let dir = Rc::new(ParentDir { fd, inherited_gid });
        if self.parent_cache.len() == super::PARENTS_CACHED {
            self.parent_cache.remove(0);
        }
        self.parent_cache.push((parent.to_path_buf(), dir.clone()));
        Ok(dir)
    }

    /// Remembers the times of the existing directory `rel` before this
    /// layer writes into it (the first time only).
    pub(super) fn note_touched(
        &mut self,
        rel: &Path,
        stat: &rustix::fs::Stat,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        if self.touched_seen.insert(rel).map_err(over_budget(shown))? {
            self.touched
                .push(DirRecord {
                    rel: rel.to_path_buf(),
                    mode: None,
                    times: times_of(stat),
                })
                .map_err(|e| ArchiveError::entry_io(shown, "remember a directory", e))?;
        }
        Ok(())
    }

    /// Applies one member.
    pub(super) fn apply_entry<R: Read>(
        &mut self,
        member: &Member,
        data: &mut Data<'_, crate::record::TarTap<R>>,
        tap: &record::TarTap<R>,
    ) -> Result<(), ArchiveError> {
        self.entries += 1;
        let shown = lossy(&member.name);
        let kind = member.kind();
        if kind.is_pax_global_extensions() {
            return Ok(()); // no effect on the tree
        }
        let meta = self.meta(member, &shown)?;
        // A PAX sparse member is stored under a made-up name; its real one is
        // in the records.
        let real_name = meta.sparse.as_ref().and_then(|s| s.name.clone());
        let name = real_name.as_deref().unwrap_or(&member.name);
        let shown = lossy(name);
        let rel = normalize(name).map_err(|why| ArchiveError::unsafe_entry(&shown, why))?;

        // AUFS bookkeeping is never applied, nor anything below it (the
        // entries themselves are whiteout-named and skipped below).
        if below_aufs_meta(&rel) {
            tracing::debug!("skipped {shown:?}: below AUFS bookkeeping");
            return Ok(());
        }

        // Whiteouts first: their names are instructions, not files.
        if let Some((dir, base)) = split(&rel)
            && let Some(target) = base.as_bytes().strip_prefix(WHITEOUT_PREFIX)
        {
            let dir = dir.to_path_buf();
            return self.whiteout(&dir, target, &shown);
        }

        let Some((parent_rel, base)) = split(&rel) else {
            // The root itself: only a directory can describe it.
            if !kind.is_dir() {
                return Err(ArchiveError::unsafe_entry(
                    &shown,
                    "only a directory can stand for the layer's root",
                ));
            }
            self.chown_chattrs_dir(Path::new(""), &meta, &shown)?;
            self.dirs
                .push(DirRecord {
                    rel,
                    mode: Some(meta.mode),
                    times: Timestamps {
                        last_access: meta.atime,
                        last_modification: meta.mtime,
                    },
                })
                .map_err(|e| ArchiveError::entry_io(&shown, "remember a directory", e))?;
            return Ok(());
        };
        let parent_rel = parent_rel.to_path_buf();
        let base = base.to_os_string();
        let cname = name_cstr(&base).map_err(|e| ArchiveError::entry_io(&shown, "name", e))?;
        let parent = self.parent(&parent_rel, &shown)?;

        if kind.is_dir() {
            self.make_dir(&parent, &cname, &rel, &meta, &shown)?;
        } else if member.gnu_sparse.is_some()
            || (meta.sparse.is_some() && kind.is_file())
            || kind.is_file()
            || kind == tar::EntryType::Continuous
        {
            self.make_regular(member, data, tap, &parent, &cname, &meta, &shown)?;
        } else if kind.is_symlink() {
            let target = member
                .link
                .clone()
                .ok_or_else(|| ArchiveError::entry(&shown, "a symlink without a target".into()))?;
            let target = std::ffi::CString::new(target)
                .map_err(|_| ArchiveError::entry(&shown, "NUL in symlink target".into()))?;
            self.create_with(&parent, &cname, &shown, |p, n| {
                rustix::fs::symlinkat(target.as_c_str(), p, n)
            })?;
            self.forget_parents();
            self.set_meta_at(&parent, &base, &meta, &shown, false)?;
        } else if kind.is_hard_link() {
            self.make_hard_link(member, &parent, &cname, &shown)?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let file_type = if kind.is_character_special() {
                FileType::CharacterDevice
            } else if kind.is_block_special() {
                FileType::BlockDevice
            } else {
                FileType::Fifo
            };
            let header = &member.header;
            let major = header.device_major().ok().flatten().unwrap_or(0);
            let minor = header.device_minor().ok().flatten().unwrap_or(0);
            let dev = rustix::fs::makedev(major, minor);
            self.create_with(&parent, &cname, &shown, |p, n| {
                rustix::fs::mknodat(p, n, file_type, Mode::from_raw_mode(0o600), dev)
            })?;
            self.set_meta_at(&parent, &base, &meta, &shown, true)?;
        } else {
            return Err(ArchiveError::entry(
                &shown,
                format!("unsupported member type {:?}", kind),
            ));
        }
        mark_made(&mut self.made, &rel).map_err(over_budget(&shown))?;
        Ok(())
    }

    /// Makes the directory member `name` in `parent` (at `rel`), or takes
    /// over the directory there; its mode and times are set at the end.
    fn make_dir(
        &mut self,
        parent: &ParentDir,
        cname: &std::ffi::CStr,
        rel: &Path,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        // A directory made here already has the owner a member of ours
        // would give it, unless the member says otherwise.
        let mut fresh = false;
        match rustix::fs::mkdirat(parent, cname, Mode::from_raw_mode(0o700)) {
            Ok(()) => fresh = true,
            Err(rustix::io::Errno::EXIST) => {
                let existing = rustix::fs::statat(parent, cname, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| ArchiveError::entry_io(shown, "stat", e.into()))?;
                if FileType::from_raw_mode(existing.st_mode) != FileType::Directory {
                    self.replace(parent, cname, shown)?;
                    rustix::fs::mkdirat(parent, cname, Mode::from_raw_mode(0o700))
                        .map_err(|e| ArchiveError::entry_io(shown, "create directory", e.into()))?;
                    if let Some(format) = self.diff_format() {
                        // What was there (a whiteout or another member of
                        // this layer) hid the lower path; a plain upper
                        // directory would merge with a lower one again.
                        let dir = open_subdir(parent, cname).map_err(|e| {
                            ArchiveError::entry_io(shown, "open directory", e.into())
                        })?;
                        format.set_opaque(&dir).map_err(|e| {
                            ArchiveError::entry_io(shown, "mark directory opaque", e.into())
                        })?;
                        self.hidden.insert(rel).map_err(over_budget(shown))?;
                    }
                }
            }
            Err(e) => return Err(ArchiveError::entry_io(shown, "create directory", e.into())),
        }
        let owned_as_said =
            fresh && (meta.uid, meta.gid) == self.new_owner(parent) && meta.xattrs.is_empty();
        if !owned_as_said {
            self.chown_chattrs_dir(rel, meta, shown)?;
        }
        self.dirs
            .push(DirRecord {
                rel: rel.to_path_buf(),
                mode: Some(meta.mode),
                times: Timestamps {
                    last_access: meta.atime,
                    last_modification: meta.mtime,
                },
            })
            .map_err(|e| ArchiveError::entry_io(shown, "remember a directory", e))?;
        Ok(())
    }

    /// Makes the regular file member `name` in `parent`: its data as stored,
    /// or only the data regions of a sparse member (GNU's old format, the
    /// map in the headers, or GNU's PAX formats, the map in the records or
    /// at the front of the data).
    #[allow(clippy::too_many_arguments)]
    fn make_regular<R: Read>(
        &mut self,
        member: &Member,
        data: &mut Data<'_, crate::record::TarTap<R>>,
        tap: &record::TarTap<R>,
        parent: &ParentDir,
        cname: &std::ffi::CStr,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let kind = member.kind();
        if let Some(map) = member.gnu_sparse.as_ref() {
            // GNU's old sparse format: the map was in the headers. Data
            // regions only; the map and the data stay in the record.
            let (file, fresh) = self.create_file(parent, cname, meta.mode, shown)?;
            let mut file = std::fs::File::from(file);
            let written =
                self.write_regions(data, &mut file, &map.regions, map.real_size, shown)?;
            if written != member.size {
                return Err(ArchiveError::entry(
                    shown,
                    "sparse member: the map does not account for the member's data".into(),
                ));
            }
            set_sparse_len(&file, map.real_size, shown)?;
            self.size += map.real_size;
            let fd = std::os::fd::OwnedFd::from(file);
            self.set_meta_fd(&fd, meta, &fresh, shown)?;
        } else if let Some(info) = meta.sparse.as_ref().filter(|_| kind.is_file()) {
            // Data regions only; the map and the data stay in the record.
            let (file, fresh) = self.create_file(parent, cname, meta.mode, shown)?;
            let mut file = std::fs::File::from(file);
            let real_size = self.copy_pax_sparse(data, member.size, &mut file, info, shown)?;
            self.size += real_size;
            let fd = std::os::fd::OwnedFd::from(file);
            self.set_meta_fd(&fd, meta, &fresh, shown)?;
        } else {
            let (file, fresh) = self.create_file(parent, cname, meta.mode, shown)?;
            let mut file = std::fs::File::from(file);
            // A plain file's data is read as payload and left out of the
            // record.
            tap.begin_payload();
            let written = self.copy_data(data, &mut file, shown);
            tap.end_payload();
            let written = written?;
            if written != member.size {
                return Err(ArchiveError::input(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{shown:?}: the stream ends inside the member's data ({written} of {} bytes)",
                        member.size
                    ),
                )));
            }
            self.size += written;
            let fd = std::os::fd::OwnedFd::from(file);
            self.set_meta_fd(&fd, meta, &fresh, shown)?;
        }
        Ok(())
    }

    /// Makes the hard link member `name` in `parent`, to a path of the layer.
    fn make_hard_link(
        &mut self,
        member: &Member,
        parent: &ParentDir,
        cname: &std::ffi::CStr,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let target = member
            .link
            .as_deref()
            .ok_or_else(|| ArchiveError::entry(shown, "a hard link without a target".into()))?;
        let target_rel = normalize(target).map_err(|why| ArchiveError::unsafe_entry(shown, why))?;
        if target_rel.iter().any(is_aufs_meta) {
            // AUFS kept hard-linked files there; nothing of it is applied.
            return Err(ArchiveError::entry(
                shown,
                "a hard link into AUFS bookkeeping (.wh..wh.*), which is never applied".into(),
            ));
        }
        let Some((target_dir, target_base)) = split(&target_rel) else {
            return Err(ArchiveError::unsafe_entry(
                shown,
                "a hard link to the layer's root",
            ));
        };
        let target_parent = self
            .root
            .dir(target_dir)
            .map_err(|e| ArchiveError::entry_io(shown, "find the hard link's target", e))?;
        let target_name =
            name_cstr(target_base).map_err(|e| ArchiveError::entry_io(shown, "name", e))?;
        self.create_with(parent, cname, shown, |p, n| {
            rustix::fs::linkat(&target_parent, &target_name, p, n, AtFlags::empty())
        })?;
        Ok(())
    }

    /// Creates a regular file, replacing what is there.
    /// Creates a regular file with `mode`'s permission bits, replacing what is
    /// there; says who owns it and with what mode.
    pub(super) fn create_file(
        &mut self,
        parent: &ParentDir,
        name: &std::ffi::CStr,
        mode: u32,
        shown: &str,
    ) -> Result<(OwnedFd, Fresh), ArchiveError> {
        let open = || {
            rustix::fs::openat(
                parent,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode & 0o777),
            )
        };
        let fd = match open() {
            Ok(fd) => fd,
            Err(rustix::io::Errno::EXIST) => {
                self.replace(parent, name, shown)?;
                open().map_err(|e| ArchiveError::entry_io(shown, "create", e.into()))?
            }
            Err(e) => return Err(ArchiveError::entry_io(shown, "create", e.into())),
        };
        let (uid, gid) = self.new_owner(parent);
        let fresh = Fresh {
            uid,
            gid,
            mode: self.umask.map(|umask| mode & 0o777 & !umask),
        };
        Ok((fd, fresh))
    }

    /// Who owns what this process makes in `parent`: itself, and the
    /// directory's group where a setgid directory passes it on.
    fn new_owner(&self, parent: &ParentDir) -> (u32, u32) {
        (self.euid, parent.inherited_gid.unwrap_or(self.egid))
    }

    /// Runs `make`, replacing what is at `name` if it exists.
    pub(super) fn create_with(
        &mut self,
        parent: &OwnedFd,
        name: &std::ffi::CStr,
        shown: &str,
        make: impl Fn(&OwnedFd, &std::ffi::CStr) -> rustix::io::Result<()>,
    ) -> Result<(), ArchiveError> {
        match make(parent, name) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => {
                self.replace(parent, name, shown)?;
                make(parent, name).map_err(|e| ArchiveError::entry_io(shown, "create", e.into()))
            }
            Err(e) => Err(ArchiveError::entry_io(shown, "create", e.into())),
        }
    }

    /// Removes what is at `name` so a member can take its place.
    pub(super) fn replace(
        &mut self,
        parent: &OwnedFd,
        name: &std::ffi::CStr,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        self.forget_parents();
        remove_all_at(parent, name).map_err(|e| ArchiveError::entry_io(shown, "replace", e))
    }

    /// Writes a member's data, leaving every all-zero 4 KiB block as a hole:
    /// a sparse member's holes stay holes, and so do the holes of a sparse file
    /// exported densely (as export writes every file). Contents are unchanged.
    pub(super) fn copy_data(
        &mut self,
        entry: &mut impl Read,
        file: &mut std::fs::File,
        shown: &str,
    ) -> Result<u64, ArchiveError> {
        use std::os::unix::fs::FileExt;
        const BLOCK: usize = 4096;
        let mut written = 0u64;
        let mut ends_in_hole = false;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ArchiveError::input(e)),
            };
            // Runs of blocks with data are written in one call each.
            let chunk = &self.buf[..n];
            let mut run_start: Option<usize> = None;
            for (i, block) in chunk.chunks(BLOCK).enumerate() {
                let hole = block.len() == BLOCK && block.iter().all(|b| *b == 0);
                match (hole, run_start) {
                    (false, None) => run_start = Some(i * BLOCK),
                    (true, Some(start)) => {
                        file.write_all_at(&chunk[start..i * BLOCK], written + start as u64)
                            .map_err(|e| ArchiveError::entry_io(shown, "write", e))?;
                        run_start = None;
                    }
                    _ => {}
                }
                ends_in_hole = hole;
            }
            if let Some(start) = run_start {
                file.write_all_at(&chunk[start..], written + start as u64)
                    .map_err(|e| ArchiveError::entry_io(shown, "write", e))?;
            }
            written += n as u64;
        }
        if ends_in_hole {
            file.set_len(written)
                .map_err(|e| ArchiveError::entry_io(shown, "set length", e))?;
        }
        Ok(written)
    }

    /// Writes a PAX sparse member's data regions at their offsets and sets the
    /// real size; returns it. `size` is the member's data in the stream.
    pub(super) fn copy_pax_sparse(
        &mut self,
        entry: &mut impl Read,
        size: u64,
        file: &mut std::fs::File,
        info: &PaxSparse,
        shown: &str,
    ) -> Result<u64, ArchiveError> {
        let bad = |why: &str| ArchiveError::entry(shown, format!("sparse member: {why}"));
        // The 1.0 map is read a byte at a time: from a buffer, not from the
        // stream (the reader stops at the member's end all the same).
        let entry = &mut io::BufReader::with_capacity(64 * 1024, entry);
        let mut consumed = 0u64;
        let map = match (&info.map, info.major) {
            (Some(map), _) => map.clone(),
            (None, Some(1)) => {
                // Format 1.0: decimal lines (count, then offset/size pairs)
                // at the front of the data, padded to a 512-byte block.
                let mut map = Vec::new();
                let mut pending_offset = None;
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                let mut wanted = None;
                while wanted.is_none_or(|w| map.len() < w) {
                    entry.read_exact(&mut byte).map_err(ArchiveError::input)?;
                    consumed += 1;
                    if byte[0] == b'\n' {
                        let n = parse_u64(&line).ok_or_else(|| bad("bad number in the map"))?;
                        line.clear();
                        if wanted.is_none() {
                            if n > MAX_SPARSE_REGIONS as u64 {
                                return Err(bad(&format!(
                                    "more than {MAX_SPARSE_REGIONS} regions in its map"
                                )));
                            }
                            wanted = Some(n as usize);
                        } else if let Some(offset) = pending_offset.take() {
                            map.push((offset, n));
                        } else {
                            pending_offset = Some(n);
                        }
                    } else if line.len() > 20 {
                        return Err(bad("bad number in the map"));
                    } else {
                        line.push(byte[0]);
                    }
                }
                let padding = (512 - consumed % 512) % 512;
                io::copy(&mut entry.by_ref().take(padding), &mut io::sink())
                    .map_err(ArchiveError::input)?;
                consumed += padding;
                map
            }
            _ => return Err(bad("an unknown GNU sparse format")),
        };
        let real_size = info.real_size.ok_or_else(|| bad("no real size recorded"))?;
        let written = self.write_regions(entry, file, &map, real_size, shown)?;
        if consumed + written != size {
            return Err(bad("the map does not account for the member's data"));
        }
        set_sparse_len(file, real_size, shown)?;
        Ok(real_size)
    }

    /// Writes a sparse member's data regions, stored one after the other
    /// in `entry`, at their offsets in `file`; returns the bytes written. A
    /// region past `real_size` is refused before anything is written.
    pub(super) fn write_regions(
        &mut self,
        entry: &mut impl Read,
        file: &mut std::fs::File,
        map: &[(u64, u64)],
        real_size: u64,
        shown: &str,
    ) -> Result<u64, ArchiveError> {
        use std::os::unix::fs::FileExt;
        if map.iter().any(|(offset, length)| {
            offset
                .checked_add(*length)
                .is_none_or(|end| end > real_size)
        }) {
            return Err(ArchiveError::entry(
                shown,
                "sparse member: a region beyond the file's size".into(),
            ));
        }
        let mut written = 0u64;
        for &(offset, length) in map {
            let mut left = length;
            let mut at = offset;
            while left > 0 {
                let want = (left as usize).min(self.buf.len());
                let n = entry
                    .read(&mut self.buf[..want])
                    .map_err(ArchiveError::input)?;
                if n == 0 {
                    return Err(ArchiveError::input(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{shown:?}: the stream ends inside a sparse region"),
                    )));
                }
                file.write_all_at(&self.buf[..n], at)
                    .map_err(|e| ArchiveError::entry_io(shown, "write", e))?;
                at += n as u64;
                left -= n as u64;
                written += n as u64;
            }
        }
        Ok(written)
    }

    pub(super) fn set_meta_fd(
        &self,
        fd: &OwnedFd,
        meta: &Meta,
        fresh: &Fresh,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        // Owner before mode (chown clears setuid/setgid) and before xattrs
        // (chown clears security.capability). Either call is skipped when the
        // new file already has what the member asks for: most image files are
        // root's, made by root, with a mode the umask leaves alone.
        if (meta.uid, meta.gid) != (fresh.uid, fresh.gid) {
            rustix::fs::fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| ArchiveError::entry_io(shown, "set owner", e.into()))?;
        }
        if fresh.mode != Some(meta.mode) {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| ArchiveError::entry_io(shown, "set mode", e.into()))?;
        }
        for (name, value) in &meta.xattrs {
            rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty())
                .map_err(|e| ArchiveError::entry_io(shown, "set xattr", e.into()))?;
        }
        rustix::fs::futimens(
            fd,
            &Timestamps {
                last_access: meta.atime,
                last_modification: meta.mtime,
            },
        )
        .map_err(|e| ArchiveError::entry_io(shown, "set times", e.into()))
    }

    /// Metadata of a symlink or device node, by name in its parent.
    pub(super) fn set_meta_at(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        shown: &str,
        with_mode: bool,
    ) -> Result<(), ArchiveError> {
        let cname = name_cstr(name).map_err(|e| ArchiveError::entry_io(shown, "name", e))?;
        rustix::fs::chownat(
            parent,
            &cname,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ArchiveError::entry_io(shown, "set owner", e.into()))?;
        if with_mode {
            rustix::fs::chmodat(
                parent,
                &cname,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(|e| ArchiveError::entry_io(shown, "set mode", e.into()))?;
        }
        if !meta.xattrs.is_empty() {
            let path = proc_path(parent, name);
            for (xname, value) in &meta.xattrs {
                rustix::fs::lsetxattr(&path, xname.as_slice(), value, XattrFlags::empty())
                    .map_err(|e| ArchiveError::entry_io(shown, "set xattr", e.into()))?;
            }
        }
        rustix::fs::utimensat(
            parent,
            &cname,
            &Timestamps {
                last_access: meta.atime,
                last_modification: meta.mtime,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| ArchiveError::entry_io(shown, "set times", e.into()))
    }

    /// Owner and xattrs of a directory now; its mode and times at the end.
    pub(super) fn chown_chattrs_dir(
        &mut self,
        rel: &Path,
        meta: &Meta,
        shown: &str,
    ) -> Result<(), ArchiveError> {
        let fd = self
            .open_dir_rw(rel)
            .map_err(|e| ArchiveError::entry_io(shown, "open directory", e))?;
        rustix::fs::fchown(
            &fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| ArchiveError::entry_io(shown, "set owner", e.into()))?;
        for (name, value) in &meta.xattrs {
            rustix::fs::fsetxattr(&fd, name.as_slice(), value, XattrFlags::empty())
                .map_err(|e| ArchiveError::entry_io(shown, "set xattr", e.into()))?;
        }
        // Its group may have changed: a cached handle of it would give new
        // files the group it had (a setgid directory's).
        self.parent_cache.retain(|(cached, _)| cached != rel);
        Ok(())
    }

    /// A real (not O_PATH) handle on directory `rel`, not following a final symlink.
    pub(super) fn open_dir_rw(&self, rel: &Path) -> io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return Ok(rustix::fs::openat(
                self.root.fd(),
                c".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
        }
        Ok(rustix::fs::openat2(
            self.root.fd(),
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS,
        )?)
    }
}

/// Gives a sparse member's file its real size (the holes at its end).
pub(super) fn set_sparse_len(
    file: &std::fs::File,
    real_size: u64,
    shown: &str,
) -> Result<(), ArchiveError> {
    file.set_len(real_size)
        .map_err(|e| ArchiveError::entry_io(shown, "set length", e))
}
