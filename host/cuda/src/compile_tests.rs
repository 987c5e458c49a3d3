//! Every kernel compiles through NVRTC for the architectures kiln ships for.
//! libnvrtc comes from the `nvidia-cuda-nvrtc-cu12` wheel, which `.ci/run`
//! installs and puts on `LD_LIBRARY_PATH`, setting `KILN_REQUIRE_NVRTC`:
//! then a missing NVRTC fails these tests; elsewhere they say they were
//! skipped.

use crate::compile::{self, Arch, CI_ARCHES, PtxCache, nvrtc_available};
use crate::kernels::{KernelSource, SOURCES};

fn nvrtc_or_skip() -> bool {
    if nvrtc_available() {
        return true;
    }
    assert!(
        std::env::var_os("KILN_REQUIRE_NVRTC").is_none(),
        "CI must compile the CUDA kernels: install nvidia-cuda-nvrtc-cu12 and put its lib folder on LD_LIBRARY_PATH"
    );
    eprintln!(
        "skipped: libnvrtc not found (pip install nvidia-cuda-nvrtc-cu12; add its lib folder to LD_LIBRARY_PATH)"
    );
    false
}

#[test]
fn every_kernel_compiles_for_ampere_and_hopper_with_its_entry_points() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in CI_ARCHES {
        for source in SOURCES {
            let ptx = compile::compile(source, *arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                ptx.contains(&format!(".target sm_{}{}", arch.major, arch.minor)),
                "{}: no target line",
                source.name
            );
            for entry in source.entries {
                assert!(ptx.contains(&format!(".entry {entry}(")), "{} for {arch:?} lacks entry {entry}", source.name);
            }
        }
    }
}

#[test]
fn a_kernel_that_does_not_compile_names_itself_and_the_line() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken = KernelSource {
        name: "broken",
        body: "extern \"C\" __global__ void f(float* x) {\n  x[0] = y;\n}\n",
        entries: &["f"],
    };
    let err = compile::compile(&broken, Arch { major: 8, minor: 0 }).unwrap_err().to_string();
    assert!(err.contains("broken") && err.contains("compute_80"), "{err}");
    assert!(err.contains("broken.cu(2)") && err.contains("\"y\""), "the compiler's log should point at line 2: {err}");
}

#[test]
fn compiled_ptx_is_cached_by_source_and_architecture() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = PtxCache::new(dir.path().join("kernels"));
    let source = &SOURCES[1];
    let first = cache.get(source, CI_ARCHES[0]).unwrap().to_src();
    let files: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    // A marked cache entry is what the next load returns: NVRTC is not called again.
    std::fs::write(&files[0], format!("// from the cache\n{first}")).unwrap();
    assert!(cache.get(source, CI_ARCHES[0]).unwrap().to_src().starts_with("// from the cache"));
    // Another architecture is another entry.
    cache.get(source, CI_ARCHES[1]).unwrap();
    assert_eq!(std::fs::read_dir(cache.dir()).unwrap().count(), 2);
}
