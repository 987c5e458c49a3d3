//! Post-process plugins on the host side: one session per generation.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker, ResourceAny};

use crate::metrics::{MetricsSnapshot, PluginMetrics};
use crate::runtime::Shared;
use crate::state::{HostState, call_failed, new_store};
use crate::{PluginError, PluginInfo, PluginKind};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "kiln:plugin/post-process-plugin",
    });
}

pub use bindings::exports::kiln::plugin::post_process::ChunkAction;
pub use bindings::kiln::plugin::types::FinishReason;

impl bindings::kiln::plugin::types::Host for HostState {}

/// A post-process plugin, linked and pre-instantiated.
pub struct PostProcessPlugin {
    info: PluginInfo,
    pre: bindings::PostProcessPluginPre<HostState>,
    runtime: Arc<Shared>,
    metrics: PluginMetrics,
}

impl std::fmt::Debug for PostProcessPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostProcessPlugin").field("info", &self.info).finish_non_exhaustive()
    }
}

impl PostProcessPlugin {
    /// Links the component and makes a smoke call (`info`).
    pub(crate) fn new(runtime: Arc<Shared>, component: Component, sha256: String) -> wasmtime::Result<Self> {
        let mut linker = Linker::new(&runtime.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::PostProcessPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        let pre = bindings::PostProcessPluginPre::new(linker.instantiate_pre(&component)?)?;
        let mut store = new_store(&runtime);
        let info = pre.instantiate(&mut store)?.kiln_plugin_post_process().call_info(&mut store)?;
        let info = PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            kind: PluginKind::PostProcess,
            sha256,
        };
        Ok(PostProcessPlugin { info, pre, runtime, metrics: PluginMetrics::default() })
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Calls into this version so far.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// A new output stream in a fresh instance.
    pub fn start(
        self: &Arc<Self>,
        stop: &[String],
        config: &[(String, String)],
    ) -> Result<PostProcessSession, PluginError> {
        let started = Instant::now();
        let session = self.open(stop, config);
        self.metrics.record(started, &session);
        session
    }

    fn open(self: &Arc<Self>, stop: &[String], config: &[(String, String)]) -> Result<PostProcessSession, PluginError> {
        let mut store = new_store(&self.runtime);
        let plugin = self.info.to_string();
        let instance = match self.pre.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => return Err(call_failed(e, &store, &plugin, &self.runtime)),
        };
        store.set_epoch_deadline(self.runtime.deadline_ticks);
        let created = instance.kiln_plugin_post_process().output().call_create(&mut store, stop, &config.to_vec());
        let output = match created {
            Ok(Ok(output)) => output,
            Ok(Err(message)) => return Err(PluginError::Refused { plugin, message }),
            Err(e) => return Err(call_failed(e, &store, &plugin, &self.runtime)),
        };
        Ok(PostProcessSession { plugin: self.clone(), store, instance, output })
    }
}

/// One generation's output filter: its own store and instance.
pub struct PostProcessSession {
    plugin: Arc<PostProcessPlugin>,
    store: Store<HostState>,
    instance: bindings::PostProcessPlugin,
    output: ResourceAny,
}

impl std::fmt::Debug for PostProcessSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostProcessSession").field("plugin", &self.plugin.info).finish_non_exhaustive()
    }
}

impl PostProcessSession {
    pub fn plugin(&self) -> &PluginInfo {
        &self.plugin.info
    }

    /// What to do with the next decoded chunk.
    pub fn on_chunk(&mut self, text: &str) -> Result<ChunkAction, PluginError> {
        let started = Instant::now();
        self.store.set_epoch_deadline(self.plugin.runtime.deadline_ticks);
        let output = self.instance.kiln_plugin_post_process().output();
        let action = output.call_on_chunk(&mut self.store, self.output, text).map_err(|e| self.failed(e));
        self.plugin.metrics.record(started, &action);
        action
    }

    /// The end of the generation: the text still held back.
    pub fn finish(&mut self, reason: FinishReason) -> Result<String, PluginError> {
        let started = Instant::now();
        self.store.set_epoch_deadline(self.plugin.runtime.deadline_ticks);
        let output = self.instance.kiln_plugin_post_process().output();
        let rest = output.call_finish(&mut self.store, self.output, reason).map_err(|e| self.failed(e));
        self.plugin.metrics.record(started, &rest);
        rest
    }

    fn failed(&self, error: wasmtime::Error) -> PluginError {
        call_failed(error, &self.store, &self.plugin.info.to_string(), &self.plugin.runtime)
    }
}
