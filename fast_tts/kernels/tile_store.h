/* Where the tiled products put a result: 32 float32 outputs of one activation row (two vectors), stored as bf16
 * (rounded to nearest even, as a bf16 cast) or kept float32. Include after the file's target pragma (AVX-512 BF16).
 */
#ifndef FAST_TTS_TILE_STORE_H
#define FAST_TTS_TILE_STORE_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

/* y[offset .. offset+31] = (lo, hi), y bf16 or (float_out) float32. */
static inline __attribute__((always_inline)) void store_tile_row(void *y, size_t offset, __m512 lo, __m512 hi,
                                                                  int float_out) {
    if (float_out) {
        _mm512_storeu_ps((float *)y + offset, lo);
        _mm512_storeu_ps((float *)y + offset + 16, hi);
    } else {
        uint16_t *yh = (uint16_t *)y + offset;
        _mm256_storeu_si256((__m256i *)yh, (__m256i)_mm512_cvtneps_pbh(lo));
        _mm256_storeu_si256((__m256i *)(yh + 16), (__m256i)_mm512_cvtneps_pbh(hi));
    }
}

#endif
