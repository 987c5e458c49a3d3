//! Which captured CUDA graph a decode step replays. A step's launches are
//! recorded once per batch-size bucket; a batch runs in the smallest bucket
//! that holds it, its unused rows padded (their outputs ignored), so a few
//! graphs cover every batch size and a decode step costs one launch.

/// Batch sizes with a captured graph: powers of two up to the largest batch,
/// and the largest batch itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphBuckets {
    sizes: Vec<usize>,
}

impl GraphBuckets {
    pub fn new(max_batch: usize) -> GraphBuckets {
        let max = max_batch.max(1);
        let mut sizes: Vec<usize> =
            std::iter::successors(Some(1usize), |s| s.checked_mul(2)).take_while(|&s| s < max).collect();
        sizes.push(max);
        GraphBuckets { sizes }
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The bucket a batch of `n` decode rows replays, or `None` when `n` is
    /// 0 or over the largest bucket (such a step runs uncaptured).
    pub fn bucket_for(&self, n: usize) -> Option<usize> {
        if n == 0 {
            return None;
        }
        self.sizes.iter().copied().find(|&s| s >= n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_capped_by_the_largest_batch() {
        assert_eq!(GraphBuckets::new(64).sizes(), [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(GraphBuckets::new(48).sizes(), [1, 2, 4, 8, 16, 32, 48]);
        assert_eq!(GraphBuckets::new(1).sizes(), [1]);
        assert_eq!(GraphBuckets::new(0).sizes(), [1]);
    }

    #[test]
    fn a_batch_runs_in_the_smallest_bucket_that_holds_it() {
        let buckets = GraphBuckets::new(48);
        for (n, want) in [(1, Some(1)), (3, Some(4)), (16, Some(16)), (17, Some(32)), (33, Some(48)), (48, Some(48))] {
            assert_eq!(buckets.bucket_for(n), want, "batch {n}");
        }
        assert_eq!(buckets.bucket_for(0), None);
        assert_eq!(buckets.bucket_for(49), None);
    }
}
