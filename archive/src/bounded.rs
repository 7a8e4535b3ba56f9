//! What an apply remembers about the paths it has seen, in memory that does
//! not grow with the layer past a fixed amount.
//!
//! An apply has to remember, for the whole stream, which paths the layer
//! made (so a later whiteout leaves them alone), which directories it hid,
//! which existing directories it wrote into (to restore their times), and
//! every directory it described (whose mode and times are set at the end,
//! once nothing more is written into them). Kept as paths, that is a few
//! hundred bytes per member, and a layer of millions of members would take
//! gigabytes.
//!
//! * [`PathSet`] keeps a 64-bit keyed hash of each path (SipHash with a key
//!   random per apply, so no layer can aim for a collision): 9 bytes a path.
//!   All sets of one apply share one [`PathBudget`] of
//!   [`MAX_TRACKED_PATHS`](crate::MAX_TRACKED_PATHS); a layer needing more is refused, naming the
//!   member where it ran out. With 1,500,000 paths the chance that two
//!   paths share a hash is about 6 in 100 million; if they did, a lower
//!   layer's file under a whiteout could survive.
//! * [`DirLog`] keeps directory records (path, mode, times) in memory up to
//!   a few thousand, then in an anonymous temporary file, read back once at
//!   the end (deepest first, when directory modes could stop an unprivileged
//!   process from reaching the ones below).

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{Timespec, Timestamps};

/// How many paths an apply's sets hold together, and the key they hash with.
#[derive(Clone)]
pub(crate) struct PathBudget {
    used: Rc<Cell<usize>>,
    limit: usize,
    hasher: RandomState,
}

impl PathBudget {
    pub(crate) fn new(limit: usize) -> PathBudget {
        PathBudget {
            used: Rc::new(Cell::new(0)),
            limit,
            hasher: RandomState::new(),
        }
    }
}

/// Over the budget: the layer tracks more paths than an apply may.
#[derive(Debug)]
pub(crate) struct OverBudget(usize);

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the layer makes or changes more than {} paths (members and the directories above them); strata applies at most that many, to keep memory bounded",
            self.0
        )
    }
}

/// A set of paths, kept as keyed 64-bit hashes.
pub(crate) struct PathSet {
    hashes: HashSet<u64, NoRehash>,
    budget: PathBudget,
}

impl PathSet {
    pub(crate) fn new(budget: &PathBudget) -> PathSet {
        PathSet {
            hashes: HashSet::with_hasher(NoRehash),
            budget: budget.clone(),
        }
    }

    fn key(&self, path: &Path) -> u64 {
        self.budget.hasher.hash_one(path)
    }

    pub(crate) fn contains(&self, path: &Path) -> bool {
        !self.hashes.is_empty() && self.hashes.contains(&self.key(path))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Adds `path`; whether it was new. Refused past the shared budget.
    pub(crate) fn insert(&mut self, path: &Path) -> Result<bool, OverBudget> {
        let key = self.key(path);
        if self.hashes.contains(&key) {
            return Ok(false);
        }
        let used = self.budget.used.get();
        if used >= self.budget.limit {
            return Err(OverBudget(self.budget.limit));
        }
        self.budget.used.set(used + 1);
        self.hashes.insert(key);
        Ok(true)
    }
}

/// The keys are hashes already: used as they are.
#[derive(Clone, Copy, Default)]
pub(crate) struct NoRehash;

impl BuildHasher for NoRehash {
    type Hasher = Identity;
    fn build_hasher(&self) -> Identity {
        Identity(0)
    }
}

pub(crate) struct Identity(u64);

impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; this is their fallback path.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// One directory's record: its path and, for a described directory, the
/// mode to give it; the times to give it.
#[derive(Clone, Debug)]
pub(crate) struct DirRecord {
    pub(crate) rel: PathBuf,
    pub(crate) mode: Option<u32>,
    pub(crate) times: Timestamps,
}

/// Records kept in memory before they go to the temporary file.
const IN_MEMORY: usize = 4096;

/// Directory records, in memory up to [`IN_MEMORY`], then in an anonymous
/// temporary file.
#[derive(Default)]
pub(crate) struct DirLog {
    memory: Vec<DirRecord>,
    file: Option<BufWriter<std::fs::File>>,
    /// How many records there are at each depth (components in the path).
    depths: BTreeMap<usize, usize>,
}

impl DirLog {
    pub(crate) fn push(&mut self, record: DirRecord) -> io::Result<()> {
        *self
            .depths
            .entry(record.rel.components().count())
            .or_default() += 1;
        self.memory.push(record);
        if self.memory.len() >= IN_MEMORY {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(BufWriter::with_capacity(1 << 16, tempfile::tempfile()?));
        }
        let file = self.file.as_mut().expect("made above");
        for record in self.memory.drain(..) {
            encode(file, &record)?;
        }
        Ok(())
    }

    /// Calls `f` on every record, in the order pushed, or deepest first
    /// (for each depth, in the order pushed) with `deepest_first`.
    pub(crate) fn replay(
        mut self,
        deepest_first: bool,
        mut f: impl FnMut(DirRecord) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(file) = self.file.take() else {
            // All in memory.
            let mut records = std::mem::take(&mut self.memory);
            if deepest_first {
                records.sort_by_key(|r| std::cmp::Reverse(r.rel.components().count()));
            }
            return records.into_iter().try_for_each(f);
        };
        self.file = Some(file);
        self.spill()?;
        let mut file = self
            .file
            .take()
            .expect("spilled above")
            .into_inner()
            .map_err(|e| e.into_error())?;
        let depths: Vec<Option<usize>> = if deepest_first {
            self.depths.keys().rev().map(|d| Some(*d)).collect()
        } else {
            vec![None]
        };
        // One pass over the file per depth: a few for real layers; bounded
        // memory whatever the layer.
        for depth in depths {
            file.rewind()?;
            let mut reader = BufReader::with_capacity(1 << 16, &mut file);
            while let Some(record) = decode(&mut reader)? {
                if depth.is_none_or(|d| record.rel.components().count() == d) {
                    f(record)?;
                }
            }
        }
        Ok(())
    }
}

fn encode(out: &mut impl Write, record: &DirRecord) -> io::Result<()> {
    let path = record.rel.as_os_str().as_bytes();
    out.write_all(&(path.len() as u32).to_le_bytes())?;
    out.write_all(path)?;
    out.write_all(&[u8::from(record.mode.is_some())])?;
    out.write_all(&record.mode.unwrap_or(0).to_le_bytes())?;
    for time in [&record.times.last_access, &record.times.last_modification] {
        out.write_all(&time.tv_sec.to_le_bytes())?;
        #[allow(clippy::unnecessary_cast)] // i32 on some targets
        out.write_all(&(time.tv_nsec as i64).to_le_bytes())?;
    }
    Ok(())
}

fn decode(input: &mut impl Read) -> io::Result<Option<DirRecord>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut path = vec![0u8; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut path)?;
    let mut fixed = [0u8; 1 + 4 + 32];
    input.read_exact(&mut fixed)?;
    let word = |at: usize| i64::from_le_bytes(fixed[at..at + 8].try_into().expect("8 bytes"));
    let time = |at: usize| Timespec {
        tv_sec: word(at),
        tv_nsec: word(at + 8) as _,
    };
    Ok(Some(DirRecord {
        rel: PathBuf::from(std::ffi::OsStr::from_bytes(&path)),
        mode: (fixed[0] == 1).then(|| u32::from_le_bytes(fixed[1..5].try_into().expect("4 bytes"))),
        times: Timestamps {
            last_access: time(5),
            last_modification: time(21),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_TRACKED_PATHS;

    fn record(rel: &str, n: i64) -> DirRecord {
        DirRecord {
            rel: PathBuf::from(rel),
            mode: (n % 2 == 0).then_some(0o755),
            times: Timestamps {
                last_access: Timespec {
                    tv_sec: n,
                    tv_nsec: 1,
                },
                last_modification: Timespec {
                    tv_sec: -n,
                    tv_nsec: 999_999_999,
                },
            },
        }
    }

    #[test]
    fn sets_share_one_budget() {
        let budget = PathBudget::new(MAX_TRACKED_PATHS);
        let mut a = PathSet::new(&budget);
        let mut b = PathSet::new(&budget);
        assert!(a.insert(Path::new("x/y")).unwrap());
        assert!(!a.insert(Path::new("x/y")).unwrap());
        assert!(a.contains(Path::new("x/y")));
        assert!(!a.contains(Path::new("x")));
        assert!(b.insert(Path::new("x/y")).unwrap());
        assert_eq!(budget.used.get(), 2);
        budget.used.set(MAX_TRACKED_PATHS);
        assert!(a.insert(Path::new("z")).is_err());
        assert!(
            !a.insert(Path::new("x/y")).unwrap(),
            "a known path costs nothing"
        );
    }

    #[test]
    fn records_come_back_in_order_or_deepest_first_from_memory_or_file() {
        for count in [10, IN_MEMORY * 2 + 7] {
            let mut log = DirLog::default();
            let mut pushed = Vec::new();
            for n in 0..count as i64 {
                let rel = "d/".repeat((n % 5) as usize + 1) + &n.to_string();
                pushed.push(record(&rel, n));
                log.push(record(&rel, n)).unwrap();
            }
            assert_eq!(log.file.is_some(), count > IN_MEMORY);
            let mut seen = Vec::new();
            log.replay(false, |r| {
                seen.push(r);
                Ok(())
            })
            .unwrap();
            let key = |r: &DirRecord| {
                (
                    r.rel.clone(),
                    r.mode,
                    r.times.last_access.tv_sec,
                    r.times.last_access.tv_nsec,
                    r.times.last_modification.tv_sec,
                    r.times.last_modification.tv_nsec,
                )
            };
            assert_eq!(
                seen.iter().map(key).collect::<Vec<_>>(),
                pushed.iter().map(key).collect::<Vec<_>>()
            );
            let mut log = DirLog::default();
            for r in &pushed {
                log.push(r.clone()).unwrap();
            }
            let mut depths = Vec::new();
            log.replay(true, |r| {
                depths.push(r.rel.components().count());
                Ok(())
            })
            .unwrap();
            assert_eq!(depths.len(), count);
            assert!(depths.windows(2).all(|w| w[0] >= w[1]), "deepest first");
        }
    }
}
