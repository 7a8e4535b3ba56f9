//! Backup streams to a layer tar: each file's backup stream (as
//! `BackupRead` gives it) becomes a member carrying its Windows metadata in
//! PAX records, followed by one member per alternate data stream, with the
//! data streamed through. The output is canonical (PAX records sorted by
//! key, as Go's tar writes them; fixed header fields), so the same files
//! always give the same bytes.

use std::io::{self, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tar::{EntryType, Header};

use crate::backup::{BackupStreamReader, SPARSE_ATTRIBUTE, StreamHeader, id};
use crate::ea::{self, ExtendedAttribute};
use crate::path::{check_path, check_stream_name, in_file_tree, not_a_whiteout_name};
use crate::read::WHITEOUT_PREFIX;
use crate::reparse::{self, ReparsePoint};
use crate::{FileBasicInfo, FormatError, filetime, pax};

/// The largest security descriptor, extended-attribute or reparse stream
/// read into memory (each is a few KiB in practice; Windows caps EAs at 64
/// KiB and reparse data at 16 KiB).
const MAX_METADATA_STREAM: u64 = 1 << 20;

/// The mode bits Go's tar writer and go-winio give each kind.
const MODE_DIR: u32 = 0o040000;
const MODE_REGULAR: u32 = 0o100000;
const MODE_SYMLINK: u32 = 0o120000;

/// The largest value the 12-byte octal mtime field holds.
const MAX_OCTAL_MTIME: i64 = 0o77777777777;

const BLOCK: usize = 512;

/// A member's header fields and PAX records.
struct Fields<'a> {
    name: &'a str,
    kind: EntryType,
    mode: u32,
    mtime: u64,
    size: u64,
    link: Option<&'a str>,
    records: Vec<(String, Vec<u8>)>,
}

impl<'a> Fields<'a> {
    fn new(name: &'a str, kind: EntryType, mode: u32, mtime: u64, size: u64) -> Self {
        Fields {
            name,
            kind,
            mode,
            mtime,
            size,
            link: None,
            records: Vec::new(),
        }
    }
}

/// Writes a Windows layer tar.
pub struct LayerTarWriter<W: Write> {
    out: W,
}

fn output(source: io::Error) -> FormatError {
    FormatError::Io {
        operation: "write the layer tar",
        source,
    }
}

/// The times of `info` as PAX records and the whole-second mtime for the
/// header (Go's rule: `mtime` as a record only when the header cannot hold
/// it exactly; `atime` and `ctime` always).
fn time_records(info: &FileBasicInfo, records: &mut Vec<(String, Vec<u8>)>) -> u64 {
    let (secs, nanos) = filetime::to_unix(info.last_write_time);
    let exact = nanos == 0 && (0..=MAX_OCTAL_MTIME).contains(&secs);
    if !exact {
        records.push((
            "mtime".into(),
            filetime::to_pax(info.last_write_time).into_bytes(),
        ));
    }
    records.push((
        "atime".into(),
        filetime::to_pax(info.last_access_time).into_bytes(),
    ));
    records.push((
        "ctime".into(),
        filetime::to_pax(info.change_time).into_bytes(),
    ));
    secs.clamp(0, MAX_OCTAL_MTIME) as u64
}

/// A header name field's worth of `name` (at most 100 bytes, cut at a
/// character boundary), and whether the whole name needs a PAX record.
fn fit_name(name: &str) -> (&str, bool) {
    if name.len() <= 100 && name.is_ascii() {
        return (name, false);
    }
    let mut end = name.len().min(100);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    (&name[..end], true)
}

impl<W: Write> LayerTarWriter<W> {
    /// Writes into `out`.
    pub fn new(out: W) -> Self {
        LayerTarWriter { out }
    }

    /// One member: its PAX records (if any, sorted here), its header, then
    /// `size` bytes written by `data`, then padding.
    fn member(
        &mut self,
        fields: Fields<'_>,
        data: impl FnOnce(&mut W) -> Result<(), FormatError>,
    ) -> Result<(), FormatError> {
        let Fields {
            name,
            kind,
            mode,
            mtime,
            size,
            link,
            mut records,
        } = fields;
        let (short_name, long_name) = fit_name(name);
        if long_name {
            records.push(("path".into(), name.as_bytes().to_vec()));
        }
        let short_link = link.map(|l| {
            let (short, long) = fit_name(l);
            if long {
                records.push(("linkpath".into(), l.as_bytes().to_vec()));
            }
            short
        });
        records.sort_by(|a, b| a.0.cmp(&b.0));
        if !records.is_empty() {
            let mut body = Vec::new();
            for (key, value) in &records {
                // The length counts itself: find the width that fits.
                let rest = key.len() + value.len() + 3;
                let mut len = rest + 1;
                while len.to_string().len() + rest > len {
                    len += 1;
                }
                body.extend_from_slice(format!("{len} {key}=").as_bytes());
                body.extend_from_slice(value);
                body.push(b'\n');
            }
            let (dir, base) = short_name.rsplit_once('/').unwrap_or(("", short_name));
            let pax_name = if dir.is_empty() {
                format!("PaxHeaders.0/{base}")
            } else {
                format!("{dir}/PaxHeaders.0/{base}")
            };
            let (pax_name, _) = fit_name(&pax_name);
            let mut header = Header::new_ustar();
            set_name(&mut header, pax_name, name)?;
            header.set_entry_type(EntryType::XHeader);
            header.set_mode(0);
            header.set_mtime(0);
            header.set_size(body.len() as u64);
            header.set_cksum();
            self.out.write_all(header.as_bytes()).map_err(output)?;
            self.out.write_all(&body).map_err(output)?;
            self.pad(body.len() as u64)?;
        }
        let mut header = Header::new_ustar();
        set_name(&mut header, short_name, name)?;
        if let Some(link) = short_link {
            header
                .set_link_name_literal(link)
                .map_err(|e| FormatError::malformed(name, format!("its link target: {e}")))?;
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        header.set_size(size);
        header.set_cksum();
        self.out.write_all(header.as_bytes()).map_err(output)?;
        data(&mut self.out)?;
        self.pad(size)
    }

    fn pad(&mut self, size: u64) -> Result<(), FormatError> {
        let rest = (size % BLOCK as u64) as usize;
        if rest != 0 {
            self.out
                .write_all(&[0u8; BLOCK][..BLOCK - rest])
                .map_err(output)?;
        }
        Ok(())
    }

    /// A whiteout: `path` (and everything under it) is deleted.
    pub fn whiteout(&mut self, path: &str) -> Result<(), FormatError> {
        let path = check_path(path)?;
        if !in_file_tree(path) {
            return Err(FormatError::refused(
                path,
                "a whiteout outside Files/ and UtilityVM/Files/",
            ));
        }
        not_a_whiteout_name(path)?;
        let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
        let name = format!("{dir}/{WHITEOUT_PREFIX}{base}");
        self.member(Fields::new(&name, EntryType::Regular, 0, 0, 0), |_| Ok(()))
    }

    /// A hard link at `path` to `target`, an earlier file of the layer.
    pub fn hard_link(
        &mut self,
        path: &str,
        target: &str,
        info: &FileBasicInfo,
    ) -> Result<(), FormatError> {
        let path = check_path(path)?;
        let target = check_path(target)?;
        if !in_file_tree(path) || !in_file_tree(target) {
            return Err(FormatError::refused(
                path,
                "a hard link outside Files/ and UtilityVM/Files/",
            ));
        }
        not_a_whiteout_name(path)?;
        let mut records = basic_records(info);
        let mtime = time_records(info, &mut records);
        let fields = Fields {
            link: Some(target),
            records,
            ..Fields::new(path, EntryType::Link, 0o644, mtime, 0)
        };
        self.member(fields, |_| Ok(()))
    }

    /// A file or directory at `path` of `size` bytes (its end of file, for a
    /// sparse one) whose backup stream `backup` gives, then its alternate
    /// data streams. Security descriptor, extended attributes and reparse
    /// point must come before the data stream (as `BackupRead` gives them):
    /// one after it is refused rather than lost.
    pub fn file(
        &mut self,
        path: &str,
        size: u64,
        info: &FileBasicInfo,
        backup: impl Read,
    ) -> Result<(), FormatError> {
        let path = check_path(path)?;
        not_a_whiteout_name(path)?;
        let bad = |why: String| FormatError::malformed(path, why);
        let backup_error = |e: io::Error| bad(format!("its backup stream: {e}"));
        let mut reader = BackupStreamReader::new(backup);
        let mut security_descriptor = None;
        let mut extended_attributes: Option<Vec<ExtendedAttribute>> = None;
        let mut reparse_point: Option<ReparsePoint> = None;
        // The first stream after the metadata: the data, or an alternate
        // stream of a file (or directory) without one.
        let mut next = None;
        while let Some(header) = reader.next_header().map_err(backup_error)? {
            let once = |seen: bool, what: &str| {
                if seen {
                    Err(bad(format!("two {what} streams")))
                } else {
                    Ok(())
                }
            };
            match header.id {
                id::SECURITY_DATA => {
                    once(security_descriptor.is_some(), "security")?;
                    security_descriptor = Some(read_small(&mut reader, &header).map_err(&bad)?);
                }
                id::EA_DATA => {
                    once(extended_attributes.is_some(), "extended attribute")?;
                    let bytes = read_small(&mut reader, &header).map_err(&bad)?;
                    let mut eas = ea::decode(&bytes).map_err(&bad)?;
                    eas.sort_by(|a, b| a.name.cmp(&b.name));
                    extended_attributes = Some(eas);
                }
                id::REPARSE_DATA => {
                    once(reparse_point.is_some(), "reparse")?;
                    let bytes = read_small(&mut reader, &header).map_err(&bad)?;
                    reparse_point = Some(reparse::decode(&bytes).map_err(&bad)?);
                }
                id::DATA | id::ALTERNATE_DATA => {
                    next = Some(header);
                    break;
                }
                id::LINK | id::PROPERTY_DATA | id::OBJECT_ID | id::TXFS_DATA => {}
                other => {
                    return Err(bad(format!(
                        "a stream of id {other} before its data stream"
                    )));
                }
            }
        }
        let mut records = basic_records(info);
        if let Some(sd) = &security_descriptor {
            records.push((
                pax::RAW_SECURITY_DESCRIPTOR.into(),
                BASE64.encode(sd).into_bytes(),
            ));
        }
        for ea in extended_attributes.iter().flatten() {
            let name = std::str::from_utf8(&ea.name)
                .ok()
                .filter(|n| !n.contains(['=', '\n']))
                .ok_or_else(|| {
                    bad(
                        "an extended attribute name that is not UTF-8 or holds '=' or a newline"
                            .into(),
                    )
                })?;
            records.push((
                format!("{}{name}", pax::EXTENDED_ATTRIBUTE_PREFIX),
                BASE64.encode(&ea.value).into_bytes(),
            ));
        }
        let mut records_for_streams = Vec::new();
        let mtime = time_records(info, &mut records);
        time_records(info, &mut records_for_streams);
        let has_data = next.as_ref().is_some_and(|h| h.id == id::DATA);
        let directory = info.is_directory();
        let mut mode = if directory { MODE_DIR } else { 0 };
        let (kind, member_size, link) = if let Some(point) = &reparse_point {
            mode |= MODE_SYMLINK;
            if point.mount_point {
                records.push((pax::MOUNT_POINT.into(), b"1".to_vec()));
            }
            (EntryType::Symlink, 0, Some(point.target.as_str()))
        } else if directory {
            (EntryType::Directory, 0, None)
        } else {
            if has_data {
                mode |= MODE_REGULAR;
            }
            (EntryType::Regular, if has_data { size } else { 0 }, None)
        };
        if !has_data && kind == EntryType::Regular && size != 0 {
            return Err(bad(format!("{size} bytes but no data stream")));
        }
        let data_header = if has_data { next.take() } else { None };
        let writes_data = kind == EntryType::Regular;
        let fields = Fields {
            link,
            records,
            ..Fields::new(path, kind, mode, mtime, member_size)
        };
        self.member(fields, |out| {
            let Some(header) = data_header else {
                return Ok(());
            };
            if !writes_data {
                // A link's or directory's data stream has nothing to carry.
                return Ok(());
            }
            if header.attributes & SPARSE_ATTRIBUTE != 0 && header.size == 0 && size > 0 {
                next = write_sparse(&mut reader, out, size, path)?;
            } else {
                if header.size != size {
                    return Err(bad(format!(
                        "a data stream of {} bytes for a file of {size}",
                        header.size
                    )));
                }
                copy_exact(&mut reader, out, size, path)?;
            }
            Ok(())
        })?;
        // The alternate data streams, each its own member.
        loop {
            let header = match next.take() {
                Some(header) => header,
                None => match reader.next_header().map_err(backup_error)? {
                    Some(header) => header,
                    None => break,
                },
            };
            match header.id {
                id::ALTERNATE_DATA => {
                    if header.attributes & SPARSE_ATTRIBUTE != 0 {
                        return Err(bad(format!(
                            "a sparse alternate data stream {:?}",
                            header.name
                        )));
                    }
                    let stream = header
                        .name
                        .strip_prefix(':')
                        .map(|s| s.strip_suffix(":$DATA").unwrap_or(s))
                        .filter(|s| check_stream_name(s).is_ok())
                        .ok_or_else(|| {
                            bad(format!("an alternate data stream named {:?}", header.name))
                        })?;
                    let stream_mode =
                        mode & !MODE_SYMLINK | if directory { 0 } else { MODE_REGULAR };
                    let name = format!("{path}:{stream}");
                    let size = header.size;
                    let fields = Fields {
                        records: records_for_streams.clone(),
                        ..Fields::new(&name, EntryType::Regular, stream_mode, mtime, size)
                    };
                    self.member(fields, |out| copy_exact(&mut reader, out, size, path))?;
                }
                id::SECURITY_DATA | id::EA_DATA | id::REPARSE_DATA => {
                    return Err(bad(format!(
                        "stream {} after the data stream, where a layer tar cannot carry it",
                        header.id
                    )));
                }
                id::LINK | id::PROPERTY_DATA | id::OBJECT_ID | id::TXFS_DATA => {}
                other => return Err(bad(format!("a stream of id {other} after the data stream"))),
            }
        }
        Ok(())
    }

    /// Ends the archive (two zero blocks) and returns the output.
    pub fn finish(mut self) -> Result<W, FormatError> {
        self.out.write_all(&[0u8; 2 * BLOCK]).map_err(output)?;
        self.out.flush().map_err(output)?;
        Ok(self.out)
    }
}

fn set_name(header: &mut Header, short: &str, name: &str) -> Result<(), FormatError> {
    let field = &mut header.as_old_mut().name;
    if short.len() > field.len() {
        return Err(FormatError::malformed(
            name,
            "a name too long for its header",
        ));
    }
    field.fill(0);
    field[..short.len()].copy_from_slice(short.as_bytes());
    Ok(())
}

/// `MSWINDOWS.fileattr` and `LIBARCHIVE.creationtime`.
fn basic_records(info: &FileBasicInfo) -> Vec<(String, Vec<u8>)> {
    vec![
        (
            pax::FILE_ATTRIBUTES.into(),
            info.file_attributes.to_string().into_bytes(),
        ),
        (
            pax::CREATION_TIME.into(),
            filetime::to_pax(info.creation_time).into_bytes(),
        ),
    ]
}

fn read_small(reader: &mut impl Read, header: &StreamHeader) -> Result<Vec<u8>, String> {
    if header.size > MAX_METADATA_STREAM {
        return Err(format!(
            "a stream {} of {} bytes (at most {MAX_METADATA_STREAM})",
            header.id, header.size
        ));
    }
    let mut bytes = Vec::with_capacity(header.size as usize);
    reader
        .take(header.size)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("its backup stream: {e}"))?;
    if bytes.len() as u64 != header.size {
        return Err("its backup stream ends inside a stream".into());
    }
    Ok(bytes)
}

fn copy_exact(
    reader: &mut impl Read,
    out: &mut impl Write,
    size: u64,
    path: &str,
) -> Result<(), FormatError> {
    let copied = io::copy(&mut reader.take(size), out).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FormatError::malformed(path, format!("its backup stream: {e}"))
        } else {
            output(e)
        }
    })?;
    if copied != size {
        return Err(FormatError::malformed(
            path,
            "its backup stream ends inside its data",
        ));
    }
    Ok(())
}

/// A sparse data stream's blocks written out whole (holes as zeros: a layer
/// tar has no sparse form here), up to `size` bytes; returns the stream
/// after the blocks, if any.
fn write_sparse<R: Read>(
    reader: &mut BackupStreamReader<R>,
    out: &mut impl Write,
    size: u64,
    path: &str,
) -> Result<Option<StreamHeader>, FormatError> {
    let bad = |why: String| FormatError::malformed(path, why);
    let zeros = |out: &mut dyn Write, n: u64| -> Result<(), FormatError> {
        io::copy(&mut io::repeat(0).take(n), out)
            .map(drop)
            .map_err(output)
    };
    let mut written = 0u64;
    let mut after = None;
    while let Some(header) = reader
        .next_header()
        .map_err(|e| bad(format!("its backup stream: {e}")))?
    {
        if header.id != id::SPARSE_BLOCK {
            after = Some(header);
            break;
        }
        let offset = u64::try_from(header.offset)
            .map_err(|_| bad("a sparse block at a negative offset".into()))?;
        let end = offset.checked_add(header.size).filter(|end| *end <= size);
        let Some(end) = end.filter(|_| offset >= written) else {
            return Err(bad(format!(
                "a sparse block of {} bytes at {offset}, overlapping or past the file's {size} bytes",
                header.size
            )));
        };
        zeros(out, offset - written)?;
        copy_exact(reader, out, header.size, path)?;
        written = end;
        if header.size == 0 {
            break;
        }
    }
    zeros(out, size - written)?;
    Ok(after)
}
