//! Reading a layer tar member by member with every buffer bounded.
//!
//! The `tar` crate reads a GNU long name, a PAX extended header and a GNU
//! sparse map into memory at whatever size the stream declares, before its
//! caller sees anything, so a layer declaring a 1 GiB long name costs 1 GiB
//! of memory. Here the framing (header blocks, extension members, padding) is
//! read by hand, the header fields still parsed by `tar::Header`, and each
//! extension is refused past its limit before a byte of it is kept:
//!
//! * a PAX extended header (`x`, and `g`, whose records are never used):
//!   [`MAX_PAX_HEADER`], 1 MiB. Real ones hold a few long names, times and
//!   xattrs (a file's xattrs fit in 64 KiB on most filesystems);
//! * a GNU long name or long link name (`L`, `K`): [`MAX_LONG_NAME`], 64 KiB,
//!   16 times Linux's PATH_MAX;
//! * a sparse map (GNU's old format, and the PAX 0.1 and 1.0 formats):
//!   [`MAX_SPARSE_REGIONS`] regions;
//! * after the end-of-archive blocks: [`MAX_TRAILING`] bytes (see
//!   [`Members::finish`]).
//!
//! Member data is never buffered: the caller reads it through [`Data`], and
//! whatever it leaves (a directory's "data", a skipped member's) is read
//! past in small chunks. Every byte still goes through the [`TarSource`]
//! (when applying, the recording [`TarTap`], so it is digested and recorded).
//!
//! Public (as `strata_archive::members`) for readers of layer formats built
//! on tar, such as the Windows layer format, which get the same bounds.

use std::io::{self, Read};

use tar::{EntryType, GnuExtSparseHeader, Header};

use super::human;
#[cfg(unix)]
use super::record::TarTap;

/// Where members are read from: the stream, and how far into it the reader
/// is. Shared (`&self`), so a member's [`Data`] and the reader can both hold
/// it.
pub trait TarSource {
    /// Reads as [`Read::read`] does.
    fn read_tar(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Bytes given to the reader so far.
    fn consumed(&self) -> u64;
}

#[cfg(unix)]
impl<R: Read> TarSource for TarTap<R> {
    fn read_tar(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut reader = self;
        reader.read(buf)
    }

    fn consumed(&self) -> u64 {
        TarTap::consumed(self)
    }
}

/// A tar stream read as it is, for readers that record nothing.
pub struct PlainTar<R> {
    inner: std::cell::RefCell<R>,
    consumed: std::cell::Cell<u64>,
}

impl<R: Read> PlainTar<R> {
    /// Reads `inner`.
    pub fn new(inner: R) -> Self {
        PlainTar {
            inner: std::cell::RefCell::new(inner),
            consumed: std::cell::Cell::new(0),
        }
    }
}

impl<R: Read> TarSource for PlainTar<R> {
    fn read_tar(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.borrow_mut().read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }

    fn consumed(&self) -> u64 {
        self.consumed.get()
    }
}

/// A [`TarSource`] as a reader.
struct SourceReader<'t, S>(&'t S);

impl<S: TarSource> Read for SourceReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_tar(buf)
    }
}

/// The largest PAX extended header (`x` or `g` member) accepted, in bytes.
pub const MAX_PAX_HEADER: u64 = 1 << 20;
/// The largest GNU long name or long link name accepted, in bytes.
pub const MAX_LONG_NAME: u64 = 64 << 10;
/// The most bytes accepted after the two end-of-archive blocks (record
/// padding: GNU tar pads to 10 KiB records by default).
pub const MAX_TRAILING: u64 = 1 << 20;
/// The most data regions a sparse member may list (16 bytes of memory each).
pub const MAX_SPARSE_REGIONS: usize = 1 << 17;

const BLOCK: u64 = 512;

/// A member name as messages show it: never the raw bytes (a name can hold
/// terminal escapes); `{:?}` of this escapes every control character.
pub fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn cut_short(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, message)
}

/// A sparse member's layout: the data regions (offset and length in the
/// file), stored one after the other in the member's data.
pub struct SparseMap {
    /// Offset and length of each region.
    pub regions: Vec<(u64, u64)>,
    /// The file's size, holes included.
    pub real_size: u64,
}

/// One member, its extension headers resolved.
pub struct Member {
    /// The member's own header (not its extension headers').
    pub header: Header,
    /// Where its data starts, and how many bytes of it the stream holds.
    pub data_start: u64,
    /// How many bytes of data the stream holds for it.
    pub size: u64,
    /// Its name: the GNU long name, else the PAX `path`, else the header's.
    pub name: Vec<u8>,
    /// Its link target: the GNU long link name, else the PAX `linkpath`,
    /// else the header's.
    pub link: Option<Vec<u8>>,
    /// Owner from PAX records, which take precedence over the header's.
    pub pax_uid: Option<u64>,
    /// Group from PAX records, which take precedence over the header's.
    pub pax_gid: Option<u64>,
    /// The PAX records that apply to it (already checked well formed).
    pax: Vec<u8>,
    /// For a member in GNU's old sparse format (`S`): its map.
    pub gnu_sparse: Option<SparseMap>,
}

impl Member {
    /// The member's type (its own header's).
    pub fn kind(&self) -> EntryType {
        self.header.entry_type()
    }

    /// The member's PAX records, key and value.
    pub fn pax_records(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        // Checked when read: no record is malformed.
        PaxRecords(&self.pax).map_while(Result::ok)
    }
}

/// PAX records, `"<length> <key>=<value>\n"`, where the length counts the
/// whole record: values may hold any byte, newlines included (xattr values
/// are binary).
pub struct PaxRecords<'a>(pub &'a [u8]);

impl<'a> Iterator for PaxRecords<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let record = (|| {
            // The length is a handful of digits: a long run without a space
            // is not one.
            let space = self.0.iter().take(20).position(|b| *b == b' ');
            let space = space.ok_or("a record without a length")?;
            let digits = &self.0[..space];
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err("a record with a bad length");
            }
            let len: usize = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok())
                .ok_or("a record with a bad length")?;
            if len <= space + 2 || len > self.0.len() {
                return Err("a record whose length runs past the header");
            }
            let (record, rest) = self.0.split_at(len);
            let body = record[space + 1..]
                .strip_suffix(b"\n")
                .ok_or("a record that does not end with a newline")?;
            let equals = body
                .iter()
                .position(|b| *b == b'=')
                .ok_or("a record without '='")?;
            self.0 = rest;
            Ok((&body[..equals], &body[equals + 1..]))
        })();
        if record.is_err() {
            // Nothing after a malformed record can be framed.
            self.0 = &[];
        }
        Some(record)
    }
}

/// What of a member's PAX records the framing needs.
#[derive(Default)]
struct PaxFraming<'a> {
    path: Option<&'a [u8]>,
    linkpath: Option<&'a [u8]>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
}

/// Checks that `records` are well formed, and takes out path, link path,
/// size and owner. A record that changes what the member is (its name, link
/// or size) may appear once: two would let two readers of the same layer
/// see two different trees.
fn pax_framing(records: &[u8]) -> Result<PaxFraming<'_>, String> {
    let mut framing = PaxFraming::default();
    let number = |key: &[u8], value: &[u8]| {
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("a bad PAX {:?} record", lossy(key)))
    };
    for record in PaxRecords(records) {
        let (key, value) = record.map_err(|why| format!("a malformed PAX header: {why}"))?;
        let once = |slot: bool| {
            if slot {
                Err(format!("the PAX record {:?} given twice", lossy(key)))
            } else {
                Ok(())
            }
        };
        match key {
            b"path" => {
                once(framing.path.is_some())?;
                framing.path = Some(value);
            }
            b"linkpath" => {
                once(framing.linkpath.is_some())?;
                framing.linkpath = Some(value);
            }
            b"size" => {
                once(framing.size.is_some())?;
                framing.size = Some(number(key, value)?);
            }
            b"uid" => framing.uid = Some(number(key, value)?),
            b"gid" => framing.gid = Some(number(key, value)?),
            _ => {}
        }
    }
    Ok(framing)
}

/// A GNU long name's bytes: the name and the NUL GNU tar ends it with.
fn strip_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// Reads the members of the tar stream going through `tap`.
pub struct Members<'t, S> {
    tap: &'t S,
    /// Where the next header starts.
    next: u64,
    /// A zero block ended the archive.
    end_marker: bool,
    /// A header passed its checksum: the stream is a tar.
    saw_header: bool,
    /// For reading past what no one reads.
    scratch: Vec<u8>,
}

impl<'t, S: TarSource> Members<'t, S> {
    /// Reads the members of the stream `tap` gives.
    pub fn new(tap: &'t S) -> Self {
        Members {
            tap,
            next: 0,
            end_marker: false,
            saw_header: false,
            scratch: vec![0u8; 64 * 1024],
        }
    }

    /// Whether the archive ended with its end-of-archive marker (a zero
    /// block), not simply where the stream stopped.
    pub fn saw_end_marker(&self) -> bool {
        self.end_marker
    }

    /// Whether any header was a tar header (what went wrong before one
    /// was says the stream is not a tar at all).
    pub fn saw_header(&self) -> bool {
        self.saw_header
    }

    /// Reads `n` bytes and drops them (they are still recorded); says how
    /// many there were before the stream ended.
    fn discard(&mut self, mut n: u64) -> io::Result<u64> {
        let mut done = 0;
        while n > 0 {
            let want = n.min(self.scratch.len() as u64) as usize;
            let got = match self.tap.read_tar(&mut self.scratch[..want]) {
                Ok(0) => break,
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            n -= got as u64;
            done += got as u64;
        }
        Ok(done)
    }

    /// Reads past what is left of the last member (data nobody read, and
    /// padding) to where the next header starts.
    fn skip_to_next(&mut self) -> io::Result<()> {
        let at = self.tap.consumed();
        if at < self.next {
            let left = self.next - at;
            if self.discard(left)? != left {
                return Err(cut_short(format!(
                    "the stream ends at byte {}, inside a member's data or padding \
                     (the next header was due at byte {})",
                    self.tap.consumed(),
                    self.next
                )));
            }
        }
        Ok(())
    }

    /// Reads a whole block; `false` if the stream ended before its first byte.
    fn read_block(&mut self, block: &mut [u8; 512]) -> io::Result<bool> {
        let mut filled = 0;
        while filled < block.len() {
            match self.tap.read_tar(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(cut_short(format!(
                        "the stream ends inside the header block at byte {}",
                        self.next
                    )));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.next += BLOCK;
        Ok(true)
    }

    /// Reads the data of an extension member (a long name, PAX records)
    /// whose header at `at` declares `size` bytes, refusing more than
    /// `limit` before reading any.
    fn read_extension(
        &mut self,
        header: &Header,
        at: u64,
        size: u64,
        limit: u64,
        what: &str,
    ) -> io::Result<Vec<u8>> {
        if size > limit {
            return Err(invalid(format!(
                "the {what} {:?} at byte {at} (for the member after it) declares {size} bytes, \
                 more than the {} allowed",
                lossy(&header.path_bytes()),
                human(limit),
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        SourceReader(self.tap).take(size).read_to_end(&mut bytes)?;
        if bytes.len() as u64 != size {
            return Err(cut_short(format!(
                "the stream ends inside the {what} at byte {at}"
            )));
        }
        self.next = self.data_end(at, self.next, size)?;
        Ok(bytes)
    }

    /// Where the header after data of `size` bytes starting at `from` goes.
    fn data_end(&self, at: u64, from: u64, size: u64) -> io::Result<u64> {
        size.checked_add(BLOCK - 1)
            .and_then(|s| from.checked_add(s & !(BLOCK - 1)))
            .ok_or_else(|| {
                invalid(format!(
                    "the header at byte {at} declares an impossible size"
                ))
            })
    }

    /// The next member, or `None` at the end of the archive (a zero block,
    /// or the end of the stream: the caller tells the two apart with
    /// [`saw_end_marker`](Self::saw_end_marker)).
    pub fn next_member(&mut self) -> io::Result<Option<Member>> {
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        let mut start = None;
        let orphaned = |start: Option<u64>| match start {
            Some(at) => Err(invalid(format!(
                "the extension headers at byte {at} describe a member that never comes"
            ))),
            None => Ok(None),
        };
        let (header, at) = loop {
            self.skip_to_next()?;
            let at = self.next;
            let mut header = Header::new_old();
            if !self.read_block(header.as_mut_bytes())? {
                return orphaned(start);
            }
            if header.as_bytes().iter().all(|b| *b == 0) {
                self.end_marker = true;
                return orphaned(start);
            }
            check_sum(&header, at)?;
            self.saw_header = true;
            start.get_or_insert(at);
            let kind = header.entry_type();
            let (slot, limit, what) = match kind {
                EntryType::GNULongName => (&mut long_name, MAX_LONG_NAME, "GNU long name"),
                EntryType::GNULongLink => (&mut long_link, MAX_LONG_NAME, "GNU long link name"),
                EntryType::XHeader => (&mut pax, MAX_PAX_HEADER, "PAX extended header"),
                _ => break (header, at),
            };
            if slot.is_some() {
                return Err(invalid(format!(
                    "a second {what} at byte {at} for the same member"
                )));
            }
            let size = header_size(&header, at)?;
            let bytes = self.read_extension(&header, at, size, limit, what)?;
            *slot = Some(bytes);
        };
        let start = start.unwrap_or(at);
        let pax = pax.unwrap_or_default();
        let framing = pax_framing(&pax).map_err(|why| {
            invalid(format!(
                "the member at byte {start} ({:?}): {why}",
                lossy(&header.path_bytes())
            ))
        })?;
        let name = match long_name {
            Some(name) => strip_nul(name),
            None => match framing.path {
                Some(path) => path.to_vec(),
                None => header.path_bytes().into_owned(),
            },
        };
        let shown = lossy(&name);
        let link = match long_link {
            Some(link) => Some(strip_nul(link)),
            None => framing
                .linkpath
                .map(<[u8]>::to_vec)
                .or_else(|| header.link_name_bytes().map(|l| l.into_owned())),
        };
        let size = match framing.size {
            Some(size) => size,
            None => header_size(&header, at)?,
        };
        if header.entry_type().is_pax_global_extensions() && size > MAX_PAX_HEADER {
            return Err(invalid(format!(
                "the PAX global header {shown:?} at byte {at} declares {size} bytes, \
                 more than the {} allowed",
                human(MAX_PAX_HEADER)
            )));
        }
        let gnu_sparse = if header.entry_type().is_gnu_sparse() {
            Some(self.gnu_sparse_map(&header, at, &shown)?)
        } else {
            None
        };
        let (pax_uid, pax_gid) = (framing.uid, framing.gid);
        let data_start = self.next;
        self.next = self.data_end(at, data_start, size)?;
        Ok(Some(Member {
            header,
            data_start,
            size,
            name,
            link,
            pax_uid,
            pax_gid,
            pax,
            gnu_sparse,
        }))
    }

    /// The map of a member in GNU's old sparse format: four regions in its
    /// header, then as many extension blocks (21 regions each) as it says.
    fn gnu_sparse_map(&mut self, header: &Header, at: u64, shown: &str) -> io::Result<SparseMap> {
        let bad = |why: String| invalid(format!("sparse member {shown:?} at byte {at}: {why}"));
        let gnu = header
            .as_gnu()
            .ok_or_else(|| bad("the sparse type in a header that is not GNU's".into()))?;
        // The tar crate's own messages for a bad field quote its bytes.
        let real_size = gnu
            .real_size()
            .map_err(|_| bad("its real size is not a number".into()))?;
        let mut regions = Vec::new();
        let add = |regions: &mut Vec<(u64, u64)>, block: &tar::GnuSparseHeader| {
            if block.is_empty() {
                return Ok(());
            }
            if regions.len() >= MAX_SPARSE_REGIONS {
                return Err(bad(format!(
                    "more than {MAX_SPARSE_REGIONS} regions in its map"
                )));
            }
            let offset = block.offset();
            let length = block.length();
            let (Ok(offset), Ok(length)) = (offset, length) else {
                return Err(bad("a region in its map is not a number".into()));
            };
            regions.push((offset, length));
            Ok(())
        };
        for block in &gnu.sparse {
            add(&mut regions, block)?;
        }
        let mut extended = gnu.is_extended();
        // An extension block may list no region at all: the blocks are
        // counted too, or a stream of them would be read forever.
        let mut blocks = 0usize;
        while extended {
            blocks += 1;
            if blocks > MAX_SPARSE_REGIONS / 21 + 1 {
                return Err(bad(format!(
                    "more than {} extension blocks in its map",
                    MAX_SPARSE_REGIONS / 21 + 1
                )));
            }
            let mut ext = GnuExtSparseHeader::new();
            let block: &mut [u8; 512] = ext.as_mut_bytes();
            if !self.read_block(block)? {
                return Err(cut_short(format!(
                    "the stream ends inside the map of the sparse member {shown:?} at byte {at}"
                )));
            }
            for block in ext.sparse() {
                add(&mut regions, block)?;
            }
            extended = ext.is_extended();
        }
        Ok(SparseMap { regions, real_size })
    }

    /// The member's data, to be read before the next member is asked for.
    pub fn data(&self, member: &Member) -> Data<'t, S> {
        Data {
            tap: self.tap,
            left: member.size,
        }
    }

    /// After the end of the archive: reads what follows (record padding is
    /// part of the stream, so digested and recorded), refusing more than
    /// [`MAX_TRAILING`] bytes after the two end-of-archive blocks. A stream
    /// that goes on after its end is not a layer, and reading it to its end
    /// would let any stream cost any time.
    pub fn finish(&mut self) -> io::Result<()> {
        let ended_at = self.tap.consumed();
        // The second end-of-archive block is read here (the first ended
        // the archive).
        let allowed = if self.end_marker {
            MAX_TRAILING + BLOCK
        } else {
            MAX_TRAILING
        };
        let read = self.discard(allowed + 1)?;
        if read > allowed {
            return Err(invalid(format!(
                "more than {} of data after the end of the archive (which ends at byte {ended_at})",
                human(MAX_TRAILING)
            )));
        }
        Ok(())
    }
}

fn check_sum(header: &Header, at: u64) -> io::Result<()> {
    let bytes = header.as_bytes();
    let sum = bytes[..148]
        .iter()
        .chain(&bytes[156..])
        .map(|b| u32::from(*b))
        .sum::<u32>()
        + 8 * 32;
    match header.cksum() {
        Ok(recorded) if recorded == sum => Ok(()),
        _ => Err(invalid(format!(
            "the header at byte {at} fails its checksum (archive header checksum mismatch)"
        ))),
    }
}

fn header_size(header: &Header, at: u64) -> io::Result<u64> {
    header
        .entry_size()
        .map_err(|_| invalid(format!("the header at byte {at} has a bad size field")))
}

/// A member's data, read from the stream as it comes.
pub struct Data<'t, S> {
    tap: &'t S,
    left: u64,
}

impl<S: TarSource> Read for Data<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.tap.read_tar(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_are_framed_by_their_length() {
        // A value holding a newline, as a binary xattr value may.
        let records = b"14 path=a\nb/c\n12 size=123\n";
        let parsed: Vec<_> = PaxRecords(records).collect();
        assert_eq!(
            parsed,
            vec![
                Ok((&b"path"[..], &b"a\nb/c"[..])),
                Ok((&b"size"[..], &b"123"[..]))
            ]
        );
        for bad in [
            &b"99 path=x\n"[..],
            b"x path=x\n",
            b"9 pathx\n",
            b"10 path=x",
        ] {
            assert!(
                PaxRecords(bad).any(|r| r.is_err()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(pax_framing(b"10 path=a\n10 path=b\n").is_err());
        assert!(pax_framing(b"10 size=x\n").is_err());
        assert!(pax_framing(b"10 path=a\n10 uid=42\n").is_ok());
    }

    #[test]
    fn limits_read_as_words() {
        assert_eq!(human(MAX_PAX_HEADER), "1 MiB");
        assert_eq!(human(MAX_LONG_NAME), "64 KiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
