//! Per-store limits: a memory cap on all of a store's linear memories
//! together, that says so when it is hit.

use wasmtime::ResourceLimiter;

/// Caps the linear memories of a store together: a component made of many
/// core instances, each with memories of its own, gets `limit` bytes in
/// all, not `limit` per memory. Remembers whether the cap was hit, so the
/// trap it causes is reported as "memory limit", not as a crash.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub limit: usize,
    /// Bytes of every memory of the store so far.
    pub used: usize,
    pub hit: bool,
}

impl MemoryCap {
    pub(crate) fn new(limit: usize) -> Self {
        MemoryCap { limit, used: 0, hit: false }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Called for a memory's creation too (from 0), so `used` counts all.
        let used = self.used.saturating_add(desired.saturating_sub(current));
        if used > self.limit {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!(
                "memory limit of {} bytes reached (all of the plugin's memories together)",
                self.limit
            )));
        }
        self.used = used;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far past any real plugin.
        Ok(desired <= 1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_are_capped_together_not_each() {
        let mut cap = MemoryCap::new(10 << 20);
        assert!(cap.memory_growing(0, 6 << 20, None).unwrap(), "one memory under the cap");
        let second = cap.memory_growing(0, 6 << 20, None);
        assert!(second.is_err() && cap.hit, "a second memory would take the store past the cap");
        assert!(cap.memory_growing(6 << 20, 9 << 20, None).unwrap(), "growing the first within the cap");
        assert!(cap.memory_growing(9 << 20, 11 << 20, None).is_err());
    }
}
