/* A whole decode step (one new position per row) of a Llama/Qwen2 decoder with bf16 weights and a bf16 KV cache,
 * vectorised with AVX-512, in one call.
 *
 * Between its matmuls a decoder layer runs about fifty tiny torch operations per step (norms, rotary embedding,
 * cache writes, attention, SwiGLU), and every torch or ctypes call would start the OpenMP threads again; at batch
 * 1 that dispatch cost a third of the step, and with two threads more than the matmuls gained. Here the step runs
 * in one parallel region and rounds to bf16 at the same points as the torch code in models/transformer.py, so the
 * two paths agree to bf16 rounding (float32 sums may be ordered differently; exp is a polynomial within
 * about one float32 ulp). Layouts:
 *   activations: row-major (batch, features), bf16 stored as uint16;
 *   one layer's cache: (max_batch, kv_heads, max_seq, head_dim), bf16 (keys and values are bf16 products, so the
 *   cache holds them exactly; attention widens them to float32);
 *   rows[b]: the cache row of activation row b; positions[b]: its new position (attends to keys 0..positions[b]).
 */
#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>

#include "fast_tts_kernels.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

#define LANES 16
#define MAX_CHUNKS (FAST_TTS_MAX_HEAD_DIM / LANES) /* the caller checks the head size */

static inline __mmask16 tail_mask(int64_t remaining) {
    return remaining >= LANES ? (__mmask16)0xffff : (__mmask16)((1u << remaining) - 1u);
}

static inline __m512 load_bf16(const uint16_t *p, __mmask16 m) {
    __m256i h = _mm256_maskz_loadu_epi16(m, p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __m256i to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); } /* round to nearest even */

static inline void store_bf16(uint16_t *p, __mmask16 m, __m512 v) { _mm256_mask_storeu_epi16(p, m, to_bf16(v)); }

static inline __m512 round_bf16(__m512 v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16(v)), 16));
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

/* out = weight * bf16(x * rsqrt(mean(x^2) + eps)), statistics in float32 (Llama's RMSNorm). */
static void rms_norm(const uint16_t *x, const uint16_t *weight, uint16_t *out, int64_t rows,
                                   int64_t dim, float eps) {
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
static void rope_store(const uint16_t *qkv, const uint16_t *cos, const uint16_t *sin, float *q_out,
                                uint16_t *k_cache, uint16_t *v_cache, const int64_t *rows, const int64_t *positions,
                                int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t max_seq) {
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
static void attend_one(const float *q, const uint16_t *k_cache, const uint16_t *v_cache, const int64_t *rows,
                       const int64_t *positions, uint16_t *out, float *scores, int64_t task, int64_t heads,
                       int64_t kv_heads, int64_t head_dim, int64_t max_seq, float scale) {
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
static void silu_mul(const uint16_t *gate_up, uint16_t *out, int64_t rows, int64_t inner) {
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
static void add_bf16(uint16_t *hidden, const uint16_t *delta, int64_t n) {
    for (int64_t i = 0; i < n; i += LANES) {
        __mmask16 m = tail_mask(n - i);
        store_bf16(hidden + i, m, _mm512_add_ps(load_bf16(hidden + i, m), load_bf16(delta + i, m)));
    }
}

typedef struct {
    atomic_int arrived, phase;
} step_barrier;

/* Wait until all `threads` threads of the job arrive; `phase` is the caller's own count of barriers passed. */
static void barrier_wait(step_barrier *b, int threads, int *phase) {
    int mine = *phase;
    *phase = mine + 1;
    if (threads == 1) return;
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == threads - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_store_explicit(&b->phase, mine + 1, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->phase, memory_order_acquire) == mine;) fast_tts_wait_a_little(&spins);
}

/* [first, last) of n items for thread `id` of `threads`. */
static inline void share(int64_t n, int id, int threads, int64_t *first, int64_t *last) {
    *first = n * id / threads;
    *last = n * (id + 1) / threads;
}

typedef struct {
    const fast_tts_decode_args *args;
    step_barrier barrier;
} step_job;

static void matmul_share(const uint16_t *x, const uint16_t *packed, const float *bias, uint16_t *y, int64_t m,
                         int64_t n, int64_t k, int id, int threads) {
    int64_t first, last;
    share(n / FAST_TTS_TILE, id, threads, &first, &last);
    fast_tts_matmul_tile_range(x, packed, bias, y, m, n, k, 0, first, last);
}

static void step_thread(void *arg, int id, int threads) {
    step_job *job = arg;
    const fast_tts_decode_args *a = job->args;
    const fast_tts_step_buffers *buf = a->buffers;
    int64_t batch = a->batch, hs = a->hidden_size, heads = a->heads, kv = a->kv_heads, hd = a->head_dim;
    int64_t qkv_width = (heads + 2 * kv) * hd, first, last;
    int phase = 0;
    for (int64_t i = 0; i < a->n_layers; i++) {
        const fast_tts_layer *layer = a->layers + i;
        if (id == 0) {
            if (i > 0) add_bf16(a->hidden, buf->projected, batch * hs); /* the previous layer's MLP residual */
            rms_norm(a->hidden, layer->input_norm, buf->normed, batch, hs, a->eps);
        }
        barrier_wait(&job->barrier, threads, &phase);
        matmul_share(buf->normed, layer->qkv, layer->qkv_bias, buf->qkv, batch, qkv_width, hs, id, threads);
        barrier_wait(&job->barrier, threads, &phase);
        if (id == 0)
            rope_store(buf->qkv, a->cos, a->sin, buf->q, layer->k_cache, layer->v_cache, a->rows, a->positions, batch,
                       heads, kv, hd, a->max_seq);
        barrier_wait(&job->barrier, threads, &phase);
        share(batch * heads, id, threads, &first, &last);
        for (int64_t task = first; task < last; task++)
            attend_one(buf->q, layer->k_cache, layer->v_cache, a->rows, a->positions, buf->attended,
                       buf->scores + task * a->max_seq, task, heads, kv, hd, a->max_seq, a->scale);
        barrier_wait(&job->barrier, threads, &phase);
        matmul_share(buf->attended, layer->o, layer->o_bias, buf->projected, batch, hs, heads * hd, id, threads);
        barrier_wait(&job->barrier, threads, &phase);
        if (id == 0) {
            add_bf16(a->hidden, buf->projected, batch * hs);
            rms_norm(a->hidden, layer->post_norm, buf->normed, batch, hs, a->eps);
        }
        barrier_wait(&job->barrier, threads, &phase);
        matmul_share(buf->normed, layer->gate_up, layer->gate_up_bias, buf->gate_up, batch, 2 * a->inner, hs, id,
                     threads);
        barrier_wait(&job->barrier, threads, &phase);
        share(batch, id, threads, &first, &last);
        silu_mul(buf->gate_up + first * 2 * a->inner, buf->activated + first * a->inner, last - first, a->inner);
        barrier_wait(&job->barrier, threads, &phase);
        matmul_share(buf->activated, layer->down, layer->down_bias, buf->projected, batch, hs, a->inner, id, threads);
        barrier_wait(&job->barrier, threads, &phase);
    }
    if (id == 0) {
        if (a->n_layers > 0) add_bf16(a->hidden, buf->projected, batch * hs);
        rms_norm(a->hidden, a->final_norm, a->out, batch, hs, a->eps);
    }
}

/* A whole decode step through every layer and the final norm: the matmuls, attention and SwiGLU are shared out
 * over `args->threads` pool threads, the norms, rotary embedding and residual adds run on the caller's. */
void fast_tts_decode_step(const fast_tts_decode_args *args) {
    step_job job = {args, {0, 0}};
    fast_tts_run_parallel(step_thread, &job, args->threads);
}
