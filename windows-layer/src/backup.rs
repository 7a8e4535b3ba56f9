//! The Win32 backup stream: what `BackupRead` produces and `BackupWrite`
//! consumes. A file is a run of sub-streams, each a 20-byte little-endian
//! header (`WIN32_STREAM_ID` without its C padding: id u32, attributes u32,
//! size u64, name length in bytes u32), the name in UTF-16LE without a
//! terminator, then `size` bytes of body, with nothing between streams. A
//! sparse block's size counts the 8-byte file offset that starts its body;
//! here the offset is kept apart and `size` is the data alone.

use std::io::{self, Read, Write};

/// Length of a stream header, without the name.
pub const HEADER_LEN: usize = 20;

/// The longest stream name accepted, in bytes: an NTFS stream name is at
/// most 255 UTF-16 units, and `:name:$DATA` adds eight.
pub const MAX_NAME_BYTES: u32 = 2 * (255 + 8);

/// The stream ids (`BACKUP_*` in winbase.h).
pub mod id {
    /// The file's unnamed data stream.
    pub const DATA: u32 = 1;
    /// Extended attributes (`FILE_FULL_EA_INFORMATION` entries).
    pub const EA_DATA: u32 = 2;
    /// The security descriptor, self-relative.
    pub const SECURITY_DATA: u32 = 3;
    /// A named (alternate) data stream.
    pub const ALTERNATE_DATA: u32 = 4;
    /// Hard link information.
    pub const LINK: u32 = 5;
    /// Property data.
    pub const PROPERTY_DATA: u32 = 6;
    /// The object id.
    pub const OBJECT_ID: u32 = 7;
    /// The reparse point (`REPARSE_DATA_BUFFER`).
    pub const REPARSE_DATA: u32 = 8;
    /// One allocated range of a sparse stream: an offset, then the data.
    pub const SPARSE_BLOCK: u32 = 9;
    /// Transactional NTFS data.
    pub const TXFS_DATA: u32 = 10;
}

/// `STREAM_SPARSE_ATTRIBUTE`: the stream's data comes as sparse blocks.
pub const SPARSE_ATTRIBUTE: u32 = 0x8;

/// One sub-stream's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    /// The stream id (see [`id`]).
    pub id: u32,
    /// `STREAM_*` attribute bits.
    pub attributes: u32,
    /// Bytes of body (for a sparse block, the data after its offset).
    pub size: u64,
    /// The stream's name (`:name:$DATA` for an alternate data stream).
    pub name: String,
    /// For a sparse block, where in the file its data goes.
    pub offset: i64,
}

impl StreamHeader {
    /// A header of stream `id` with a `size`-byte body and no name.
    pub fn new(id: u32, size: u64) -> StreamHeader {
        StreamHeader {
            id,
            attributes: 0,
            size,
            name: String::new(),
            offset: 0,
        }
    }

    /// A header of the alternate data stream `name` (`:name:$DATA`).
    pub fn alternate(name: &str, size: u64) -> StreamHeader {
        StreamHeader {
            name: name.to_string(),
            ..StreamHeader::new(id::ALTERNATE_DATA, size)
        }
    }

    /// The header's bytes, name included (and a sparse block's offset).
    pub fn to_bytes(&self) -> Vec<u8> {
        let name: Vec<u8> = self
            .name
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let sparse = self.id == id::SPARSE_BLOCK;
        // A sparse block's size counts its offset; writers refuse a size
        // that leaves no room for it (see BackupStreamWriter::write_header).
        let size = self.size.wrapping_add(if sparse { 8 } else { 0 });
        let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 8);
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.attributes.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&name);
        if sparse {
            out.extend_from_slice(&self.offset.to_le_bytes());
        }
        out
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` if the stream ended before
/// the first, an error if it ended inside.
fn read_exact_or_end(reader: &mut impl Read, buf: &mut [u8], what: &str) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the backup stream ends inside {what}"),
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads a backup stream's sub-streams; the body of the current one is read
/// through [`Read`], and whatever of it is left unread is skipped.
pub struct BackupStreamReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> BackupStreamReader<R> {
    /// Reads the backup stream `inner`.
    pub fn new(inner: R) -> Self {
        BackupStreamReader { inner, left: 0 }
    }

    /// The next sub-stream's header, or `None` where the stream ends.
    pub fn next_header(&mut self) -> io::Result<Option<StreamHeader>> {
        let left = self.left;
        if io::copy(&mut (&mut self.inner).take(left), &mut io::sink())? != left {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backup stream ends inside a stream's body",
            ));
        }
        self.left = 0;
        let mut fixed = [0u8; HEADER_LEN];
        if !read_exact_or_end(&mut self.inner, &mut fixed, "a stream header")? {
            return Ok(None);
        }
        let word = |at: usize| u32::from_le_bytes(fixed[at..at + 4].try_into().expect("4 bytes"));
        let id = word(0);
        let attributes = word(4);
        let mut size = u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes"));
        let name_len = word(16);
        if name_len > MAX_NAME_BYTES || name_len % 2 != 0 {
            return Err(invalid(format!(
                "stream {id} has a name of {name_len} bytes (at most {MAX_NAME_BYTES}, and even)"
            )));
        }
        let mut raw = vec![0u8; name_len as usize];
        if !read_exact_or_end(&mut self.inner, &mut raw, "a stream name")? && name_len > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backup stream ends before a stream's name",
            ));
        }
        let units: Vec<u16> = raw
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        let name = String::from_utf16(&units)
            .map_err(|_| invalid(format!("stream {id} has a name that is not UTF-16")))?;
        let mut offset = 0;
        if id == id::SPARSE_BLOCK {
            if size < 8 {
                return Err(invalid(format!(
                    "a sparse block of {size} bytes, too short for its offset"
                )));
            }
            let mut bytes = [0u8; 8];
            if !read_exact_or_end(&mut self.inner, &mut bytes, "a sparse block's offset")? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the backup stream ends before a sparse block's offset",
                ));
            }
            offset = i64::from_le_bytes(bytes);
            size -= 8;
        }
        self.left = size;
        Ok(Some(StreamHeader {
            id,
            attributes,
            size,
            name,
            offset,
        }))
    }
}

impl<R: Read> Read for BackupStreamReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the backup stream ends inside a stream's body",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes a backup stream: a header, then exactly its body's bytes.
pub struct BackupStreamWriter<W> {
    inner: W,
    left: u64,
}

impl<W: Write> BackupStreamWriter<W> {
    /// Writes into `inner`.
    pub fn new(inner: W) -> Self {
        BackupStreamWriter { inner, left: 0 }
    }

    /// Starts a sub-stream; the previous one's body must be complete.
    pub fn write_header(&mut self, header: &StreamHeader) -> io::Result<()> {
        if self.left != 0 {
            return Err(io::Error::other(format!(
                "a stream header while {} bytes of the last stream's body are due",
                self.left
            )));
        }
        if header.id == id::SPARSE_BLOCK && header.size > u64::MAX - 8 {
            return Err(io::Error::other("a sparse block too large for its header"));
        }
        self.inner.write_all(&header.to_bytes())?;
        self.left = header.size;
        Ok(())
    }

    /// A whole sub-stream: its header and body.
    pub fn write_stream(&mut self, header: &StreamHeader, body: &[u8]) -> io::Result<()> {
        debug_assert_eq!(header.size, body.len() as u64);
        self.write_header(header)?;
        self.write_all(body)
    }

    /// The output, once the last body is complete.
    pub fn finish(self) -> io::Result<W> {
        if self.left != 0 {
            return Err(io::Error::other(format!(
                "the backup stream ends {} bytes short of its last stream's body",
                self.left
            )));
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for BackupStreamWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other(format!(
                "{} bytes for a stream body with {} left",
                buf.len(),
                self.left
            )));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;

    // Golden sequences derived by hand from the documented WIN32_STREAM_ID
    // layout (20 packed little-endian bytes, then the UTF-16LE name).
    #[test]
    fn data_stream_of_five_bytes() {
        let mut w = BackupStreamWriter::new(Vec::new());
        w.write_stream(&StreamHeader::new(id::DATA, 5), b"hello")
            .unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(
            bytes,
            hex(
                "01 00 00 00 | 00 00 00 00 | 05 00 00 00 00 00 00 00 | 00 00 00 00 | 68 65 6c 6c 6f"
            )
        );
    }

    #[test]
    fn alternate_stream_with_its_name() {
        let header = StreamHeader::alternate(":s:$DATA", 3);
        let mut bytes = header.to_bytes();
        bytes.extend_from_slice(b"abc");
        assert_eq!(
            bytes,
            hex(
                "04 00 00 00 | 00 00 00 00 | 03 00 00 00 00 00 00 00 | 10 00 00 00 | \
                 3a 00 73 00 3a 00 24 00 44 00 41 00 54 00 41 00 | 61 62 63"
            )
        );
        let mut r = BackupStreamReader::new(&bytes[..]);
        assert_eq!(r.next_header().unwrap(), Some(header));
        let mut body = String::new();
        r.read_to_string(&mut body).unwrap();
        assert_eq!(body, "abc");
        assert_eq!(r.next_header().unwrap(), None);
    }

    #[test]
    fn sparse_block_counts_its_offset() {
        let header = StreamHeader {
            offset: 4096,
            ..StreamHeader::new(id::SPARSE_BLOCK, 2)
        };
        let mut bytes = header.to_bytes();
        bytes.extend_from_slice(b"xy");
        assert_eq!(
            bytes,
            hex(
                "09 00 00 00 00 00 00 00 0a 00 00 00 00 00 00 00 00 00 00 00 | \
                 00 10 00 00 00 00 00 00 | 78 79"
            )
        );
        let mut r = BackupStreamReader::new(&bytes[..]);
        assert_eq!(r.next_header().unwrap(), Some(header));
    }

    #[test]
    fn unread_bodies_are_skipped() {
        let mut w = BackupStreamWriter::new(Vec::new());
        w.write_stream(&StreamHeader::new(id::SECURITY_DATA, 4), b"sdsd")
            .unwrap();
        w.write_stream(&StreamHeader::new(id::DATA, 2), b"ok")
            .unwrap();
        let bytes = w.finish().unwrap();
        let mut r = BackupStreamReader::new(&bytes[..]);
        assert_eq!(r.next_header().unwrap().unwrap().id, id::SECURITY_DATA);
        let data = r.next_header().unwrap().unwrap();
        assert_eq!((data.id, data.size), (id::DATA, 2));
    }

    #[test]
    fn malformed_streams_are_refused() {
        // Cut inside the header, inside the name, inside the body.
        let whole = {
            let mut b = StreamHeader::alternate(":s:$DATA", 3).to_bytes();
            b.extend_from_slice(b"abc");
            b
        };
        for cut in [5, 25, whole.len() - 1] {
            let mut r = BackupStreamReader::new(&whole[..cut]);
            let result = r.next_header().and_then(|_| {
                let mut sink = Vec::new();
                r.read_to_end(&mut sink)
            });
            assert!(result.is_err(), "cut at {cut}");
        }
        // An odd or huge name length.
        let mut odd = StreamHeader::new(id::DATA, 0).to_bytes();
        odd[16] = 3;
        assert!(BackupStreamReader::new(&odd[..]).next_header().is_err());
        let mut huge = StreamHeader::new(id::DATA, 0).to_bytes();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BackupStreamReader::new(&huge[..]).next_header().is_err());
        // A sparse block too short for its offset.
        let mut short = StreamHeader::new(id::SPARSE_BLOCK, 0).to_bytes();
        short[8] = 4;
        assert!(BackupStreamReader::new(&short[..]).next_header().is_err());
    }

    #[test]
    fn writer_holds_bodies_to_their_size() {
        let mut w = BackupStreamWriter::new(Vec::new());
        w.write_header(&StreamHeader::new(id::DATA, 2)).unwrap();
        assert!(w.write_all(b"abc").is_err());
        w.write_all(b"a").unwrap();
        assert!(w.write_header(&StreamHeader::new(id::DATA, 0)).is_err());
        assert!(w.finish().is_err());
    }
}
