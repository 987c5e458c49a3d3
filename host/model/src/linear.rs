//! Weight matrices: native kernels for `Q4_1`/`Q8_0`, candle-core's quantized
//! matmul for every other GGUF format.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Device, Module, Tensor};
use kiln_kernels::{QMatrix, QuantizedActs, WeightFormat};

use crate::{ModelError, Result};

/// One GGUF tensor's raw bytes and shape (`rows x cols`, row-major).
pub(crate) struct RawTensor {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

pub(crate) fn read_raw(file: &mut File, content: &Content, name: &str) -> Result<RawTensor> {
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
    let start = content.tensor_data_offset.saturating_add(info.offset);
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    if start.saturating_add(size as u64) > file_len {
        return Err(err(format!("needs {size} bytes at offset {start}, past the end of the file ({file_len} bytes)")));
    }
    let mut data = vec![0u8; size];
    let io = |e: std::io::Error| err(format!("reading {size} bytes: {e}"));
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    file.read_exact(&mut data).map_err(io)?;
    Ok(RawTensor { dtype: info.ggml_dtype, rows, cols, data })
}

fn native_format(dtype: GgmlDType) -> Option<WeightFormat> {
    match dtype {
        GgmlDType::Q4_1 => Some(WeightFormat::Q4_1),
        GgmlDType::Q8_0 => Some(WeightFormat::Q8_0),
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
    pub fn from_raw(name: &str, raw: RawTensor, f32_weights: bool) -> Result<Linear> {
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
                if !quantized {
                    acts.quantize(x, n, m.cols());
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
    pub fn load(file: &mut File, content: &Content, names: &[String], f32_weights: bool) -> Result<FusedLinear> {
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
            let data = raws.into_iter().flat_map(|r| r.data).collect();
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
