//! The paged KV cache's bookkeeping: a pool of fixed-size blocks and each
//! sequence's block table (vLLM's PagedAttention layout). The device holds
//! the blocks; this is the host's record of who owns which, what the
//! attention kernel's block tables and slot mapping are built from, and what
//! admission asks before a sequence may start.

use std::collections::HashMap;

use crate::CudaError;

/// A sequence's key in the pool (the engine's sequence id).
pub type SeqId = u64;

/// Blocks in use and free, for `/metrics` (`kiln_kv_blocks{state}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStats {
    pub free: usize,
    pub used: usize,
}

#[derive(Debug)]
pub struct BlockPool {
    block_tokens: usize,
    total: usize,
    /// Free block ids; popped from the end, so recently freed blocks (still
    /// in L2) are reused first.
    free: Vec<u32>,
    tables: HashMap<SeqId, Vec<u32>>,
}

impl BlockPool {
    pub fn new(blocks: usize, block_tokens: usize) -> BlockPool {
        assert!(block_tokens > 0, "a KV block holds at least one token");
        let ids = u32::try_from(blocks).expect("block ids fit in u32");
        BlockPool { block_tokens, total: blocks, free: (0..ids).rev().collect(), tables: HashMap::new() }
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// Blocks that `tokens` positions occupy.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_tokens)
    }

    /// Whether a new sequence of `tokens` positions would get its blocks now
    /// (else it waits in the queue).
    pub fn can_admit(&self, tokens: usize) -> bool {
        self.blocks_for(tokens) <= self.free.len()
    }

    /// Grows `seq`'s table to hold `len` positions, all or nothing: when the
    /// pool is short, nothing is taken and the error says by how much.
    pub fn reserve(&mut self, seq: SeqId, len: usize) -> Result<&[u32], CudaError> {
        let have = self.tables.get(&seq).map_or(0, Vec::len);
        let want = self.blocks_for(len);
        if want > have {
            let needed = want - have;
            if needed > self.free.len() {
                return Err(CudaError::KvFull { needed, free: self.free.len() });
            }
            let at = self.free.len() - needed;
            let taken = self.free.split_off(at);
            self.tables.entry(seq).or_default().extend(taken.into_iter().rev());
        }
        Ok(self.table(seq))
    }

    /// `seq`'s blocks in position order (empty for an unknown sequence).
    pub fn table(&self, seq: SeqId) -> &[u32] {
        self.tables.get(&seq).map_or(&[], Vec::as_slice)
    }

    /// Where position `pos` of `seq` is written: block id x block size + offset.
    pub fn slot(&self, seq: SeqId, pos: usize) -> Option<u32> {
        let block = *self.table(seq).get(pos / self.block_tokens)?;
        Some(block * self.block_tokens as u32 + (pos % self.block_tokens) as u32)
    }

    /// Keeps the blocks that hold `seq`'s first `len` positions, returning the rest.
    pub fn truncate(&mut self, seq: SeqId, len: usize) {
        let keep = self.blocks_for(len);
        if let Some(table) = self.tables.get_mut(&seq)
            && table.len() > keep
        {
            let freed = table.split_off(keep);
            self.free.extend(freed.into_iter().rev());
        }
    }

    /// Returns `seq`'s blocks to the pool (a finished or cancelled sequence).
    pub fn release(&mut self, seq: SeqId) {
        if let Some(blocks) = self.tables.remove(&seq) {
            self.free.extend(blocks.into_iter().rev());
        }
    }

    pub fn stats(&self) -> BlockStats {
        BlockStats { free: self.free.len(), used: self.total - self.free.len() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_grows_a_block_at_a_time_and_slots_follow_its_table() {
        let mut pool = BlockPool::new(8, 16);
        assert_eq!(pool.reserve(1, 1).unwrap().len(), 1);
        assert_eq!(pool.reserve(1, 16).unwrap().len(), 1);
        let table = pool.reserve(1, 17).unwrap().to_vec();
        assert_eq!(table.len(), 2);
        assert_eq!(pool.slot(1, 0), Some(table[0] * 16));
        assert_eq!(pool.slot(1, 17), Some(table[1] * 16 + 1));
        assert_eq!(pool.slot(1, 32), None);
        assert_eq!(pool.stats(), BlockStats { free: 6, used: 2 });
    }

    #[test]
    fn no_block_is_owned_twice_and_release_returns_them_all() {
        let mut pool = BlockPool::new(64, 4);
        for seq in 0..8 {
            pool.reserve(seq, 4 * (seq as usize + 1)).unwrap();
        }
        let mut owned: Vec<u32> = (0..8).flat_map(|s| pool.table(s).to_vec()).collect();
        let n = owned.len();
        owned.sort_unstable();
        owned.dedup();
        assert_eq!(owned.len(), n, "a block appears in two tables");
        assert_eq!(pool.stats().used, 36);
        for seq in 0..8 {
            pool.release(seq);
        }
        assert_eq!(pool.stats(), BlockStats { free: 64, used: 0 });
        pool.release(99);
    }

    #[test]
    fn truncating_keeps_the_blocks_of_the_kept_positions_only() {
        let mut pool = BlockPool::new(8, 4);
        let table = pool.reserve(1, 13).unwrap().to_vec();
        pool.truncate(1, 5);
        assert_eq!(pool.table(1), &table[..2]);
        assert_eq!(pool.stats(), BlockStats { free: 6, used: 2 });
        pool.truncate(1, 8);
        assert_eq!(pool.table(1).len(), 2);
        pool.truncate(1, 0);
        assert_eq!(pool.stats().used, 0);
    }

    #[test]
    fn a_short_pool_takes_nothing_and_says_how_short() {
        let mut pool = BlockPool::new(4, 16);
        pool.reserve(1, 48).unwrap();
        assert!(pool.can_admit(16) && !pool.can_admit(17));
        let err = pool.reserve(2, 33).unwrap_err();
        assert!(matches!(err, CudaError::KvFull { needed: 3, free: 1 }), "{err}");
        assert!(pool.table(2).is_empty());
        assert_eq!(pool.stats().free, 1);
        // A failed grow of an existing sequence keeps what it had.
        assert!(pool.reserve(1, 80).is_err());
        assert_eq!(pool.table(1).len(), 3);
    }
}
