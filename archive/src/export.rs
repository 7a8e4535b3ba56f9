//! Writing a layer's changes as a tar stream: deterministic order (sorted
//! paths), AUFS whiteouts for deletions and opaque directories, PAX records for
//! xattrs, nanosecond times and long names, hard links within the layer as
//! links, dense data (no sparse headers).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use tar::{EntryType, Header};

use super::changes::{Change, ChangeKind};
use super::whiteout::OPAQUE_WHITEOUT;
use super::whiteout::WhiteoutFormat;

pub use crate::change::ExportReport;

/// Writes `changes` of the tree at `root` (a layer's tree, or a diff
/// directory) as a tar stream to `out`.
pub fn export_changes(
    root: &Path,
    changes: &[Change],
    out: impl Write,
) -> io::Result<ExportReport> {
    let mut builder = tar::Builder::new(out);
    let mut report = ExportReport::default();
    let mut first_link: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for change in changes {
        let name = change.path.as_os_str().as_bytes();
        let path = root.join(&change.path);
        let meta = match change.kind {
            ChangeKind::Delete => None,
            _ => Some(fs::symlink_metadata(&path)?),
        };
        match meta {
            None => whiteout(&mut builder, &change.path)?,
            // A whiteout of a diff directory found among added entries is a
            // deletion.
            Some(meta)
                if WhiteoutFormat::ALL
                    .iter()
                    .any(|f| f.is_whiteout_metadata(&meta)) =>
            {
                whiteout(&mut builder, &change.path)?
            }
            Some(meta) if meta.file_type().is_socket() => continue, // a tar cannot hold one
            Some(meta) => {
                let mut header = Header::new_ustar();
                let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
                header.set_mode(meta.mode() & 0o7777);
                set_id(&mut header, &mut pax, meta.uid(), true);
                set_id(&mut header, &mut pax, meta.gid(), false);
                header.set_mtime(meta.mtime().max(0) as u64);
                if meta.mtime_nsec() != 0 {
                    pax.push((
                        "mtime".into(),
                        pax_time(meta.mtime(), meta.mtime_nsec()).into_bytes(),
                    ));
                }
                for (key, value) in xattrs(&path)? {
                    pax.push((format!("SCHILY.xattr.{key}"), value));
                }
                let ft = meta.file_type();
                let mut data: Option<fs::File> = None;
                let mut entry_name = name.to_vec();
                if ft.is_dir() {
                    header.set_entry_type(EntryType::Directory);
                    header.set_size(0);
                    if entry_name.is_empty() {
                        entry_name.push(b'.'); // the layer's root
                    }
                    entry_name.push(b'/');
                } else if ft.is_symlink() {
                    header.set_entry_type(EntryType::Symlink);
                    header.set_size(0);
                    let target = fs::read_link(&path)?;
                    set_link(&mut header, &mut pax, target.as_os_str().as_bytes())?;
                } else if ft.is_file() {
                    let key = (meta.dev(), meta.ino());
                    if let Some(first) = (meta.nlink() > 1).then(|| first_link.get(&key)).flatten()
                    {
                        header.set_entry_type(EntryType::Link);
                        header.set_size(0);
                        let first = first.clone();
                        set_link(&mut header, &mut pax, &first)?;
                    } else {
                        if meta.nlink() > 1 {
                            first_link.insert(key, name.to_vec());
                        }
                        header.set_entry_type(EntryType::Regular);
                        header.set_size(meta.size());
                        report.size += meta.size();
                        if meta.size() > 0o77777777777 {
                            pax.push(("size".into(), meta.size().to_string().into_bytes()));
                        }
                        data = Some(fs::File::open(&path)?);
                    }
                } else {
                    header.set_entry_type(if ft.is_char_device() {
                        EntryType::Char
                    } else if ft.is_block_device() {
                        EntryType::Block
                    } else {
                        EntryType::Fifo
                    });
                    header.set_size(0);
                    let rdev = meta.rdev();
                    header.set_device_major(rustix::fs::major(rdev))?;
                    header.set_device_minor(rustix::fs::minor(rdev))?;
                }
                set_name(&mut header, &mut pax, &entry_name)?;
                append_pax(&mut builder, &pax)?;
                header.set_cksum();
                match data {
                    Some(file) => builder.append(&header, file)?,
                    None => builder.append(&header, io::empty())?,
                }
                if ft.is_dir() && change.opaque {
                    opaque_marker(&mut builder, &change.path)?;
                }
            }
        }
        report.entries += 1;
    }
    builder.finish()?;
    Ok(report)
}

fn whiteout<W: Write>(builder: &mut tar::Builder<W>, path: &Path) -> io::Result<()> {
    let name = path.file_name().unwrap_or_default();
    let mut wh = path
        .parent()
        .unwrap_or(Path::new(""))
        .as_os_str()
        .as_bytes()
        .to_vec();
    if !wh.is_empty() {
        wh.push(b'/');
    }
    wh.extend_from_slice(b".wh.");
    wh.extend_from_slice(name.as_bytes());
    empty_marker(builder, &wh)
}

fn opaque_marker<W: Write>(builder: &mut tar::Builder<W>, dir: &Path) -> io::Result<()> {
    let mut name = dir.as_os_str().as_bytes().to_vec();
    name.push(b'/');
    name.extend_from_slice(OPAQUE_WHITEOUT.as_bytes());
    empty_marker(builder, &name)
}

/// A zero-length marker member; fixed metadata keeps the export deterministic.
fn empty_marker<W: Write>(builder: &mut tar::Builder<W>, name: &[u8]) -> io::Result<()> {
    let mut header = Header::new_ustar();
    let mut pax = Vec::new();
    header.set_entry_type(EntryType::Regular);
    header.set_size(0);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    set_name(&mut header, &mut pax, name)?;
    append_pax(builder, &pax)?;
    header.set_cksum();
    builder.append(&header, io::empty())
}

fn set_id(header: &mut Header, pax: &mut Vec<(String, Vec<u8>)>, id: u32, uid: bool) {
    // ustar's 7 octal digits hold ids up to 2097151; larger ones go in PAX.
    let fits = id <= 0o7777777;
    let value = if fits { id as u64 } else { 0 };
    if uid {
        header.set_uid(value);
    } else {
        header.set_gid(value);
    }
    if !fits {
        pax.push((
            if uid { "uid" } else { "gid" }.into(),
            id.to_string().into_bytes(),
        ));
    }
}

fn pax_time(secs: i64, nanos: i64) -> String {
    format!("{secs}.{nanos:09}")
}

fn set_name(header: &mut Header, pax: &mut Vec<(String, Vec<u8>)>, name: &[u8]) -> io::Result<()> {
    let path = Path::new(std::ffi::OsStr::from_bytes(name));
    if name.len() <= 100 && header.set_path(path).is_ok() {
        return Ok(());
    }
    pax.push(("path".into(), name.to_vec()));
    let short = &name[..name.len().min(100)];
    let raw = &mut header.as_old_mut().name;
    raw.fill(0);
    raw[..short.len()].copy_from_slice(short);
    Ok(())
}

fn set_link(
    header: &mut Header,
    pax: &mut Vec<(String, Vec<u8>)>,
    target: &[u8],
) -> io::Result<()> {
    if target.len() <= 100 && header.set_link_name_literal(target).is_ok() {
        return Ok(());
    }
    pax.push(("linkpath".into(), target.to_vec()));
    let short = &target[..target.len().min(100)];
    let raw = &mut header.as_old_mut().linkname;
    raw.fill(0);
    raw[..short.len()].copy_from_slice(short);
    Ok(())
}

fn append_pax<W: Write>(
    builder: &mut tar::Builder<W>,
    records: &[(String, Vec<u8>)],
) -> io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut body = Vec::new();
    for (key, value) in records {
        // "<len> <key>=<value>\n", where len counts itself.
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        body.extend_from_slice(format!("{len} {key}=").as_bytes());
        body.extend_from_slice(value);
        body.push(b'\n');
    }
    let mut header = Header::new_ustar();
    header.set_entry_type(EntryType::XHeader);
    header.set_path("PaxHeaders/entry")?;
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    builder.append(&header, &body[..])
}

/// Every xattr but a diff directory format's own bookkeeping, sorted for
/// determinism.
fn xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::OPNOTSUPP) => 0,
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if WhiteoutFormat::ALL
            .iter()
            .any(|f| f.is_bookkeeping_xattr(name))
        {
            continue;
        }
        let mut value = vec![0u8; 64 * 1024];
        let len = rustix::fs::lgetxattr(path, name, &mut value[..])?;
        value.truncate(len);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    out.sort();
    Ok(out)
}
