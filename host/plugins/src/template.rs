//! Template plugins on the host side: one fresh instance per render.

use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Instant;

use wasmtime::component::{Component, HasSelf, Linker};

use crate::legacy::{self, Contract};
use crate::metrics::{MetricsSnapshot, PluginMetrics};
use crate::runtime::{Built, Shared};
use crate::state::{HostState, call_failed, new_store};
use crate::tiering::{self, Code, Tier, Upgrade};
use crate::{PluginError, PluginInfo, PluginKind, Who};

pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/plugin.wit",
        world: "kiln:plugin/template-plugin",
    });
}

pub use bindings::exports::kiln::plugin::template::{Rendered, TemplateInput};
pub use bindings::kiln::plugin::types::{ChatMessage, Tool, ToolCall, ToolChoice, ToolSyntax};

impl bindings::kiln::plugin::types::Host for HostState {}

/// A component linked against the contract version it was built for.
enum Pre {
    Current(bindings::TemplatePluginPre<HostState>),
    V0_1(legacy::template::TemplatePluginPre<HostState>),
}

/// A template plugin, linked and pre-instantiated.
pub struct TemplatePlugin {
    info: PluginInfo,
    code: ArcSwap<Code<Pre>>,
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
    pub(crate) fn new(runtime: Arc<Shared>, built: Built) -> wasmtime::Result<Self> {
        let (pre, (name, version, description)) = link(&runtime, &built.component, built.contract)?;
        let (contract, sha256) = (built.contract, built.sha256);
        let info = PluginInfo { name, version, description, kind: PluginKind::Template, contract, sha256 };
        let code = Code::new(pre, &built.component, built.tier);
        Ok(TemplatePlugin { info, code: ArcSwap::from_pointee(code), runtime, metrics: PluginMetrics::default() })
    }

    /// Which build serves new renders.
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

    /// Renders a conversation in a fresh instance. The template's own
    /// refusal comes back as [`PluginError::Refused`] with its message.
    pub fn render(&self, input: &TemplateInput) -> Result<Rendered, PluginError> {
        let started = Instant::now();
        let rendered = self.call_render(input);
        // A refusal says the conversation is the client's to fix (a 400): a
        // call that worked, not a failure of this version.
        let outcome = match &rendered {
            Ok(_) | Err(PluginError::Refused { .. }) => Ok(()),
            Err(e) => Err(e.clone()),
        };
        self.metrics.record_start(started, &outcome);
        rendered
    }

    fn call_render(&self, input: &TemplateInput) -> Result<Rendered, PluginError> {
        let code = self.code.load();
        let mut store = new_store(&self.runtime, &code.engine);
        let plugin = self.info.to_string();
        let rendered = match &code.pre {
            Pre::Current(pre) => pre
                .instantiate(&mut store)
                .and_then(|instance| instance.kiln_plugin_template().call_render(&mut store, input)),
            Pre::V0_1(pre) => {
                let input = legacy::template_input(input);
                pre.instantiate(&mut store)
                    .and_then(|instance| instance.kiln_plugin_template().call_render(&mut store, &input))
                    .map(|r| r.map(legacy::rendered))
            }
        };
        match rendered {
            Ok(Ok(rendered)) => Ok(rendered),
            Ok(Err(message)) => Err(PluginError::Refused { plugin, message }),
            Err(e) => Err(call_failed(e, &store, &plugin, &self.runtime)),
        }
    }
}

/// Links `component` with its contract's bindings and asks it who it is.
fn link(runtime: &Shared, component: &Component, contract: Contract) -> wasmtime::Result<(Pre, Who)> {
    let mut linker = Linker::new(component.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    let mut store = new_store(runtime, component.engine());
    Ok(match contract {
        Contract::Current => {
            bindings::TemplatePlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
            let pre = bindings::TemplatePluginPre::new(linker.instantiate_pre(component)?)?;
            let info = pre.instantiate(&mut store)?.kiln_plugin_template().call_info(&mut store)?;
            (Pre::Current(pre), (info.name, info.version, info.description))
        }
        Contract::V0_1 => {
            legacy::template::TemplatePlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
            let pre = legacy::template::TemplatePluginPre::new(linker.instantiate_pre(component)?)?;
            let info = pre.instantiate(&mut store)?.kiln_plugin_template().call_info(&mut store)?;
            (Pre::V0_1(pre), (info.name, info.version, info.description))
        }
    })
}

impl Upgrade for TemplatePlugin {
    fn upgrade(&self, component: &Component) -> wasmtime::Result<()> {
        tiering::swap_in(&self.code, &self.info, component, link(&self.runtime, component, self.info.contract)?)
    }

    fn describe(&self) -> String {
        self.info.to_string()
    }
}
