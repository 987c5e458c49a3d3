//! Template plugins on the host side: one fresh instance per render.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Component, HasSelf, Linker};

use crate::metrics::{MetricsSnapshot, PluginMetrics};
use crate::runtime::Shared;
use crate::state::{HostState, call_failed, new_store};
use crate::{PluginError, PluginInfo, PluginKind};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "kiln:plugin/template-plugin",
    });
}

pub use bindings::exports::kiln::plugin::template::{Rendered, TemplateInput};
pub use bindings::kiln::plugin::types::ChatMessage;

impl bindings::kiln::plugin::types::Host for HostState {}

/// A template plugin, linked and pre-instantiated.
pub struct TemplatePlugin {
    info: PluginInfo,
    pre: bindings::TemplatePluginPre<HostState>,
    runtime: Arc<Shared>,
    metrics: PluginMetrics,
}

impl std::fmt::Debug for TemplatePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplatePlugin").field("info", &self.info).finish_non_exhaustive()
    }
}

impl TemplatePlugin {
    /// Links the component and makes a smoke call (`info`).
    pub(crate) fn new(runtime: Arc<Shared>, component: Component, sha256: String) -> wasmtime::Result<Self> {
        let mut linker = Linker::new(&runtime.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::TemplatePlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        let pre = bindings::TemplatePluginPre::new(linker.instantiate_pre(&component)?)?;
        let mut store = new_store(&runtime);
        let info = pre.instantiate(&mut store)?.kiln_plugin_template().call_info(&mut store)?;
        let info = PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            kind: PluginKind::Template,
            sha256,
        };
        Ok(TemplatePlugin { info, pre, runtime, metrics: PluginMetrics::default() })
    }

    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Calls into this version so far.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Renders a conversation in a fresh instance. The template's own
    /// refusal comes back as [`PluginError::Refused`] with its message.
    pub fn render(&self, input: &TemplateInput) -> Result<Rendered, PluginError> {
        let started = Instant::now();
        let rendered = self.call_render(input);
        self.metrics.record(started, &rendered);
        rendered
    }

    fn call_render(&self, input: &TemplateInput) -> Result<Rendered, PluginError> {
        let mut store = new_store(&self.runtime);
        let plugin = self.info.to_string();
        let rendered = self
            .pre
            .instantiate(&mut store)
            .and_then(|instance| instance.kiln_plugin_template().call_render(&mut store, input));
        match rendered {
            Ok(Ok(rendered)) => Ok(rendered),
            Ok(Err(message)) => Err(PluginError::Refused { plugin, message }),
            Err(e) => Err(call_failed(e, &store, &plugin, &self.runtime)),
        }
    }
}
