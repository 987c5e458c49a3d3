// The part of sampling that needs the whole vocabulary, done on the device
// so that only k candidates per sequence cross to the host: a sampler
// plugin's bias added and its allowed-set bitset applied, the result scaled
// by 1/temperature (the CPU sampler's order), then the k best (at most
// MAX_TOPK; non-finite scores never count) and their softmax probabilities
// over the k.

#define MAX_TOPK 64
#define TOPK_THREADS 1024

// Whether (va, ia) comes before (vb, ib): higher value first, lower id on ties.
__device__ __forceinline__ bool before(float va, int ia, float vb, int ib) {
    return va > vb || (va == vb && ia < ib);
}

// grid (sequences), block TOPK_THREADS. `bias` ([seq][vocab]) and `allowed`
// ([seq][ceil(vocab/32)] bits) are read only when their flags are set.
// Fewer than k allowed tokens: the rest of the row is id -1, probability 0.
extern "C" __global__ void topk_softmax(const float* __restrict__ logits, int vocab, int k, float inv_temp,
                                        const float* __restrict__ bias, int has_bias, const u32* __restrict__ allowed,
                                        int has_allowed, int* __restrict__ out_ids, float* __restrict__ out_probs) {
    __shared__ float s_val[TOPK_THREADS / WARP];
    __shared__ int s_id[TOPK_THREADS / WARP];
    __shared__ float top_val[MAX_TOPK];
    __shared__ int top_id[MAX_TOPK];
    int seq = blockIdx.x, lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    // Rows stay k wide; past MAX_TOPK they hold no candidates.
    const int kk = min(k, MAX_TOPK);
    const float* row = logits + (long long)seq * vocab;
    const float* brow = bias + (long long)seq * vocab;
    const u32* arow = allowed + (long long)seq * ((vocab + 31) / 32);
    float prev_v = INFINITY;
    int prev_i = -1;
    for (int t = 0; t < kk; t++) {
        float best_v = -INFINITY;
        int best_i = -1;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            if (has_allowed && !((arow[i / 32] >> (i % 32)) & 1)) continue;
            float v = (row[i] + (has_bias ? brow[i] : 0.0f)) * inv_temp;
            if (!isfinite(v)) continue;
            if (before(prev_v, prev_i, v, i) && (best_i < 0 || before(v, i, best_v, best_i))) {
                best_v = v;
                best_i = i;
            }
        }
        for (int o = WARP / 2; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(FULL_MASK, best_v, o);
            int oi = __shfl_xor_sync(FULL_MASK, best_i, o);
            if (oi >= 0 && (best_i < 0 || before(ov, oi, best_v, best_i))) {
                best_v = ov;
                best_i = oi;
            }
        }
        if (lane == 0) {
            s_val[warp] = best_v;
            s_id[warp] = best_i;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int w = 1; w < blockDim.x / WARP; w++)
                if (s_id[w] >= 0 && (best_i < 0 || before(s_val[w], s_id[w], best_v, best_i))) {
                    best_v = s_val[w];
                    best_i = s_id[w];
                }
            top_val[t] = best_v;
            top_id[t] = best_i;
        }
        __syncthreads();
        prev_v = top_val[t];
        prev_i = top_id[t];
        if (prev_i < 0) {
            // Nothing left: mark the rest empty.
            for (int r = t + threadIdx.x; r < kk; r += blockDim.x) top_id[r] = -1;
            __syncthreads();
            break;
        }
    }
    if (threadIdx.x == 0) {
        float max_v = top_val[0], sum = 0.0f;
        for (int t = 0; t < kk && top_id[t] >= 0; t++) sum += __expf(top_val[t] - max_v);
        for (int t = 0; t < k; t++) {
            bool live = t < kk && top_id[t] >= 0;
            out_ids[seq * k + t] = live ? top_id[t] : -1;
            out_probs[seq * k + t] = live ? __expf(top_val[t] - max_v) / sum : 0.0f;
        }
    }
}
