//! Recognising how a layer stream is compressed, from its first bytes.

use std::fmt;
use std::io::{self, BufReader, Read};

/// How many leading bytes recognise every format.
pub const MAGIC_LEN: usize = 6;

/// The compression a layer came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar: no magic number recognised.
    None,
    /// gzip (`1f 8b`); concatenated members read as one stream.
    Gzip,
    /// Zstandard (`28 b5 2f fd`).
    Zstd,
    /// bzip2 (`BZh`): recognised, so the error can name it, but not decoded.
    Bzip2,
    /// xz (`fd 37 7a 58 5a 00`): recognised, so the error can name it, but
    /// not decoded.
    Xz,
}

impl Compression {
    /// Recognises the compression from the stream's first bytes.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else {
            Compression::None
        }
    }

    /// The OCI media type suffix (`+gzip`, `+zstd`) or empty.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Wraps `input` in the decompressor its first bytes call for. Returns the
/// compression found and the decompressed stream.
pub fn decompress<'a, R: Read + 'a>(mut input: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    // Read the magic with as many reads as it takes (a pipe may give less),
    // then put it back in front of the rest.
    let mut head = [0u8; MAGIC_LEN];
    let mut len = 0;
    while len < head.len() {
        match input.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let compression = Compression::detect(&head[..len]);
    let buffered = BufReader::with_capacity(
        256 * 1024,
        io::Cursor::new(head[..len].to_vec()).chain(input),
    );
    let reader: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(buffered),
        // Concatenated gzip members are one stream (pigz, some registries).
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        Compression::Bzip2 | Compression::Xz => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{compression}-compressed layers are not supported yet (gzip, zstd and plain tar are)"
                ),
            ));
        }
    };
    Ok((compression, reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn each_format_is_recognised_and_read_back() {
        let data = b"hello layer".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&data[..], 3).unwrap();
        for (bytes, expected) in [
            (data.clone(), Compression::None),
            (gz, Compression::Gzip),
            (zst, Compression::Zstd),
        ] {
            let (found, mut reader) = decompress(&bytes[..]).unwrap();
            assert_eq!(found, expected);
            let mut out = Vec::new();
            reader.read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
        assert_eq!(Compression::detect(b"BZh91AY"), Compression::Bzip2);
        let err = decompress(&b"BZh91AY&SY"[..]).err().unwrap();
        assert!(err.to_string().contains("bzip2"), "{err}");
    }
}
