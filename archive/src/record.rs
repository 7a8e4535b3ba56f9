//! The second half of an apply, on its own thread: hashing both streams
//! (sha256), checksumming file data (CRC-64) and writing the tar-split
//! record, while the applying thread parses the tar and writes files. The two
//! meet through a bounded channel, so memory stays bounded whatever the layer's
//! size.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::compression::{Compression, MAGIC_LEN};
use super::digest::Sha256Digest;
use super::tarsplit::{Crc64, TarSplitWriter};

/// Batches in flight at most.
const CHANNEL_DEPTH: usize = 16;
/// A batch goes when it holds this many bytes or messages: small members
/// would otherwise cost a thread wake-up each.
const BATCH_BYTES: usize = 512 * 1024;
const BATCH_MESSAGES: usize = 4096;
/// The most one read adds to a batch past `BATCH_BYTES` (the applier reads
/// in chunks of at most this).
const MAX_READ: usize = 256 * 1024;
/// The most stream bytes one tar-split segment holds. Everything between
/// two regular files' data (headers, padding, other members' data, what
/// follows the archive) is recorded, and a stream can put any amount there:
/// it goes out in segments of this size instead of being gathered whole.
/// Consecutive segments are simply written back one after the other.
const MAX_SEGMENT: usize = 256 * 1024;

/// One thing the applying thread tells the recording thread; the bytes a
/// message carries are in its batch's byte buffer, in order.
#[derive(Clone, Copy, Debug)]
enum Message {
    /// `len` bytes of the tar stream; `payload` when they are a regular
    /// file's data.
    Tar { payload: bool, len: usize },
    /// A member begins (its headers have been read): what was read since the
    /// last member is one segment of the record.
    MemberStart,
    /// A member ends; the file data read since its start belongs to the name
    /// held in the next `name_len` bytes.
    MemberEnd { name_len: usize },
    /// `len` bytes of the stream as given (before decompression).
    Compressed { len: usize },
}

/// What the recording thread computed.
pub struct Recorded {
    /// Digest and length of the tar.
    pub uncompressed: (Sha256Digest, u64),
    /// `None` when the compressed bytes were not sent (a plain tar: the two
    /// digests are the same).
    pub compressed: Option<(Sha256Digest, u64)>,
    /// Why the tar-split record could not be written, if it could not.
    pub record_error: Option<io::Error>,
}

/// Messages and the bytes they carry, sent together: two buffers a batch
/// however many members it holds, and both come back to the senders for
/// reuse (see [`Pool`]), so neither thread allocates per member nor frees
/// what the other allocated (glibc's arena lock made that cost a thread
/// switch every few members).
#[derive(Default)]
pub struct Batch {
    bytes: Vec<u8>,
    messages: Vec<Message>,
}

/// Emptied batches, handed back by the recording thread.
type Pool = Arc<Mutex<Vec<Batch>>>;

/// The applying side of the channel to the recording thread; cloned for
/// each tap.
#[derive(Clone)]
pub struct Sender {
    tx: SyncSender<Batch>,
    pool: Pool,
}

/// The recording side of the channel.
pub struct Receiving {
    rx: Receiver<Batch>,
    pool: Pool,
}

/// Collects messages and sends them in batches.
pub struct Batcher {
    link: Sender,
    batch: RefCell<Batch>,
}

impl Batcher {
    fn new(link: Sender) -> Self {
        let batch = RefCell::new(Batch::default());
        Batcher { link, batch }
    }

    fn push(&self, message: Message, bytes: &[u8]) -> io::Result<()> {
        let full = {
            let mut batch = self.batch.borrow_mut();
            batch.messages.push(message);
            batch.bytes.extend_from_slice(bytes);
            batch.messages.len() >= BATCH_MESSAGES || batch.bytes.len() >= BATCH_BYTES
        };
        if full { self.flush() } else { Ok(()) }
    }

    fn flush(&self) -> io::Result<()> {
        if self.batch.borrow().messages.is_empty() {
            return Ok(());
        }
        let reused = self.link.pool.lock().ok().and_then(|mut pool| pool.pop());
        let empty = reused.unwrap_or_else(|| Batch {
            bytes: Vec::with_capacity(BATCH_BYTES + MAX_READ),
            messages: Vec::with_capacity(BATCH_MESSAGES),
        });
        let batch = std::mem::replace(&mut *self.batch.borrow_mut(), empty);
        self.link.tx.send(batch).map_err(|_| gone())
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Runs on the recording thread until every sender is gone.
pub fn record(rx: Receiving, tar_split: Option<&mut (dyn Write + Send)>) -> Recorded {
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
    for mut batch in rx.rx.iter() {
        let mut at = 0;
        for message in batch.messages.iter().copied() {
            let mut take = |len: usize| {
                let taken = &batch.bytes[at..at + len];
                at += len;
                taken
            };
            match message {
                Message::Tar { payload, len } => {
                    let bytes = take(len);
                    tar_hash.update(bytes);
                    tar_len += bytes.len() as u64;
                    if payload {
                        crc.update(bytes);
                        payload_len += bytes.len() as u64;
                    } else if split.is_some() {
                        let mut rest = bytes;
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
                Message::MemberEnd { name_len } => {
                    let name = take(name_len);
                    let sum = std::mem::take(&mut crc).finish();
                    let len = std::mem::take(&mut payload_len);
                    write(&mut split, &mut |w| {
                        w.file(name, len, (len > 0).then_some(sum))
                    });
                }
                Message::Compressed { len } => {
                    let bytes = take(len);
                    saw_compressed = true;
                    compressed_hash.update(bytes);
                    compressed_len += bytes.len() as u64;
                }
            }
        }
        // Back to the senders, emptied, unless they hold enough already.
        batch.bytes.clear();
        batch.messages.clear();
        if let Ok(mut pool) = rx.pool.lock()
            && pool.len() < CHANNEL_DEPTH + 2
        {
            pool.push(batch);
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

/// The channel from the applying thread (and the decompressing one) to the
/// recording thread.
pub fn channel() -> (Sender, Receiving) {
    let (tx, rx) = sync_channel(CHANNEL_DEPTH);
    let pool = Pool::default();
    (
        Sender {
            tx,
            pool: pool.clone(),
        },
        Receiving { rx, pool },
    )
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
    pub fn new(inner: R, tx: Sender) -> Self {
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
        self.out.push(Message::MemberStart, &[])
    }

    pub fn member_end(&self, name: &[u8]) -> io::Result<()> {
        self.out.push(
            Message::MemberEnd {
                name_len: name.len(),
            },
            name,
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
        self.out.push(Message::Tar { payload, len: n }, bytes)?;
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
    pub fn new(inner: R, tx: Sender) -> Self {
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
            self.out
                .push(Message::Compressed { len: held.len() }, &held)?;
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
                    crate::human(limit)
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
            Some(true) if n > 0 => self.out.push(Message::Compressed { len: n }, &buf[..n])?,
            Some(_) => {}
        }
        Ok(n)
    }
}
