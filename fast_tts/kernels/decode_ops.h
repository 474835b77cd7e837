/* The operations of a decode step written once, over an element type that a file supplies as three always-inline
 * functions: `load` (16 elements from element index i into float32 lanes), `store` (float32 lanes to 16 elements)
 * and `round` (float32 lanes to the values the element type can hold). decode_ops.c instantiates them for bf16,
 * decode_f32.c for float32; include this after the file's target pragma. All arithmetic is float32: where the
 * element type is bf16, `round` puts the bf16 roundings exactly where the torch code in models/transformer.py has
 * them (float32 sums may be ordered differently; exp is a polynomial within about one float32 ulp).
 * Layouts: activations row-major (batch, features); one layer's cache (max_batch, kv_heads, max_seq, head_dim);
 * rows[b] is the cache row of activation row b and positions[b] its new position (it attends to keys
 * 0..positions[b]).
 */
#ifndef FAST_TTS_DECODE_OPS_H
#define FAST_TTS_DECODE_OPS_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "fast_tts_kernels.h"

#define LANES 16
#define MAX_CHUNKS (FAST_TTS_MAX_HEAD_DIM / LANES) /* the caller checks the head size */
#define OP static inline __attribute__((always_inline))

typedef __m512 (*element_load)(const void *base, int64_t i, __mmask16 m);
typedef void (*element_store)(void *base, int64_t i, __mmask16 m, __m512 v);
typedef __m512 (*element_round)(__m512 v);

static inline __mmask16 tail_mask(int64_t remaining) {
    return remaining >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << remaining) - 1u);
}

/* e^x: x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, then a scale by 2^n (denormals and
 * overflow handled by vscalefps); NaN stays NaN. */
static inline __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(_mm512_set1_ps(-104.f), _mm512_min_ps(_mm512_set1_ps(89.f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(y, n);
}

/* out = weight * round(x * rsqrt(mean(x^2) + eps)), statistics in float32 (Llama's RMSNorm). */
OP void norm_rows(const void *x, const void *weight, void *out, int64_t rows, int64_t dim, float eps,
                  element_load load, element_store store, element_round round) {
    for (int64_t r = 0; r < rows; r++) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t i = 0; i < dim; i += LANES) {
            __m512 v = load(x, r * dim + i, tail_mask(dim - i));
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        __m512 inv = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(acc) / (float)dim + eps));
        for (int64_t i = 0; i < dim; i += LANES) {
            __mmask16 m = tail_mask(dim - i);
            __m512 normed = round(_mm512_mul_ps(load(x, r * dim + i, m), inv));
            store(out, r * dim + i, m, _mm512_mul_ps(load(weight, i, m), normed));
        }
    }
}

/* Rotary embedding of the head at element x0 of `x`, rounded like `x * cos + rotate_half(x) * sin` on tensors of
 * the element type; into the cache at element `k0` of `k_cache`, or (k_cache NULL) into float32 `q_out`. */
OP void rotate_head(const void *x, int64_t x0, const void *cos, const void *sin, int64_t c0, int64_t dim,
                    float *q_out, void *k_cache, int64_t k0, element_load load, element_store store,
                    element_round round) {
    int64_t half = dim / 2;
    for (int64_t d = 0; d < half; d += LANES) {
        __mmask16 m = tail_mask(half - d);
        __m512 x1 = load(x, x0 + d, m), x2 = load(x, x0 + half + d, m);
        __m512 a1 = round(_mm512_mul_ps(x1, load(cos, c0 + d, m)));
        __m512 b1 = round(_mm512_mul_ps(x2, load(sin, c0 + d, m)));
        __m512 a2 = round(_mm512_mul_ps(x2, load(cos, c0 + half + d, m)));
        __m512 b2 = round(_mm512_mul_ps(x1, load(sin, c0 + half + d, m)));
        __m512 lo = _mm512_sub_ps(a1, b1), hi = _mm512_add_ps(a2, b2);
        if (k_cache) {
            store(k_cache, k0 + d, m, lo);
            store(k_cache, k0 + half + d, m, hi);
        } else {
            _mm512_mask_storeu_ps(q_out + d, m, round(lo));
            _mm512_mask_storeu_ps(q_out + half + d, m, round(hi));
        }
    }
}

/* Split fused qkv rows, rotate q and k, store k and v at (rows[b], positions[b]) of the cache, return q (float32). */
OP void rope_store_rows(const void *qkv, const void *cos, const void *sin, float *q_out, void *k_cache,
                        void *v_cache, const int64_t *rows, const int64_t *positions, int64_t batch, int64_t heads,
                        int64_t kv_heads, int64_t head_dim, int64_t max_seq, element_load load, element_store store,
                        element_round round) {
    int64_t width = (heads + 2 * kv_heads) * head_dim;
    for (int64_t b = 0; b < batch; b++) {
        int64_t row = b * width, c0 = b * head_dim;
        for (int64_t h = 0; h < heads; h++)
            rotate_head(qkv, row + h * head_dim, cos, sin, c0, head_dim, q_out + (b * heads + h) * head_dim, 0, 0,
                        load, store, round);
        for (int64_t h = 0; h < kv_heads; h++) {
            int64_t slot = ((rows[b] * kv_heads + h) * max_seq + positions[b]) * head_dim;
            rotate_head(qkv, row + (heads + h) * head_dim, cos, sin, c0, head_dim, 0, k_cache, slot, load, store,
                        round);
            int64_t v = row + (heads + kv_heads + h) * head_dim;
            for (int64_t d = 0; d < head_dim; d += LANES) { /* values are stored as they are (exactly) */
                __mmask16 m = tail_mask(head_dim - d);
                store(v_cache, slot + d, m, load(qkv, v + d, m));
            }
        }
    }
}

/* Softmax attention of one (row b, head h) task's single query over its keys 0..positions[b]; `scores` holds
 * max_seq floats. */
OP void attend_task(const float *q, const void *k_cache, const void *v_cache, const int64_t *rows,
                    const int64_t *positions, void *out, float *scores, int64_t task, int64_t heads,
                    int64_t kv_heads, int64_t head_dim, int64_t max_seq, float scale, element_load load,
                    element_store store) {
    int64_t group = heads / kv_heads, chunks = (head_dim + LANES - 1) / LANES;
    __mmask16 last = tail_mask(head_dim - (chunks - 1) * LANES);
    int64_t b = task / heads, h = task % heads, len = positions[b] + 1;
    int64_t base = (rows[b] * kv_heads + h / group) * max_seq * head_dim; /* this head's keys and values */
    __m512 qv[MAX_CHUNKS], acc[MAX_CHUNKS];
    for (int64_t c = 0; c < chunks; c++) {
        qv[c] = _mm512_maskz_loadu_ps(c == chunks - 1 ? last : 0xffff, q + task * head_dim + c * LANES);
        acc[c] = _mm512_setzero_ps();
    }
    float top = -INFINITY;
    for (int64_t t = 0; t < len; t++) {
        __m512 dot = _mm512_setzero_ps();
        for (int64_t c = 0; c < chunks; c++)
            dot = _mm512_fmadd_ps(qv[c], load(k_cache, base + t * head_dim + c * LANES, c == chunks - 1 ? last : 0xffff),
                                  dot);
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
        __m512 p = _mm512_set1_ps(scores[t]);
        for (int64_t c = 0; c < chunks; c++)
            acc[c] = _mm512_fmadd_ps(p, load(v_cache, base + t * head_dim + c * LANES, c == chunks - 1 ? last : 0xffff),
                                     acc[c]);
    }
    __m512 sum = _mm512_set1_ps(_mm512_reduce_add_ps(total));
    for (int64_t c = 0; c < chunks; c++)
        store(out, task * head_dim + c * LANES, c == chunks - 1 ? last : 0xffff, _mm512_div_ps(acc[c], sum));
}

/* SwiGLU on fused (gate | up) rows: round(silu(gate)) * up, silu(g) = g / (1 + e^-g) in float32. */
OP void silu_mul_rows(const void *gate_up, void *out, int64_t rows, int64_t inner, element_load load,
                      element_store store, element_round round) {
    for (int64_t r = 0; r < rows; r++) {
        int64_t gate = r * 2 * inner, up = gate + inner;
        for (int64_t i = 0; i < inner; i += LANES) {
            __mmask16 m = tail_mask(inner - i);
            __m512 g = load(gate_up, gate + i, m);
            __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
            __m512 silu = round(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), e)));
            store(out, r * inner + i, m, _mm512_mul_ps(silu, load(gate_up, up + i, m)));
        }
    }
}

/* hidden += delta, rounded like a tensor add of the element type. */
OP void add_rows(void *hidden, const void *delta, int64_t n, element_load load, element_store store) {
    for (int64_t i = 0; i < n; i += LANES) {
        __mmask16 m = tail_mask(n - i);
        store(hidden, i, m, _mm512_add_ps(load(hidden, i, m), load(delta, i, m)));
    }
}

/* The operation table of an element type from its load, store and round, and its tile-range matmul. */
#define FAST_TTS_STEP_OPS(name, element_t, load, store, round, matmul)                                               \
    static void name##_add(void *h, const void *d, int64_t n) { add_rows(h, d, n, load, store); }                   \
    static void name##_norm(const void *x, const void *w, void *out, int64_t rows, int64_t dim, float eps) {       \
        norm_rows(x, w, out, rows, dim, eps, load, store, round);                                                   \
    }                                                                                                               \
    static void name##_rope(const void *qkv, const void *cos, const void *sin, float *q, void *k, void *v,          \
                            const int64_t *rows, const int64_t *pos, int64_t batch, int64_t heads, int64_t kv,      \
                            int64_t hd, int64_t max_seq) {                                                          \
        rope_store_rows(qkv, cos, sin, q, k, v, rows, pos, batch, heads, kv, hd, max_seq, load, store, round);     \
    }                                                                                                               \
    static void name##_attend(const float *q, const void *k, const void *v, const int64_t *rows,                   \
                              const int64_t *pos, void *out, float *scores, int64_t task, int64_t heads,          \
                              int64_t kv, int64_t hd, int64_t max_seq, float scale) {                             \
        attend_task(q, k, v, rows, pos, out, scores, task, heads, kv, hd, max_seq, scale, load, store);           \
    }                                                                                                               \
    static void name##_silu_mul(const void *gate_up, void *out, int64_t rows, int64_t inner) {                      \
        silu_mul_rows(gate_up, out, rows, inner, load, store, round);                                              \
    }                                                                                                               \
    const fast_tts_step_ops name = {sizeof(element_t), name##_add,      name##_norm,    matmul,                     \
                                    name##_rope,       name##_attend,   name##_silu_mul}

#endif
