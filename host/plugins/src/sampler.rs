//! Sampler plugins on the host side: one session per sequence.

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
        world: "kiln:plugin/sampler-plugin",
        with: { "kiln:plugin/types@0.2.0": crate::template::bindings::kiln::plugin::types },
    });
}

pub use bindings::exports::kiln::plugin::sampler::{Candidate, StepPlan};
pub use bindings::kiln::plugin::types::SamplingParams;

impl bindings::kiln::plugin::vocabulary::Host for HostState {
    fn size(&mut self) -> u32 {
        self.vocabulary.len() as u32
    }

    fn tokens(&mut self) -> bindings::kiln::plugin::vocabulary::TokenTable {
        let (bytes, ends) = self.vocabulary.table();
        bindings::kiln::plugin::vocabulary::TokenTable { bytes: bytes.to_vec(), ends: ends.to_vec() }
    }

    fn stop_ids(&mut self) -> Vec<u32> {
        self.vocabulary.stop_ids().to_vec()
    }
}

/// A component linked against the contract version it was built for.
enum Pre {
    Current(bindings::SamplerPluginPre<HostState>),
    V0_1(legacy::sampler::SamplerPluginPre<HostState>),
}

/// An instance of either version.
enum Instance {
    Current(bindings::SamplerPlugin),
    V0_1(legacy::sampler::SamplerPlugin),
}

/// A sampler plugin, linked and pre-instantiated: starting a session is a
/// fresh instance (microseconds).
pub struct SamplerPlugin {
    info: PluginInfo,
    code: ArcSwap<Code<Pre>>,
    runtime: Arc<Shared>,
    metrics: PluginMetrics,
}

impl std::fmt::Debug for SamplerPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerPlugin").field("info", &self.info).finish_non_exhaustive()
    }
}

impl SamplerPlugin {
    /// Links the component and makes a smoke call (`info`), so a file that
    /// cannot serve never replaces one that can.
    pub(crate) fn new(runtime: Arc<Shared>, built: Built) -> wasmtime::Result<Self> {
        let (pre, (name, version, description)) = link(&runtime, &built.component, built.contract)?;
        let (contract, sha256) = (built.contract, built.sha256);
        let info = PluginInfo { name, version, description, kind: PluginKind::Sampler, contract, sha256 };
        let code = Code::new(pre, &built.component, built.tier);
        Ok(SamplerPlugin { info, code: ArcSwap::from_pointee(code), runtime, metrics: PluginMetrics::default() })
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

    /// A new sequence in a fresh instance.
    pub fn start(
        self: &Arc<Self>,
        params: SamplingParams,
        prompt: &[u32],
        config: &[(String, String)],
    ) -> Result<SamplerSession, PluginError> {
        let started = Instant::now();
        let session = self.open(params, prompt, config);
        self.metrics.record_start(started, &session);
        session
    }

    fn open(
        self: &Arc<Self>,
        params: SamplingParams,
        prompt: &[u32],
        config: &[(String, String)],
    ) -> Result<SamplerSession, PluginError> {
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
        let config = config.to_vec();
        let created = match &instance {
            Instance::Current(i) => i.kiln_plugin_sampler().sequence().call_create(&mut store, params, prompt, &config),
            Instance::V0_1(i) => i.kiln_plugin_sampler().sequence().call_create(
                &mut store,
                legacy::sampling_params(params),
                prompt,
                &config,
            ),
        };
        let sequence = match created {
            Ok(Ok(sequence)) => sequence,
            Ok(Err(message)) => return Err(PluginError::Refused { plugin, message }),
            Err(e) => return Err(call_failed(e, &store, &plugin, &self.runtime)),
        };
        Ok(SamplerSession { plugin: self.clone(), store, instance, sequence })
    }
}

/// Links `component` with its contract's bindings and asks it who it is.
fn link(runtime: &Shared, component: &Component, contract: Contract) -> wasmtime::Result<(Pre, Who)> {
    let mut linker = Linker::new(component.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    let mut store = new_store(runtime, component.engine());
    Ok(match contract {
        Contract::Current => {
            bindings::SamplerPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
            let pre = bindings::SamplerPluginPre::new(linker.instantiate_pre(component)?)?;
            let info = pre.instantiate(&mut store)?.kiln_plugin_sampler().call_info(&mut store)?;
            (Pre::Current(pre), (info.name, info.version, info.description))
        }
        Contract::V0_1 => {
            legacy::sampler::SamplerPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
            let pre = legacy::sampler::SamplerPluginPre::new(linker.instantiate_pre(component)?)?;
            let info = pre.instantiate(&mut store)?.kiln_plugin_sampler().call_info(&mut store)?;
            (Pre::V0_1(pre), (info.name, info.version, info.description))
        }
    })
}

impl Upgrade for SamplerPlugin {
    fn upgrade(&self, component: &Component) -> wasmtime::Result<()> {
        tiering::swap_in(&self.code, &self.info, component, link(&self.runtime, component, self.info.contract)?)
    }

    fn describe(&self) -> String {
        self.info.to_string()
    }
}

/// One sequence's sampler: its own store and instance.
pub struct SamplerSession {
    plugin: Arc<SamplerPlugin>,
    store: Store<HostState>,
    instance: Instance,
    sequence: ResourceAny,
}

impl std::fmt::Debug for SamplerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerSession").field("plugin", &self.plugin.info).finish_non_exhaustive()
    }
}

impl SamplerSession {
    pub fn plugin(&self) -> &PluginInfo {
        &self.plugin.info
    }

    /// The plan for the next token; `last` is the token emitted before it.
    pub fn step(&mut self, last: Option<u32>) -> Result<StepPlan, PluginError> {
        let started = Instant::now();
        let plan = self.plan(last);
        self.plugin.metrics.record(started, &plan);
        plan
    }

    fn plan(&mut self, last: Option<u32>) -> Result<StepPlan, PluginError> {
        self.store.set_epoch_deadline(self.plugin.runtime.deadline_ticks);
        let (store, sequence) = (&mut self.store, self.sequence);
        let result = match &self.instance {
            Instance::Current(i) => i.kiln_plugin_sampler().sequence().call_step(store, sequence, last),
            Instance::V0_1(i) => {
                i.kiln_plugin_sampler().sequence().call_step(store, sequence, last).map(|p| Ok(legacy::step_plan(p)))
            }
        };
        let plan = result.map_err(|e| self.failed(e))?;
        let plan = plan.map_err(|message| PluginError::Refused { plugin: self.plugin.info.to_string(), message })?;
        check_plan(&plan, self.plugin.runtime.vocabulary.len())
            .map_err(|message| PluginError::Refused { plugin: self.plugin.info.to_string(), message })?;
        Ok(plan)
    }

    /// The sampler's pick among `candidates`; an id not among them is refused.
    pub fn choose(&mut self, candidates: &[Candidate]) -> Result<u32, PluginError> {
        let started = Instant::now();
        let choice = self.pick(candidates);
        self.plugin.metrics.record(started, &choice);
        choice
    }

    fn pick(&mut self, candidates: &[Candidate]) -> Result<u32, PluginError> {
        self.store.set_epoch_deadline(self.plugin.runtime.deadline_ticks);
        let (store, sequence) = (&mut self.store, self.sequence);
        let id = match &self.instance {
            Instance::Current(i) => i.kiln_plugin_sampler().sequence().call_choose(store, sequence, candidates),
            Instance::V0_1(i) => {
                i.kiln_plugin_sampler().sequence().call_choose(store, sequence, &legacy::candidates(candidates))
            }
        };
        let id = id.map_err(|e| self.failed(e))?;
        if candidates.iter().any(|c| c.id == id) {
            Ok(id)
        } else {
            Err(PluginError::Refused {
                plugin: self.plugin.info.to_string(),
                message: format!("chose token {id}, which is not among the {} candidates", candidates.len()),
            })
        }
    }

    fn failed(&self, error: wasmtime::Error) -> PluginError {
        call_failed(error, &self.store, &self.plugin.info.to_string(), &self.plugin.runtime)
    }
}

/// A plan the host can carry out: every id inside the vocabulary.
fn check_plan(plan: &StepPlan, vocab: usize) -> Result<(), String> {
    let outside = |what: &str, id: u32| Err(format!("{what} token {id} is outside the vocabulary ({vocab})"));
    if let Some(&id) = plan.forced.iter().find(|&&id| id as usize >= vocab) {
        return outside("forced", id);
    }
    if let Some(&(id, _)) = plan.bias.iter().find(|(id, _)| *id as usize >= vocab) {
        return outside("biased", id);
    }
    if let Some((_, b)) = plan.bias.iter().find(|(_, b)| !b.is_finite()) {
        return Err(format!("a bias of {b} is not a finite number"));
    }
    if plan.allowed.len() > vocab.div_ceil(64) {
        return Err(format!("the allowed set has {} words for a vocabulary of {vocab}", plan.allowed.len()));
    }
    Ok(())
}
