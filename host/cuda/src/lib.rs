//! kiln-cuda: the CUDA device for kiln's engine.
//!
//! The driver and NVRTC are loaded at run time (cudarc's dynamic loading),
//! so the one `kiln` binary builds and starts where there is no CUDA. The
//! kernels are kiln's own CUDA C (`src/kernels/`), compiled by NVRTC for the
//! device's architecture at first use and cached on disk by source hash.
//! Beside them sit the GPU engine's plain-Rust bookkeeping, tested without a
//! GPU: which device a `--device` request resolves to, how device memory is
//! split between weights and the paged KV pool, the pool's block tables, and
//! which captured decode graph a batch replays. [`selftest`] checks every
//! kernel against a CPU reference on a real device.

pub mod backend;
pub mod blocks;
pub mod budget;
pub mod compile;
pub mod device;
pub mod graphs;
pub mod kernels;
pub mod model;
pub mod runtime;
pub mod selftest;

pub use backend::CudaBackend;
pub use blocks::{BlockPool, BlockStats, SeqId};
pub use budget::{DeviceMemory, KvShape, MemoryPlan, MemoryRequest};
pub use compile::{Arch, PtxCache};
pub use device::{DeviceProbe, DeviceRequest, ResolvedDevice, resolve};
pub use graphs::GraphBuckets;
pub use model::{CudaLoadOptions, CudaModel, StepItem};
pub use runtime::{CudaDevice, DeviceInfo, DriverProbe};

/// What can go wrong with the CUDA device.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("unknown device {0:?}: expected auto, cpu, cuda or cuda:N")]
    BadDevice(String),
    #[error("cuda:{ordinal} was asked for, but the driver reports {count} device(s)")]
    NoSuchDevice { ordinal: usize, count: usize },
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("kernel {kernel} does not compile for {arch}:\n{log}")]
    Compile { kernel: String, arch: String, log: String },
    #[error("--gpu-memory-fraction must be in (0, 1], not {0}")]
    BadFraction(f64),
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
    #[error("model: {0}")]
    Model(String),
    #[error("self-test reference: {0}")]
    Reference(#[from] candle_core::Error),
    #[error("the KV pool is short of blocks: {needed} needed, {free} free")]
    KvFull { needed: usize, free: usize },
}

#[cfg(test)]
mod compile_tests;

#[cfg(test)]
mod device_tests;
