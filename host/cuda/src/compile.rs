//! CUDA C to PTX through NVRTC, for the device's architecture, cached on
//! disk by a hash of everything that shapes the output (source, target,
//! options, NVRTC's version), as compiled plugins are. A warm start loads
//! PTX from the cache without calling NVRTC at all.

use std::path::{Path, PathBuf};

use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use sha2::{Digest, Sha256};

use crate::CudaError;
use crate::kernels::KernelSource;

/// Architectures kiln compiles for in CI: Ampere (A100) and Hopper (H100, H200).
pub const CI_ARCHES: &[Arch] = &[Arch { major: 8, minor: 0 }, Arch { major: 9, minor: 0 }];

/// A compute capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
}

impl Arch {
    /// NVRTC's `--gpu-architecture` value: the virtual architecture, so the
    /// PTX also runs (through the driver's JIT) on later chips.
    pub fn nvrtc_target(&self) -> String {
        format!("compute_{}{}", self.major, self.minor)
    }
}

// No --use_fast_math: it turns tanhf and sincosf into approximations whose
// errors (GeGLU, soft-caps, RoPE at long positions) the CPU engine does not
// make, and parity with it is the check.
const OPTIONS: &[&str] = &["--std=c++17", "--extra-device-vectorization"];

/// Whether libnvrtc can be loaded (searched as cudarc does: `LD_LIBRARY_PATH`
/// and the loader's paths).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its known names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version, e.g. (12, 9); errors when the library cannot be loaded.
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::Unavailable("libnvrtc was not found (LD_LIBRARY_PATH)".into()));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is loaded (checked above); both pointers are valid.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| CudaError::Driver(format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

/// Compiles one source for `arch` (no cache).
pub fn compile(source: &KernelSource, arch: Arch) -> Result<String, CudaError> {
    nvrtc_version()?;
    let target = arch.nvrtc_target();
    let mut flags: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    flags.push(format!("--gpu-architecture={target}"));
    let options =
        CompileOptions { options: flags, name: Some(format!("{}.cu", source.name)), ..CompileOptions::default() };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source.full_source(), options).map_err(|e| {
        let log = match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        };
        CudaError::Compile { kernel: source.name.to_string(), arch: target, log }
    })?;
    Ok(ptx.to_src())
}

/// PTX compiled once per source, target and compiler, kept in a folder.
#[derive(Debug, Clone)]
pub struct PtxCache {
    dir: PathBuf,
}

impl PtxCache {
    pub fn new(dir: impl Into<PathBuf>) -> PtxCache {
        PtxCache { dir: dir.into() }
    }

    /// `<cache>/kiln/cuda-kernels` in the user's cache folder.
    pub fn default_location() -> Option<PtxCache> {
        dirs::cache_dir().map(|d| PtxCache::new(d.join("kiln").join("cuda-kernels")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key(source: &KernelSource, arch: Arch, nvrtc: (i32, i32)) -> String {
        let mut hash = Sha256::new();
        for part in [source.full_source().as_str(), &arch.nvrtc_target(), &format!("{nvrtc:?}"), &OPTIONS.join(" ")] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        format!("{}-{}-{}.ptx", source.name, arch.nvrtc_target(), &hex::encode(hash.finalize())[..16])
    }

    /// The source's PTX for `arch`: from the cache, else compiled and stored.
    /// A cache that cannot be written only costs the next start a compile.
    pub fn get(&self, source: &KernelSource, arch: Arch) -> Result<Ptx, CudaError> {
        let path = self.dir.join(Self::key(source, arch, nvrtc_version()?));
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Ok(Ptx::from_src(text));
        }
        let text = compile(source, arch)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let stored = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&tmp, &text))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = stored {
            tracing::warn!(path = %path.display(), error = %e, "could not cache compiled CUDA kernels");
        }
        Ok(Ptx::from_src(text))
    }
}
