/* The float32 operations of a decode step (float32 weights, activations and KV cache), from decode_ops.h, with
 * AVX-512 F: the float32 torch code of models/transformer.py with float32 sums in another order.
 */
#include <immintrin.h>
#include <stdint.h>

#include "fast_tts_kernels.h"

#pragma GCC target("avx512f")

#include "decode_ops.h"

static inline __attribute__((always_inline)) __m512 load_f32(const void *base, int64_t i, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, (const float *)base + i);
}

static inline __attribute__((always_inline)) void store_f32(void *base, int64_t i, __mmask16 m, __m512 v) {
    _mm512_mask_storeu_ps((float *)base + i, m, v);
}

static inline __attribute__((always_inline)) __m512 keep_f32(__m512 v) { return v; }

static void matmul_tiles_f32(const void *x, const void *packed, const float *bias, void *y, int64_t m, int64_t n,
                             int64_t k, int64_t first, int64_t last) {
    fast_tts_matmul_f32_tile_range(x, packed, bias, y, m, n, k, first, last);
}

FAST_TTS_STEP_OPS(fast_tts_f32_step_ops, float, load_f32, store_f32, keep_f32, matmul_tiles_f32);
