/* The small operations of one decode step (one new position per row) of a Llama/Qwen2 layer, for bf16 weights
 * beside a float32 KV cache.
 *
 * Between its matmuls a decoder layer runs about fifty tiny torch operations per step (norms, rotary embedding,
 * cache writes, attention, SwiGLU); at batch 1 their dispatch costs a third of the step. Each function here does
 * one group of them in one call and rounds to bf16 at the same points as the torch code in models/transformer.py,
 * so the two paths agree to bf16 rounding. Layouts:
 *   activations: row-major (batch, features), bf16 stored as uint16;
 *   one layer's cache: (max_batch, kv_heads, max_seq, head_dim), float32;
 *   rows[b]: the cache row of activation row b; positions[b]: its new position (attends to keys 0..positions[b]).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, NaN kept quiet */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

/* out = weight * bf16(x * rsqrt(mean(x^2) + eps)), statistics in float32 (Llama's RMSNorm). */
void fast_tts_rms_norm_bf16(const uint16_t *x, const uint16_t *weight, uint16_t *out, int64_t rows, int64_t dim,
                            float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * dim;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < dim; i++) {
            float v = bf16_to_float(xr[i]);
            sum += v * v;
        }
        float inv = 1.f / sqrtf(sum / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++)
            out[r * dim + i] = float_to_bf16(bf16_to_float(weight[i]) * round_bf16(bf16_to_float(xr[i]) * inv));
    }
}

/* Rotary embedding of one head, rounded like `x * cos + rotate_half(x) * sin` on bf16 tensors. */
static inline void rotate(const uint16_t *x, const uint16_t *cos, const uint16_t *sin, int64_t dim, float *out) {
    int64_t half = dim / 2;
    for (int64_t d = 0; d < dim; d++) {
        float rotated = d < half ? -bf16_to_float(x[d + half]) : bf16_to_float(x[d - half]);
        float a = round_bf16(bf16_to_float(x[d]) * bf16_to_float(cos[d]));
        float b = round_bf16(rotated * bf16_to_float(sin[d]));
        out[d] = round_bf16(a + b);
    }
}

/* Split fused qkv rows, rotate q and k, store k and v at (rows[b], positions[b]) of the cache, return q (float32). */
void fast_tts_rope_store(const uint16_t *qkv, const uint16_t *cos, const uint16_t *sin, float *q_out, float *k_cache,
                         float *v_cache, const int64_t *rows, const int64_t *positions, int64_t batch, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, int64_t max_seq) {
    int64_t width = (heads + 2 * kv_heads) * head_dim;
    for (int64_t b = 0; b < batch; b++) {
        const uint16_t *row = qkv + b * width, *c = cos + b * head_dim, *s = sin + b * head_dim;
        for (int64_t h = 0; h < heads; h++) rotate(row + h * head_dim, c, s, head_dim, q_out + (b * heads + h) * head_dim);
        for (int64_t h = 0; h < kv_heads; h++) {
            int64_t slot = ((rows[b] * kv_heads + h) * max_seq + positions[b]) * head_dim;
            rotate(row + (heads + h) * head_dim, c, s, head_dim, k_cache + slot);
            const uint16_t *v = row + (heads + kv_heads + h) * head_dim;
            for (int64_t d = 0; d < head_dim; d++) v_cache[slot + d] = bf16_to_float(v[d]);
        }
    }
}

#define MAX_HEAD_DIM 256 /* the caller checks; real models use 64 or 128 */

/* Softmax attention of each row's single query over its keys 0..positions[b] (grouped-query heads), output bf16.
 * `scratch` holds batch * heads * max_seq floats for the scores. */
void fast_tts_attend_decode(const float *q, const float *k_cache, const float *v_cache, const int64_t *rows,
                            const int64_t *positions, uint16_t *out, float *scratch, int64_t batch, int64_t heads,
                            int64_t kv_heads, int64_t head_dim, int64_t max_seq, float scale, int threads) {
    int64_t group = heads / kv_heads;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t task = 0; task < batch * heads; task++) {
        int64_t b = task / heads, h = task % heads, len = positions[b] + 1;
        const float *qh = q + task * head_dim;
        const float *keys = k_cache + (rows[b] * kv_heads + h / group) * max_seq * head_dim;
        const float *values = v_cache + (rows[b] * kv_heads + h / group) * max_seq * head_dim;
        float *scores = scratch + task * max_seq;
        float acc[MAX_HEAD_DIM];
        float top = -INFINITY, total = 0.f;
        for (int64_t t = 0; t < len; t++) {
            const float *k = keys + t * head_dim;
            float dot = 0.f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < head_dim; d++) dot += qh[d] * k[d];
            scores[t] = dot * scale;
            if (scores[t] > top) top = scores[t];
        }
        for (int64_t d = 0; d < head_dim; d++) acc[d] = 0.f;
        for (int64_t t = 0; t < len; t++) {
            float p = expf(scores[t] - top);
            total += p;
            const float *v = values + t * head_dim;
            for (int64_t d = 0; d < head_dim; d++) acc[d] += p * v[d];
        }
        for (int64_t d = 0; d < head_dim; d++) out[task * head_dim + d] = float_to_bf16(acc[d] / total);
    }
}

/* SwiGLU on fused (gate | up) rows: bf16(bf16(silu(gate)) * up). */
void fast_tts_silu_mul_bf16(const uint16_t *gate_up, uint16_t *out, int64_t rows, int64_t inner) {
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *gate = gate_up + r * 2 * inner, *up = gate + inner;
        for (int64_t i = 0; i < inner; i++) {
            float g = bf16_to_float(gate[i]);
            out[r * inner + i] = float_to_bf16(round_bf16(g / (1.f + expf(-g))) * bf16_to_float(up[i]));
        }
    }
}
