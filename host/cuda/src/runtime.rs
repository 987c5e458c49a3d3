//! An opened CUDA device: its context and stream, what it reports (name,
//! compute capability, memory), and kiln's kernels loaded for it.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use serde::Serialize;

use crate::CudaError;
use crate::budget::DeviceMemory;
use crate::compile::{Arch, PtxCache};
use crate::device::DeviceProbe;
use crate::kernels::SOURCES;

fn driver_error(what: &str) -> impl Fn(cudarc::driver::DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver(format!("{what}: {e}"))
}

/// Whether libcuda can be loaded at all (cudarc panics on a call without it).
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the driver library by its known names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Asks the installed driver how many devices answer.
#[derive(Debug, Default, Clone, Copy)]
pub struct DriverProbe;

impl DeviceProbe for DriverProbe {
    fn device_count(&self) -> Result<usize, String> {
        if !driver_available() {
            return Err("no CUDA driver (libcuda.so) was found".into());
        }
        CudaContext::device_count().map(|n| n.max(0) as usize).map_err(|e| format!("the CUDA driver answered {e}"))
    }
}

/// What a device reports about itself.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: String,
    pub memory_free_bytes: u64,
    pub memory_total_bytes: u64,
}

/// One device, with kiln's kernels compiled for it and loaded.
#[derive(Debug)]
pub struct CudaDevice {
    ordinal: usize,
    arch: Arch,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Arc<CudaModule>>,
}

impl CudaDevice {
    /// Opens device `ordinal` and loads every kernel module (compiled by
    /// NVRTC on first use, then from `cache`).
    pub fn open(ordinal: usize, cache: &PtxCache) -> Result<CudaDevice, CudaError> {
        if !driver_available() {
            return Err(CudaError::Unavailable("no CUDA driver (libcuda.so) was found".into()));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_error("opening the device"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver_error("compute capability"))?;
        let arch = Arch { major: major as u32, minor: minor as u32 };
        let stream = ctx.default_stream();
        let mut modules = HashMap::new();
        for source in SOURCES {
            let ptx = cache.get(source, arch)?;
            let module = ctx.load_module(ptx).map_err(driver_error(source.name))?;
            modules.insert(source.name, module);
        }
        Ok(CudaDevice { ordinal, arch, ctx, stream, modules })
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A kernel by its entry point's name.
    pub fn function(&self, module: &str, entry: &str) -> Result<CudaFunction, CudaError> {
        let module = self.modules.get(module).ok_or_else(|| CudaError::Driver(format!("no kernel module {module}")))?;
        module.load_function(entry).map_err(driver_error(entry))
    }

    pub fn memory(&self) -> Result<DeviceMemory, CudaError> {
        let (free, total) = self.ctx.mem_get_info().map_err(driver_error("memory info"))?;
        Ok(DeviceMemory { free: free as u64, total: total as u64 })
    }

    pub fn info(&self) -> Result<DeviceInfo, CudaError> {
        let memory = self.memory()?;
        Ok(DeviceInfo {
            ordinal: self.ordinal,
            name: self.ctx.name().map_err(driver_error("device name"))?,
            compute_capability: format!("{}.{}", self.arch.major, self.arch.minor),
            memory_free_bytes: memory.free,
            memory_total_bytes: memory.total,
        })
    }

    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(driver_error("synchronize"))
    }
}
