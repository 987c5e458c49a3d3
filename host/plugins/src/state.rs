//! What every plugin store holds, and how a failed call is reported.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::limits::MemoryCap;
use crate::runtime::Shared;
use crate::{PluginError, Vocabulary};

/// The last bytes a plugin wrote to stderr (a panic message), kept for errors.
const STDERR_TAIL: usize = 2048;

pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub cap: MemoryCap,
    pub vocabulary: Arc<Vocabulary>,
    stderr: MemoryOutputPipe,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A fresh store on `engine` (the one its component was compiled with):
/// no files, no network, no environment; stderr captured.
pub(crate) fn new_store(runtime: &Shared, engine: &wasmtime::Engine) -> Store<HostState> {
    let stderr = MemoryOutputPipe::new(STDERR_TAIL);
    let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build();
    let state = HostState {
        wasi,
        table: ResourceTable::new(),
        cap: MemoryCap::new(runtime.config.memory_limit),
        vocabulary: runtime.vocabulary.clone(),
        stderr,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.cap);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(runtime.deadline_ticks);
    store
}

/// Turns a failed call into an error naming the plugin and what happened.
pub(crate) fn call_failed(
    error: wasmtime::Error,
    store: &Store<HostState>,
    plugin: &str,
    runtime: &Shared,
) -> PluginError {
    let plugin = plugin.to_string();
    // Every pooled instance is taken: a moment's overload, not a fault.
    if error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() {
        return PluginError::Busy { plugin, instances: runtime.config.max_instances };
    }
    if store.data().cap.hit {
        return PluginError::OutOfMemory { plugin, limit_mib: runtime.config.memory_limit >> 20 };
    }
    if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return PluginError::Timeout { plugin, limit_ms: runtime.config.call_timeout.as_millis() as u64 };
    }
    let stderr = String::from_utf8_lossy(&store.data().stderr.contents()).trim().to_string();
    let message = match error.downcast_ref::<Trap>() {
        Some(trap) if stderr.is_empty() => trap.to_string(),
        Some(trap) => format!("{trap}: {stderr}"),
        None => format!("{error:#}"),
    };
    PluginError::Trap { plugin, message }
}
