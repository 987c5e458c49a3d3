//! Rotary-embedding tables: the cosines and sines of every position, built
//! once per model (and once more for Gemma 3's sliding layers, whose base
//! differs).

/// `positions x rope_dim/2` cosines and sines.
#[derive(Debug, Default)]
pub(crate) struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Frequencies `base^(-2i/rope_dim)`, each divided by its factor
    /// (`rope_freqs.weight`, Llama 3.1+) and by the linear scale.
    pub fn new(rope_dim: usize, base: f32, linear_scale: f32, factors: Option<&[f32]>, positions: usize) -> Self {
        let half = rope_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                let f = 1.0 / base.powf(2.0 * i as f32 / rope_dim as f32);
                f / factors.map_or(1.0, |v| v[i]) / linear_scale
            })
            .collect();
        let mut table =
            RopeTable { half, cos: Vec::with_capacity(positions * half), sin: Vec::with_capacity(positions * half) };
        for pos in 0..positions {
            for f in &inv_freq {
                let theta = pos as f32 * f;
                table.cos.push(theta.cos());
                table.sin.push(theta.sin());
            }
        }
        table
    }

    /// Cosines and sines at `pos`.
    pub fn at(&self, pos: usize) -> (&[f32], &[f32]) {
        (&self.cos[pos * self.half..][..self.half], &self.sin[pos * self.half..][..self.half])
    }
}
