// Attention over the paged KV cache. Keys and values of one layer live in
// pools of fixed-size blocks ([block][token in block][kv_dim], f16); each
// sequence's block table lists its blocks in position order.

// Writes each new token's key and value rows at its slot (block id x block
// size + offset), a thread per element.
extern "C" __global__ void kv_write(const float* __restrict__ k, const float* __restrict__ v, u16* __restrict__ k_pool,
                                    u16* __restrict__ v_pool, const int* __restrict__ slots, int n, int kv_dim,
                                    int src_stride) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * kv_dim) return;
    int t = i / kv_dim, d = i % kv_dim;
    long long dst = (long long)slots[t] * kv_dim + d;
    k_pool[dst] = f2h(k[(long long)t * src_stride + d]);
    v_pool[dst] = f2h(v[(long long)t * src_stride + d]);
}

#define ATTN_WARPS 4
#define MAX_HEAD_DIM 256

// One query row per (head, query): the query at position q_pos[qi] of
// sequence q_seq[qi] attends causally to that sequence's positions
// [start, q_pos] (start > 0 inside a sliding window). Each warp runs an
// online softmax over every ATTN_WARPS-th position, then the warps merge.
// `softcap` > 0 caps scores as Gemma 2 does. grid (heads, queries), block ATTN_WARPS * 32.
extern "C" __global__ void attention(const float* __restrict__ q, const u16* __restrict__ k_pool,
                                     const u16* __restrict__ v_pool, const int* __restrict__ block_tables,
                                     const int* __restrict__ q_seq, const int* __restrict__ q_pos,
                                     float* __restrict__ out, int heads, int kv_heads, int head_dim, int kv_dim,
                                     int q_stride, int block_tokens, int max_blocks, float scale, float softcap,
                                     int window) {
    __shared__ float s_m[ATTN_WARPS], s_l[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][MAX_HEAD_DIM];
    int h = blockIdx.x, qi = blockIdx.y;
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int kvh = h / (heads / kv_heads);
    const float* qv = q + (long long)qi * q_stride + h * head_dim;
    const int* table = block_tables + (long long)q_seq[qi] * max_blocks;
    int last = q_pos[qi];
    int start = window > 0 ? max(0, last - window + 1) : 0;
    const int per_lane = (head_dim + WARP - 1) / WARP;
    float qr[MAX_HEAD_DIM / WARP], acc[MAX_HEAD_DIM / WARP];
    for (int i = 0; i < per_lane; i++) {
        int d = lane + i * WARP;
        qr[i] = d < head_dim ? qv[d] * scale : 0.0f;
        acc[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int p = start + warp; p <= last; p += ATTN_WARPS) {
        long long row = ((long long)table[p / block_tokens] * block_tokens + p % block_tokens) * kv_dim + kvh * head_dim;
        float s = 0.0f;
        for (int i = 0; i < per_lane; i++) {
            int d = lane + i * WARP;
            if (d < head_dim) s += qr[i] * h2f(k_pool[row + d]);
        }
        s = warp_sum(s);
        if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
        float m_new = fmaxf(m, s);
        float correction = __expf(m - m_new), e = __expf(s - m_new);
        l = l * correction + e;
        for (int i = 0; i < per_lane; i++) {
            int d = lane + i * WARP;
            float v = d < head_dim ? h2f(v_pool[row + d]) : 0.0f;
            acc[i] = acc[i] * correction + e * v;
        }
        m = m_new;
    }
    if (lane == 0) {
        s_m[warp] = m;
        s_l[warp] = l;
    }
    for (int i = 0; i < per_lane; i++) {
        int d = lane + i * WARP;
        if (d < head_dim) s_acc[warp][d] = acc[i];
    }
    __syncthreads();
    if (warp == 0) {
        float gm = -INFINITY;
        for (int w = 0; w < ATTN_WARPS; w++) gm = fmaxf(gm, s_m[w]);
        float gl = 0.0f;
        for (int w = 0; w < ATTN_WARPS; w++) gl += s_m[w] == -INFINITY ? 0.0f : s_l[w] * __expf(s_m[w] - gm);
        float* o = out + (long long)qi * heads * head_dim + h * head_dim;
        for (int i = 0; i < per_lane; i++) {
            int d = lane + i * WARP;
            if (d >= head_dim) continue;
            float sum = 0.0f;
            for (int w = 0; w < ATTN_WARPS; w++)
                if (s_m[w] != -INFINITY) sum += s_acc[w][d] * __expf(s_m[w] - gm);
            o[d] = sum / gl;
        }
    }
}

// Copies whole KV blocks within one layer's pool: block dst[i] becomes a
// copy of block src[i] (a prompt prefix kept for reuse). A thread per element.
extern "C" __global__ void kv_copy_blocks(u16* __restrict__ pool, const int* __restrict__ src,
                                          const int* __restrict__ dst, int n_blocks, int block_elems) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n_blocks * block_elems) return;
    int b = i / block_elems, e = i % block_elems;
    pool[(long long)dst[b] * block_elems + e] = pool[(long long)src[b] * block_elems + e];
}
