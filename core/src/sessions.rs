//! Sessions: how one process tells whether another is still at work.
//!
//! A store that starts a change the records cannot finish in one
//! transaction (making a layer, importing an image) first takes a session: a
//! file in `<graphroot>/<driver>-sessions/` under a random name, locked
//! (flock; LockFileEx on Windows) for as long as the store is open. The rows such a change leaves
//! part done carry the session's name. A session whose file nobody holds
//! belongs to a process that died: its rows are leftovers the next process
//! finishes or undoes. Locks, not process ids, say who is alive, so a
//! process in another pid namespace, or a reused pid, is never mistaken.
//!
//! A session file is locked under a temporary name (`.<name>`) and renamed
//! into place, so nobody ever sees the real name unlocked while its process
//! lives.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::db::random_id;
use crate::error::{CoreError, Result};
use crate::fsutil::{FileLock, TryExisting};

/// The sessions of one graph root and driver, and this store's own.
pub(crate) struct Sessions {
    dir: PathBuf,
    own: Mutex<Option<Arc<Session>>>,
}

struct Session {
    name: String,
    path: PathBuf,
    _lock: FileLock,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Its changes are all finished or undone by now (each one's own
        // failure path runs before the store goes); a change whose undoing
        // failed leaves rows naming a session that no longer exists, which
        // counts as dead.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A dead process's session, locked by whoever found it, so that one
/// process alone collects it.
pub(crate) struct DeadSession {
    pub(crate) name: String,
    path: PathBuf,
    _lock: FileLock,
}

impl DeadSession {
    /// Removes the session file: everything its rows left is collected.
    pub(crate) fn retire(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a session file's lock says.
enum Holder {
    Missing,
    Alive,
    Dead(FileLock),
}

fn probe(path: &Path) -> Result<Holder> {
    match FileLock::try_exclusive_existing(path) {
        Ok(TryExisting::Missing) => Ok(Holder::Missing),
        Ok(TryExisting::Held) => Ok(Holder::Alive),
        Ok(TryExisting::Taken(lock)) => Ok(Holder::Dead(lock)),
        Err(e) => Err(CoreError::io("lock", path, e)),
    }
}

impl Sessions {
    pub(crate) fn open(graphroot: &Path, driver_name: &str) -> Sessions {
        Sessions {
            dir: graphroot.join(format!("{driver_name}-sessions")),
            own: Mutex::new(None),
        }
    }

    /// This store's session, taken the first time it is needed.
    pub(crate) fn own(&self) -> Result<String> {
        let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(session) = own.as_ref() {
            return Ok(session.name.clone());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| CoreError::io("create", &self.dir, e))?;
        // Another process's collection may find the temporary file in the
        // instant between its creation and its lock, take it for a dead
        // one's and delete it: the rename then finds nothing, and we start
        // again under a new name.
        let mut attempt = 0;
        let session = loop {
            attempt += 1;
            let name = random_id()?[..32].to_string();
            let temp = self.dir.join(format!(".{name}"));
            let lock = FileLock::exclusive(&temp).map_err(|e| CoreError::io("lock", &temp, e))?;
            let path = self.dir.join(&name);
            match std::fs::rename(&temp, &path) {
                Ok(()) => {
                    break Session {
                        name,
                        path,
                        _lock: lock,
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 4 => continue,
                Err(e) => return Err(CoreError::io("create", &path, e)),
            }
        };
        let name = session.name.clone();
        *own = Some(Arc::new(session));
        Ok(name)
    }

    /// Whether session `name`'s process is alive (this store's own is).
    pub(crate) fn is_alive(&self, name: &str) -> Result<bool> {
        if self
            .own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|s| s.name == name)
        {
            return Ok(true);
        }
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Ok(false);
        }
        Ok(matches!(probe(&self.dir.join(name))?, Holder::Alive))
    }

    /// The sessions whose processes died, each locked for the caller;
    /// temporary files nobody holds are removed on the way.
    pub(crate) fn dead(&self) -> Result<Vec<DeadSession>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CoreError::io("read", &self.dir, e)),
        };
        let mut dead = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let Holder::Dead(lock) = probe(&path)? else {
                continue;
            };
            if name.starts_with('.') {
                // A session being taken whose process died before the
                // rename: no row names it.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            dead.push(DeadSession {
                name,
                path,
                _lock: lock,
            });
        }
        Ok(dead)
    }

    #[cfg(test)]
    fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_session_is_alive_and_a_released_one_is_dead() {
        let dir = tempfile::tempdir().unwrap();
        let a = Sessions::open(dir.path(), "vfs");
        let b = Sessions::open(dir.path(), "vfs");
        let name = a.own().unwrap();
        assert_eq!(a.own().unwrap(), name, "one session per store");
        assert!(a.is_alive(&name).unwrap());
        assert!(b.is_alive(&name).unwrap());
        assert!(b.dead().unwrap().is_empty());
        assert!(!b.is_alive("0123").unwrap(), "a missing session is dead");
        // A session file nobody holds: its process died.
        std::fs::write(a.dir().join("feed"), b"").unwrap();
        assert!(!b.is_alive("feed").unwrap());
        let dead = b.dead().unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].name, "feed");
        dead.into_iter().for_each(DeadSession::retire);
        assert!(!a.dir().join("feed").exists());
        drop(a);
        assert!(!b.is_alive(&name).unwrap());
    }
}
