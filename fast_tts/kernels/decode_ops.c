/* The bf16 operations of a whole decode step (one new position per row) of a Llama/Qwen2 decoder with bf16 weights
 * and a bf16 KV cache, vectorised with AVX-512 BF16; decode_step.c runs them in order. They round to bf16 at the
 * same points as the torch code in models/transformer.py, so the two paths agree to bf16 rounding (float32 sums may be ordered differently; exp is a polynomial within
 * about one float32 ulp). Layouts:
 *   activations: row-major (batch, features), bf16 stored as uint16;
 *   one layer's cache: (max_batch, kv_heads, max_seq, head_dim), bf16 (keys and values are bf16 products, so the
 *   cache holds them exactly; attention widens them to float32);
 *   rows[b]: the cache row of activation row b; positions[b]: its new position (attends to keys 0..positions[b]).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "fast_tts_kernels.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

#include "fast_tts_simd.h"

static inline __m512 load_bf16(const uint16_t *p, __mmask16 m) {
    __m256i h = _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __m256i to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); } /* round to nearest even */

static inline void store_bf16(uint16_t *p, __mmask16 m, __m512 v) { _mm256_mask_storeu_epi16(p, m, to_bf16(v)); }

static inline __m512 round_bf16(__m512 v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16(v)), 16));
}

/* out = weight * bf16(x * rsqrt(mean(x^2) + eps)), statistics in float32 (Llama's RMSNorm). */
static void rms_norm(const void *x_, const void *weight_, void *out_, int64_t rows, int64_t dim, float eps) {
    const uint16_t *x = x_, *weight = weight_;
    uint16_t *out = out_;
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * dim;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < dim; i += LANES) {
            __m512 v = load_bf16(xr + i, tail_mask(dim - i));
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        __m512 inv = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(acc) / (float)dim + eps));
        for (int64_t i = 0; i < dim; i += LANES) {
            __mmask16 m = tail_mask(dim - i);
            __m512 normed = round_bf16(_mm512_mul_ps(load_bf16(xr + i, m), inv));
            store_bf16(out + r * dim + i, m, _mm512_mul_ps(load_bf16(weight + i, m), normed));
        }
    }
}

/* Rotary embedding of one head, rounded like `x * cos + rotate_half(x) * sin` on bf16 tensors; float32 out (q)
 * or bf16 out (k, into the cache). */
static inline void rotate(const uint16_t *x, const uint16_t *cos, const uint16_t *sin, int64_t dim, float *out,
                          uint16_t *out_bf16) {
    int64_t half = dim / 2;
    for (int64_t d = 0; d < half; d += LANES) {
        __mmask16 m = tail_mask(half - d);
        __m512 x1 = load_bf16(x + d, m), x2 = load_bf16(x + half + d, m);
        __m512 a1 = round_bf16(_mm512_mul_ps(x1, load_bf16(cos + d, m)));
        __m512 b1 = round_bf16(_mm512_mul_ps(x2, load_bf16(sin + d, m)));
        __m512 a2 = round_bf16(_mm512_mul_ps(x2, load_bf16(cos + half + d, m)));
        __m512 b2 = round_bf16(_mm512_mul_ps(x1, load_bf16(sin + half + d, m)));
        __m512 lo = _mm512_sub_ps(a1, b1), hi = _mm512_add_ps(a2, b2);
        if (out_bf16) {
            store_bf16(out_bf16 + d, m, lo);
            store_bf16(out_bf16 + half + d, m, hi);
        } else {
            _mm512_mask_storeu_ps(out + d, m, round_bf16(lo));
            _mm512_mask_storeu_ps(out + half + d, m, round_bf16(hi));
        }
    }
}

/* Split fused qkv rows, rotate q and k, store k and v at (rows[b], positions[b]) of the cache, return q (float32). */
static void rope_store(const void *qkv_, const void *cos_, const void *sin_, float *q_out, void *k_cache_,
                       void *v_cache_, const int64_t *rows, const int64_t *positions, int64_t batch, int64_t heads,
                       int64_t kv_heads, int64_t head_dim, int64_t max_seq) {
    const uint16_t *qkv = qkv_, *cos = cos_, *sin = sin_;
    uint16_t *k_cache = k_cache_, *v_cache = v_cache_;
    int64_t width = (heads + 2 * kv_heads) * head_dim;
    for (int64_t b = 0; b < batch; b++) {
        const uint16_t *row = qkv + b * width, *c = cos + b * head_dim, *s = sin + b * head_dim;
        for (int64_t h = 0; h < heads; h++) rotate(row + h * head_dim, c, s, head_dim, q_out + (b * heads + h) * head_dim, 0);
        for (int64_t h = 0; h < kv_heads; h++) {
            int64_t slot = ((rows[b] * kv_heads + h) * max_seq + positions[b]) * head_dim;
            rotate(row + (heads + h) * head_dim, c, s, head_dim, 0, k_cache + slot);
            const uint16_t *v = row + (heads + kv_heads + h) * head_dim;
            for (int64_t d = 0; d < head_dim; d++) v_cache[slot + d] = v[d];
        }
    }
}

/* Softmax attention of one (row b, head h) task's single query over its keys 0..positions[b], output bf16.
 * `scores` holds max_seq floats. */
static void attend_one(const float *q, const void *k_cache_, const void *v_cache_, const int64_t *rows,
                       const int64_t *positions, void *out_, float *scores, int64_t task, int64_t heads,
                       int64_t kv_heads, int64_t head_dim, int64_t max_seq, float scale) {
    const uint16_t *k_cache = k_cache_, *v_cache = v_cache_;
    uint16_t *out = out_;
    int64_t group = heads / kv_heads, chunks = (head_dim + LANES - 1) / LANES;
    __mmask16 last = tail_mask(head_dim - (chunks - 1) * LANES);
    int64_t b = task / heads, h = task % heads, len = positions[b] + 1;
    const uint16_t *keys = k_cache + (rows[b] * kv_heads + h / group) * max_seq * head_dim;
    const uint16_t *values = v_cache + (rows[b] * kv_heads + h / group) * max_seq * head_dim;
    __m512 qv[MAX_CHUNKS], acc[MAX_CHUNKS];
    for (int64_t c = 0; c < chunks; c++) {
        qv[c] = _mm512_maskz_loadu_ps(c == chunks - 1 ? last : 0xffff, q + task * head_dim + c * LANES);
        acc[c] = _mm512_setzero_ps();
    }
    float top = -INFINITY;
    for (int64_t t = 0; t < len; t++) {
        const uint16_t *k = keys + t * head_dim;
        __m512 dot = _mm512_setzero_ps();
        for (int64_t c = 0; c < chunks; c++)
            dot = _mm512_fmadd_ps(qv[c], load_bf16(k + c * LANES, c == chunks - 1 ? last : 0xffff), dot);
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
        const uint16_t *v = values + t * head_dim;
        __m512 p = _mm512_set1_ps(scores[t]);
        for (int64_t c = 0; c < chunks; c++)
            acc[c] = _mm512_fmadd_ps(p, load_bf16(v + c * LANES, c == chunks - 1 ? last : 0xffff), acc[c]);
    }
    __m512 sum = _mm512_set1_ps(_mm512_reduce_add_ps(total));
    for (int64_t c = 0; c < chunks; c++)
        store_bf16(out + task * head_dim + c * LANES, c == chunks - 1 ? last : 0xffff, _mm512_div_ps(acc[c], sum));
}

/* SwiGLU on fused (gate | up) rows: bf16(bf16(silu(gate)) * up), silu(g) = g / (1 + e^-g) in float32. */
static void silu_mul(const void *gate_up_, void *out_, int64_t rows, int64_t inner) {
    const uint16_t *gate_up = gate_up_;
    uint16_t *out = out_;
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *gate = gate_up + r * 2 * inner, *up = gate + inner;
        for (int64_t i = 0; i < inner; i += LANES) {
            __mmask16 m = tail_mask(inner - i);
            __m512 g = load_bf16(gate + i, m);
            __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
            __m512 silu = round_bf16(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), e)));
            store_bf16(out + r * inner + i, m, _mm512_mul_ps(silu, load_bf16(up + i, m)));
        }
    }
}

/* hidden += delta, both bf16, rounded like a bf16 tensor add. */
static void add_bf16(void *hidden_, const void *delta_, int64_t n) {
    uint16_t *hidden = hidden_;
    const uint16_t *delta = delta_;
    for (int64_t i = 0; i < n; i += LANES) {
        __mmask16 m = tail_mask(n - i);
        store_bf16(hidden + i, m, _mm512_add_ps(load_bf16(hidden + i, m), load_bf16(delta + i, m)));
    }
}

static void matmul_tiles(const void *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                         int64_t k, int64_t first, int64_t last) {
    fast_tts_matmul_tile_range(x, packed, bias, y, m, n, k, 0, first, last);
}

const fast_tts_step_ops fast_tts_bf16_step_ops = {
    sizeof(uint16_t), add_bf16, rms_norm, matmul_tiles, rope_store, attend_one, silu_mul,
};
