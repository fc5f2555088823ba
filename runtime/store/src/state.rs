//! The state store in files beside the events: consumers' cursors and the documents the
//! runtime keeps (the subscriptions created through the admin API). Every file is replaced
//! atomically (write, fsync, rename).

use crate::{CursorState, StateStore, StoreError};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// ```text
/// <dir>/subscriptions/<consumer>/<topic>.cursor.json
/// <dir>/<document>                      (subscriptions.json: the API-made subscriptions)
/// ```
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    /// Serializes writes.
    lock: Mutex<()>,
}

impl StateDir {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let subs = dir.join("subscriptions");
        fs::create_dir_all(&subs)
            .map_err(|e| StoreError::io(format!("creating {}", subs.display()), e))?;
        Ok(StateDir {
            dir: dir.to_owned(),
            lock: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn cursor_path(&self, sub: &str, topic: &str) -> Result<PathBuf, StoreError> {
        safe_component(sub)?;
        safe_component(topic)?;
        Ok(self
            .dir
            .join("subscriptions")
            .join(sub)
            .join(format!("{topic}.cursor.json")))
    }
}

impl StateStore for StateDir {
    fn load_cursor(&self, sub: &str, topic: &str) -> Result<Option<CursorState>, StoreError> {
        read_json(&self.cursor_path(sub, topic)?)
    }

    /// Every saved cursor: `(subscription, topic, committed)`. Unreadable files are skipped
    /// (fsck reports them).
    fn cursors(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        let Ok(subs) = fs::read_dir(self.dir.join("subscriptions")) else {
            return out;
        };
        for sub in subs.flatten() {
            let name = sub.file_name().to_string_lossy().into_owned();
            for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                let fname = f.file_name().to_string_lossy().into_owned();
                let Some(topic) = fname.strip_suffix(".cursor.json") else {
                    continue;
                };
                if let Ok(Some(c)) = read_json::<CursorState>(&f.path()) {
                    out.push((name.clone(), topic.to_owned(), c.committed));
                }
            }
        }
        out
    }

    fn save_cursor(&self, sub: &str, topic: &str, state: &CursorState) -> Result<(), StoreError> {
        let path = self.cursor_path(sub, topic)?;
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let _g = self.lock.lock().map_err(|_| crate::lock_poisoned())?;
        write_atomic(&path, &bytes)
    }

    fn delete_consumer(&self, sub: &str) -> Result<(), StoreError> {
        safe_component(sub)?;
        let dir = self.dir.join("subscriptions").join(sub);
        let _g = self.lock.lock().map_err(|_| crate::lock_poisoned())?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("removing {}", dir.display()), e)),
        }
    }

    fn load_document(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        safe_component(name)?;
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
    }

    fn save_document(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        safe_component(name)?;
        let _g = self.lock.lock().map_err(|_| crate::lock_poisoned())?;
        write_atomic(&self.dir.join(name), bytes)
    }
}

/// Refuses a name that is not safe as one path component, whatever checked it before: state
/// files are derived from names, and no name may reach outside its own folder.
pub fn safe_component(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b'\\' || b == 0);
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_owned()))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StoreError::State {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f =
        File::create(&tmp).map_err(|e| StoreError::io(format!("creating {}", tmp.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| StoreError::io(format!("writing {}", tmp.display()), e))?;
    f.sync_data()
        .map_err(|e| StoreError::io(format!("syncing {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| StoreError::io(format!("renaming {}", tmp.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_their_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        for bad in ["", ".", "..", "a/b", "../x", "a\\b"] {
            assert!(state.delete_consumer(bad).is_err(), "{bad:?}");
            assert!(state.load_cursor(bad, "t").is_err(), "{bad:?}");
            assert!(state.load_cursor("s", bad).is_err(), "{bad:?}");
        }
        // Nothing was removed: the state folder is still there.
        assert!(dir.path().join("subscriptions").is_dir());
        assert!(state.delete_consumer("ok.name").is_ok());
        state.save_document("doc.json", b"[1]").unwrap();
        assert_eq!(state.load_document("doc.json").unwrap().unwrap(), b"[1]");
        assert!(state.load_document("../x").is_err());
    }
}
