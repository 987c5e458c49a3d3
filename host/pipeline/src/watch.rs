//! Hot reload: the plugin directory watched for changes.
//!
//! Editors save by writing a temporary file and renaming it over the old
//! one; copies land in several writes. Only `<name>.wasm` paths count, and
//! a name is reloaded once its events have been quiet for [`SETTLE`], so
//! one save is one reload. A half-written file that slips through fails
//! validation and leaves the old version serving; the write's next event
//! loads it again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::registry::plugin_name;
use crate::{CANARY_DIR, PipelineError, PluginHost};

/// Quiet time after a file's last event before it is loaded.
pub const SETTLE: Duration = Duration::from_millis(30);

/// Watches the plugin directory until dropped.
pub struct DirWatcher {
    watcher: Option<notify::RecommendedWatcher>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DirWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatcher").finish_non_exhaustive()
    }
}

enum Event {
    Changed(PathBuf),
    /// Events were lost (the kernel's queue overflowed): look at every file.
    Rescan,
    Failed(String),
}

/// Opening or reading a file is an event too (inotify's open, access and
/// close-after-read): without this, loading a plugin would trigger its own
/// reload. A close after writing is kept: it says a writer finished.
fn is_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(kind, EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)))
        || matches!(kind, EventKind::Access(AccessKind::Any | AccessKind::Other))
}

impl PluginHost {
    /// Starts reloading plugins when their files in the plugin directory
    /// change. The watcher holds the host weakly: it stops with it.
    pub fn watch(self: &Arc<Self>) -> Result<DirWatcher, PipelineError> {
        let dir = self.dir.clone().ok_or(PipelineError::NoPluginDir)?;
        let (tx, rx) = mpsc::channel();
        let tx_rescan = tx.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let _ = match event {
                Ok(event) if event.need_rescan() => tx.send(Event::Rescan),
                Ok(event) if is_read(&event.kind) => Ok(()),
                Ok(event) => event.paths.into_iter().try_for_each(|p| tx.send(Event::Changed(p))),
                Err(e) => tx.send(Event::Failed(e.to_string())),
            };
        })
        .map_err(|e| PipelineError::Io(format!("watching {}: {e}", dir.display())))?;
        for watched in [dir.clone(), dir.join(CANARY_DIR)] {
            watcher
                .watch(&watched, RecursiveMode::NonRecursive)
                .map_err(|e| PipelineError::Io(format!("watching {}: {e}", watched.display())))?;
        }
        // Files that changed between loading the directory and watching it.
        let _ = tx_rescan.send(Event::Rescan);
        let host = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("kiln-plugin-watch".into())
            .spawn(move || settle_and_reload(&host, &dir, &rx))
            .map_err(|e| PipelineError::Io(format!("starting the plugin watcher: {e}")))?;
        Ok(DirWatcher { watcher: Some(watcher), thread: Some(thread) })
    }
}

/// A plugin file that changed: its name, and whether it is in `canary/`.
type Changed = (String, bool);

/// The plugin file a path is, stable or canary.
fn changed_file(dir: &std::path::Path, path: &std::path::Path) -> Option<Changed> {
    match plugin_name(dir, path) {
        Some(name) => Some((name, false)),
        None => plugin_name(&dir.join(CANARY_DIR), path).map(|name| (name, true)),
    }
}

/// Collects changed names; reloads each once it has settled.
fn settle_and_reload(host: &Weak<PluginHost>, dir: &std::path::Path, events: &mpsc::Receiver<Event>) {
    let mut pending: BTreeMap<Changed, Instant> = BTreeMap::new();
    loop {
        let wait = pending.values().map(|last| (*last + SETTLE).saturating_duration_since(Instant::now())).min();
        match events.recv_timeout(wait.unwrap_or(Duration::from_secs(3600))) {
            Ok(Event::Changed(path)) => {
                if let Some(changed) = changed_file(dir, &path) {
                    pending.insert(changed, Instant::now());
                }
            }
            Ok(Event::Rescan) => {
                let Some(host) = host.upgrade() else { return };
                let stable = host.dir_plugins().map(|names| names.into_iter().map(|n| (n, false)).collect::<Vec<_>>());
                let canaries = host.canary_plugins().map(|names| names.into_iter().map(|n| (n, true)).collect());
                match stable.and_then(|s| canaries.map(|c: Vec<_>| [s, c].concat())) {
                    Ok(changed) => {
                        for file in changed {
                            pending.insert(file, Instant::now());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "rescanning the plugin directory"),
                }
            }
            Ok(Event::Failed(e)) => tracing::warn!(error = %e, "plugin directory watcher"),
            Err(RecvTimeoutError::Timeout) => {}
            // The watcher was dropped.
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let settled: Vec<Changed> =
            pending.iter().filter(|(_, last)| last.elapsed() >= SETTLE).map(|(n, _)| n.clone()).collect();
        for file in settled {
            pending.remove(&file);
            let Some(host) = host.upgrade() else { return };
            // Failures are logged and recorded on the plugin's entry.
            let _ = match file {
                (name, false) => host.sync_file(&name),
                (name, true) => host.sync_canary_file(&name).inspect_err(|e| {
                    tracing::warn!(plugin = name, error = %e, "canary file not loaded");
                }),
            };
        }
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        // Dropping the watcher closes the channel, which ends the thread.
        drop(self.watcher.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
