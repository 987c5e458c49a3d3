//! `kiln devices`: what CUDA this machine offers (driver, NVRTC, each
//! device's name and memory); `--self-test` runs every kernel against its
//! CPU reference, `--parity` the CUDA model against the CPU model, `--bench`
//! times the CUDA model. Prints JSON; exits 1 when a check fails, so
//! `tests/gpu/check.sh` can stop on it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use kiln_cuda::device::DeviceProbe;
use kiln_cuda::{CudaDevice, DriverProbe, PtxCache};
use serde_json::json;

use crate::gpu_check;

#[derive(clap::Args, Debug)]
pub struct DevicesArgs {
    /// Run each CUDA kernel against a CPU reference on the device (cuda:0 unless --device names another).
    #[arg(long)]
    self_test: bool,
    /// Greedy tokens of the CUDA model against the CPU model's on this GGUF file.
    #[arg(long, value_name = "GGUF")]
    parity: Option<PathBuf>,
    /// Tokens per prompt for --parity.
    #[arg(long, default_value_t = 64)]
    parity_tokens: usize,
    /// Time the CUDA model alone on this GGUF file (prefill, decode at 1, 16, 64 sequences).
    #[arg(long, value_name = "GGUF")]
    bench: Option<PathBuf>,
    /// The device's memory bandwidth in GB/s, for --bench's roofline fraction (H200: 4800).
    #[arg(long, default_value_t = 4800.0)]
    peak_gbps: f64,
    /// The device for --self-test, --parity and --bench.
    #[arg(long, default_value = "cuda:0")]
    device: kiln_cuda::DeviceRequest,
}

pub fn run(args: DevicesArgs) -> Result<()> {
    let cache = PtxCache::default_location().context("no cache folder for compiled CUDA kernels")?;
    let nvrtc = kiln_cuda::compile::nvrtc_version().map(|(a, b)| format!("{a}.{b}"));
    let count = DriverProbe.device_count();
    let mut devices = Vec::new();
    let mut report = json!({
        "nvrtc": nvrtc.as_ref().ok(),
        "nvrtc_error": nvrtc.as_ref().err().map(|e| e.to_string()),
        "driver_error": count.as_ref().err(),
        "kernel_cache": cache.dir(),
    });
    for ordinal in 0..*count.as_ref().unwrap_or(&0) {
        match CudaDevice::open(ordinal, &cache).and_then(|d| d.info()) {
            Ok(info) => devices.push(serde_json::to_value(info)?),
            Err(e) => devices.push(json!({ "ordinal": ordinal, "error": e.to_string() })),
        }
    }
    report["devices"] = devices.into();
    let mut failed = Vec::new();
    let wants_device = args.self_test || args.parity.is_some() || args.bench.is_some();
    if wants_device {
        let ordinal = match kiln_cuda::resolve(args.device, &DriverProbe)? {
            kiln_cuda::ResolvedDevice::Cuda(n) => n,
            kiln_cuda::ResolvedDevice::Cpu { reason } => {
                anyhow::bail!(
                    "these checks need a CUDA device: {}",
                    reason.unwrap_or_else(|| "cpu was asked for".into())
                )
            }
        };
        if args.self_test {
            let checks = kiln_cuda::selftest::run(&CudaDevice::open(ordinal, &cache)?)?;
            if checks.iter().any(|c| !c.pass) {
                failed.push("a kernel disagrees with its CPU reference (self_test)");
            }
            report["self_test"] = serde_json::to_value(checks)?;
        }
        if let Some(path) = &args.parity {
            let mut model = gpu_check::load(path, CudaDevice::open(ordinal, &cache)?)?;
            let parity = gpu_check::parity(path, &mut model, args.parity_tokens)?;
            if parity["identical"] != true {
                failed.push("greedy tokens differ between the CPU and CUDA models (parity)");
            }
            report["parity"] = parity;
        }
        if let Some(path) = &args.bench {
            let mut model = gpu_check::load(path, CudaDevice::open(ordinal, &cache)?)?;
            report["bench"] = gpu_check::bench(&mut model, args.peak_gbps)?;
            report["bench"]["model"] = json!(path);
        }
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !failed.is_empty() {
        anyhow::bail!("{}", failed.join("; "));
    }
    Ok(())
}
