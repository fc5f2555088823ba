//! The cursor saver: one thread that writes the streams' periodic cursor saves (each an
//! atomic file write with an fsync, or a broker commit), so the async workers never wait on a
//! disk. Each stream has at most one save in flight and looks at its result on a later tick;
//! a stream's last save at shutdown is made on its own thread after its save in flight ended.

use evmesh_store::{CursorState, PartitionLog};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// A save handed to the saver.
pub(crate) struct Pending {
    state: Mutex<Option<Result<CursorState, String>>>,
    ended: Condvar,
}

impl Pending {
    /// The result once the save ended: the state saved, or why it failed.
    pub(crate) fn result(&self) -> Option<Result<CursorState, String>> {
        self.state.lock().ok().and_then(|s| s.clone())
    }

    /// Waits (bounded) for the save to end.
    pub(crate) fn wait(&self, limit: Duration) -> Option<Result<CursorState, String>> {
        let guard = self.state.lock().ok()?;
        let (guard, _) = self
            .ended
            .wait_timeout_while(guard, limit, |s| s.is_none())
            .ok()?;
        guard.clone()
    }

    fn end(&self, r: Result<CursorState, String>) {
        if let Ok(mut s) = self.state.lock() {
            *s = Some(r);
        }
        self.ended.notify_all();
    }
}

type Job = (Arc<dyn PartitionLog>, CursorState, Arc<Pending>);

fn saver() -> Option<&'static Mutex<mpsc::Sender<Job>>> {
    static SAVER: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    SAVER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("evmesh-cursors".into())
                .spawn(move || {
                    for (log, state, pending) in rx {
                        let r = log
                            .save_cursor(&state)
                            .map(|()| state)
                            .map_err(|e| e.to_string());
                        pending.end(r);
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        })
        .as_ref()
}

/// Hands a cursor save to the saver thread (or makes it here if that thread could not start).
pub(crate) fn submit(log: Arc<dyn PartitionLog>, state: CursorState) -> Arc<Pending> {
    let pending = Arc::new(Pending {
        state: Mutex::new(None),
        ended: Condvar::new(),
    });
    let sent = saver()
        .and_then(|tx| tx.lock().ok())
        .map(|tx| {
            tx.send((log.clone(), state.clone(), pending.clone()))
                .is_ok()
        })
        .unwrap_or(false);
    if !sent {
        let r = log
            .save_cursor(&state)
            .map(|()| state)
            .map_err(|e| e.to_string());
        pending.end(r);
    }
    pending
}
