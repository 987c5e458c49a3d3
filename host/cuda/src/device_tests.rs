//! Tests that need a CUDA device: they pass, saying so, where none answers
//! (CI has none); `tests/gpu/check.sh` runs the same checks through the
//! `kiln` binary on a GPU machine.

use crate::device::DeviceProbe;
use crate::{CudaDevice, DriverProbe, PtxCache, selftest};

fn device_or_skip() -> Option<CudaDevice> {
    match DriverProbe.device_count() {
        Ok(n) if n > 0 => {}
        _ => {
            eprintln!("skipped: no CUDA device");
            return None;
        }
    }
    let cache = PtxCache::new(tempfile::tempdir().unwrap().keep());
    Some(CudaDevice::open(0, &cache).expect("a device answered but could not be opened"))
}

#[test]
fn every_kernel_matches_its_cpu_reference_on_a_device() {
    let Some(dev) = device_or_skip() else { return };
    let checks = selftest::run(&dev).unwrap();
    let failed: Vec<_> = checks.iter().filter(|c| !c.pass).collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn a_device_reports_its_name_and_memory() {
    let Some(dev) = device_or_skip() else { return };
    let info = dev.info().unwrap();
    assert!(!info.name.is_empty() && info.memory_total_bytes > 0 && info.memory_free_bytes <= info.memory_total_bytes);
}
