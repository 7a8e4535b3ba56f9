//! The second half of an apply, on its own thread: hashing both streams
//! (sha256), checksumming file data (CRC-64) and writing the tar-split
//! record, while the applying thread parses the tar and writes files. The two
//! meet through a bounded channel, so memory stays bounded whatever the layer's
//! size.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use sha2::{Digest as _, Sha256};

use super::compression::{Compression, MAGIC_LEN};
use super::digest::Sha256Digest;
use super::tarsplit::{Crc64, TarSplitWriter};

/// Batches in flight at most.
const CHANNEL_DEPTH: usize = 16;
/// A batch goes when it holds this many bytes or messages: small members
/// would otherwise cost a thread wake-up each.
const BATCH_BYTES: usize = 512 * 1024;
const BATCH_MESSAGES: usize = 1024;
/// The most stream bytes one tar-split segment holds. Everything between
/// two regular files' data (headers, padding, other members' data, what
/// follows the archive) is recorded, and a stream can put any amount there:
/// it goes out in segments of this size instead of being gathered whole.
/// Consecutive segments are simply written back one after the other.
const MAX_SEGMENT: usize = 256 * 1024;

pub enum Message {
    /// Bytes of the tar stream; `payload` when they are a regular file's data.
    Tar { payload: bool, bytes: Vec<u8> },
    /// A member begins (its headers have been read): what was read since the
    /// last member is one segment of the record.
    MemberStart,
    /// A member ends; the file data read since its start belongs to `name`.
    MemberEnd { name: Vec<u8> },
    /// Bytes of the stream as given (before decompression).
    Compressed(Vec<u8>),
}

/// What the recording thread computed.
pub struct Recorded {
    pub uncompressed: (Sha256Digest, u64),
    /// `None` when the compressed bytes were not sent (a plain tar: the two
    /// digests are the same).
    pub compressed: Option<(Sha256Digest, u64)>,
    pub record_error: Option<io::Error>,
}

type Batch = Vec<Message>;

/// Collects messages and sends them in batches.
pub struct Batcher {
    tx: SyncSender<Batch>,
    batch: RefCell<Batch>,
    bytes: Cell<usize>,
}

impl Batcher {
    fn new(tx: SyncSender<Batch>) -> Self {
        Batcher {
            tx,
            batch: RefCell::new(Vec::with_capacity(BATCH_MESSAGES)),
            bytes: Cell::new(0),
        }
    }

    fn push(&self, message: Message, bytes: usize) -> io::Result<()> {
        let full = {
            let mut batch = self.batch.borrow_mut();
            batch.push(message);
            self.bytes.set(self.bytes.get() + bytes);
            batch.len() >= BATCH_MESSAGES || self.bytes.get() >= BATCH_BYTES
        };
        if full { self.flush() } else { Ok(()) }
    }

    fn flush(&self) -> io::Result<()> {
        let batch = std::mem::replace(
            &mut *self.batch.borrow_mut(),
            Vec::with_capacity(BATCH_MESSAGES),
        );
        self.bytes.set(0);
        if batch.is_empty() {
            return Ok(());
        }
        self.tx.send(batch).map_err(|_| gone())
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Runs on the recording thread until every sender is gone.
pub fn record(rx: Receiver<Batch>, tar_split: Option<&mut (dyn Write + Send)>) -> Recorded {
    let mut split = tar_split.map(TarSplitWriter::new);
    let mut tar_hash = Sha256::new();
    let mut tar_len = 0u64;
    let mut compressed_hash = Sha256::new();
    let mut compressed_len = 0u64;
    let mut saw_compressed = false;
    let mut crc = Crc64::new();
    let mut payload_len = 0u64;
    let mut pending = Vec::new();
    let mut record_error = None;
    let mut write = |split: &mut Option<TarSplitWriter<&mut (dyn Write + Send)>>,
                     f: &mut dyn FnMut(
        &mut TarSplitWriter<&mut (dyn Write + Send)>,
    ) -> io::Result<()>| {
        if let Some(w) = split.as_mut()
            && record_error.is_none()
            && let Err(e) = f(w)
        {
            record_error = Some(e);
        }
    };
    for message in rx.into_iter().flatten() {
        match message {
            Message::Tar { payload, bytes } => {
                tar_hash.update(&bytes);
                tar_len += bytes.len() as u64;
                if payload {
                    crc.update(&bytes);
                    payload_len += bytes.len() as u64;
                } else if split.is_some() {
                    let mut rest = &bytes[..];
                    while !rest.is_empty() {
                        let room = MAX_SEGMENT - pending.len();
                        let (now, later) = rest.split_at(room.min(rest.len()));
                        pending.extend_from_slice(now);
                        rest = later;
                        if pending.len() == MAX_SEGMENT {
                            write(&mut split, &mut |w| w.segment(&pending));
                            pending.clear();
                        }
                    }
                }
            }
            Message::MemberStart => {
                write(&mut split, &mut |w| w.segment(&pending));
                pending.clear();
            }
            Message::MemberEnd { name } => {
                let sum = std::mem::take(&mut crc).finish();
                let len = std::mem::take(&mut payload_len);
                write(&mut split, &mut |w| {
                    w.file(&name, len, (len > 0).then_some(sum))
                });
            }
            Message::Compressed(bytes) => {
                saw_compressed = true;
                compressed_hash.update(&bytes);
                compressed_len += bytes.len() as u64;
            }
        }
    }
    write(&mut split, &mut |w| w.segment(&pending));
    Recorded {
        uncompressed: (
            Sha256Digest::from_bytes(tar_hash.finalize().into()),
            tar_len,
        ),
        compressed: saw_compressed.then(|| {
            (
                Sha256Digest::from_bytes(compressed_hash.finalize().into()),
                compressed_len,
            )
        }),
        record_error,
    }
}

pub fn channel() -> (SyncSender<Batch>, Receiver<Batch>) {
    sync_channel(CHANNEL_DEPTH)
}

/// The tar stream as the tar reader reads it, each chunk also sent to the
/// recording thread, marked as file data or not.
pub struct TarTap<R> {
    inner: RefCell<R>,
    out: Batcher,
    payload: Cell<bool>,
    /// Zero bytes at the end of what was read outside file data: at least a
    /// block of them means the end-of-archive marker was seen.
    trailing_zeros: Cell<u64>,
    /// Bytes of the real stream read so far.
    position: Cell<u64>,
    /// Bytes given to the tar reader so far, completion zeros included:
    /// where in the tar it is.
    consumed: Cell<u64>,
    /// When set, a stream that ends without its end-of-archive marker (or
    /// without the padding of its last member) is completed with zeros for
    /// the tar reader; the zeros are neither recorded nor digested.
    complete_at_eof: bool,
    /// Where the real stream ended, if it had to be completed.
    completed_at: Cell<Option<u64>>,
    filler: Cell<u64>,
}

fn gone() -> io::Error {
    io::Error::other("the recording thread stopped")
}

impl<R: Read> TarTap<R> {
    pub fn new(inner: R, tx: SyncSender<Batch>) -> Self {
        TarTap {
            inner: RefCell::new(inner),
            out: Batcher::new(tx),
            payload: Cell::new(false),
            trailing_zeros: Cell::new(0),
            position: Cell::new(0),
            consumed: Cell::new(0),
            complete_at_eof: false,
            completed_at: Cell::new(None),
            filler: Cell::new(0),
        }
    }

    /// Completes a stream that stops short of its end-of-archive marker; see
    /// [`completed_at`](Self::completed_at).
    pub fn complete_at_eof(mut self) -> Self {
        self.complete_at_eof = true;
        self
    }

    /// Where the real stream ended, when it ended without its end-of-archive
    /// marker and was completed.
    pub fn completed_at(&self) -> Option<u64> {
        self.completed_at.get()
    }

    pub fn member_start(&self) -> io::Result<()> {
        self.out.push(Message::MemberStart, 0)
    }

    pub fn member_end(&self, name: &[u8]) -> io::Result<()> {
        self.out.push(
            Message::MemberEnd {
                name: name.to_vec(),
            },
            name.len(),
        )
    }

    /// What is read from now on is a regular file's data.
    pub fn begin_payload(&self) {
        self.payload.set(true);
        self.trailing_zeros.set(0);
    }

    pub fn end_payload(&self) {
        self.payload.set(false);
    }

    /// Bytes given to the tar reader so far (zeros completing a stream
    /// included).
    pub fn consumed(&self) -> u64 {
        self.consumed.get()
    }

    pub fn saw_end_of_archive(&self) -> bool {
        self.trailing_zeros.get() >= 512
    }
}

impl<R: Read> Read for &TarTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.borrow_mut().read(buf)?;
        if n == 0 {
            if self.complete_at_eof
                && !self.saw_end_of_archive()
                && self.completed_at.get().is_none()
            {
                let at = self.position.get();
                self.completed_at.set(Some(at));
                self.filler.set((512 - at % 512) % 512 + 1024);
            }
            let fill = (self.filler.get() as usize).min(buf.len());
            buf[..fill].fill(0);
            self.filler.set(self.filler.get() - fill as u64);
            self.consumed.set(self.consumed.get() + fill as u64);
            return Ok(fill);
        }
        self.position.set(self.position.get() + n as u64);
        self.consumed.set(self.consumed.get() + n as u64);
        let bytes = &buf[..n];
        let payload = self.payload.get();
        if !payload {
            match bytes.iter().rposition(|b| *b != 0) {
                Some(last) => self.trailing_zeros.set((n - last - 1) as u64),
                None => self
                    .trailing_zeros
                    .set(self.trailing_zeros.get() + n as u64),
            }
        }
        self.out.push(
            Message::Tar {
                payload,
                bytes: bytes.to_vec(),
            },
            n,
        )?;
        Ok(n)
    }
}

/// The stream as given, sent to the recording thread when its first bytes say
/// it is compressed (for a plain tar, the tar's own digest serves for both).
pub struct CompressedTap<R> {
    inner: R,
    out: Batcher,
    /// `None` until decided: what was read so far is held back.
    sending: Option<bool>,
    held: Vec<u8>,
}

impl<R: Read> CompressedTap<R> {
    pub fn new(inner: R, tx: SyncSender<Batch>) -> Self {
        CompressedTap {
            inner,
            out: Batcher::new(tx),
            sending: None,
            held: Vec::new(),
        }
    }

    /// Decides, from the first bytes, whether the stream is compressed and so
    /// needs a digest of its own.
    fn decide(&mut self) -> io::Result<()> {
        let send = Compression::detect(&self.held) != Compression::None;
        self.sending = Some(send);
        let held = std::mem::take(&mut self.held);
        if send && !held.is_empty() {
            let len = held.len();
            self.out.push(Message::Compressed(held), len)?;
        }
        Ok(())
    }

    /// Reads the rest of the stream (bytes after the compressed data still
    /// belong to the blob's digest), refusing more than `limit` of them: a
    /// blob that goes on after its compressed stream is not a layer, and
    /// reading it to its end would let any blob cost any time.
    pub fn drain(&mut self, limit: u64) -> io::Result<()> {
        let read = io::copy(&mut self.by_ref().take(limit + 1), &mut io::sink())?;
        if read > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "more than {} of data after the end of the compressed stream",
                    super::members::human(limit)
                ),
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for CompressedTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.sending {
            None => {
                self.held.extend_from_slice(&buf[..n]);
                if self.held.len() >= MAGIC_LEN || n == 0 {
                    self.decide()?;
                }
            }
            Some(true) if n > 0 => self.out.push(Message::Compressed(buf[..n].to_vec()), n)?,
            Some(_) => {}
        }
        Ok(n)
    }
}
