//! kiln's CUDA kernel sources, each compiled by NVRTC as its own module with
//! `common.cuh` in front, and the entry points each must export.

/// One compilation unit.
#[derive(Debug)]
pub struct KernelSource {
    pub name: &'static str,
    pub body: &'static str,
    /// `extern "C"` kernels the engine launches from this module.
    pub entries: &'static [&'static str],
}

const COMMON: &str = include_str!("kernels/common.cuh");

/// GGUF types the device kernels read, by the suffix of their entry points.
pub const QUANT_TYPES: &[&str] = &["f32", "f16", "q4_1", "q5_0", "q8_0", "q4_k", "q6_k"];

pub const SOURCES: &[KernelSource] = &[
    KernelSource {
        name: "quant",
        body: include_str!("kernels/quant.cu"),
        entries: &[
            "matvec_f32",
            "matvec_f16",
            "matvec_q4_1",
            "matvec_q5_0",
            "matvec_q8_0",
            "matvec_q4_k",
            "matvec_q6_k",
            "dequant_f16_f32",
            "dequant_f16_f16",
            "dequant_f16_q4_1",
            "dequant_f16_q5_0",
            "dequant_f16_q8_0",
            "dequant_f16_q4_k",
            "dequant_f16_q6_k",
            "embed_f32",
            "embed_f16",
            "embed_q4_1",
            "embed_q5_0",
            "embed_q8_0",
            "embed_q4_k",
            "embed_q6_k",
        ],
    },
    KernelSource {
        name: "elementwise",
        body: include_str!("kernels/elementwise.cu"),
        entries: &[
            "rms_norm",
            "rms_norm_heads",
            "rope",
            "gated_act",
            "add_inplace",
            "add_bias",
            "scale_inplace",
            "softcap_inplace",
        ],
    },
    KernelSource {
        name: "attention",
        body: include_str!("kernels/attention.cu"),
        entries: &["kv_write", "attention", "kv_copy_blocks"],
    },
    KernelSource { name: "sampling", body: include_str!("kernels/sampling.cu"), entries: &["topk_softmax"] },
];

impl KernelSource {
    /// The text NVRTC compiles.
    pub fn full_source(&self) -> String {
        format!("{COMMON}\n#line 1 \"{}.cu\"\n{}", self.name, self.body)
    }
}

/// Looks a source up by name.
pub fn source(name: &str) -> Option<&'static KernelSource> {
    SOURCES.iter().find(|s| s.name == name)
}
