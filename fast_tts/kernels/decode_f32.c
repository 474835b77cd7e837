/* The float32 operations of a whole decode step (one new position per row) of a Llama/Qwen2 decoder with float32
 * weights and a float32 KV cache, vectorised with AVX-512 F; decode_step.c runs them in order.
 *
 * They compute what the float32 torch code in models/transformer.py computes, with float32 sums in another order
 * (and exp as a polynomial within about one float32 ulp), so the two paths agree to float32 rounding. Layouts as in
 * decode_ops.c, with float32 in place of bf16.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "fast_tts_kernels.h"

#pragma GCC target("avx512f")

#include "fast_tts_simd.h"

/* out = weight * (x * rsqrt(mean(x^2) + eps)) (Llama's RMSNorm). */
static void rms_norm_f32(const void *x_, const void *weight_, void *out_, int64_t rows, int64_t dim, float eps) {
    const float *x = x_, *weight = weight_;
    float *out = out_;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < dim; i += LANES) {
            __m512 v = _mm512_maskz_loadu_ps(tail_mask(dim - i), xr + i);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        __m512 inv = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(acc) / (float)dim + eps));
        for (int64_t i = 0; i < dim; i += LANES) {
            __mmask16 m = tail_mask(dim - i);
            __m512 normed = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + i), inv);
            _mm512_mask_storeu_ps(out + r * dim + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, weight + i), normed));
        }
    }
}

/* Rotary embedding of one head: x * cos + rotate_half(x) * sin. */
static inline void rotate_f32(const float *x, const float *cos, const float *sin, int64_t dim, float *out) {
    int64_t half = dim / 2;
    for (int64_t d = 0; d < half; d += LANES) {
        __mmask16 m = tail_mask(half - d);
        __m512 x1 = _mm512_maskz_loadu_ps(m, x + d), x2 = _mm512_maskz_loadu_ps(m, x + half + d);
        __m512 a1 = _mm512_mul_ps(x1, _mm512_maskz_loadu_ps(m, cos + d));
        __m512 b1 = _mm512_mul_ps(x2, _mm512_maskz_loadu_ps(m, sin + d));
        __m512 a2 = _mm512_mul_ps(x2, _mm512_maskz_loadu_ps(m, cos + half + d));
        __m512 b2 = _mm512_mul_ps(x1, _mm512_maskz_loadu_ps(m, sin + half + d));
        _mm512_mask_storeu_ps(out + d, m, _mm512_sub_ps(a1, b1));
        _mm512_mask_storeu_ps(out + half + d, m, _mm512_add_ps(a2, b2));
    }
}

/* Split fused qkv rows, rotate q and k, store k and v at (rows[b], positions[b]) of the cache, return q. */
static void rope_store_f32(const void *qkv_, const void *cos_, const void *sin_, float *q_out, void *k_cache_,
                           void *v_cache_, const int64_t *rows, const int64_t *positions, int64_t batch,
                           int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t max_seq) {
    const float *qkv = qkv_, *cos = cos_, *sin = sin_;
    float *k_cache = k_cache_, *v_cache = v_cache_;
    int64_t width = (heads + 2 * kv_heads) * head_dim;
    for (int64_t b = 0; b < batch; b++) {
        const float *row = qkv + b * width, *c = cos + b * head_dim, *s = sin + b * head_dim;
        for (int64_t h = 0; h < heads; h++) rotate_f32(row + h * head_dim, c, s, head_dim, q_out + (b * heads + h) * head_dim);
        for (int64_t h = 0; h < kv_heads; h++) {
            int64_t slot = ((rows[b] * kv_heads + h) * max_seq + positions[b]) * head_dim;
            rotate_f32(row + (heads + h) * head_dim, c, s, head_dim, k_cache + slot);
            const float *v = row + (heads + kv_heads + h) * head_dim;
            for (int64_t d = 0; d < head_dim; d++) v_cache[slot + d] = v[d];
        }
    }
}

/* Softmax attention of one (row b, head h) task's single query over its keys 0..positions[b]. `scores` holds
 * max_seq floats. */
static void attend_one_f32(const float *q, const void *k_cache_, const void *v_cache_, const int64_t *rows,
                           const int64_t *positions, void *out_, float *scores, int64_t task, int64_t heads,
                           int64_t kv_heads, int64_t head_dim, int64_t max_seq, float scale) {
    const float *k_cache = k_cache_, *v_cache = v_cache_;
    float *out = out_;
    int64_t group = heads / kv_heads, chunks = (head_dim + LANES - 1) / LANES;
    __mmask16 last = tail_mask(head_dim - (chunks - 1) * LANES);
    int64_t b = task / heads, h = task % heads, len = positions[b] + 1;
    const float *keys = k_cache + (rows[b] * kv_heads + h / group) * max_seq * head_dim;
    const float *values = v_cache + (rows[b] * kv_heads + h / group) * max_seq * head_dim;
    __m512 qv[MAX_CHUNKS], acc[MAX_CHUNKS];
    for (int64_t c = 0; c < chunks; c++) {
        qv[c] = _mm512_maskz_loadu_ps(c == chunks - 1 ? last : 0xffff, q + task * head_dim + c * LANES);
        acc[c] = _mm512_setzero_ps();
    }
    float top = -INFINITY;
    for (int64_t t = 0; t < len; t++) {
        const float *k = keys + t * head_dim;
        __m512 dot = _mm512_setzero_ps();
        for (int64_t c = 0; c < chunks; c++)
            dot = _mm512_fmadd_ps(qv[c], _mm512_maskz_loadu_ps(c == chunks - 1 ? last : 0xffff, k + c * LANES), dot);
        scores[t] = _mm512_reduce_add_ps(dot) * scale;
        top = scores[t] > top ? scores[t] : top;
    }
    __m512 total = _mm512_setzero_ps();
    for (int64_t t = 0; t < len; t += LANES) {
        __mmask16 m = tail_mask(len - t);
        __m512 p = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + t), _mm512_set1_ps(top)));
        p = _mm512_maskz_mov_ps(m, p);
        total = _mm512_add_ps(total, p);
        _mm512_mask_storeu_ps(scores + t, m, p);
    }
    for (int64_t t = 0; t < len; t++) {
        const float *v = values + t * head_dim;
        __m512 p = _mm512_set1_ps(scores[t]);
        for (int64_t c = 0; c < chunks; c++)
            acc[c] = _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(c == chunks - 1 ? last : 0xffff, v + c * LANES), acc[c]);
    }
    __m512 sum = _mm512_set1_ps(_mm512_reduce_add_ps(total));
    for (int64_t c = 0; c < chunks; c++)
        _mm512_mask_storeu_ps(out + task * head_dim + c * LANES, c == chunks - 1 ? last : 0xffff,
                              _mm512_div_ps(acc[c], sum));
}

/* SwiGLU on fused (gate | up) rows: silu(gate) * up, silu(g) = g / (1 + e^-g). */
static void silu_mul_f32(const void *gate_up_, void *out_, int64_t rows, int64_t inner) {
    const float *gate_up = gate_up_;
    float *out = out_;
    for (int64_t r = 0; r < rows; r++) {
        const float *gate = gate_up + r * 2 * inner, *up = gate + inner;
        for (int64_t i = 0; i < inner; i += LANES) {
            __mmask16 m = tail_mask(inner - i);
            __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
            __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
            __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), e));
            _mm512_mask_storeu_ps(out + r * inner + i, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, up + i)));
        }
    }
}

/* hidden += delta. */
static void add_f32(void *hidden_, const void *delta_, int64_t n) {
    float *hidden = hidden_;
    const float *delta = delta_;
    for (int64_t i = 0; i < n; i += LANES) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(hidden + i, m,
                              _mm512_add_ps(_mm512_maskz_loadu_ps(m, hidden + i), _mm512_maskz_loadu_ps(m, delta + i)));
    }
}

static void matmul_tiles_f32(const void *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                             int64_t k, int64_t first, int64_t last) {
    fast_tts_matmul_f32_tile_range(x, packed, bias, y, m, n, k, first, last);
}

const fast_tts_step_ops fast_tts_f32_step_ops = {
    sizeof(float), add_f32, rms_norm_f32, matmul_tiles_f32, rope_store_f32, attend_one_f32, silu_mul_f32,
};
