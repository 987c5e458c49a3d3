//! Post-process plugins on the host side: one session per generation.

use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Instant;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker, ResourceAny};

use crate::legacy::{self, Contract};
use crate::metrics::{MetricsSnapshot, PluginMetrics};
use crate::runtime::{Built, Shared};
use crate::state::{HostState, call_failed, new_store};
use crate::tiering::{self, Code, Tier, Upgrade};
use crate::{PluginError, PluginInfo, PluginKind, Who};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/plugin.wit",
        world: "kiln:plugin/post-process-plugin",
        with: { "kiln:plugin/types@0.2.0": crate::template::bindings::kiln::plugin::types },
    });
}

pub use bindings::exports::kiln::plugin::post_process::{ChunkAction, Emitted, OutputOptions};
pub use bindings::kiln::plugin::types::FinishReason;

/// A component linked against the contract version it was built for.
enum Pre {
    Current(bindings::PostProcessPluginPre<HostState>),
    V0_1(legacy::post_process::PostProcessPluginPre<HostState>),
}

/// An instance of either version.
enum Instance {
    Current(bindings::PostProcessPlugin),
    V0_1(legacy::post_process::PostProcessPlugin),
}

/// A post-process plugin, linked and pre-instantiated.
pub struct PostProcessPlugin {
    info: PluginInfo,
    code: ArcSwap<Code<Pre>>,
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
    pub(crate) fn new(runtime: Arc<Shared>, built: Built) -> wasmtime::Result<Self> {
        let (pre, (name, version, description)) = link(&runtime, &built.component, built.contract)?;
        let (contract, sha256) = (built.contract, built.sha256);
        let info = PluginInfo { name, version, description, kind: PluginKind::PostProcess, contract, sha256 };
        let code = Code::new(pre, &built.component, built.tier);
        Ok(PostProcessPlugin { info, code: ArcSwap::from_pointee(code), runtime, metrics: PluginMetrics::default() })
    }

    /// Which build serves new sessions.
    pub fn tier(&self) -> Tier {
        self.code.load().tier
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Calls into this version so far.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// A new output stream in a fresh instance.
    pub fn start(self: &Arc<Self>, options: &OutputOptions) -> Result<PostProcessSession, PluginError> {
        let started = Instant::now();
        let session = self.open(options);
        self.metrics.record_start(started, &session);
        session
    }

    fn open(self: &Arc<Self>, options: &OutputOptions) -> Result<PostProcessSession, PluginError> {
        let code = self.code.load();
        let mut store = new_store(&self.runtime, &code.engine);
        let plugin = self.info.to_string();
        let instance = match &code.pre {
            Pre::Current(pre) => pre.instantiate(&mut store).map(Instance::Current),
            Pre::V0_1(pre) => pre.instantiate(&mut store).map(Instance::V0_1),
        };
        let instance = match instance {
            Ok(instance) => instance,
            Err(e) => return Err(call_failed(e, &store, &plugin, &self.runtime)),
        };
        store.set_epoch_deadline(self.runtime.deadline_ticks);
        let created = match &instance {
            Instance::Current(i) => i.kiln_plugin_post_process().output().call_create(&mut store, options),
            // 0.1.0 knows nothing of tools.
            Instance::V0_1(i) => {
                i.kiln_plugin_post_process().output().call_create(&mut store, &options.stop, &options.config)
            }
        };
        let output = match created {
            Ok(Ok(output)) => output,
            Ok(Err(message)) => return Err(PluginError::Refused { plugin, message }),
            Err(e) => return Err(call_failed(e, &store, &plugin, &self.runtime)),
        };
        Ok(PostProcessSession { plugin: self.clone(), store, instance, output })
    }
}

/// Links `component` with its contract's bindings and asks it who it is.
fn link(runtime: &Shared, component: &Component, contract: Contract) -> wasmtime::Result<(Pre, Who)> {
    let mut linker = Linker::new(component.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    let mut store = new_store(runtime, component.engine());
    Ok(match contract {
        Contract::Current => {
            bindings::PostProcessPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
            let pre = bindings::PostProcessPluginPre::new(linker.instantiate_pre(component)?)?;
            let info = pre.instantiate(&mut store)?.kiln_plugin_post_process().call_info(&mut store)?;
            (Pre::Current(pre), (info.name, info.version, info.description))
        }
        Contract::V0_1 => {
            legacy::post_process::PostProcessPlugin::add_to_linker::<HostState, HasSelf<HostState>>(
                &mut linker,
                |s| s,
            )?;
            let pre = legacy::post_process::PostProcessPluginPre::new(linker.instantiate_pre(component)?)?;
            let info = pre.instantiate(&mut store)?.kiln_plugin_post_process().call_info(&mut store)?;
            (Pre::V0_1(pre), (info.name, info.version, info.description))
        }
    })
}

impl Upgrade for PostProcessPlugin {
    fn upgrade(&self, component: &Component) -> wasmtime::Result<()> {
        tiering::swap_in(&self.code, &self.info, component, link(&self.runtime, component, self.info.contract)?)
    }

    fn describe(&self) -> String {
        self.info.to_string()
    }
}

/// One generation's output filter: its own store and instance.
pub struct PostProcessSession {
    plugin: Arc<PostProcessPlugin>,
    store: Store<HostState>,
    instance: Instance,
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
        let (store, output) = (&mut self.store, self.output);
        let action = match &self.instance {
            Instance::Current(i) => i.kiln_plugin_post_process().output().call_on_chunk(store, output, text),
            Instance::V0_1(i) => {
                i.kiln_plugin_post_process().output().call_on_chunk(store, output, text).map(legacy::chunk_action)
            }
        };
        let action = action.map_err(|e| self.failed(e));
        self.plugin.metrics.record(started, &action);
        action
    }

    /// The end of the generation: what is still held back.
    pub fn finish(&mut self, reason: FinishReason) -> Result<Emitted, PluginError> {
        let started = Instant::now();
        self.store.set_epoch_deadline(self.plugin.runtime.deadline_ticks);
        let (store, output) = (&mut self.store, self.output);
        let rest = match &self.instance {
            Instance::Current(i) => i.kiln_plugin_post_process().output().call_finish(store, output, reason),
            Instance::V0_1(i) => i
                .kiln_plugin_post_process()
                .output()
                .call_finish(store, output, legacy::finish_reason(reason))
                .map(|text| Emitted { text, tool_calls: Vec::new() }),
        };
        let rest = rest.map_err(|e| self.failed(e));
        self.plugin.metrics.record(started, &rest);
        rest
    }

    fn failed(&self, error: wasmtime::Error) -> PluginError {
        call_failed(error, &self.store, &self.plugin.info.to_string(), &self.plugin.runtime)
    }
}
