// The small ops between products: RMSNorm, RoPE, gated activations,
// residual adds and biases. Row-major f32 activations throughout.

// y[b] = x[src] / rms(x[src]) * w, src = rows[b] when `gather` (the last
// row of each sequence, for the output head) else b: a block per row.
// In place (x == y) is safe: each thread rewrites only what it read.
extern "C" __global__ void rms_norm(const float* x, const float* __restrict__ w, float* y, int dim, float eps,
                                    const int* __restrict__ rows, int gather) {
    __shared__ float scratch[32];
    const float* xr = x + (long long)(gather ? rows[blockIdx.x] : blockIdx.x) * dim;
    float* yr = y + (long long)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    float inv = rsqrtf(block_sum(ss, scratch) / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// Per-head RMSNorm in place (Qwen3's and Gemma 3's Q/K norms): head h of
// row r starts at r * row_stride + h * head_dim. A warp per head.
extern "C" __global__ void rms_norm_heads(float* x, const float* __restrict__ w, int rows, int heads, int head_dim,
                                         int row_stride, float eps) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / WARP, lane = threadIdx.x % WARP;
    if (warp >= rows * heads) return;
    float* v = x + (long long)(warp / heads) * row_stride + (warp % heads) * head_dim;
    float ss = 0.0f;
    for (int i = lane; i < head_dim; i += WARP) ss += v[i] * v[i];
    float inv = rsqrtf(warp_sum(ss) / head_dim + eps);
    for (int i = lane; i < head_dim; i += WARP) v[i] = v[i] * inv * w[i];
}

// Rotates the first `rot_dim` dimensions of each of `heads` heads of every
// row in place, by angle pos[row] * inv_freq[pair]. `neox`: pairs are
// (i, i + rot_dim/2) (GPT-NeoX, Qwen, Phi-3, Gemma); else adjacent (Llama GGUF).
extern "C" __global__ void rope(float* __restrict__ x, const int* __restrict__ pos, const float* __restrict__ inv_freq,
                                int rows, int heads, int head_dim, int rot_dim, int row_stride, int neox) {
    int pairs = rot_dim / 2;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * heads * pairs) return;
    int p = i % pairs;
    int h = (i / pairs) % heads;
    int r = i / ((long long)pairs * heads);
    float* base = x + (long long)r * row_stride + h * head_dim;
    float s, c;
    sincosf(pos[r] * inv_freq[p], &s, &c);
    int a = neox ? p : 2 * p, b = neox ? p + pairs : 2 * p + 1;
    float x0 = base[a], x1 = base[b];
    base[a] = x0 * c - x1 * s;
    base[b] = x0 * s + x1 * c;
}

// out[r][i] = act(gu[r][i]) * gu[r][ff + i]: the gate|up product's rows,
// side by side. `gelu`: GeGLU with tanh GELU (Gemma), else SwiGLU.
extern "C" __global__ void gated_act(const float* __restrict__ gu, float* __restrict__ out, int rows, int ff, int gelu) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)rows * ff) return;
    long long r = i / ff;
    int k = i % ff;
    float g = gu[r * 2 * ff + k], u = gu[r * 2 * ff + ff + k];
    float a = gelu ? 0.5f * g * (1.0f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g))) : g / (1.0f + __expf(-g));
    out[i] = a * u;
}

// x += y, elementwise.
extern "C" __global__ void add_inplace(float* __restrict__ x, const float* __restrict__ y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// Adds a bias of `width` to each of `rows` rows (Qwen2's Q/K/V biases).
extern "C" __global__ void add_bias(float* __restrict__ x, const float* __restrict__ bias, int rows, int width) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < (long long)rows * width) x[i] += bias[i % width];
}

// x *= s, elementwise (Gemma's embedding scale).
extern "C" __global__ void scale_inplace(float* __restrict__ x, float s, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}

// x = c * tanh(x / c), elementwise (Gemma 2's output soft-cap).
extern "C" __global__ void softcap_inplace(float* __restrict__ x, float c, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = c * tanhf(x[i] / c);
}
