//! Weight matrices: native kernels for `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0` and the
//! K-quants `Q4_K`, `Q5_K`, `Q6_K`; candle-core's quantized matmul for every
//! other GGUF format (F32, F16, Q4_0, Q2_K, Q3_K, Q8_K).

use std::borrow::Cow;
use std::fs::File;
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Device, Module, Tensor};
use kiln_kernels::{QMatrix, QuantizedActs, WeightFormat};
use memmap2::Mmap;

use crate::{ModelError, Result};

/// One GGUF tensor's raw bytes and shape (`rows x cols`, row-major),
/// borrowed from the mapped file (owned once several are stacked).
pub struct RawTensor<'a> {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub data: Cow<'a, [u8]>,
}

impl std::fmt::Debug for RawTensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawTensor({:?}, {}x{}, {} bytes)", self.dtype, self.rows, self.cols, self.data.len())
    }
}

/// The model file mapped read-only: tensors are repacked straight from the
/// page cache, so loading holds no second copy of the file, and a large
/// model's resident memory is its repacked weights.
pub fn map_file(file: &File) -> Result<Mmap> {
    // SAFETY: the map is read-only and dropped when loading ends; a file
    // truncated by another process meanwhile would fault (as for any mmap
    // reader, llama.cpp's included), which is why the map is not kept.
    unsafe { Mmap::map(file) }.map_err(|e| ModelError::Gguf { path: "model file".into(), reason: format!("mmap: {e}") })
}

pub fn read_raw<'a>(file: &'a [u8], content: &Content, name: &str) -> Result<RawTensor<'a>> {
    let err = |reason: String| ModelError::Tensor { name: name.to_string(), reason };
    let info = content.tensor_infos.get(name).ok_or_else(|| err("absent".into()))?;
    let (rows, cols) = match *info.shape.dims() {
        [cols] => (1, cols),
        [rows, cols] => (rows, cols),
        ref dims => return Err(err(format!("expected a matrix, found shape {dims:?}"))),
    };
    let block = info.ggml_dtype.block_size();
    if cols % block != 0 {
        return Err(err(format!("{cols} columns is not a multiple of the block size {block}")));
    }
    let size = rows
        .checked_mul(cols / block)
        .and_then(|n| n.checked_mul(info.ggml_dtype.type_size()))
        .ok_or_else(|| err(format!("{rows}x{cols} is too large")))?;
    let start = usize::try_from(content.tensor_data_offset.saturating_add(info.offset)).unwrap_or(usize::MAX);
    // The map starts on a page boundary, so this keeps every tensor's f16/f32
    // fields aligned where candle's products read them in place. GGUF itself
    // aligns tensor data to 32 bytes (`general.alignment`, at least 8).
    if start % 8 != 0 {
        return Err(err(format!("data at offset {start} is not aligned to 8 bytes, as GGUF requires")));
    }
    let data = start.checked_add(size).and_then(|end| file.get(start..end)).ok_or_else(|| {
        err(format!("needs {size} bytes at offset {start}, past the end of the file ({} bytes)", file.len()))
    })?;
    Ok(RawTensor { dtype: info.ggml_dtype, rows, cols, data: Cow::Borrowed(data) })
}

fn native_format(dtype: GgmlDType) -> Option<WeightFormat> {
    match dtype {
        GgmlDType::Q4_1 => Some(WeightFormat::Q4_1),
        GgmlDType::Q8_0 => Some(WeightFormat::Q8_0),
        GgmlDType::Q5_0 => Some(WeightFormat::Q5_0),
        GgmlDType::Q5_1 => Some(WeightFormat::Q5_1),
        GgmlDType::Q4K => Some(WeightFormat::Q4K),
        GgmlDType::Q5K => Some(WeightFormat::Q5K),
        GgmlDType::Q6K => Some(WeightFormat::Q6K),
        _ => None,
    }
}

/// A `rows x cols` matrix applied as `y = x W^T`.
#[derive(Debug)]
pub(crate) enum Linear {
    Native(Arc<QMatrix>),
    Candle { mm: QMatMul, rows: usize, cols: usize },
}

impl Linear {
    /// `f32_weights`: dequantize at load and multiply in f32 (exact arithmetic,
    /// 4-8x the memory; the reference the quantized paths are checked against).
    pub fn from_raw(name: &str, raw: RawTensor<'_>, f32_weights: bool) -> Result<Linear> {
        if let (Some(format), false) = (native_format(raw.dtype), f32_weights) {
            let m = QMatrix::from_gguf(format, raw.rows, raw.cols, &raw.data).ok_or_else(|| ModelError::Tensor {
                name: name.into(),
                reason: "size does not match its shape".into(),
            })?;
            return Ok(Linear::Native(Arc::new(m)));
        }
        let qt = qtensor_from_ggml(raw.dtype, &raw.data, vec![raw.rows, raw.cols], &Device::Cpu)?;
        let mm = if f32_weights { QMatMul::Tensor(qt.dequantize(&Device::Cpu)?) } else { QMatMul::from_qtensor(qt)? };
        Ok(Linear::Candle { mm, rows: raw.rows, cols: raw.cols })
    }

    pub fn rows(&self) -> usize {
        match self {
            Linear::Native(m) => m.rows(),
            Linear::Candle { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Linear::Native(m) => m.cols(),
            Linear::Candle { cols, .. } => *cols,
        }
    }

    /// `out = x W^T` for `n` rows of `x`. `acts` is the caller's scratch for the
    /// quantized copy of `x`, already filled when `quantized` is true.
    pub fn forward(
        &self,
        x: &[f32],
        n: usize,
        acts: &mut QuantizedActs,
        quantized: bool,
        out: &mut [f32],
    ) -> Result<()> {
        match self {
            Linear::Native(m) => {
                // Parts of another format may have left `x` quantized another way.
                if !quantized || acts.format() != m.act_format() {
                    acts.quantize(x, n, m.cols(), m.act_format());
                }
                m.matmul(acts, out);
            }
            Linear::Candle { mm, cols, .. } => {
                let xt = Tensor::from_slice(x, (n, *cols), &Device::Cpu)?;
                let y = mm.forward(&xt)?.flatten_all()?.to_vec1::<f32>()?;
                out.copy_from_slice(&y);
            }
        }
        Ok(())
    }
}

/// Several matrices sharing one input whose outputs are concatenated per row
/// (Q/K/V, gate/up). When their formats agree they are stacked into one
/// matrix at load, so a step runs one product, not three.
#[derive(Debug)]
pub(crate) struct FusedLinear {
    parts: Vec<Linear>,
    rows: usize,
    scratch_split: bool,
}

impl FusedLinear {
    pub fn load(file: &[u8], content: &Content, names: &[String], f32_weights: bool) -> Result<FusedLinear> {
        let raws = names.iter().map(|n| read_raw(file, content, n)).collect::<Result<Vec<_>>>()?;
        let cols = raws[0].cols;
        if let Some(bad) = raws.iter().position(|r| r.cols != cols) {
            return Err(ModelError::Tensor {
                name: names[bad].clone(),
                reason: format!("{} columns, expected {cols}", raws[bad].cols),
            });
        }
        let rows = raws.iter().map(|r| r.rows).sum();
        let same_dtype = raws.iter().all(|r| r.dtype == raws[0].dtype);
        let parts = if same_dtype {
            let dtype = raws[0].dtype;
            let data = match raws.len() {
                1 => raws.into_iter().next().expect("one tensor").data,
                _ => Cow::Owned(raws.iter().flat_map(|r| r.data.iter().copied()).collect()),
            };
            vec![Linear::from_raw(&names.join("+"), RawTensor { dtype, rows, cols, data }, f32_weights)?]
        } else {
            names.iter().zip(raws).map(|(n, r)| Linear::from_raw(n, r, f32_weights)).collect::<Result<Vec<_>>>()?
        };
        let scratch_split = parts.len() > 1;
        Ok(FusedLinear { parts, rows, scratch_split })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.parts[0].cols()
    }

    /// `out` (`n x rows`) = `x` (`n x cols`) times every part, side by side.
    pub fn forward(&self, x: &[f32], n: usize, acts: &mut QuantizedActs, out: &mut [f32]) -> Result<()> {
        if !self.scratch_split {
            return self.parts[0].forward(x, n, acts, false, out);
        }
        let mut offset = 0;
        let mut tmp = Vec::new();
        let mut quantized = false;
        for part in &self.parts {
            let r = part.rows();
            tmp.resize(n * r, 0.0);
            part.forward(x, n, acts, quantized, &mut tmp)?;
            quantized |= matches!(part, Linear::Native(_));
            for t in 0..n {
                out[t * self.rows + offset..][..r].copy_from_slice(&tmp[t * r..(t + 1) * r]);
            }
            offset += r;
        }
        Ok(())
    }
}
