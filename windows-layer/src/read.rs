//! A layer tar to backup streams: each file or directory member, with the
//! alternate data streams that follow it, becomes one backup stream
//! (security descriptor, extended attributes, reparse point, data, then the
//! alternate streams, the order `BackupWrite` restores them in), handed to a
//! [`LayerSink`] in pieces as it is read: no file's data is held in memory.
//! Member framing and its limits are strata-archive's, so a hostile tar
//! costs bounded memory here too.

use std::io::{self, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use strata_archive::members::{Member, Members, PlainTar, lossy};
use tar::EntryType;

use crate::backup::{BackupStreamWriter, StreamHeader, id};
use crate::ea::{self, ExtendedAttribute};
use crate::path::{check_path, check_stream_name, in_file_tree};
use crate::reparse::{self, ReparsePoint};
use crate::{ATTRIBUTE_DIRECTORY, FileBasicInfo, FormatError, filetime, pax};

/// Where a layer's files go: the windows driver restores them with
/// `BackupWrite`; tests collect them.
pub trait LayerSink {
    /// `path` (and all under it) is deleted from the layers below.
    fn whiteout(&mut self, path: &str) -> io::Result<()>;
    /// `path` is a hard link to `target`, a file of this layer or below.
    fn hard_link(&mut self, path: &str, target: &str) -> io::Result<()>;
    /// A file or directory begins; its backup stream follows.
    fn begin_file(&mut self, path: &str, info: &FileBasicInfo) -> io::Result<()>;
    /// The next bytes of the current file's backup stream.
    fn stream(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// The current file is complete.
    fn end_file(&mut self) -> io::Result<()>;
}

/// What a layer held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerSummary {
    /// Files and directories.
    pub files: u64,
    /// Alternate data streams.
    pub alternate_streams: u64,
    /// Whiteouts.
    pub whiteouts: u64,
    /// Hard links.
    pub hard_links: u64,
    /// Bytes of file data (main and alternate streams).
    pub data_bytes: u64,
}

/// The prefix of a whiteout's base name.
pub(crate) const WHITEOUT_PREFIX: &str = ".wh.";

/// The sink as a writer of the current file's backup stream.
struct SinkStream<'s>(&'s mut dyn LayerSink);

impl Write for SinkStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.stream(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the layer tar `tar`, handing its files to `sink`.
pub fn read_layer(tar: impl Read, sink: &mut dyn LayerSink) -> Result<LayerSummary, FormatError> {
    let source = PlainTar::new(tar);
    let mut members = Members::new(&source);
    let mut summary = LayerSummary::default();
    // The file whose alternate data streams may follow.
    let mut open: Option<String> = None;
    let input = |source: io::Error| FormatError::Io {
        operation: "read the layer tar",
        source,
    };
    while let Some(member) = members.next_member().map_err(input)? {
        let shown = lossy(&member.name);
        let name = std::str::from_utf8(&member.name)
            .map_err(|_| FormatError::refused(&shown, "a name that is not UTF-8"))?;
        if member.kind().is_pax_global_extensions() {
            continue;
        }
        if let Some((file, stream)) = split_alternate_stream(name)? {
            if open.as_deref() != Some(file) {
                return Err(FormatError::refused(
                    name,
                    "an alternate data stream that does not directly follow its file",
                ));
            }
            if !matches!(member.kind(), EntryType::Regular | EntryType::Continuous) {
                return Err(FormatError::refused(
                    name,
                    "an alternate data stream that is not a regular member",
                ));
            }
            let header = StreamHeader::alternate(&format!(":{stream}:$DATA"), member.size);
            copy_stream(sink, name, &header, &mut members.data(&member))?;
            summary.alternate_streams += 1;
            summary.data_bytes += member.size;
            continue;
        }
        if open.take().is_some() {
            sink.end_file().map_err(|e| sink_error(name, e))?;
        }
        let path = check_path(name)?;
        let (parent, base) = path.rsplit_once('/').unwrap_or(("", path));
        if let Some(deleted) = base.strip_prefix(WHITEOUT_PREFIX) {
            if deleted.is_empty() || deleted.starts_with(WHITEOUT_PREFIX) {
                return Err(FormatError::refused(
                    name,
                    "an opaque or empty whiteout, which Windows layers have no form for",
                ));
            }
            let target = format!("{parent}/{deleted}");
            if !in_file_tree(&target) {
                return Err(FormatError::refused(
                    name,
                    "a whiteout outside Files/ and UtilityVM/Files/",
                ));
            }
            sink.whiteout(&target).map_err(|e| sink_error(name, e))?;
            summary.whiteouts += 1;
            continue;
        }
        match member.kind() {
            EntryType::Link => {
                let link = member.link.as_deref().unwrap_or_default();
                let link_text = std::str::from_utf8(link).map_err(|_| {
                    FormatError::refused(name, "a hard link target that is not UTF-8")
                })?;
                let target = check_path(link_text).map_err(|_| {
                    FormatError::refused(
                        name,
                        format!("a hard link to {:?}, outside the layer", lossy(link)),
                    )
                })?;
                if !in_file_tree(path) || !in_file_tree(target) {
                    return Err(FormatError::refused(
                        name,
                        "a hard link outside Files/ and UtilityVM/Files/",
                    ));
                }
                sink.hard_link(path, target)
                    .map_err(|e| sink_error(name, e))?;
                summary.hard_links += 1;
            }
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink => {
                let file = WindowsMember::from_member(&member, name)?;
                sink.begin_file(path, &file.info)
                    .map_err(|e| sink_error(name, e))?;
                file.write_streams(sink, name, &mut members.data(&member))?;
                summary.files += 1;
                summary.data_bytes += file.data_size.unwrap_or(0);
                open = Some(name.strip_suffix('/').unwrap_or(name).to_string());
            }
            other => {
                return Err(FormatError::refused(
                    name,
                    format!(
                        "a member of type {:?}, which Windows layers have no form for",
                        other
                    ),
                ));
            }
        }
    }
    if open.is_some() {
        sink.end_file()
            .map_err(|e| sink_error("(the last member)", e))?;
    }
    members.finish().map_err(input)?;
    // Docker's, containerd's and our writers all end a layer with the
    // end-of-archive blocks: a stream that stops after a whole member
    // without them may have been cut there.
    if !members.saw_end_marker() {
        return Err(input(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the stream stops after a whole member, without the end-of-archive blocks: it \
             may have been cut short",
        )));
    }
    Ok(summary)
}

fn sink_error(member: &str, source: io::Error) -> FormatError {
    FormatError::Sink {
        member: member.to_string(),
        source,
    }
}

/// `file:stream` or `file:stream:$DATA`: the file and the stream's name.
fn split_alternate_stream(name: &str) -> Result<Option<(&str, &str)>, FormatError> {
    let Some((file, stream)) = name.split_once(':') else {
        return Ok(None);
    };
    let stream = stream.strip_suffix(":$DATA").unwrap_or(stream);
    check_stream_name(stream).map_err(|why| FormatError::refused(name, why))?;
    Ok(Some((file, stream)))
}

/// One stream, its header then `header.size` bytes from `data`.
fn copy_stream(
    sink: &mut dyn LayerSink,
    name: &str,
    header: &StreamHeader,
    data: &mut dyn Read,
) -> Result<(), FormatError> {
    let mut out = BackupStreamWriter::new(SinkStream(sink));
    out.write_header(header).map_err(|e| sink_error(name, e))?;
    let copied = io::copy(&mut data.take(header.size), &mut out).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::InvalidData {
            FormatError::Io {
                operation: "read the layer tar",
                source: e,
            }
        } else {
            sink_error(name, e)
        }
    })?;
    if copied != header.size {
        return Err(FormatError::Io {
            operation: "read the layer tar",
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the stream ends inside the data of {name:?}"),
            ),
        });
    }
    out.finish().map_err(|e| sink_error(name, e))?;
    Ok(())
}

/// A member's Windows side, from its header and PAX records.
struct WindowsMember {
    info: FileBasicInfo,
    security_descriptor: Option<Vec<u8>>,
    extended_attributes: Vec<ExtendedAttribute>,
    reparse_point: Option<ReparsePoint>,
    /// The data stream's size, for a regular file.
    data_size: Option<u64>,
}

impl WindowsMember {
    fn from_member(member: &Member, name: &str) -> Result<WindowsMember, FormatError> {
        let bad = |why: String| FormatError::malformed(name, why);
        let mut attributes = None;
        let mut creation = None;
        let (mut mtime, mut atime, mut ctime) = (None, None, None);
        let mut security_descriptor = None;
        let mut extended_attributes = Vec::new();
        let mut mount_point = false;
        for (key, value) in member.pax_records() {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            let text = || {
                std::str::from_utf8(value).map_err(|_| bad(format!("PAX record {key} is not text")))
            };
            let time = || {
                text().and_then(|t| {
                    filetime::from_pax(t)
                        .ok_or_else(|| bad(format!("PAX record {key} is not a time")))
                })
            };
            match key {
                pax::FILE_ATTRIBUTES => {
                    attributes = Some(text()?.parse::<u32>().map_err(|_| {
                        bad(format!("PAX record {key} is not a 32-bit decimal number"))
                    })?);
                }
                pax::CREATION_TIME => creation = Some(time()?),
                "mtime" => mtime = Some(time()?),
                "atime" => atime = Some(time()?),
                "ctime" => ctime = Some(time()?),
                pax::RAW_SECURITY_DESCRIPTOR => {
                    let sd = BASE64
                        .decode(value)
                        .map_err(|_| bad(format!("PAX record {key} is not base64")))?;
                    security_descriptor = (!sd.is_empty()).then_some(sd);
                }
                pax::SDDL_SECURITY_DESCRIPTOR => {
                    return Err(bad(format!(
                        "PAX record {key} holds SDDL text, which only the Windows API converts; \
                         re-export the layer with a writer that records {}",
                        pax::RAW_SECURITY_DESCRIPTOR
                    )));
                }
                pax::MOUNT_POINT => mount_point = true,
                _ if key.starts_with("GNU.sparse.") => {
                    return Err(FormatError::refused(
                        name,
                        "a GNU sparse member, which Windows layers have no form for",
                    ));
                }
                _ => {
                    if let Some(ea_name) = key.strip_prefix(pax::EXTENDED_ATTRIBUTE_PREFIX) {
                        if extended_attributes
                            .iter()
                            .any(|ea: &ExtendedAttribute| ea.name == ea_name.as_bytes())
                        {
                            return Err(bad(format!("PAX record {key} twice")));
                        }
                        let value = BASE64
                            .decode(value)
                            .map_err(|_| bad(format!("PAX record {key} is not base64")))?;
                        extended_attributes.push(ExtendedAttribute {
                            name: ea_name.as_bytes().to_vec(),
                            value,
                            flags: 0,
                        });
                    }
                }
            }
        }
        let kind = member.kind();
        let last_write_time = match mtime {
            Some(t) => t,
            None => {
                let secs = member
                    .header
                    .mtime()
                    .map_err(|_| bad("its mtime field is not a number".into()))?;
                filetime::from_unix(i64::try_from(secs).unwrap_or(i64::MAX), 0)
                    .ok_or_else(|| bad("its mtime is out of range".into()))?
            }
        };
        let info = FileBasicInfo {
            creation_time: creation.unwrap_or(last_write_time),
            last_access_time: atime.unwrap_or(0),
            last_write_time,
            change_time: ctime.unwrap_or(0),
            file_attributes: attributes.unwrap_or(if kind == EntryType::Directory {
                ATTRIBUTE_DIRECTORY
            } else {
                0
            }),
        };
        let reparse_point = if kind == EntryType::Symlink {
            let link = member.link.as_deref().unwrap_or_default();
            let target = std::str::from_utf8(link)
                .map_err(|_| bad("a link target that is not UTF-8".into()))?;
            if target.is_empty() || target.chars().any(|c| c < ' ') {
                return Err(bad(
                    "a symbolic link whose target is empty or holds a control character".into(),
                ));
            }
            Some(ReparsePoint {
                target: target.to_string(),
                mount_point,
            })
        } else {
            None
        };
        // Sorted by name: a writer's order (Go's map order) is not stable.
        extended_attributes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(WindowsMember {
            info,
            security_descriptor,
            extended_attributes,
            reparse_point,
            data_size: matches!(kind, EntryType::Regular | EntryType::Continuous)
                .then_some(member.size),
        })
    }

    fn write_streams(
        &self,
        sink: &mut dyn LayerSink,
        name: &str,
        data: &mut dyn Read,
    ) -> Result<(), FormatError> {
        let bad = |why: String| FormatError::malformed(name, why);
        if let Some(sd) = &self.security_descriptor {
            copy_stream(
                sink,
                name,
                &StreamHeader::new(id::SECURITY_DATA, sd.len() as u64),
                &mut &sd[..],
            )?;
        }
        if !self.extended_attributes.is_empty() {
            let bytes = ea::encode(&self.extended_attributes).map_err(bad)?;
            copy_stream(
                sink,
                name,
                &StreamHeader::new(id::EA_DATA, bytes.len() as u64),
                &mut &bytes[..],
            )?;
        }
        if let Some(point) = &self.reparse_point {
            let bytes = reparse::encode(point).map_err(bad)?;
            copy_stream(
                sink,
                name,
                &StreamHeader::new(id::REPARSE_DATA, bytes.len() as u64),
                &mut &bytes[..],
            )?;
        }
        if let Some(size) = self.data_size {
            copy_stream(sink, name, &StreamHeader::new(id::DATA, size), data)?;
        }
        Ok(())
    }
}
