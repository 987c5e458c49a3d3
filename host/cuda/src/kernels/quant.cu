// Quantized weights: matrix-vector products for decode (a warp per output
// row, up to 8 activation rows per pass), dequantization to f16 for the
// tensor-core path of prefill and large batches, and embedding lookups.
//
// Every GGUF type is read in units of 32 consecutive weights of one row
// (a Q4_1/Q5_0/Q8_0 block, or an eighth of a Q4_K/Q6_K super-block), so one
// loop serves all types and a warp's lanes share out a row's units evenly
// even where a row holds only a few 256-weight super-blocks.

#define MAXN 8

enum QType { T_F32 = 0, T_F16 = 1, T_Q4_1 = 2, T_Q5_0 = 3, T_Q8_0 = 4, T_Q4_K = 5, T_Q6_K = 6 };

template <int T>
__device__ __forceinline__ void unit32(const u8* __restrict__ row, int u, float* w) {
    if (T == T_F32) {
        const u8* p = row + u * 128;
        for (int i = 0; i < 32; i++) w[i] = __int_as_float((int)load_u32(p + 4 * i));
    } else if (T == T_F16) {
        const u8* p = row + u * 64;
        for (int i = 0; i < 32; i++) w[i] = load_h(p + 2 * i);
    } else if (T == T_Q4_1) {
        const u8* p = row + u * 20;
        float d = load_h(p), m = load_h(p + 2);
        const u8* qs = p + 4;
        for (int i = 0; i < 16; i++) {
            w[i] = (qs[i] & 0xF) * d + m;
            w[i + 16] = (qs[i] >> 4) * d + m;
        }
    } else if (T == T_Q5_0) {
        const u8* p = row + u * 22;
        float d = load_h(p);
        u32 qh = load_u32(p + 2);
        const u8* qs = p + 6;
        for (int i = 0; i < 16; i++) {
            int lo = (qs[i] & 0xF) | (((qh >> i) & 1) << 4);
            int hi = (qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4);
            w[i] = d * (lo - 16);
            w[i + 16] = d * (hi - 16);
        }
    } else if (T == T_Q8_0) {
        const u8* p = row + u * 34;
        float d = load_h(p);
        const i8* qs = (const i8*)(p + 2);
        for (int i = 0; i < 32; i++) w[i] = d * qs[i];
    } else if (T == T_Q4_K) {
        // block_q4_K: d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles.
        const u8* p = row + (u / 8) * 144;
        int j = u % 8;
        float d = load_h(p), dmin = load_h(p + 2);
        const u8* sc = p + 4;
        int s, m;
        if (j < 4) {
            s = sc[j] & 63;
            m = sc[j + 4] & 63;
        } else {
            s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
            m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
        }
        float scale = d * s, min = dmin * m;
        const u8* q = p + 16 + 32 * (j / 2);
        int shift = (j % 2) * 4;
        for (int i = 0; i < 32; i++) w[i] = scale * ((q[i] >> shift) & 0xF) - min;
    } else if (T == T_Q6_K) {
        // block_q6_K: ql[128], qh[64], scales[16] (i8), d (f16).
        const u8* p = row + (u / 8) * 210;
        int j = u % 8, half = j / 4, k = j % 4;
        const u8* ql = p + 64 * half + (k % 2) * 32;
        const u8* qh = p + 128 + 32 * half;
        const i8* sc = (const i8*)(p + 192) + 8 * half + 2 * k;
        float d = load_h(p + 208);
        int lshift = (k / 2) * 4, hshift = 2 * k;
        for (int i = 0; i < 32; i++) {
            int q = ((ql[i] >> lshift) & 0xF) | (((qh[i] >> hshift) & 3) << 4);
            w[i] = d * sc[i / 16] * (q - 32);
        }
    }
}

// y[c * y_stride + r] = sum_k w[r][k] * x[c][k] for c < n: grid (ceil(rows / warps), ceil(n / MAXN)).
// `y_stride` lets products land side by side in one buffer (Q|K|V, gate|up).
template <int T>
__device__ void matvec(const u8* __restrict__ w, const float* __restrict__ x, float* __restrict__ y, int rows,
                       int cols, int n, long long row_bytes, int y_stride) {
    int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    int r = blockIdx.x * (blockDim.x / WARP) + warp;
    if (r >= rows) return;
    int c0 = blockIdx.y * MAXN;
    int nc = min(MAXN, n - c0);
    const u8* row = w + (long long)r * row_bytes;
    float acc[MAXN];
    for (int j = 0; j < MAXN; j++) acc[j] = 0.0f;
    float v[32];
    for (int u = lane; u < cols / 32; u += WARP) {
        unit32<T>(row, u, v);
        for (int j = 0; j < MAXN; j++) {
            if (j < nc) {
                const float* xx = x + (long long)(c0 + j) * cols + u * 32;
                float s = 0.0f;
                for (int i = 0; i < 32; i++) s += v[i] * xx[i];
                acc[j] += s;
            }
        }
    }
    for (int j = 0; j < MAXN; j++) {
        float s = warp_sum(acc[j]);
        if (lane == 0 && j < nc) y[(long long)(c0 + j) * y_stride + r] = s;
    }
}

// out[r][k] as f16, a thread per 32-weight unit.
template <int T>
__device__ void dequant_f16(const u8* __restrict__ w, u16* __restrict__ out, int rows, int cols, long long row_bytes) {
    long long unit = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int per_row = cols / 32;
    if (unit >= (long long)rows * per_row) return;
    int r = unit / per_row, u = unit % per_row;
    float v[32];
    unit32<T>(w + (long long)r * row_bytes, u, v);
    u16* o = out + (long long)r * cols + u * 32;
    for (int i = 0; i < 32; i++) o[i] = f2h(v[i]);
}

// out[t] = scale * row tokens[t] of the embedding table, a thread per unit.
template <int T>
__device__ void embed(const u8* __restrict__ w, const u32* __restrict__ tokens, float* __restrict__ out, int n,
                      int cols, long long row_bytes, float scale) {
    long long unit = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int per_row = cols / 32;
    if (unit >= (long long)n * per_row) return;
    int t = unit / per_row, u = unit % per_row;
    float v[32];
    unit32<T>(w + (long long)tokens[t] * row_bytes, u, v);
    float* o = out + (long long)t * cols + u * 32;
    for (int i = 0; i < 32; i++) o[i] = v[i] * scale;
}

#define KILN_QUANT_ENTRIES(NAME, T)                                                                              \
    extern "C" __global__ void matvec_##NAME(const u8* w, const float* x, float* y, int rows, int cols, int n,     \
                                             long long row_bytes, int y_stride) {                                \
        matvec<T>(w, x, y, rows, cols, n, row_bytes, y_stride);                                                  \
    }                                                                                                            \
    extern "C" __global__ void dequant_f16_##NAME(const u8* w, u16* out, int rows, int cols, long long row_bytes) { \
        dequant_f16<T>(w, out, rows, cols, row_bytes);                                                           \
    }                                                                                                            \
    extern "C" __global__ void embed_##NAME(const u8* w, const u32* tokens, float* out, int n, int cols,          \
                                            long long row_bytes, float scale) {                                  \
        embed<T>(w, tokens, out, n, cols, row_bytes, scale);                                                     \
    }

KILN_QUANT_ENTRIES(f32, T_F32)
KILN_QUANT_ENTRIES(f16, T_F16)
KILN_QUANT_ENTRIES(q4_1, T_Q4_1)
KILN_QUANT_ENTRIES(q5_0, T_Q5_0)
KILN_QUANT_ENTRIES(q8_0, T_Q8_0)
KILN_QUANT_ENTRIES(q4_k, T_Q4_K)
KILN_QUANT_ENTRIES(q6_k, T_Q6_K)
