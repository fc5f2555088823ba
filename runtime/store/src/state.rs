//! Small state files beside the events: subscription cursors and the subscriptions created
//! through the admin API. Every file is replaced atomically (write, fsync, rename).

use crate::{CursorState, StoreError};
use evmesh_core::config::SubscriptionConfig;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// ```text
/// <dir>/subscriptions/<name>/<topic>.cursor.json
/// <dir>/subscriptions.json
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

    fn cursor_path(&self, sub: &str, topic: &str) -> PathBuf {
        self.dir
            .join("subscriptions")
            .join(sub)
            .join(format!("{topic}.cursor.json"))
    }

    pub fn load_cursor(&self, sub: &str, topic: &str) -> Result<Option<CursorState>, StoreError> {
        read_json(&self.cursor_path(sub, topic))
    }

    pub fn save_cursor(
        &self,
        sub: &str,
        topic: &str,
        state: &CursorState,
    ) -> Result<(), StoreError> {
        let path = self.cursor_path(sub, topic);
        let bytes = serde_json::to_vec(state).map_err(|e| StoreError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let _g = self.lock.lock().map_err(|_| crate::lock_poisoned())?;
        write_atomic(&path, &bytes)
    }

    pub fn delete_subscription(&self, sub: &str) -> Result<(), StoreError> {
        let dir = self.dir.join("subscriptions").join(sub);
        let _g = self.lock.lock().map_err(|_| crate::lock_poisoned())?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("removing {}", dir.display()), e)),
        }
    }

    pub fn load_api_subscriptions(&self) -> Result<Vec<SubscriptionConfig>, StoreError> {
        Ok(read_json(&self.dir.join("subscriptions.json"))?.unwrap_or_default())
    }

    pub fn save_api_subscriptions(&self, subs: &[SubscriptionConfig]) -> Result<(), StoreError> {
        let path = self.dir.join("subscriptions.json");
        let bytes = serde_json::to_vec_pretty(subs).map_err(|e| StoreError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let _g = self.lock.lock().map_err(|_| crate::lock_poisoned())?;
        write_atomic(&path, &bytes)
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
