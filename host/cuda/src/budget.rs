//! How much of the device the model may take: weights first, a fixed
//! workspace, and whatever `--gpu-memory-fraction` leaves after them becomes
//! the paged KV pool (vLLM's arithmetic). Plain numbers, so the figures in an
//! out-of-memory error are tested without a GPU.

use crate::CudaError;

/// Default share of the device's memory kiln plans to use.
pub const DEFAULT_MEMORY_FRACTION: f64 = 0.90;

const MIB: f64 = 1024.0 * 1024.0;

/// The shape of one KV block: every layer's keys and values for
/// `block_tokens` positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    /// Key (and value) width: KV heads x head dimension.
    pub kv_dim: usize,
    pub block_tokens: usize,
    /// 2 for f16 and bf16.
    pub elem_bytes: usize,
}

impl KvShape {
    pub fn block_bytes(&self) -> u64 {
        (2 * self.layers * self.kv_dim * self.block_tokens * self.elem_bytes) as u64
    }
}

/// What the device reported when the model was about to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free: u64,
    pub total: u64,
}

/// What the engine will allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub weights: u64,
    pub workspace: u64,
    pub kv_blocks: usize,
    pub kv_block_bytes: u64,
}

impl MemoryPlan {
    pub fn kv_bytes(&self) -> u64 {
        self.kv_blocks as u64 * self.kv_block_bytes
    }
    pub fn total(&self) -> u64 {
        self.weights + self.workspace + self.kv_bytes()
    }
}

/// What to plan for.
#[derive(Clone, Copy, Debug)]
pub struct MemoryRequest {
    pub weights: u64,
    /// Activations, logits and graph buffers for the largest batch.
    pub workspace: u64,
    pub kv: KvShape,
    /// Blocks the pool needs at the least: one full-context sequence.
    pub min_kv_blocks: usize,
    /// Share of the device's total memory kiln may hold, in (0, 1].
    pub fraction: f64,
}

/// Sizes the KV pool, or says in figures why the model does not fit.
pub fn plan(memory: DeviceMemory, request: &MemoryRequest) -> Result<MemoryPlan, CudaError> {
    if !(request.fraction > 0.0 && request.fraction <= 1.0) {
        return Err(CudaError::BadFraction(request.fraction));
    }
    // Whatever is already in use (other processes, this process's context)
    // counts against the share, as it would against the card.
    let allowed = (memory.total as f64 * request.fraction) as u64;
    let in_use = memory.total.saturating_sub(memory.free);
    let room = allowed.saturating_sub(in_use).min(memory.free);
    let block_bytes = request.kv.block_bytes().max(1);
    let fixed = request.weights + request.workspace;
    let needed = fixed + request.min_kv_blocks as u64 * block_bytes;
    if needed > room {
        return Err(CudaError::OutOfMemory(format!(
            "the model needs {:.0} MiB ({:.0} MiB weights + {:.0} MiB workspace + {:.0} MiB for {} KV blocks, one \
             full context); the device has {:.0} MiB free of {:.0} MiB and --gpu-memory-fraction {} leaves {:.0} MiB \
             of that to kiln",
            needed as f64 / MIB,
            request.weights as f64 / MIB,
            request.workspace as f64 / MIB,
            (request.min_kv_blocks as u64 * block_bytes) as f64 / MIB,
            request.min_kv_blocks,
            memory.free as f64 / MIB,
            memory.total as f64 / MIB,
            request.fraction,
            room as f64 / MIB,
        )));
    }
    let kv_blocks = ((room - fixed) / block_bytes) as usize;
    Ok(MemoryPlan { weights: request.weights, workspace: request.workspace, kv_blocks, kv_block_bytes: block_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn request(weights: u64, fraction: f64) -> MemoryRequest {
        MemoryRequest {
            weights,
            workspace: 256 << 20,
            // SmolLM2-135M: 30 layers, 3 KV heads x 64, f16, 16-token blocks.
            kv: KvShape { layers: 30, kv_dim: 192, block_tokens: 16, elem_bytes: 2 },
            min_kv_blocks: 8192 / 16,
            fraction,
        }
    }

    #[test]
    fn a_kv_block_holds_every_layers_keys_and_values() {
        let kv = request(0, 0.9).kv;
        assert_eq!(kv.block_bytes(), 2 * 30 * 192 * 16 * 2);
    }

    #[test]
    fn the_pool_takes_what_the_fraction_leaves_after_weights_and_workspace() {
        let memory = DeviceMemory { free: 140 * GIB, total: 140 * GIB };
        let plan = plan(memory, &request(100 << 20, 0.9)).unwrap();
        let allowed = (140.0 * GIB as f64 * 0.9) as u64;
        assert_eq!(plan.kv_blocks as u64, (allowed - (100 << 20) - (256 << 20)) / plan.kv_block_bytes);
        assert!(plan.total() <= allowed && allowed - plan.total() < plan.kv_block_bytes);
    }

    #[test]
    fn memory_others_hold_counts_against_the_share() {
        // 40 GiB taken by another process: 0.5 of 80 GiB leaves nothing.
        let memory = DeviceMemory { free: 40 * GIB, total: 80 * GIB };
        let err = plan(memory, &request(GIB, 0.5)).unwrap_err().to_string();
        assert!(err.contains("40960 MiB free of 81920 MiB") && err.contains("leaves 0 MiB"), "{err}");
        let plan = plan(memory, &request(GIB, 0.9)).unwrap();
        assert!(plan.total() <= 32 * GIB);
    }

    #[test]
    fn a_model_that_does_not_fit_is_refused_naming_the_figures() {
        let memory = DeviceMemory { free: 2 * GIB, total: 2 * GIB };
        let err = plan(memory, &request(3 * GIB, 0.9)).unwrap_err().to_string();
        for figure in ["3072 MiB weights", "256 MiB workspace", "512 KV blocks", "2048 MiB free", "0.9"] {
            assert!(err.contains(figure), "{figure} missing from: {err}");
        }
    }

    #[test]
    fn a_fraction_outside_zero_to_one_is_refused() {
        let memory = DeviceMemory { free: GIB, total: GIB };
        for f in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(matches!(plan(memory, &request(0, f)), Err(CudaError::BadFraction(_))));
        }
    }
}
