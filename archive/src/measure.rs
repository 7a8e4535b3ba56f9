//! Feeding a layer stream to a consumer other than the applier (a driver that
//! owns its layer format), measured on the way: decompressed as the applier
//! would, with the digest and length of both the stream as given (the blob)
//! and the tar (the diff id).

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::compression::{Compression, decompress};
use crate::digest::Sha256Digest;
use crate::members::MAX_TRAILING;
use crate::pipeline::{ChunkReader, PIPELINE_DEPTH, pump};

/// What a stream turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measured {
    /// How the stream was compressed.
    pub compression: Compression,
    /// Digest and length of the stream as given.
    pub compressed_digest: Sha256Digest,
    /// Length of the stream as given, in bytes: the blob's size.
    pub compressed_size: u64,
    /// Digest and length of the tar itself.
    pub uncompressed_digest: Sha256Digest,
    /// Length of the decompressed tar, in bytes: what the diff id covers.
    pub uncompressed_size: u64,
}

/// Why feeding a stream failed.
#[derive(Debug)]
pub enum FeedError<E> {
    /// The stream itself: unreadable, a compression that does not decode,
    /// too much data after the compressed stream.
    Input(io::Error),
    /// The consumer's own failure.
    Consumer(E),
}

/// Decompresses `input` and hands the tar to `consume` as a reader (on a
/// thread of its own, so the reader can be sent across a plugin boundary
/// even when `input` cannot), hashing both forms on the way. `consume`
/// should read to the end; what it leaves unread is still read and hashed
/// here, so the digests are always of the whole stream.
pub fn feed_measured<T, E>(
    input: impl Read,
    consume: impl FnOnce(&mut (dyn Read + Send)) -> Result<T, E> + Send,
) -> Result<(T, Measured), FeedError<E>>
where
    T: Send,
    E: Send,
{
    let mut compressed = Hashing::new(input);
    let (compression, decompressed) = decompress(&mut compressed).map_err(FeedError::Input)?;
    let mut uncompressed = Hashing::new(decompressed);
    let (chunks_tx, chunks_rx) = std::sync::mpsc::sync_channel(PIPELINE_DEPTH);
    let consumed = std::thread::scope(|scope| {
        let consumer = scope.spawn(move || {
            let mut reader = ChunkReader::new(chunks_rx);
            let result = consume(&mut reader);
            // What the consumer left is read, so the pump never waits on a
            // consumer that has stopped, but no more than a layer's
            // trailing data may be: dropping the reader past that stops
            // the pump, and the stream is refused.
            let left = io::copy(&mut (&mut reader).take(MAX_TRAILING + 1), &mut io::sink());
            let overran = left.is_ok_and(|n| n > MAX_TRAILING);
            (result, overran)
        });
        pump(&mut uncompressed, &chunks_tx);
        drop(chunks_tx);
        consumer
            .join()
            .expect("the consuming thread does not panic")
    });
    let (consumed, overran) = consumed;
    // The consumer's own failure says more than what it left unread.
    if overran && consumed.is_ok() {
        return Err(FeedError::Input(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "more than {} of data after what the layer's consumer read",
                crate::human(MAX_TRAILING)
            ),
        )));
    }
    // A pump that met a read error sent it to the consumer, which failed on
    // it; the stream is what is reported then.
    if let Some(e) = uncompressed.error.take() {
        return Err(FeedError::Input(e));
    }
    let consumed = consumed.map_err(FeedError::Consumer)?;
    let (uncompressed_digest, uncompressed_size) = uncompressed.finish();
    drop(uncompressed);
    // Data after the compressed stream belongs to the blob's digest, within
    // a limit.
    if compression != Compression::None {
        let read = io::copy(
            &mut (&mut compressed).take(MAX_TRAILING + 1),
            &mut io::sink(),
        )
        .map_err(FeedError::Input)?;
        if read > MAX_TRAILING {
            return Err(FeedError::Input(io::Error::new(
                io::ErrorKind::InvalidData,
                "too much data after the end of the compressed stream",
            )));
        }
    }
    let (compressed_digest, compressed_size) = compressed.finish();
    Ok((
        consumed,
        Measured {
            compression,
            compressed_digest,
            compressed_size,
            uncompressed_digest,
            uncompressed_size,
        },
    ))
}

/// A reader that hashes and counts what passes, and keeps the first error.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
    error: Option<io::Error>,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            len: 0,
            error: None,
        }
    }

    fn finish(&mut self) -> (Sha256Digest, u64) {
        let digest = std::mem::take(&mut self.hasher).finalize();
        (Sha256Digest::from_bytes(digest.into()), self.len)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.len += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kept = io::Error::new(e.kind(), e.to_string());
                self.error.get_or_insert(kept);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_are_measured_and_the_consumer_sees_the_tar() {
        let tar = b"not really a tar, but bytes".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let blob = gz.finish().unwrap();
        let (seen, measured) = feed_measured(&blob[..], |r| {
            let mut seen = Vec::new();
            r.read_to_end(&mut seen).map(|_| seen)
        })
        .unwrap();
        assert_eq!(seen, tar);
        assert_eq!(measured.compression, Compression::Gzip);
        assert_eq!(measured.compressed_digest, Sha256Digest::of(&blob));
        assert_eq!(measured.compressed_size, blob.len() as u64);
        assert_eq!(measured.uncompressed_digest, Sha256Digest::of(&tar));
        assert_eq!(measured.uncompressed_size, tar.len() as u64);
    }

    #[test]
    fn a_consumer_that_stops_early_bounds_what_is_read_after_it() {
        let stream = vec![1u8; (MAX_TRAILING as usize) + (4 << 20)];
        let result = feed_measured(&stream[..], |r| {
            let mut first = [0u8; 512];
            r.read_exact(&mut first)
        });
        match result {
            Err(FeedError::Input(e)) => assert!(e.to_string().contains("after what"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_the_consumer_leaves_is_still_hashed_and_its_error_comes_back() {
        // What the consumer leaves is within the trailing allowance.
        let tar = vec![7u8; 1 << 20];
        let result = feed_measured(&tar[..], |r| {
            let mut first = [0u8; 10];
            r.read_exact(&mut first)?;
            Err::<(), io::Error>(io::Error::other("consumer gave up"))
        });
        match result {
            Err(FeedError::Consumer(e)) => assert_eq!(e.to_string(), "consumer gave up"),
            other => panic!("{other:?}"),
        }
        let (_, measured) = feed_measured(&tar[..], |r| {
            let mut first = [0u8; 10];
            r.read_exact(&mut first)
        })
        .unwrap();
        assert_eq!(measured.uncompressed_digest, Sha256Digest::of(&tar));
    }
}
