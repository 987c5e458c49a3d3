//! Typed launches of kiln's kernels: each wrapper owns its grid arithmetic
//! and argument order, so the forward pass reads as the model it runs.

use candle_core::quantized::GgmlDType;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg};

use crate::CudaError;
use crate::runtime::CudaDevice;

/// A weight matrix on the device, in its GGUF encoding.
#[derive(Debug)]
pub struct DeviceMatrix {
    pub data: CudaSlice<u8>,
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
}

/// GGUF types the device kernels read, and their entry-point suffixes.
pub const DEVICE_TYPES: &[(GgmlDType, &str)] = &[
    (GgmlDType::F32, "f32"),
    (GgmlDType::F16, "f16"),
    (GgmlDType::Q4_1, "q4_1"),
    (GgmlDType::Q5_0, "q5_0"),
    (GgmlDType::Q8_0, "q8_0"),
    (GgmlDType::Q4K, "q4_k"),
    (GgmlDType::Q6K, "q6_k"),
];

fn type_index(dtype: GgmlDType) -> Option<usize> {
    DEVICE_TYPES.iter().position(|(t, _)| *t == dtype)
}

/// Whether the device kernels read `dtype`.
pub fn supported(dtype: GgmlDType) -> bool {
    type_index(dtype).is_some()
}

fn launch_err(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver(format!("launching {what}: {e}"))
}

fn linear(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: ((n as u32).div_ceil(block).max(1), 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// Every kernel the forward pass launches, looked up once.
#[derive(Debug)]
pub struct Kernels {
    matvec: Vec<CudaFunction>,
    embed: Vec<CudaFunction>,
    rms_norm: CudaFunction,
    rms_norm_heads: CudaFunction,
    rope: CudaFunction,
    gated_act: CudaFunction,
    add_inplace: CudaFunction,
    add_bias: CudaFunction,
    scale_inplace: CudaFunction,
    softcap_inplace: CudaFunction,
    kv_write: CudaFunction,
    attention: CudaFunction,
    kv_copy_blocks: CudaFunction,
    /// Passed for `rms_norm`'s row index when it does not gather.
    no_rows: CudaSlice<i32>,
}

/// What one attention launch reads besides the tensors.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub q_stride: usize,
    pub block_tokens: usize,
    pub max_blocks: usize,
    pub scale: f32,
    pub softcap: f32,
    /// 0: attend to every earlier position.
    pub window: usize,
}

/// The step's per-token and per-sequence index arrays, on the device.
#[derive(Debug)]
pub struct StepIndex {
    pub positions: CudaSlice<i32>,
    pub q_seq: CudaSlice<i32>,
    pub slots: CudaSlice<i32>,
    pub block_tables: CudaSlice<i32>,
}

impl Kernels {
    pub fn load(dev: &CudaDevice) -> Result<Kernels, CudaError> {
        let each = |prefix: &str| -> Result<Vec<CudaFunction>, CudaError> {
            DEVICE_TYPES.iter().map(|(_, name)| dev.function("quant", &format!("{prefix}_{name}"))).collect()
        };
        let e = |name: &str| dev.function("elementwise", name);
        Ok(Kernels {
            matvec: each("matvec")?,
            embed: each("embed")?,
            rms_norm: e("rms_norm")?,
            rms_norm_heads: e("rms_norm_heads")?,
            rope: e("rope")?,
            gated_act: e("gated_act")?,
            add_inplace: e("add_inplace")?,
            add_bias: e("add_bias")?,
            scale_inplace: e("scale_inplace")?,
            softcap_inplace: e("softcap_inplace")?,
            kv_write: dev.function("attention", "kv_write")?,
            attention: dev.function("attention", "attention")?,
            kv_copy_blocks: dev.function("attention", "kv_copy_blocks")?,
            no_rows: dev.stream().alloc_zeros(1).map_err(launch_err("alloc"))?,
        })
    }

    /// `y[c * y_stride + r] = w[r] . x[c]` for the `n` rows of `x`.
    pub fn matvec(
        &self,
        s: &CudaStream,
        w: &DeviceMatrix,
        x: &CudaView<f32>,
        y: &mut CudaViewMut<f32>,
        n: usize,
        y_stride: usize,
    ) -> Result<(), CudaError> {
        let f = &self.matvec[type_index(w.dtype).expect("checked at load")];
        let (rows, cols, nn, rb, ys) = (w.rows as i32, w.cols as i32, n as i32, w.row_bytes as i64, y_stride as i32);
        let cfg = LaunchConfig {
            grid_dim: ((w.rows as u32).div_ceil(4), (n as u32).div_ceil(8), 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(f);
        b.arg(&w.data).arg(x).arg(y).arg(&rows).arg(&cols).arg(&nn).arg(&rb).arg(&ys);
        // SAFETY: the arguments match matvec_*'s signature; x holds n x cols, y n x y_stride.
        unsafe { b.launch(cfg) }.map(drop).map_err(launch_err("matvec"))
    }

    /// `out[t] = scale * w[tokens[t]]`.
    pub fn embed(
        &self,
        s: &CudaStream,
        w: &DeviceMatrix,
        tokens: &CudaSlice<u32>,
        out: &mut CudaSlice<f32>,
        n: usize,
        scale: f32,
    ) -> Result<(), CudaError> {
        let f = &self.embed[type_index(w.dtype).expect("checked at load")];
        let (nn, cols, rb) = (n as i32, w.cols as i32, w.row_bytes as i64);
        let mut b = s.launch_builder(f);
        b.arg(&w.data).arg(tokens).arg(out).arg(&nn).arg(&cols).arg(&rb).arg(&scale);
        // SAFETY: as above; every token was checked against the vocabulary.
        unsafe { b.launch(linear(n * w.cols / 32, 128)) }.map(drop).map_err(launch_err("embed"))
    }

    /// RMSNorm of `rows` rows of `x` into `y`; with `gather`, row b of `y`
    /// normalizes row `gather[b]` of `x`.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        s: &CudaStream,
        x: &CudaView<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaViewMut<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
        gather: Option<&CudaSlice<i32>>,
    ) -> Result<(), CudaError> {
        let (d, g) = (dim as i32, gather.is_some() as i32);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut b = s.launch_builder(&self.rms_norm);
        b.arg(x).arg(w).arg(y).arg(&d).arg(&eps).arg(gather.unwrap_or(&self.no_rows)).arg(&g);
        // SAFETY: as above.
        unsafe { b.launch(cfg) }.map(drop).map_err(launch_err("rms_norm"))
    }

    /// Per-head RMSNorm in place over `heads` heads of each of `rows` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_heads(
        &self,
        s: &CudaStream,
        x: &mut CudaViewMut<f32>,
        w: &CudaSlice<f32>,
        rows: usize,
        heads: usize,
        head_dim: usize,
        row_stride: usize,
        eps: f32,
    ) -> Result<(), CudaError> {
        let (r, h, hd, st) = (rows as i32, heads as i32, head_dim as i32, row_stride as i32);
        let mut b = s.launch_builder(&self.rms_norm_heads);
        b.arg(x).arg(w).arg(&r).arg(&h).arg(&hd).arg(&st).arg(&eps);
        // SAFETY: as above.
        unsafe { b.launch(linear(rows * heads * 32, 128)) }.map(drop).map_err(launch_err("rms_norm_heads"))
    }

    /// RoPE in place on `heads` heads of each row.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        s: &CudaStream,
        x: &mut CudaViewMut<f32>,
        positions: &CudaSlice<i32>,
        inv_freq: &CudaSlice<f32>,
        rows: usize,
        heads: usize,
        head_dim: usize,
        rot_dim: usize,
        row_stride: usize,
        neox: bool,
    ) -> Result<(), CudaError> {
        let (r, h, hd, rd, st, nx) =
            (rows as i32, heads as i32, head_dim as i32, rot_dim as i32, row_stride as i32, neox as i32);
        let mut b = s.launch_builder(&self.rope);
        b.arg(x).arg(positions).arg(inv_freq).arg(&r).arg(&h).arg(&hd).arg(&rd).arg(&st).arg(&nx);
        // SAFETY: as above.
        unsafe { b.launch(linear(rows * heads * rot_dim / 2, 128)) }.map(drop).map_err(launch_err("rope"))
    }

    /// `out = act(gate) * up` over rows of gate|up side by side.
    pub fn gated_act(
        &self,
        s: &CudaStream,
        gu: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        rows: usize,
        ff: usize,
        gelu: bool,
    ) -> Result<(), CudaError> {
        let (r, k, g) = (rows as i32, ff as i32, gelu as i32);
        let mut b = s.launch_builder(&self.gated_act);
        b.arg(gu).arg(out).arg(&r).arg(&k).arg(&g);
        // SAFETY: as above.
        unsafe { b.launch(linear(rows * ff, 256)) }.map(drop).map_err(launch_err("gated_act"))
    }

    /// `x += y` over `n` elements.
    pub fn add(&self, s: &CudaStream, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>, n: usize) -> Result<(), CudaError> {
        let nn = n as i64;
        let mut b = s.launch_builder(&self.add_inplace);
        b.arg(x).arg(y).arg(&nn);
        // SAFETY: as above.
        unsafe { b.launch(linear(n, 256)) }.map(drop).map_err(launch_err("add"))
    }

    /// Adds `bias` (`width` wide) to each of `rows` rows.
    pub fn add_bias(
        &self,
        s: &CudaStream,
        x: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        rows: usize,
        width: usize,
    ) -> Result<(), CudaError> {
        let (r, w) = (rows as i32, width as i32);
        let mut b = s.launch_builder(&self.add_bias);
        b.arg(x).arg(bias).arg(&r).arg(&w);
        // SAFETY: as above.
        unsafe { b.launch(linear(rows * width, 256)) }.map(drop).map_err(launch_err("add_bias"))
    }

    pub fn scale(&self, s: &CudaStream, x: &mut CudaSlice<f32>, by: f32, n: usize) -> Result<(), CudaError> {
        let nn = n as i64;
        let mut b = s.launch_builder(&self.scale_inplace);
        b.arg(x).arg(&by).arg(&nn);
        // SAFETY: as above.
        unsafe { b.launch(linear(n, 256)) }.map(drop).map_err(launch_err("scale"))
    }

    pub fn softcap(&self, s: &CudaStream, x: &mut CudaSlice<f32>, cap: f32, n: usize) -> Result<(), CudaError> {
        let nn = n as i64;
        let mut b = s.launch_builder(&self.softcap_inplace);
        b.arg(x).arg(&cap).arg(&nn);
        // SAFETY: as above.
        unsafe { b.launch(linear(n, 256)) }.map(drop).map_err(launch_err("softcap"))
    }

    /// Writes the step's keys and values (rows `src_stride` apart) at their slots.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_write(
        &self,
        s: &CudaStream,
        k: &CudaView<f32>,
        v: &CudaView<f32>,
        k_pool: &mut CudaSlice<u16>,
        v_pool: &mut CudaSlice<u16>,
        index: &StepIndex,
        n: usize,
        kv_dim: usize,
        src_stride: usize,
    ) -> Result<(), CudaError> {
        let (nn, kd, st) = (n as i32, kv_dim as i32, src_stride as i32);
        let mut b = s.launch_builder(&self.kv_write);
        b.arg(k).arg(v).arg(k_pool).arg(v_pool).arg(&index.slots).arg(&nn).arg(&kd).arg(&st);
        // SAFETY: as above; every slot lies inside the pool (BlockPool hands them out).
        unsafe { b.launch(linear(n * kv_dim, 256)) }.map(drop).map_err(launch_err("kv_write"))
    }

    /// Copies blocks `src[i]` to `dst[i]` within one pool.
    pub fn kv_copy_blocks(
        &self,
        s: &CudaStream,
        pool: &mut CudaSlice<u16>,
        src: &CudaSlice<i32>,
        dst: &CudaSlice<i32>,
        n_blocks: usize,
        block_elems: usize,
    ) -> Result<(), CudaError> {
        let (n, e) = (n_blocks as i32, block_elems as i32);
        let mut b = s.launch_builder(&self.kv_copy_blocks);
        b.arg(pool).arg(src).arg(dst).arg(&n).arg(&e);
        // SAFETY: as above; both lists hold block ids of this pool.
        unsafe { b.launch(linear(n_blocks * block_elems, 256)) }.map(drop).map_err(launch_err("kv_copy_blocks"))
    }

    /// Attention of `n` query rows over the paged cache into `out` (n x heads x head_dim).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        s: &CudaStream,
        q: &CudaView<f32>,
        k_pool: &CudaSlice<u16>,
        v_pool: &CudaSlice<u16>,
        index: &StepIndex,
        out: &mut CudaSlice<f32>,
        n: usize,
        shape: AttnShape,
    ) -> Result<(), CudaError> {
        let a = shape;
        let ints = [
            a.heads as i32,
            a.kv_heads as i32,
            a.head_dim as i32,
            (a.kv_heads * a.head_dim) as i32,
            a.q_stride as i32,
            a.block_tokens as i32,
            a.max_blocks as i32,
        ];
        let window = a.window as i32;
        let mut b = s.launch_builder(&self.attention);
        b.arg(q).arg(k_pool).arg(v_pool).arg(&index.block_tables).arg(&index.q_seq).arg(&index.positions).arg(out);
        for v in &ints {
            b.arg(v);
        }
        b.arg(&a.scale).arg(&a.softcap).arg(&window);
        let cfg = LaunchConfig { grid_dim: (a.heads as u32, n as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: as above; every position's block is in its sequence's table.
        unsafe { b.launch(cfg) }.map(drop).map_err(launch_err("attention"))
    }
}
