//! One batched step on the device: embeddings, every layer, and the output
//! head for the rows that want logits, in the order `kiln-model`'s CPU pass
//! runs them (same RMSNorm, RoPE style, GQA, biases, norms and caps).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};

use super::CudaModel;
use crate::CudaError;
use crate::blocks::{BlockPool, SeqId};
use crate::model::ops::{AttnShape, StepIndex};

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy)]
pub struct StepItem<'a> {
    pub seq: SeqId,
    /// New tokens, appended at the sequence's next positions.
    pub tokens: &'a [u32],
    /// Whether to return the logits of the last of `tokens`.
    pub logits: bool,
}

/// Where a step's rows go: each token's position, sequence (its index in
/// the batch) and KV slot, and the batch's block tables (`max_blocks` per
/// sequence, zero-padded). Building it reserves the blocks the step writes.
#[derive(Debug, PartialEq)]
pub(crate) struct StepLayout {
    pub tokens: Vec<u32>,
    pub positions: Vec<i32>,
    pub q_seq: Vec<i32>,
    pub slots: Vec<i32>,
    pub block_tables: Vec<i32>,
    pub max_blocks: usize,
}

impl StepLayout {
    pub fn build(
        items: &[StepItem<'_>],
        lens: &HashMap<SeqId, usize>,
        pool: &mut BlockPool,
        max_context: usize,
        vocab: usize,
    ) -> Result<StepLayout, CudaError> {
        let mut seen = HashSet::new();
        for item in items {
            if !seen.insert(item.seq) {
                return Err(CudaError::Model(format!("sequence {} appears twice in one step", item.seq)));
            }
            let end = lens.get(&item.seq).copied().unwrap_or(0) + item.tokens.len();
            if end > max_context {
                return Err(CudaError::Model(format!(
                    "sequence would reach {end} tokens, over the context of {max_context}"
                )));
            }
            if let Some(&t) = item.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(CudaError::Model(format!("token id {t} is outside the vocabulary ({vocab})")));
            }
        }
        let mut layout = StepLayout {
            tokens: Vec::new(),
            positions: Vec::new(),
            q_seq: Vec::new(),
            slots: Vec::new(),
            block_tables: Vec::new(),
            max_blocks: 1,
        };
        for (b, item) in items.iter().enumerate() {
            let start = lens.get(&item.seq).copied().unwrap_or(0);
            pool.reserve(item.seq, start + item.tokens.len())?;
            for (j, &t) in item.tokens.iter().enumerate() {
                layout.tokens.push(t);
                layout.positions.push((start + j) as i32);
                layout.q_seq.push(b as i32);
                layout.slots.push(pool.slot(item.seq, start + j).expect("reserved above") as i32);
            }
        }
        layout.max_blocks = items.iter().map(|i| pool.table(i.seq).len()).max().unwrap_or(1).max(1);
        layout.block_tables = vec![0; items.len() * layout.max_blocks];
        for (b, item) in items.iter().enumerate() {
            for (j, &block) in pool.table(item.seq).iter().enumerate() {
                layout.block_tables[b * layout.max_blocks + j] = block as i32;
            }
        }
        Ok(layout)
    }
}

fn drv(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver(format!("{what}: {e}"))
}

fn zeros(s: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<f32>, CudaError> {
    s.alloc_zeros(n.max(1)).map_err(|e| CudaError::OutOfMemory(format!("step scratch of {n} floats: {e}")))
}

impl CudaModel {
    /// Runs one step; returns, per item, its last token's logits when asked.
    /// Nothing changes (lengths, blocks beyond those reserved) when it fails.
    pub fn forward(&mut self, items: &[StepItem<'_>]) -> Result<Vec<Option<Vec<f32>>>, CudaError> {
        let cfg = self.config.clone();
        let (d, hd, ff) = (cfg.n_embd, cfg.head_dim, cfg.n_ff);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let qkv_w = qd + 2 * kvd;
        let bt = self.options.block_tokens;

        let rows: usize = items.iter().map(|i| i.tokens.len()).sum();
        if rows > self.options.max_step_tokens {
            return Err(CudaError::Model(format!(
                "a step of {rows} token rows, over the {} the workspace was planned for",
                self.options.max_step_tokens
            )));
        }
        let layout = StepLayout::build(items, &self.lens, &mut self.pool, self.max_context, cfg.vocab_size)?;
        let t = layout.tokens.len();
        if t == 0 {
            return Ok(vec![None; items.len()]);
        }
        let max_blocks = layout.max_blocks;
        let s = self.dev.stream().clone();
        let k = &self.kernels;
        let up = |what: &'static str, v: &[i32]| s.clone_htod(v).map_err(drv(what));
        let index = StepIndex {
            positions: up("positions", &layout.positions)?,
            q_seq: up("query sequences", &layout.q_seq)?,
            slots: up("slots", &layout.slots)?,
            block_tables: up("block tables", &layout.block_tables)?,
        };
        let tokens_d = s.clone_htod(&layout.tokens).map_err(drv("tokens"))?;

        let mut x = zeros(&s, t * d)?;
        let mut xn = zeros(&s, t * d)?;
        let mut qkv = zeros(&s, t * qkv_w)?;
        let mut attn = zeros(&s, t * qd)?;
        let mut proj = zeros(&s, t * d)?;
        let mut gu = zeros(&s, t * 2 * ff)?;
        let mut h = zeros(&s, t * ff)?;

        let embed_scale = if cfg.arch.gemma() { (d as f32).sqrt() } else { 1.0 };
        k.embed(&s, &self.embedding, &tokens_d, &mut x, t, embed_scale)?;
        let neox = cfg.arch.rope_style() == kiln_model::RopeStyle::Halves;
        let scale = cfg.attention_scale.unwrap_or(1.0 / (hd as f32).sqrt());
        for (l, layer) in self.layers.iter().enumerate() {
            let window = cfg.sliding_window.as_ref().filter(|w| w.slides(l)).map(|w| w.window);
            let inv_freq = match (window, &self.inv_freq_local) {
                (Some(_), Some(local)) => local,
                _ => &self.inv_freq,
            };
            k.rms_norm(&s, &x.slice(..), &layer.attn_norm, &mut xn.slice_mut(..), t, d, cfg.rms_eps, None)?;
            let mut offset = 0;
            for m in &layer.qkv {
                k.matvec(&s, m, &xn.slice(..), &mut qkv.slice_mut(offset..), t, qkv_w)?;
                offset += m.rows;
            }
            if let Some(bias) = &layer.qkv_bias {
                k.add_bias(&s, &mut qkv, bias, t, qkv_w)?;
            }
            if let Some((qn, kn)) = &layer.qk_norm {
                k.rms_norm_heads(&s, &mut qkv.slice_mut(..), qn, t, cfg.n_head, hd, qkv_w, cfg.rms_eps)?;
                k.rms_norm_heads(&s, &mut qkv.slice_mut(qd..), kn, t, cfg.n_head_kv, hd, qkv_w, cfg.rms_eps)?;
            }
            let pos = &index.positions;
            k.rope(&s, &mut qkv.slice_mut(..), pos, inv_freq, t, cfg.n_head, hd, cfg.rope_dim, qkv_w, neox)?;
            k.rope(&s, &mut qkv.slice_mut(qd..), pos, inv_freq, t, cfg.n_head_kv, hd, cfg.rope_dim, qkv_w, neox)?;
            let (k_pool, v_pool) = &mut self.kv_pools[l];
            k.kv_write(&s, &qkv.slice(qd..), &qkv.slice(qd + kvd..), k_pool, v_pool, &index, t, kvd, qkv_w)?;
            let shape = AttnShape {
                heads: cfg.n_head,
                kv_heads: cfg.n_head_kv,
                head_dim: hd,
                q_stride: qkv_w,
                block_tokens: bt,
                max_blocks,
                scale,
                softcap: cfg.attn_softcap.unwrap_or(0.0),
                window: window.unwrap_or(0),
            };
            k.attention(&s, &qkv.slice(..), k_pool, v_pool, &index, &mut attn, t, shape)?;
            k.matvec(&s, &layer.wo, &attn.slice(..), &mut proj.slice_mut(..), t, d)?;
            if let Some((post_attn, _)) = &layer.post_norms {
                k.rms_norm(&s, &proj.slice(..), post_attn, &mut xn.slice_mut(..), t, d, cfg.rms_eps, None)?;
                k.add(&s, &mut x, &xn, t * d)?;
            } else {
                k.add(&s, &mut x, &proj, t * d)?;
            }
            k.rms_norm(&s, &x.slice(..), &layer.ffn_norm, &mut xn.slice_mut(..), t, d, cfg.rms_eps, None)?;
            let mut offset = 0;
            for m in &layer.gate_up {
                k.matvec(&s, m, &xn.slice(..), &mut gu.slice_mut(offset..), t, 2 * ff)?;
                offset += m.rows;
            }
            k.gated_act(&s, &gu, &mut h, t, ff, cfg.arch.gemma())?;
            k.matvec(&s, &layer.down, &h.slice(..), &mut proj.slice_mut(..), t, d)?;
            if let Some((_, post_ffn)) = &layer.post_norms {
                k.rms_norm(&s, &proj.slice(..), post_ffn, &mut xn.slice_mut(..), t, d, cfg.rms_eps, None)?;
                k.add(&s, &mut x, &xn, t * d)?;
            } else {
                k.add(&s, &mut x, &proj, t * d)?;
            }
        }

        // The output head runs on each asking sequence's last row only.
        let mut wanted = Vec::new();
        let mut last_row = 0;
        for (b, item) in items.iter().enumerate() {
            last_row += item.tokens.len();
            if item.logits && !item.tokens.is_empty() {
                wanted.push((b, (last_row - 1) as i32));
            }
        }
        let mut out = vec![None; items.len()];
        if !wanted.is_empty() {
            let w = wanted.len();
            let rows = s.clone_htod(&wanted.iter().map(|&(_, r)| r).collect::<Vec<_>>()).map_err(drv("rows"))?;
            let mut last = zeros(&s, w * d)?;
            k.rms_norm(&s, &x.slice(..), &self.output_norm, &mut last.slice_mut(..), w, d, cfg.rms_eps, Some(&rows))?;
            let head = self.output.as_ref().unwrap_or(&self.embedding);
            let mut logits = zeros(&s, w * head.rows)?;
            k.matvec(&s, head, &last.slice(..), &mut logits.slice_mut(..), w, head.rows)?;
            if let Some(cap) = cfg.final_softcap {
                k.softcap(&s, &mut logits, cap, w * head.rows)?;
            }
            let host = s.clone_dtoh(&logits).map_err(drv("logits"))?;
            for (chunk, &(b, _)) in host.chunks_exact(head.rows).zip(&wanted) {
                out[b] = Some(chunk[..cfg.vocab_size].to_vec());
            }
        } else {
            s.synchronize().map_err(drv("step"))?;
        }
        for item in items {
            *self.lens.entry(item.seq).or_default() += item.tokens.len();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_places_prefill_and_decode_rows_at_their_slots() {
        let mut pool = BlockPool::new(16, 4);
        let mut lens = HashMap::new();
        // Sequence 7 already holds 5 positions (two blocks); sequence 9 is new.
        pool.reserve(7, 5).unwrap();
        lens.insert(7, 5);
        let items = [
            StepItem { seq: 9, tokens: &[10, 11, 12, 13, 14, 15], logits: true },
            StepItem { seq: 7, tokens: &[20], logits: true },
        ];
        let layout = StepLayout::build(&items, &lens, &mut pool, 64, 100).unwrap();
        assert_eq!(layout.tokens, [10, 11, 12, 13, 14, 15, 20]);
        assert_eq!(layout.positions, [0, 1, 2, 3, 4, 5, 5]);
        assert_eq!(layout.q_seq, [0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(layout.max_blocks, 2);
        let (t9, t7) = (pool.table(9).to_vec(), pool.table(7).to_vec());
        assert_eq!(layout.block_tables, [t9[0] as i32, t9[1] as i32, t7[0] as i32, t7[1] as i32]);
        let slot = |table: &[u32], p: usize| (table[p / 4] * 4 + (p % 4) as u32) as i32;
        let want: Vec<i32> = (0..6).map(|p| slot(&t9, p)).chain([slot(&t7, 5)]).collect();
        assert_eq!(layout.slots, want);
        let mut all = layout.slots.clone();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 7, "two rows share a KV slot");
    }

    #[test]
    fn a_bad_step_is_refused_before_any_block_is_taken() {
        let mut pool = BlockPool::new(4, 4);
        let lens = HashMap::new();
        let free = pool.stats().free;
        for (items, want) in [
            (
                vec![
                    StepItem { seq: 1, tokens: &[1, 2], logits: true },
                    StepItem { seq: 1, tokens: &[3], logits: true },
                ],
                "twice",
            ),
            (vec![StepItem { seq: 1, tokens: &[1; 9], logits: true }], "over the context of 8"),
            (
                vec![
                    StepItem { seq: 2, tokens: &[1], logits: true },
                    StepItem { seq: 3, tokens: &[100], logits: true },
                ],
                "outside the vocabulary",
            ),
        ] {
            let err = StepLayout::build(&items, &lens, &mut pool, 8, 100).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
            assert_eq!(pool.stats().free, free);
        }
    }
}
