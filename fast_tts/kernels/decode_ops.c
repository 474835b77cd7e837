/* The bf16 operations of a decode step (bf16 weights, activations and KV cache), from decode_ops.h, with AVX-512
 * BF16. Keys and values are bf16 products, so the bf16 cache holds them exactly; attention widens them to float32.
 */
#include <immintrin.h>
#include <stdint.h>

#include "fast_tts_kernels.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

#include "decode_ops.h"

static inline __attribute__((always_inline)) __m512 load_bf16(const void *base, int64_t i, __mmask16 m) {
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)base + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __attribute__((always_inline)) void store_bf16(void *base, int64_t i, __mmask16 m, __m512 v) {
    _mm256_mask_storeu_epi16((uint16_t *)base + i, m, (__m256i)_mm512_cvtneps_pbh(v)); /* round to nearest even */
}

static inline __attribute__((always_inline)) __m512 round_bf16(__m512 v) {
    __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static void matmul_tiles(const void *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                         int64_t k, int64_t first, int64_t last) {
    fast_tts_matmul_tile_range(x, packed, bias, y, m, n, k, 0, first, last);
}

FAST_TTS_STEP_OPS(fast_tts_bf16_step_ops, uint16_t, load_bf16, store_bf16, round_bf16, matmul_tiles);

/* bf16 activations and cache with the products of grouped_matmul.c: the bf16 table but for its matmul, which is
 * `range` (a tile range with bf16 output). */
#define BF16_STEP_OPS_WITH(name, range)                                                                              \
    static void name##_matmul(const void *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,   \
                              int64_t k, int64_t first, int64_t last) {                                              \
        range(x, packed, bias, y, m, n, k, 0, first, last);                                                          \
    }                                                                                                                \
    const fast_tts_step_ops name = {sizeof(uint16_t),           fast_tts_bf16_step_ops_add,                          \
                                    fast_tts_bf16_step_ops_norm, name##_matmul,                                      \
                                    fast_tts_bf16_step_ops_rope, fast_tts_bf16_step_ops_attend,                      \
                                    fast_tts_bf16_step_ops_silu_mul}

BF16_STEP_OPS_WITH(fast_tts_int4_step_ops, fast_tts_int4_tile_range);
#ifdef FAST_TTS_AMX
BF16_STEP_OPS_WITH(fast_tts_int8_step_ops, fast_tts_int8_tile_range);
#endif
