//! Per-store limits: a memory cap that says so when it is hit.

use wasmtime::ResourceLimiter;

/// Caps every linear memory of a store; remembers whether the cap was hit,
/// so the trap it causes is reported as "memory limit", not as a crash.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub limit: usize,
    pub hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!("memory limit of {} bytes reached", self.limit)));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far past any real plugin.
        Ok(desired <= 1 << 20)
    }
}
