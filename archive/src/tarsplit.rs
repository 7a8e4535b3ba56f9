//! tar-split: what the files alone cannot give back of a layer tar (headers,
//! padding, order, trailing bytes), so the exact original stream can be
//! rebuilt from the applied files plus this record.
//!
//! The format is vbatts/tar-split's, read by containers/storage and
//! composefs-rs: JSON lines, gzip-compressed on disk, each either
//!
//! * a segment, `{"type":2,"payload":"<base64 raw bytes>","position":N}`, or
//! * a file, `{"type":1,"name":"<member name>","size":S,"payload":"<base64 crc64>","position":N}`
//!   (`name_raw` in base64 instead of `name` when the name is not UTF-8;
//!   `size` omitted when 0; the payload is the big-endian CRC-64/ISO of the
//!   member's data, null when it has none).
//!
//! Only regular files' data is left out of the record; everything else the
//! tar holds (sparse maps and their data, extension headers, hard links'
//! bodies) is kept in segments, so the rebuilt stream is exact.

use std::io::{self, Write};
#[cfg(unix)]
use std::io::{BufRead, Read};
#[cfg(unix)]
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
#[cfg(unix)]
use serde::Deserialize;

#[cfg(unix)]
use super::beneath::{Root, normalize};

/// CRC-64 with the ISO polynomial, as Go's `hash/crc64` (crc64.ISO) computes it
/// and tar-split records it; carry-less multiplication where the CPU has it.
pub struct Crc64(crc_fast::Digest);

impl Crc64 {
    /// A CRC over no bytes yet, to feed a member's data to piece by piece.
    pub fn new() -> Self {
        Crc64(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso))
    }

    /// Adds the next `bytes` of the data.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The CRC of everything fed so far; feeding may go on after.
    pub fn finish(&self) -> u64 {
        self.0.finalize()
    }

    /// The CRC of `bytes`.
    pub fn of(bytes: &[u8]) -> u64 {
        crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64GoIso, bytes)
    }
}

impl Default for Crc64 {
    fn default() -> Self {
        Self::new()
    }
}

const FILE_TYPE: u8 = 1;
const SEGMENT_TYPE: u8 = 2;

/// Writes tar-split records as JSON lines.
pub struct TarSplitWriter<W: Write> {
    out: W,
    position: u64,
}

impl<W: Write> TarSplitWriter<W> {
    /// A writer starting at position 0, writing uncompressed JSON lines to
    /// `out` (the caller compresses).
    pub fn new(out: W) -> Self {
        TarSplitWriter { out, position: 0 }
    }

    /// Raw bytes of the stream, written back verbatim.
    pub fn segment(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        writeln!(
            self.out,
            "{{\"type\":{SEGMENT_TYPE},\"payload\":\"{}\",\"position\":{}}}",
            BASE64.encode(bytes),
            self.position
        )?;
        self.position += 1;
        Ok(())
    }

    /// A member whose `size` bytes of data come from the file `name`.
    pub fn file(&mut self, name: &[u8], size: u64, crc: Option<u64>) -> io::Result<()> {
        let name_field = match std::str::from_utf8(name) {
            Ok(text) => format!(
                "\"name\":{}",
                serde_json::to_string(text).expect("a string serialises")
            ),
            Err(_) => format!("\"name_raw\":\"{}\"", BASE64.encode(name)),
        };
        let size_field = if size > 0 {
            format!(",\"size\":{size}")
        } else {
            String::new()
        };
        let payload = match crc {
            Some(crc) => format!("\"{}\"", BASE64.encode(crc.to_be_bytes())),
            None => "null".to_string(),
        };
        writeln!(
            self.out,
            "{{\"type\":{FILE_TYPE},{name_field}{size_field},\"payload\":{payload},\"position\":{}}}",
            self.position
        )?;
        self.position += 1;
        Ok(())
    }

    /// The output, once the last record is written; nothing is buffered
    /// here, so nothing more needs flushing than `out` itself.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(unix)]
#[derive(Deserialize)]
struct Record {
    #[serde(rename = "type")]
    kind: u8,
    name: Option<String>,
    name_raw: Option<String>,
    size: Option<u64>,
    payload: Option<String>,
}

/// Rebuilds the original tar stream from a tar-split record (uncompressed
/// JSON lines) and the files under `root`, writing it to `out`. Every file's
/// data is checked against its recorded CRC, so a file changed since the
/// layer was applied is an error, not a silently different stream.
#[cfg(unix)]
pub fn reassemble(record: impl BufRead, root: &Path, out: impl Write) -> io::Result<u64> {
    let root = Root::open(root)?;
    // Headers come 512 bytes at a time: gather them into large writes.
    let mut out = io::BufWriter::with_capacity(1 << 20, out);
    let mut written = 0u64;
    let mut buf = vec![0u8; 128 * 1024];
    for (line_no, line) in record.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("tar-split record line {}: {why}", line_no + 1),
            )
        };
        let rec: Record = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        match rec.kind {
            SEGMENT_TYPE => {
                let bytes = BASE64
                    .decode(rec.payload.unwrap_or_default())
                    .map_err(|e| bad(format!("segment payload: {e}")))?;
                out.write_all(&bytes)?;
                written += bytes.len() as u64;
            }
            FILE_TYPE => {
                let size = rec.size.unwrap_or(0);
                if size == 0 {
                    continue;
                }
                let name = match (&rec.name, &rec.name_raw) {
                    (_, Some(raw)) => BASE64
                        .decode(raw)
                        .map_err(|e| bad(format!("name_raw: {e}")))?,
                    (Some(name), None) => name.as_bytes().to_vec(),
                    (None, None) => return Err(bad("a file record without a name".into())),
                };
                let shown = String::from_utf8_lossy(&name).into_owned();
                let rel = normalize(&name).map_err(|why| bad(format!("{shown}: {why}")))?;
                let file = root
                    .open_read(&rel)
                    .map_err(|e| bad(format!("open {shown}: {e}")))?;
                let mut file = std::fs::File::from(file);
                let mut digest = Crc64::new();
                let mut left = size;
                while left > 0 {
                    let want = (left as usize).min(buf.len());
                    let n = file.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(bad(format!(
                            "{shown} is shorter than the {size} bytes recorded"
                        )));
                    }
                    digest.update(&buf[..n]);
                    out.write_all(&buf[..n])?;
                    left -= n as u64;
                }
                let expected = rec
                    .payload
                    .as_deref()
                    .map(|p| BASE64.decode(p))
                    .transpose()
                    .map_err(|e| bad(format!("file payload: {e}")))?;
                if let Some(expected) = expected
                    && expected != digest.finish().to_be_bytes()
                {
                    return Err(bad(format!(
                        "{shown} changed since the layer was applied (CRC-64 differs)"
                    )));
                }
                written += size;
            }
            other => return Err(bad(format!("unknown record type {other}"))),
        }
    }
    out.flush()?;
    Ok(written)
}

#[cfg(not(unix))]
pub use crate::elsewhere::reassemble;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_look_like_tar_splits() {
        let mut w = TarSplitWriter::new(Vec::new());
        w.segment(b"header").unwrap();
        w.file(b"etc/passwd", 3, Some(Crc64::of(b"abc"))).unwrap();
        w.file(b"dir/", 0, None).unwrap();
        w.file(b"caf\xe9", 0, None).unwrap();
        let text = String::from_utf8(w.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], r#"{"type":2,"payload":"aGVhZGVy","position":0}"#);
        assert_eq!(
            lines[1],
            format!(
                r#"{{"type":1,"name":"etc/passwd","size":3,"payload":"{}","position":1}}"#,
                BASE64.encode(Crc64::of(b"abc").to_be_bytes())
            )
        );
        assert_eq!(
            lines[2],
            r#"{"type":1,"name":"dir/","payload":null,"position":2}"#
        );
        assert_eq!(
            lines[3],
            r#"{"type":1,"name_raw":"Y2Fm6Q==","payload":null,"position":3}"#
        );
    }

    #[test]
    fn crc64_matches_gos_iso_table() {
        // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ISO))
        assert_eq!(Crc64::of(b"123456789"), 0xb909_56c7_75a4_1001);
        let mut split = Crc64::new();
        split.update(b"1234");
        split.update(b"56789");
        assert_eq!(split.finish(), 0xb909_56c7_75a4_1001);
    }
}
