//! The plugin set: built-in plugins, files from the plugin directory and
//! uploads, each swapped whole when a new version validates.
//!
//! Requests read the current set without a lock (`ArcSwap`) and keep the
//! plugin versions they started with; reloads are serialised by a mutex and
//! never touch the request path. A version that fails to load leaves the
//! previous one serving and is reported on its entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use kiln_plugins::{Loaded, PluginInfo, Runtime};
use sha2::{Digest, Sha256};

use crate::config::check_name;
use crate::rollout::{CANARY_DIR, Canary, Rollback};
use crate::{PipelineError, PluginHost};

/// The plugins built into the binary, by the name pipelines use.
pub(crate) const BUILT_IN: &[(&str, &[u8])] = &[
    ("chat-template", kiln_plugins::first_party::CHAT_TEMPLATE),
    ("default-sampler", kiln_plugins::first_party::DEFAULT_SAMPLER),
    ("json-mode", kiln_plugins::first_party::JSON_MODE),
    ("json-schema", kiln_plugins::first_party::JSON_SCHEMA),
    ("stop-sequences", kiln_plugins::first_party::STOP_SEQUENCES),
    ("redact", kiln_plugins::first_party::REDACT),
    ("tool-calls", kiln_plugins::first_party::TOOL_CALLS),
];

/// Where a plugin version came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    BuiltIn,
    /// A file in the plugin directory.
    File(PathBuf),
    /// Uploaded through the admin API, with no plugin directory to keep it in.
    Upload,
}

/// One plugin name: the version serving it and how its last load went.
#[derive(Clone, Debug)]
pub struct PluginEntry {
    pub name: String,
    /// `None` only for a name whose every load failed (no pipeline uses it).
    pub loaded: Option<Loaded>,
    pub source: Source,
    /// When the serving version was loaded.
    pub loaded_at: SystemTime,
    /// Why the latest attempt to load a new version failed; cleared by the
    /// next successful load.
    pub last_error: Option<LoadError>,
    /// Versions swapped in after the first.
    pub reloads: u64,
    /// New versions refused (each refused file counted once).
    pub failed_reloads: u64,
    /// Calls into the versions this one replaced, so totals never go back.
    pub retired: kiln_plugins::MetricsSnapshot,
    /// A new version serving part of the requests, while one rolls out.
    pub canary: Option<Canary>,
    /// The last canary dropped, by hand or automatically.
    pub last_rollback: Option<Rollback>,
    /// Canaries dropped since start.
    pub rollbacks: u64,
}

impl PluginEntry {
    pub fn info(&self) -> Option<&PluginInfo> {
        self.loaded.as_ref().map(Loaded::info)
    }

    /// Calls into every version of this name since start, a canary's too.
    pub fn total_metrics(&self) -> kiln_plugins::MetricsSnapshot {
        let stable = self.loaded.as_ref().map(Loaded::metrics).unwrap_or_default();
        self.retired + stable + self.canary.as_ref().map(|c| c.loaded.metrics()).unwrap_or_default()
    }
}

/// A version that did not load.
#[derive(Clone, Debug)]
pub struct LoadError {
    pub at: SystemTime,
    pub message: String,
    /// The refused file's sha256 (the same bytes are not tried twice).
    pub sha256: String,
}

pub(crate) type Entries = BTreeMap<String, Arc<PluginEntry>>;

/// The set of plugins and the lock that orders changes to it.
pub(crate) struct Registry {
    pub current: ArcSwap<Entries>,
    /// Held while a change is compiled and swapped in.
    pub writer: Mutex<()>,
    pub builtins: BTreeMap<String, Loaded>,
}

impl Registry {
    pub fn new(runtime: &Runtime) -> Result<Registry, PipelineError> {
        let mut builtins = BTreeMap::new();
        let mut entries = Entries::new();
        for (name, bytes) in BUILT_IN {
            let loaded = runtime.load_bytes(&format!("{name} (built in)"), bytes)?;
            entries.insert(name.to_string(), Arc::new(entry(name, Some(loaded.clone()), Source::BuiltIn)));
            builtins.insert(name.to_string(), loaded);
        }
        Ok(Registry { current: ArcSwap::from_pointee(entries), writer: Mutex::new(()), builtins })
    }
}

fn entry(name: &str, loaded: Option<Loaded>, source: Source) -> PluginEntry {
    PluginEntry {
        name: name.into(),
        loaded,
        source,
        loaded_at: SystemTime::now(),
        last_error: None,
        reloads: 0,
        failed_reloads: 0,
        retired: kiln_plugins::MetricsSnapshot::default(),
        canary: None,
        last_rollback: None,
        rollbacks: 0,
    }
}

impl PluginHost {
    /// Every plugin name, in order.
    pub fn plugins(&self) -> Vec<Arc<PluginEntry>> {
        self.registry.current.load().values().cloned().collect()
    }

    pub fn plugin(&self, name: &str) -> Option<Arc<PluginEntry>> {
        self.registry.current.load().get(name).cloned()
    }

    /// Brings `name` in line with `<dir>/<name>.wasm`: loads a changed file,
    /// drops the plugin of a file that is gone (back to the built-in of that
    /// name, if any). What the watcher calls after a change settles.
    pub fn sync_file(&self, name: &str) -> Result<Arc<PluginEntry>, PipelineError> {
        self.sync(name, false)
    }

    /// `retry`: load the file even if these very bytes were refused before
    /// (a smoke call may have timed out on a busy machine).
    fn sync(&self, name: &str, retry: bool) -> Result<Arc<PluginEntry>, PipelineError> {
        check_name(name).map_err(PipelineError::InvalidName)?;
        let path = self.file_of(name).ok_or(PipelineError::NoPluginDir)?;
        let _writer = self.lock_writer();
        match std::fs::read(&path) {
            Ok(bytes) => self.swap_in(name, &bytes, Source::File(path), retry),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.forget_file(name),
            Err(e) => Err(self.record_failure(name, format!("cannot read {}: {e}", path.display()), String::new())),
        }
    }

    /// Installs an uploaded component as `name`, keeping it in the plugin
    /// directory when there is one (so it survives a restart).
    pub fn install(&self, name: &str, bytes: &[u8]) -> Result<Arc<PluginEntry>, PipelineError> {
        check_name(name).map_err(PipelineError::InvalidName)?;
        let _writer = self.lock_writer();
        if let Some(entry) = self.unchanged(name, bytes) {
            return Ok(entry);
        }
        let loaded = self.validate(name, bytes).map_err(|e| self.upload_failed(name, e))?;
        let source = persist(self.file_of(name), bytes)?;
        Ok(self.publish(name, loaded, source))
    }

    /// Loads `name` from `<dir>/<name>.wasm` now (a new file too; the same
    /// bytes again if they were refused before). Without a file, a built-in
    /// or uploaded plugin is reported as it is.
    pub fn reload(&self, name: &str) -> Result<Arc<PluginEntry>, PipelineError> {
        check_name(name).map_err(PipelineError::InvalidName)?;
        let entry = self.plugin(name);
        let has_file = self.file_of(name).is_some_and(|p| p.exists());
        match entry {
            _ if has_file => self.sync(name, true),
            Some(entry) if matches!(entry.source, Source::File(_)) => self.sync(name, true),
            Some(entry) => Ok(entry),
            None => Err(PipelineError::UnknownPlugin(name.into())),
        }
    }

    /// Removes an uploaded or file plugin (and its file). A built-in name goes
    /// back to the built-in; a name a pipeline needs cannot go.
    pub fn remove(&self, name: &str) -> Result<Option<Arc<PluginEntry>>, PipelineError> {
        let _writer = self.lock_writer();
        let entry = self.plugin(name).ok_or_else(|| PipelineError::UnknownPlugin(name.into()))?;
        if entry.source == Source::BuiltIn {
            return Err(PipelineError::Conflict(format!("{name} is built in and cannot be removed")));
        }
        if entry.canary.is_some() {
            return Err(PipelineError::Conflict(format!("{name} has a canary: promote it or roll it back first")));
        }
        if let Some(pipeline) = self.stranded_by_removal(name) {
            return Err(PipelineError::Conflict(format!(
                "pipeline {pipeline:?} uses {name}, and nothing of the kind it needs would remain"
            )));
        }
        if let Source::File(path) = &entry.source {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PipelineError::Io(format!("{}: {e}", path.display()))),
            }
        }
        Ok(self.drop_version(name))
    }

    pub(crate) fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock left no half-made change: the set
        // is only ever replaced whole.
        self.registry.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn file_of(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|dir| dir.join(format!("{name}.wasm")))
    }

    /// The current entry, when `bytes` are the version it already serves.
    fn unchanged(&self, name: &str, bytes: &[u8]) -> Option<Arc<PluginEntry>> {
        let entry = self.plugin(name)?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        (entry.info()?.sha256 == sha256 && entry.last_error.is_none()).then_some(entry)
    }

    /// Compiles, validates (world, exports, a smoke call) and checks the kind
    /// against every pipeline using the name.
    pub(crate) fn validate(&self, name: &str, bytes: &[u8]) -> Result<Loaded, PipelineError> {
        let loaded = self.runtime.load_bytes(name, bytes)?;
        if let Some((pipeline, kind)) = self.uses(name).into_iter().find(|(_, kind)| *kind != loaded.kind()) {
            return Err(PipelineError::WrongKind { name: name.into(), pipeline, needed: kind, found: loaded.kind() });
        }
        Ok(loaded)
    }

    fn swap_in(
        &self,
        name: &str,
        bytes: &[u8],
        source: Source,
        retry: bool,
    ) -> Result<Arc<PluginEntry>, PipelineError> {
        if let Some(entry) = self.unchanged(name, bytes) {
            return Ok(entry);
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let refused = self.plugin(name).and_then(|e| e.last_error.clone()).filter(|f| f.sha256 == sha256);
        if let Some(failed) = refused.filter(|_| !retry) {
            return Err(PipelineError::LoadFailed { name: name.into(), message: failed.message });
        }
        match self.validate(name, bytes) {
            Ok(loaded) => Ok(self.publish(name, loaded, source)),
            Err(e) => Err(self.record_failure(name, e.to_string(), sha256)),
        }
    }

    /// Makes `loaded` the version of `name` for every request from now on
    /// (but a canary's share). Publishing the canary's own version ends it.
    pub(crate) fn publish(&self, name: &str, loaded: Loaded, source: Source) -> Arc<PluginEntry> {
        let previous = self.plugin(name);
        let reloads = previous.as_ref().map_or(0, |p| p.reloads + u64::from(p.loaded.is_some()));
        let failed_reloads = previous.as_ref().map_or(0, |p| p.failed_reloads);
        let sha256 = &loaded.info().sha256;
        let (canary, promoted) = match previous.as_ref().and_then(|p| p.canary.clone()) {
            Some(c) if &c.loaded.info().sha256 == sha256 => (None, true),
            other => (other, false),
        };
        // What goes on serving keeps counting on its own: a promoted canary
        // as the stable version, a kept canary as the canary.
        let serving = if promoted { loaded.metrics() } else { Default::default() };
        let kept = canary.as_ref().map(|c| c.loaded.metrics()).unwrap_or_default();
        let retired = previous.as_ref().map(|p| p.total_metrics()).unwrap_or_default() - serving - kept;
        // A kept canary is judged against the new stable version from now on.
        let canary = canary.map(|c| Canary { stable_at_start: loaded.metrics(), ..c });
        let (last_rollback, rollbacks) =
            previous.as_ref().map_or((None, 0), |p| (p.last_rollback.clone(), p.rollbacks));
        let entry = Arc::new(PluginEntry {
            reloads,
            failed_reloads,
            retired,
            canary,
            last_rollback,
            rollbacks,
            ..entry(name, Some(loaded), source)
        });
        let info = entry.info().map(ToString::to_string).unwrap_or_default();
        let sha256 = entry.info().map(|i| i.sha256[..12].to_string()).unwrap_or_default();
        self.store(name, Some(entry.clone()));
        tracing::info!(plugin = name, version = %info, sha256, "plugin loaded");
        entry
    }

    /// Keeps the serving version and notes why the new one was refused.
    fn record_failure(&self, name: &str, message: String, sha256: String) -> PipelineError {
        tracing::warn!(plugin = name, error = %message, "plugin not loaded; the previous version keeps serving");
        let error = LoadError { at: SystemTime::now(), message: message.clone(), sha256 };
        let previous = self.plugin(name);
        let failed = match previous {
            Some(p) => PluginEntry { last_error: Some(error), failed_reloads: p.failed_reloads + 1, ..(*p).clone() },
            None => PluginEntry {
                last_error: Some(error),
                failed_reloads: 1,
                ..entry(name, None, self.file_of(name).map_or(Source::Upload, Source::File))
            },
        };
        self.store(name, Some(Arc::new(failed)));
        PipelineError::LoadFailed { name: name.into(), message }
    }

    /// An upload that does not load changes nothing: it never replaced a file.
    fn upload_failed(&self, name: &str, e: PipelineError) -> PipelineError {
        tracing::warn!(plugin = name, error = %e, "uploaded plugin refused");
        e
    }

    fn forget_file(&self, name: &str) -> Result<Arc<PluginEntry>, PipelineError> {
        let Some(entry) = self.plugin(name) else { return Err(PipelineError::UnknownPlugin(name.into())) };
        if !matches!(entry.source, Source::File(_)) {
            return Ok(entry);
        }
        if entry.canary.is_some() && !self.registry.builtins.contains_key(name) {
            let message = "the file is gone; still serving the last version, which has a canary".to_string();
            return Err(self.record_failure(name, message, String::new()));
        }
        if let Some(pipeline) = self.stranded_by_removal(name) {
            // Serving on is better than failing every request of the pipeline.
            let message = format!("the file is gone; still serving the last version, which pipeline {pipeline:?} uses");
            return Err(self.record_failure(name, message, String::new()));
        }
        self.drop_version(name).ok_or_else(|| PipelineError::UnknownPlugin(name.into()))
    }

    /// A pipeline that would lose a plugin of the kind it needs if `name`'s
    /// file or upload went (back to the built-in of that name, or to nothing).
    fn stranded_by_removal(&self, name: &str) -> Option<String> {
        let fallback = self.registry.builtins.get(name).map(Loaded::kind);
        self.uses(name).into_iter().find(|(_, kind)| fallback != Some(*kind)).map(|(pipeline, _)| pipeline)
    }

    /// Removes `name`'s file or upload version: back to its built-in, or gone.
    fn drop_version(&self, name: &str) -> Option<Arc<PluginEntry>> {
        let previous = self.plugin(name);
        let canary = previous.as_ref().and_then(|p| p.canary.clone());
        let kept = canary.as_ref().map(|c| c.loaded.metrics()).unwrap_or_default();
        let retired = previous.as_ref().map(|p| p.total_metrics()).unwrap_or_default() - kept;
        let back = self.registry.builtins.get(name).map(|b| {
            Arc::new(PluginEntry {
                retired,
                canary: canary.map(|c| Canary { stable_at_start: b.metrics(), ..c }),
                last_rollback: previous.as_ref().and_then(|p| p.last_rollback.clone()),
                rollbacks: previous.as_ref().map_or(0, |p| p.rollbacks),
                ..entry(name, Some(b.clone()), Source::BuiltIn)
            })
        });
        self.store(name, back.clone());
        tracing::info!(plugin = name, reverted_to_built_in = back.is_some(), "plugin removed");
        back
    }

    pub(crate) fn store(&self, name: &str, entry: Option<Arc<PluginEntry>>) {
        let mut next = (**self.registry.current.load()).clone();
        match entry {
            Some(e) => next.insert(name.to_string(), e),
            None => next.remove(name),
        };
        self.registry.current.store(Arc::new(next));
    }

    /// Every plugin file already in the directory, loaded at start, then
    /// the canaries in `canary/`.
    pub(crate) fn load_dir(&self) -> Result<(), PipelineError> {
        for name in self.dir_plugins()? {
            if let Err(e) = self.sync_file(&name) {
                tracing::warn!(plugin = name, error = %e, "plugin file not loaded at start");
            }
        }
        for name in self.canary_plugins()? {
            if let Err(e) = self.sync_canary_file(&name) {
                tracing::warn!(plugin = name, error = %e, "canary file not loaded at start");
            }
        }
        Ok(())
    }

    /// The names of the `<name>.wasm` files in `canary/`.
    pub(crate) fn canary_plugins(&self) -> Result<Vec<String>, PipelineError> {
        let Some(dir) = self.dir.as_ref().map(|d| d.join(CANARY_DIR)) else { return Ok(Vec::new()) };
        let files = std::fs::read_dir(&dir).map_err(|e| PipelineError::Io(format!("{}: {e}", dir.display())))?;
        Ok(files.filter_map(|f| plugin_name(&dir, &f.ok()?.path())).collect())
    }

    /// The names of the `<name>.wasm` files in the plugin directory.
    pub(crate) fn dir_plugins(&self) -> Result<Vec<String>, PipelineError> {
        let Some(dir) = &self.dir else { return Ok(Vec::new()) };
        let files = std::fs::read_dir(dir).map_err(|e| PipelineError::Io(format!("{}: {e}", dir.display())))?;
        Ok(files.filter_map(|f| plugin_name(dir, &f.ok()?.path())).collect())
    }
}

/// The plugin a path in the plugin directory holds: `<dir>/<name>.wasm`.
pub(crate) fn plugin_name(dir: &Path, path: &Path) -> Option<String> {
    if path.parent()? != dir || path.extension()? != "wasm" {
        return None;
    }
    let name = path.file_stem()?.to_str()?;
    check_name(name).ok().map(|()| name.to_string())
}

/// Writes an uploaded version to its file, where it has one (so it survives
/// a restart); says where it came from.
pub(crate) fn persist(file: Option<PathBuf>, bytes: &[u8]) -> Result<Source, PipelineError> {
    let Some(path) = file else { return Ok(Source::Upload) };
    kiln_plugins::write_atomically(&path, bytes).map_err(|e| PipelineError::Io(format!("{}: {e}", path.display())))?;
    Ok(Source::File(path))
}
