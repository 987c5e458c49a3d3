//! kiln-kernels: the hot loops of a CPU forward pass, owned by the host.
//!
//! Weights in GGUF's `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0` and K-quant (`Q4_K`,
//! `Q5_K`, `Q6_K`) formats are decoded once at load (`blocks`) and repacked
//! into one of the layouts that AVX2 and AVX-512 dot products read in one
//! pass (`matrix`), and every activation row is quantized to 8 bits per
//! 32-element block (per 256 for the K-quants, `acts`). One weight row
//! is then dotted against up to eight activation rows at a time, so a batch of
//! sequences reads the weights once per step (a matrix-matrix product, not
//! sixteen matrix-vector ones).
//!
//! The SIMD path is chosen at run time (`is_x86_feature_detected!`): AVX-512
//! with VNNI, else AVX2 + FMA, else a portable scalar loop that the tests use
//! as the reference for the others.

mod acts;
mod blocks;
mod matrix;
mod records;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_kquants;

pub use acts::{ActFormat, QuantizedActs};
pub use matrix::{QMatrix, WeightFormat};

/// Elements per quantization block (GGUF's `QK4_1` / `QK8_0`).
pub const BLOCK: usize = 32;

/// The instruction set the kernels run with on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Isa {
    /// The best path this CPU supports; `KILN_ISA=scalar|avx2` forces a lower one
    /// (for A/B benchmarks and for testing a path on a machine that has more).
    pub fn detect() -> Isa {
        let best = Self::best_available();
        match std::env::var("KILN_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            Ok("avx2") if best != Isa::Scalar => Isa::Avx2,
            _ => best,
        }
    }

    fn best_available() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("f16c")
                && is_x86_feature_detected!("fma")
            {
                return Isa::Avx512Vnni;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// The path every kernel of this process uses: [`Isa::detect`], once.
    pub fn current() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(Isa::detect)
    }

    /// `self`, or the best this CPU has if `self` asks for more (running an
    /// instruction the CPU lacks would be undefined behaviour).
    pub(crate) fn supported(self) -> Isa {
        let best = Self::best_available();
        if self as u8 > best as u8 { best } else { self }
    }

    /// Every path this machine can run, lowest first (used by the tests).
    pub fn all_available() -> Vec<Isa> {
        let best = Self::best_available();
        [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni].into_iter().filter(|isa| *isa as u8 <= best as u8).collect()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod kquant_tests;
